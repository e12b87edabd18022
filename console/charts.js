// Small SVG charts: a sparkline for table rows and a line chart with a scale for the
// live panels. Values are numbers (null = no reading); the newest value is last.

const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

function points(values, width, height, max, pad) {
  const n = values.length;
  const step = n > 1 ? (width - 2 * pad) / (n - 1) : 0;
  const out = [];
  values.forEach((v, i) => {
    if (v === null || v === undefined || Number.isNaN(v)) return;
    const y = height - pad - (max > 0 ? (v / max) * (height - 2 * pad) : 0);
    out.push(`${(pad + i * step).toFixed(1)},${y.toFixed(1)}`);
  });
  return out.join(" ");
}

export function sparkline(values, { width = 120, height = 28, label = "" } = {}) {
  const el = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "spark", role: "img" });
  if (label) el.setAttribute("aria-label", label);
  const max = Math.max(0, ...values.filter((v) => v !== null && v !== undefined));
  el.append(svg("line", { x1: 2, x2: width - 2, y1: height - 2, y2: height - 2, class: "spark-base" }));
  el.append(svg("polyline", { points: points(values, width, height, max, 2), class: "spark-line" }));
  return el;
}

export function formatNumber(v, unit = "") {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const abs = Math.abs(v);
  let text;
  if (abs >= 1e9) text = `${(v / 1e9).toFixed(1)}G`;
  else if (abs >= 1e6) text = `${(v / 1e6).toFixed(1)}M`;
  else if (abs >= 1e4) text = `${(v / 1e3).toFixed(1)}k`;
  else if (abs >= 100 || Number.isInteger(v)) text = `${Math.round(v)}`;
  else if (abs >= 1) text = v.toFixed(1);
  else text = v.toPrecision(2);
  return unit ? `${text} ${unit}` : text;
}

/// A line chart of one or more series sharing a scale from 0; `series` is
/// [{name, values, cls}], all the same length.
export function lineChart(series, { width = 420, height = 140, unit = "", title = "" } = {}) {
  const wrap = document.createElement("figure");
  wrap.className = "chart";
  const cap = document.createElement("figcaption");
  const latest = series.map((s) => `${s.name} ${formatNumber(s.values.at(-1), unit)}`).join(" · ");
  if (title) cap.append(`${title} — `);
  series.forEach((s, i) => {
    const key = document.createElement("span");
    key.className = `key ${s.cls || `c${i}`}`;
    key.textContent = `${s.name} ${formatNumber(s.values.at(-1), unit)}`;
    cap.append(key);
  });
  cap.title = latest;
  const all = series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined && !Number.isNaN(v));
  const max = all.length ? Math.max(...all) : 0;
  const el = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${title} — ${latest}` });
  const pad = 4;
  for (const frac of [0, 0.5, 1]) {
    const y = pad + frac * (height - 2 * pad);
    el.append(svg("line", { x1: 0, x2: width, y1: y, y2: y, class: "grid" }));
  }
  const top = svg("text", { x: width - 4, y: 14, class: "scale", "text-anchor": "end" });
  top.textContent = formatNumber(max, unit);
  el.append(top);
  series.forEach((s, i) => {
    el.append(svg("polyline", { points: points(s.values, width, height, max, pad), class: `line ${s.cls || `c${i}`}` }));
  });
  wrap.append(el, cap);
  return wrap;
}

/// The q-quantile of cumulative histogram buckets [{le, count}] (le null = +Inf),
/// interpolated inside its bucket as Prometheus's histogram_quantile does; null without
/// observations. The same rule as the node's own quantiles (src/metrics.rs `quantile`).
export function quantile(buckets, q) {
  const total = buckets.length ? buckets[buckets.length - 1].count : 0;
  if (!total) return null;
  const rank = Math.min(Math.max(q, 0), 1) * total;
  let below = 0;
  let lower = 0;
  for (const b of buckets) {
    if (b.count >= rank && b.count > below) {
      if (b.le === null) return lower;
      const inside = Math.min(Math.max((rank - below) / (b.count - below), 0), 1);
      return lower + (b.le - lower) * inside;
    }
    below = b.count;
    lower = b.le ?? lower;
  }
  return lower;
}

/// Buckets of the observations between two cumulative readings.
export function bucketDelta(now, before) {
  if (!before || before.length !== now.length) return now;
  return now.map((b, i) => ({ le: b.le, count: Math.max(0, b.count - before[i].count) }));
}
