// The streamhub web console: one page, hash routes, every figure read from the
// documented API (docs/PROTOCOL.md) with the credentials typed in at sign-in. Untrusted
// text (topic names, payloads, errors) is only ever set as text, never as HTML.
import { Api, ApiError, Tail, mapLimited } from "./api.js";
import { bucketDelta, formatNumber, lineChart, quantile, sparkline } from "./charts.js";

// ---- bounds (each one a named limit of the page) ----
const REFRESH_MS = 2000; // live pages re-read the API this often
const POINTS = 60; // readings kept per chart: two minutes at REFRESH_MS
const TAIL_ROWS = 500; // messages the live tail keeps on screen (older ones are dropped)
const TAIL_BACKLOG = 20; // messages shown from history when a tail opens
const HISTORY_PAGE = 25; // messages per history page
const DLQ_PAGE = 50; // dead letters per page
const TOPICS_PAGE = 50; // topics per page of the topic list (one info read each)
const GROUP_SCAN_TOPICS = 200; // topics scanned for groups on the groups page
const GROUP_SCAN_EVERY = 5; // ... re-scanned every this many refreshes
const PARALLEL_READS = 8; // API calls in flight at once when reading many topics
const PREVIEW_CHARS = 600; // payload characters shown in a row (details show all)

const KEY_STORE = "streamhub.console.key";
const ANON = "\u0000anonymous";
const $ = (id) => document.getElementById(id);

// ---- DOM helpers ----
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const fmtTime = (ms) => (ms ? new Date(ms).toLocaleString() : "–");
const fmtClock = (ms) => {
  const d = new Date(ms);
  return `${d.toLocaleTimeString([], { hour12: false })}.${String(d.getMilliseconds()).padStart(3, "0")}`;
};
const fmtBytes = (n) => (n === null || n === undefined ? "–" : n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(1)} GiB` : n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`);
const fmtSecs = (s) => {
  if (s === null || s === undefined) return "–";
  if (s < 1) return `${(s * 1000).toPrecision(3)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
};
const route = (...parts) => `#/${parts.map(encodeURIComponent).join("/")}`;

function payloadText(m) {
  if (m.data !== undefined) return typeof m.data === "string" ? m.data : JSON.stringify(m.data);
  if (m.data_base64 !== undefined) return `base64: ${m.data_base64}`;
  return "";
}

function tile(label, value, testid, extra) {
  return h("div", { class: "tile" }, h("div", { class: "tile-label", text: label }), h("div", { class: "tile-value", "data-testid": testid, text: value }), extra ? h("div", { class: "tile-extra", text: extra }) : null);
}

/// A bounded series of readings for a chart.
class Series {
  constructor() { this.values = []; }
  push(v) {
    this.values.push(v);
    if (this.values.length > POINTS) this.values.shift();
  }
}

/// The rate of a counter between two readings {t, v}; null across a reset.
function rate(now, before) {
  if (!before || now.v < before.v || now.t <= before.t) return null;
  return ((now.v - before.v) * 1000) / (now.t - before.t);
}

// ---- session ----
const session = { api: null, admin: false, key: null, label: "" };

let noticeTimer;
function notice(text, kind = "info") {
  const el = $("notice");
  el.textContent = text;
  el.className = `notice ${kind}`;
  el.hidden = false;
  clearTimeout(noticeTimer);
  if (kind !== "error") noticeTimer = setTimeout(() => (el.hidden = true), 6000);
}
function clearError() {
  const el = $("notice");
  if (el.classList.contains("error")) el.hidden = true;
}

function confirmDialog(text, danger) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  dialog.querySelector('[data-testid="confirm-ok"]').className = danger ? "danger" : "";
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

async function signIn(key) {
  const api = new Api(key === ANON ? null : key);
  let admin = false;
  let label;
  try {
    await api.node();
    admin = true;
    label = "admin";
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
    if (e.status === 401 && key !== ANON) throw new Error(`the node did not accept this key: ${e.message}`);
    if (e.status !== 401 && e.status !== 403) throw new Error(e.message);
    label = key === ANON ? "anonymous · read-only" : "signed in · no admin scope";
  }
  Object.assign(session, { api, admin, key: key === ANON ? null : key, label });
  sessionStorage.setItem(KEY_STORE, key);
  $("signin").hidden = true;
  $("who").textContent = label;
  $("signout").hidden = false;
  document.body.classList.toggle("admin", admin);
  render();
}

function showSignIn(error) {
  $("signin").hidden = false;
  $("who").textContent = "";
  $("signout").hidden = true;
  $("main").replaceChildren();
  const err = $("signin-error");
  err.hidden = !error;
  err.textContent = error || "";
  $("key").value = "";
  $("key").focus();
}

function needsAdmin(what) {
  const recent = JSON.parse(sessionStorage.getItem("streamhub.console.recent") || "[]");
  return h(
    "section",
    { class: "panel empty" },
    h("p", { text: `${what} needs an API key with the admin scope.` }),
    h("p", { text: "Sign in with an admin key, or open a topic your credentials may read:" }),
    openTopicForm(),
    recent.length ? h("p", { class: "muted" }, "Opened in this tab: ", recent.map((t) => h("a", { class: "chip", href: route("topic", t), text: t }))) : null,
  );
}

function openTopicForm() {
  const input = h("input", { type: "text", placeholder: "topic name", "data-testid": "open-topic", spellcheck: "false" });
  return h("form", { class: "inline", onsubmit: (e) => { e.preventDefault(); if (input.value.trim()) location.hash = route("topic", input.value.trim()); } }, input, h("button", { type: "submit", text: "Open" }));
}

// ---- router ----
let cleanup = null;
function render() {
  if (!session.api) return;
  cleanup?.();
  cleanup = null;
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  const [page = "topics", a, b] = parts;
  for (const link of document.querySelectorAll("[data-nav]")) link.classList.toggle("active", link.dataset.nav === page || (page === "topic" && link.dataset.nav === "topics") || (page === "group" && link.dataset.nav === "groups"));
  const main = $("main");
  main.replaceChildren();
  const views = { topics: topicsView, topic: (m) => topicView(m, a), groups: groupsView, group: (m) => groupView(m, a, b), node: nodeView };
  cleanup = (views[page] || topicsView)(main) || null;
}

/// Runs `tick` now and every REFRESH_MS until the page changes; errors go to the notice.
/// Returns the stop function; its `.now()` runs the next tick at once (after a click).
function live(tick) {
  let stopped = false;
  let running = false;
  let again = false;
  let timer;
  let n = 0;
  const run = async () => {
    if (stopped) return;
    if (running) {
      again = true;
      return;
    }
    clearTimeout(timer);
    running = true;
    try {
      await tick(n++);
      clearError();
    } catch (e) {
      if (!stopped) notice(e.message, "error");
    }
    running = false;
    if (stopped) return;
    if (again) {
      again = false;
      run();
    } else {
      timer = setTimeout(run, REFRESH_MS);
    }
  };
  run();
  const stop = () => {
    stopped = true;
    clearTimeout(timer);
  };
  stop.now = run;
  return stop;
}

// ---- topics ----
const topicRates = new Map(); // topic → {last: {t, v, epoch}, series}

function trackTopic(name, info, now) {
  let entry = topicRates.get(name);
  if (!entry) topicRates.set(name, (entry = { last: null, series: new Series() }));
  const reading = { t: now, v: info.seq, epoch: info.epoch };
  const r = entry.last && entry.last.epoch === info.epoch ? rate(reading, entry.last) : null;
  if (entry.last) entry.series.push(r);
  entry.last = reading;
  entry.rate = r;
  return entry;
}

function topicsView(main) {
  if (!session.admin) {
    main.append(h("h1", { text: "Topics" }), needsAdmin("Listing topics"));
    return null;
  }
  let refresh = () => {};
  const filter = h("input", { type: "search", placeholder: "filter topics", "data-testid": "topic-filter", oninput: () => { page = 0; refresh(); } });
  let page = 0;
  const body = h("tbody", { "data-testid": "topics" });
  const footer = h("p", { class: "muted" });
  const pager = h("div", { class: "pager" });
  main.append(
    h("div", { class: "title" }, h("h1", { text: "Topics" }), h("span", { class: "spacer" }), filter, openTopicForm()),
    h("table", { class: "grid" }, h("thead", {}, h("tr", {}, ["Topic", "Seq", "Length", "Publish/s", "Last 2 min", "Groups", "Epoch"].map((t) => h("th", { text: t })))), body),
    pager,
    footer,
  );
  let names = [];
  const stop = live(async () => {
    const list = await session.api.topics();
    const needle = filter.value.trim();
    names = list.topics.filter((t) => !needle || t.includes(needle));
    const pages = Math.max(1, Math.ceil(names.length / TOPICS_PAGE));
    page = Math.min(page, pages - 1);
    const shown = names.slice(page * TOPICS_PAGE, (page + 1) * TOPICS_PAGE);
    const infos = await mapLimited(shown, PARALLEL_READS, (t) => session.api.topic(t));
    const now = Date.now();
    body.replaceChildren(
      ...shown.map((name, i) => {
        const info = infos[i];
        if (info instanceof Error) return h("tr", {}, h("td", {}, h("a", { href: route("topic", name), text: name })), h("td", { colspan: 6, class: "muted", text: info.message }));
        const entry = trackTopic(name, info, now);
        return h(
          "tr",
          { "data-topic": name },
          h("td", {}, h("a", { href: route("topic", name), text: name })),
          h("td", { class: "num", "data-testid": "seq", text: info.seq }),
          h("td", { class: "num", text: info.length }),
          h("td", { class: "num", "data-testid": "rate", text: formatNumber(entry.rate) }),
          h("td", {}, sparkline(entry.series.values, { label: `publishes per second of ${name}` })),
          h("td", {}, info.groups.map((g) => h("a", { class: "chip", href: route("group", name, g), text: g }))),
          h("td", { class: "mono muted", text: info.epoch || "–" }),
        );
      }),
    );
    if (!shown.length) body.append(h("tr", {}, h("td", { colspan: 7, class: "muted", text: needle ? "No topic matches the filter." : "No topics yet: publish a message (Open a topic above, then use its publish form)." })));
    pager.replaceChildren(
      h("button", { class: "secondary", disabled: page === 0, onclick: () => { page -= 1; refresh(); }, text: "‹ Previous" }),
      h("span", { text: ` page ${page + 1} of ${pages} ` }),
      h("button", { class: "secondary", disabled: page >= pages - 1, onclick: () => { page += 1; refresh(); }, text: "Next ›" }),
    );
    footer.textContent = `${list.topics.length} topics${list.truncated ? " (more exist: the node lists at most limits.max_topics_listed)" : ""} · refreshed every ${REFRESH_MS / 1000} s`;
  });
  refresh = stop.now;
  return stop;
}

function tailKey(topic) {
  return `streamhub.console.tail.${topic}`;
}

function messageRow(m, cls) {
  const text = payloadText(m);
  const headers = Object.entries(m.headers || {}).map(([k, v]) => `${k}: ${v}`).join(", ");
  return h(
    "li",
    { class: `msg ${cls || ""}`, "data-seq": m.seq },
    h("span", { class: "seq", text: `#${m.seq}` }),
    h("span", { class: "time", title: fmtTime(m.ts), text: fmtClock(m.ts) }),
    h("span", { class: "ctype", text: m.content_type }),
    headers ? h("span", { class: "headers", text: headers }) : null,
    h("code", { class: "payload", "data-testid": "payload", text: text.length > PREVIEW_CHARS ? `${text.slice(0, PREVIEW_CHARS)}…` : text }),
    h("span", { class: "mid mono", title: "message id", text: m.id }),
  );
}

function topicView(main, topic) {
  topic = topic ?? "";
  const api = session.api;
  const recent = JSON.parse(sessionStorage.getItem("streamhub.console.recent") || "[]").filter((t) => t !== topic);
  sessionStorage.setItem("streamhub.console.recent", JSON.stringify([topic, ...recent].slice(0, 10)));
  const facts = h("dl", { class: "facts", "data-testid": "topic-facts" });
  const rateChart = h("div");
  const groupsBox = h("div");
  const series = new Series();
  let last = null;

  // live tail
  const status = h("span", { class: "status", "data-testid": "tail-status", text: "starting…" });
  const list = h("ol", { class: "tail", "data-testid": "tail", reversed: true });
  let lastShown = null; // {epoch, seq} of the newest row
  const show = (m, cls) => {
    if (lastShown && m.epoch === lastShown.epoch && m.seq <= lastShown.seq) return; // never twice
    lastShown = { epoch: m.epoch, seq: m.seq };
    list.prepend(messageRow(m, cls));
    while (list.children.length > TAIL_ROWS) list.lastChild.remove();
  };
  let tail = null;
  let closed = false;
  const startTail = async () => {
    const saved = JSON.parse(sessionStorage.getItem(tailKey(topic)) || "null");
    let since = null;
    try {
      if (saved) {
        const page = await api.history(topic, Math.max(0, saved.seq - TAIL_BACKLOG), TAIL_BACKLOG);
        if (page.epoch === saved.epoch) page.messages.filter((m) => m.seq <= saved.seq).forEach((m) => show({ ...m, epoch: page.epoch }, "old"));
        since = saved;
      } else {
        const info = await api.topic(topic);
        const page = await api.history(topic, Math.max(0, info.seq - TAIL_BACKLOG), TAIL_BACKLOG);
        page.messages.forEach((m) => show({ ...m, epoch: page.epoch }, "old"));
        since = lastShown ? { ...lastShown } : info.epoch ? { epoch: info.epoch, seq: info.seq } : null;
      }
    } catch (e) {
      if (!(e instanceof ApiError && e.code === "topic_not_found")) status.textContent = e.message;
      since = saved;
    }
    if (closed) return;
    if (lastShown || since) list.prepend(h("li", { class: "mark", text: saved ? `— reopened after seq ${saved.seq} —` : "— live from here —" }));
    tail = new Tail({
      topic,
      key: session.key,
      since,
      resumed: Boolean(saved),
      onMessage: (frame) => show(frame, "new"),
      onExpired: (frame) => {
        lastShown = { epoch: frame.epoch, seq: frame.to };
        const run = frame.from === frame.to ? `seq ${frame.from}` : `seqs ${frame.from}–${frame.to}`;
        list.prepend(h("li", { class: "mark warn", "data-expired": `${frame.from}-${frame.to}`, text: `— ${run} expired (TTL) before delivery —` }));
      },
      onStatus: (s) => {
        status.textContent = s.text;
        status.dataset.state = s.state;
        if (s.recovered === false) list.prepend(h("li", { class: "mark warn", text: `— ${s.text} —` }));
      },
      onPosition: (pos) => sessionStorage.setItem(tailKey(topic), JSON.stringify(pos)),
    });
  };
  startTail();

  // publish form
  const data = h("textarea", { rows: 4, "data-testid": "publish-data", spellcheck: "false", placeholder: '{"order": 17}  — or any text' });
  const kind = h("select", { "data-testid": "publish-kind" }, h("option", { value: "auto", text: "auto (JSON if it parses, else text)" }), h("option", { value: "json", text: "JSON" }), h("option", { value: "text", text: "text/plain" }));
  const headersIn = h("textarea", { rows: 2, placeholder: "header: value (one per line)", spellcheck: "false" });
  const idem = h("input", { type: "text", placeholder: "idempotency key (optional)" });
  const ttl = h("input", { type: "number", min: 1, placeholder: "TTL ms (optional)" });
  const result = h("p", { class: "muted", "data-testid": "publish-result" });
  const publishForm = h(
    "form",
    {
      class: "publish",
      onsubmit: async (e) => {
        e.preventDefault();
        const headers = {};
        for (const line of headersIn.value.split("\n")) {
          const at = line.indexOf(":");
          if (line.trim() && at > 0) headers[line.slice(0, at).trim()] = line.slice(at + 1).trim();
        }
        let payload;
        let parsed = true;
        try {
          payload = JSON.parse(data.value);
        } catch {
          parsed = false;
        }
        if (kind.value === "json" && !parsed) {
          result.textContent = "not JSON: choose text/plain, or fix the JSON";
          result.className = "error";
          return;
        }
        const asJson = kind.value === "json" || (kind.value === "auto" && parsed);
        try {
          const body = asJson ? { data: payload, headers } : { data: data.value, headers };
          if (idem.value) body.idempotency_key = idem.value;
          if (ttl.value) body.ttl_ms = Number(ttl.value);
          const r = asJson ? await api.publish(topic, body) : await publishText(topic, data.value, headers, idem.value, ttl.value);
          result.className = "ok";
          result.textContent = r.duplicate ? `duplicate: already stored as seq ${r.seq} (epoch ${r.epoch})` : `stored as seq ${r.seq} (epoch ${r.epoch})`;
        } catch (err) {
          result.className = "error";
          result.textContent = `${err.code || "error"}: ${err.message}`;
        }
      },
    },
    h("label", {}, "Payload", data),
    h("div", { class: "row" }, h("label", {}, "As ", kind), idem, ttl),
    h("label", {}, "Headers", headersIn),
    h("div", { class: "row" }, h("button", { type: "submit", "data-testid": "publish" , text: "Publish" }), result),
  );

  // history pager
  const historyBody = h("ol", { class: "history", "data-testid": "history" });
  const historyNote = h("span", { class: "muted", "data-testid": "history-range" });
  let since = null;
  const loadHistory = async (from) => {
    try {
      const page = await api.history(topic, Math.max(0, from), HISTORY_PAGE);
      since = Math.max(0, from);
      historyBody.replaceChildren(...page.messages.map((m) => messageRow(m)));
      const first = page.messages[0]?.seq;
      const lastSeq = page.messages.at(-1)?.seq;
      const notes = [page.truncated ? "older messages were trimmed" : "", page.expired ? `${page.expired} expired left out` : ""].filter(Boolean).join("; ");
      historyNote.textContent = page.messages.length ? `seq ${first}–${lastSeq} of ${page.first_seq}–${page.seq}${notes ? ` (${notes})` : ""}` : `no messages after seq ${since} (top ${page.seq})${notes ? ` (${notes})` : ""}`;
      historyNote.dataset.first = page.first_seq;
      historyNote.dataset.top = page.seq;
      historyNote.dataset.next = page.next_since ?? (lastSeq ?? since);
    } catch (e) {
      historyNote.textContent = e.message;
    }
  };
  let knownTop = 0; // the topic's top seq as last read by the live refresh
  const top = () => Math.max(Number(historyNote.dataset.top || 0), knownTop);
  const firstSeq = () => Number(historyNote.dataset.first || 1);
  const seqInput = h("input", { type: "number", min: 0, placeholder: "after seq", class: "narrow" });
  const historyPanel = h(
    "section",
    { class: "panel" },
    h("div", { class: "title" }, h("h2", { text: "History" }), h("span", { class: "spacer" }), historyNote),
    h(
      "div",
      { class: "pager" },
      h("button", { class: "secondary", onclick: () => loadHistory(firstSeq() - 1), text: "« Oldest" }),
      h("button", { class: "secondary", "data-testid": "history-older", onclick: () => loadHistory(Math.max(firstSeq() - 1, since - HISTORY_PAGE)), text: "‹ Older" }),
      h("button", { class: "secondary", "data-testid": "history-newer", onclick: () => loadHistory(Math.min(Number(historyNote.dataset.next ?? since + HISTORY_PAGE), Math.max(0, top() - HISTORY_PAGE))), text: "Newer ›" }),
      h("button", { class: "secondary", "data-testid": "history-latest", onclick: async () => {
        knownTop = (await api.topic(topic).catch(() => ({ seq: knownTop }))).seq;
        loadHistory(top() - HISTORY_PAGE);
      }, text: "Latest »" }),
      h("form", { class: "inline", onsubmit: (e) => { e.preventDefault(); loadHistory(Number(seqInput.value || 0)); } }, seqInput, h("button", { class: "secondary", type: "submit", text: "Go" })),
    ),
    historyBody,
  );

  main.append(
    h("div", { class: "title" }, h("h1", {}, h("a", { href: "#/topics", text: "Topics" }), " / ", h("span", { "data-testid": "topic-name", text: topic }))),
    h("section", { class: "panel cols" }, facts, rateChart),
    groupsBox,
    h("div", { class: "cols2" },
      h("section", { class: "panel" }, h("div", { class: "title" }, h("h2", { text: "Live tail" }), h("span", { class: "spacer" }), status, h("button", { class: "secondary", onclick: () => list.replaceChildren(), text: "Clear" })), list),
      h("section", { class: "panel" }, h("h2", { text: "Publish" }), publishForm),
    ),
    historyPanel,
  );

  const stop = live(async (n) => {
    let info;
    try {
      info = await api.topic(topic);
    } catch (e) {
      if (e instanceof ApiError && e.code === "topic_not_found") {
        facts.replaceChildren(h("dt", { text: "state" }), h("dd", { text: "no messages yet — publish the first one below" }));
        return;
      }
      throw e;
    }
    knownTop = info.seq;
    const reading = { t: Date.now(), v: info.seq };
    const r = last && last.epoch === info.epoch ? rate(reading, last) : null;
    if (last) series.push(r);
    last = { ...reading, epoch: info.epoch };
    facts.replaceChildren(
      ...[["epoch", info.epoch], ["top seq", info.seq], ["first retained", info.first_seq], ["length", info.length], ["created", fmtTime(info.created_ms)], ["publish/s", formatNumber(r)]].flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { "data-testid": `fact-${k.replace(/[^a-z]+/g, "-")}`, text: v })]),
    );
    rateChart.replaceChildren(lineChart([{ name: "publish/s", values: series.values }], { title: "publishes per second" }));
    if (n === 0) loadHistory(Math.max(info.first_seq - 1, info.seq - HISTORY_PAGE));
    if (info.groups.length) {
      const rows = session.admin ? (await api.groups(topic).catch(() => ({ groups: [] }))).groups : [];
      const byName = new Map(rows.map((g) => [g.name, g]));
      groupsBox.replaceChildren(
        h("section", { class: "panel" }, h("h2", { text: "Consumer groups" }), h("table", { class: "grid" },
          h("thead", {}, h("tr", {}, ["Group", "State", "Lag", "Pending", "Dead letters"].map((t) => h("th", { text: t })))),
          h("tbody", {}, info.groups.map((g) => {
            const s = byName.get(g);
            return h("tr", {}, h("td", {}, h("a", { href: route("group", topic, g), text: g })), h("td", { text: s ? (s.paused ? "paused" : "running") : "–" }), h("td", { class: "num", text: s?.lag ?? "–" }), h("td", { class: "num", text: s?.pending ?? "–" }), h("td", { class: "num", text: s?.dead_letters ?? "–" }));
          })))),
      );
    }
  });
  return () => {
    closed = true;
    stop();
    tail?.close();
  };
}

async function publishText(topic, text, headers, idempotencyKey, ttlMs) {
  const h2 = { "content-type": "text/plain; charset=utf-8", accept: "application/json" };
  if (session.key) h2.authorization = `Bearer ${session.key}`;
  for (const [k, v] of Object.entries(headers)) h2[`x-streamhub-header-${k}`] = v;
  if (idempotencyKey) h2["idempotency-key"] = idempotencyKey;
  if (ttlMs) h2["x-streamhub-ttl-ms"] = String(ttlMs);
  const response = await fetch(`/v1/topics/${encodeURIComponent(topic)}/messages`, { method: "POST", headers: h2, body: text });
  const json = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, json?.error?.code || `http_${response.status}`, json?.error?.message || response.statusText);
  return json;
}

// ---- consumer groups ----
const groupRates = new Map(); // "topic/group" → {last, lag, acks, retries}

function trackGroup(topic, g, now) {
  const id = `${topic}/${g.name}`;
  let e = groupRates.get(id);
  if (!e) groupRates.set(id, (e = { last: null, lag: new Series(), pending: new Series(), acks: new Series(), retries: new Series(), dead: new Series() }));
  const c = g.counters || {};
  const reading = { t: now, acked: c.acked || 0, retried: c.retried || 0, dead: c.dead || 0 };
  const per = (k) => (e.last ? rate({ t: now, v: reading[k] }, { t: e.last.t, v: e.last[k] }) : null);
  e.ackRate = per("acked");
  e.retryRate = per("retried");
  e.deadRate = per("dead");
  e.lag.push(g.lag ?? null);
  e.pending.push(g.pending);
  if (e.last) {
    e.acks.push(e.ackRate);
    e.retries.push(e.retryRate);
    e.dead.push(e.deadRate);
  }
  e.last = reading;
  return e;
}

function groupsView(main) {
  if (!session.admin) {
    main.append(h("h1", { text: "Consumer groups" }), needsAdmin("Consumer-group administration"));
    return null;
  }
  const body = h("tbody", { "data-testid": "groups" });
  const footer = h("p", { class: "muted" });
  main.append(
    h("div", { class: "title" }, h("h1", { text: "Consumer groups" })),
    h("table", { class: "grid" }, h("thead", {}, h("tr", {}, ["Topic / group", "Target", "State", "Lag", "Lag, 2 min", "Pending", "Scheduled", "Dead letters", "Consumers", "Acks/s", "Retries/s"].map((t) => h("th", { text: t })))), body),
    footer,
  );
  let withGroups = [];
  let scanned = 0;
  let truncated = false;
  return live(async (n) => {
    if (n % GROUP_SCAN_EVERY === 0) {
      const list = await session.api.topics();
      const names = list.topics.slice(0, GROUP_SCAN_TOPICS);
      truncated = list.truncated || list.topics.length > GROUP_SCAN_TOPICS;
      scanned = names.length;
      const infos = await mapLimited(names, PARALLEL_READS, (t) => session.api.topic(t));
      withGroups = names.filter((_, i) => !(infos[i] instanceof Error) && infos[i].groups.length);
    }
    const states = await mapLimited(withGroups, PARALLEL_READS, (t) => session.api.groups(t));
    const now = Date.now();
    const rows = [];
    withGroups.forEach((t, i) => {
      if (states[i] instanceof Error) return;
      for (const g of states[i].groups) {
        const e = trackGroup(t, g, now);
        rows.push(
          h("tr", { "data-group": `${t}/${g.name}` },
            h("td", {}, h("a", { href: route("group", t, g.name), text: `${t} / ${g.name}` })),
            h("td", { text: g.target }),
            h("td", {}, h("span", { class: `badge ${g.paused ? "warn" : "ok"}`, text: g.paused ? "paused" : "running" })),
            h("td", { class: "num", "data-testid": "lag", text: g.lag ?? "–" }),
            h("td", {}, sparkline(e.lag.values, { label: "lag" })),
            h("td", { class: "num", text: g.pending }),
            h("td", { class: "num", text: g.scheduled }),
            h("td", { class: "num", text: g.dead_letters }),
            h("td", { class: "num", text: g.consumers }),
            h("td", { class: "num", text: formatNumber(e.ackRate) }),
            h("td", { class: "num", text: formatNumber(e.retryRate) }),
          ),
        );
      }
    });
    body.replaceChildren(...rows);
    if (!rows.length) body.append(h("tr", {}, h("td", { colspan: 11, class: "muted", text: "No consumer groups on this node. Declare them in [[group]] or create one with PUT /v1/topics/{topic}/groups/{group} (docs/PROTOCOL.md §10)." })));
    footer.textContent = `groups this node serves, from ${scanned} topics${truncated ? ` (only the first ${GROUP_SCAN_TOPICS} topics are scanned)` : ""} · refreshed every ${REFRESH_MS / 1000} s`;
  });
}

function groupView(main, topic, name) {
  const api = session.api;
  if (!session.admin) {
    main.append(h("h1", { text: `${topic} / ${name}` }), needsAdmin("A group's state and dead letters"));
    return null;
  }
  const head = h("div", { class: "title" });
  const tiles = h("div", { class: "tiles" });
  const charts = h("div", { class: "charts" });
  const dlqBody = h("tbody", { "data-testid": "dlq" });
  const dlqNote = h("span", { class: "muted", "data-testid": "dlq-count" });
  const detail = h("pre", { class: "detail", "data-testid": "dlq-detail", hidden: true });
  const errorFilter = h("input", { type: "text", placeholder: "only errors containing…" });
  const selected = new Set();
  const cursors = [null]; // `after` of each page seen, for going back
  let pageIndex = 0;
  let nextCursor = null;
  let current = null;

  const act = async (action, selection, what) => {
    const verb = action === "replay" ? "Replay" : "Purge";
    const consequence = action === "replay" ? "They go back to the group with fresh attempts." : "They are deleted for good.";
    if (!(await confirmDialog(`${verb} ${what} of ${topic} / ${name}? ${consequence}`, action === "purge"))) return;
    try {
      const r = await api.dlqAct(topic, name, action, selection);
      notice(`${action === "replay" ? `replayed ${r.replayed}` : `purged ${r.purged}`} dead letter(s)`);
      selected.clear();
      detail.hidden = true;
      await loadDlq();
      refresh();
    } catch (e) {
      notice(`${verb} failed: ${e.message}`, "error");
    }
  };

  const loadDlq = async () => {
    const page = await api.dlq(topic, name, cursors[pageIndex], DLQ_PAGE);
    nextCursor = page.next;
    dlqBody.replaceChildren(
      ...page.dead_letters.map((d) =>
        h("tr", { "data-id": d.id },
          h("td", {}, h("input", { type: "checkbox", checked: selected.has(d.id), "aria-label": `select ${d.id}`, onchange: (e) => (e.target.checked ? selected.add(d.id) : selected.delete(d.id)) })),
          h("td", { class: "mono", text: d.id }),
          h("td", { class: "num", text: d.seq }),
          h("td", { class: "num", text: d.attempts }),
          h("td", { text: d.reason }),
          h("td", { class: "err", text: d.error }),
          h("td", { text: fmtTime(d.dead_ms) }),
          h("td", {}, h("button", { class: "link", "data-testid": "dlq-show", onclick: async () => {
            const full = await api.deadLetter(topic, name, d.id);
            detail.textContent = JSON.stringify(full, null, 2);
            detail.hidden = false;
          }, text: "details" })),
        ),
      ),
    );
    if (!page.dead_letters.length) dlqBody.append(h("tr", {}, h("td", { colspan: 8, class: "muted", text: pageIndex ? "No more dead letters." : "No dead letters." })));
  };

  const dlqPanel = h(
    "section",
    { class: "panel" },
    h("div", { class: "title" }, h("h2", { text: "Dead letters" }), h("span", { class: "spacer" }), dlqNote),
    h("div", { class: "row" },
      h("button", { "data-testid": "dlq-replay-selected", onclick: () => selected.size && act("replay", { ids: [...selected] }, `${selected.size} selected dead letter(s)`), text: "Replay selected" }),
      h("button", { class: "danger", "data-testid": "dlq-purge-selected", onclick: () => selected.size && act("purge", { ids: [...selected] }, `${selected.size} selected dead letter(s)`), text: "Purge selected" }),
      h("span", { class: "spacer" }),
      errorFilter,
      h("button", { class: "secondary", "data-testid": "dlq-replay-all", onclick: () => act("replay", { all: true, ...(errorFilter.value ? { error_contains: errorFilter.value } : {}) }, errorFilter.value ? `every dead letter whose error contains "${errorFilter.value}"` : "every dead letter"), text: "Replay all" }),
      h("button", { class: "danger", "data-testid": "dlq-purge-all", onclick: () => act("purge", { all: true, ...(errorFilter.value ? { error_contains: errorFilter.value } : {}) }, errorFilter.value ? `every dead letter whose error contains "${errorFilter.value}"` : "every dead letter"), text: "Purge all" }),
    ),
    h("table", { class: "grid" }, h("thead", {}, h("tr", {}, ["", "Id", "Seq", "Attempts", "Reason", "Last error", "Dead since", ""].map((t) => h("th", { text: t })))), dlqBody),
    h("div", { class: "pager" },
      h("button", { class: "secondary", onclick: () => { if (pageIndex > 0) { pageIndex -= 1; loadDlq(); } }, text: "‹ Previous" }),
      h("button", { class: "secondary", onclick: () => { if (nextCursor) { cursors[pageIndex + 1] = nextCursor; pageIndex += 1; loadDlq(); } }, text: "Next ›" }),
    ),
    detail,
  );
  main.append(head, tiles, charts, dlqPanel);

  let lastDead = null;
  let refresh = () => {};
  const stop = live(async () => {
    const state = await api.groups(topic);
    const g = state.groups.find((x) => x.name === name);
    if (!g) {
      head.replaceChildren(h("h1", { text: `${topic} / ${name}` }));
      tiles.replaceChildren(h("p", { class: "error", text: "This node serves no such group (declared in [[group]] or created through the admin API)." }));
      return;
    }
    current = g;
    const e = trackGroup(topic, g, Date.now());
    const c = g.counters || {};
    head.replaceChildren(
      h("h1", {}, h("a", { href: "#/groups", text: "Groups" }), " / ", h("a", { href: route("topic", topic), text: topic }), ` / ${name}`),
      h("span", { class: `badge ${g.paused ? "warn" : "ok"}`, "data-testid": "group-state", text: g.paused ? "paused" : "running" }),
      h("span", { class: "muted", text: `${g.target} target · ${g.declared ? "declared in the configuration" : "created through the API"}` }),
      h("span", { class: "spacer" }),
      h("button", { "data-testid": "pause-toggle", class: g.paused ? "" : "secondary", onclick: async () => {
        try {
          await api.pause(topic, name, !current.paused);
          notice(current.paused ? "resumed: every node hands out messages again" : "paused: no node hands out messages until resumed");
          refresh();
        } catch (err) {
          notice(err.message, "error");
        }
      }, text: g.paused ? "Resume" : "Pause" }),
    );
    tiles.replaceChildren(
      tile("Lag", g.lag ?? "–", "lag", "not yet delivered"),
      tile("Pending", g.pending, "pending", "delivered, not settled"),
      tile("Scheduled retries", g.scheduled, "scheduled", `${g.retry_ready} due`),
      tile("Dead letters", g.dead_letters, "dead-letters"),
      tile("Consumers", g.consumers, "consumers"),
      tile("Acknowledged", c.acked || 0, "acked", `${formatNumber(e.ackRate)}/s`),
      tile("Retried", c.retried || 0, "retried", `${formatNumber(e.retryRate)}/s`),
      tile("Dead-lettered", c.dead || 0, "dead", c.expired ? `${c.expired} expired` : ""),
    );
    charts.replaceChildren(
      lineChart([{ name: "lag", values: e.lag.values }, { name: "pending", values: e.pending.values }], { title: "lag and pending" }),
      lineChart([{ name: "acks/s", values: e.acks.values }, { name: "retries/s", values: e.retries.values }, { name: "dead/s", values: e.dead.values }], { title: "settled per second" }),
    );
    dlqNote.textContent = `${g.dead_letters} dead letter(s)`;
    if (lastDead !== g.dead_letters) {
      lastDead = g.dead_letters;
      await loadDlq();
    }
  });
  refresh = stop.now;
  return stop;
}

// ---- node ----
function nodeView(main) {
  if (!session.admin) {
    main.append(h("h1", { text: "Node" }), needsAdmin("The node's figures"));
    return null;
  }
  const tiles = h("div", { class: "tiles" });
  const redisBox = h("dl", { class: "facts", "data-testid": "redis" });
  const charts = h("div", { class: "charts" });
  main.append(h("div", { class: "title" }, h("h1", { text: "Node" }), h("span", { class: "spacer" }), h("span", { class: "muted", text: `this node's own figures, refreshed every ${REFRESH_MS / 1000} s` })), tiles, charts, h("section", { class: "panel" }, h("h2", { text: "Redis" }), redisBox));
  const s = { deliveries: new Series(), publishes: new Series(), p50: new Series(), p99: new Series(), ping: new Series(), sessions: new Series() };
  let before = null;
  return live(async () => {
    const n = await session.api.node();
    const delivered = n.delivered_ws + n.delivered_sse;
    let deliveries = null;
    let publishes = null;
    let lag = null;
    let cpu = null;
    if (before) {
      deliveries = rate({ t: n.now_ms, v: delivered }, { t: before.now_ms, v: before.delivered_ws + before.delivered_sse });
      publishes = rate({ t: n.now_ms, v: n.messages_stored }, { t: before.now_ms, v: before.messages_stored });
      lag = bucketDelta(n.delivery_lag.buckets, before.delivery_lag.buckets);
      if (n.process.cpu_seconds !== undefined && before.process.cpu_seconds !== undefined) cpu = rate({ t: n.now_ms, v: n.process.cpu_seconds }, { t: before.now_ms, v: before.process.cpu_seconds });
      s.deliveries.push(deliveries);
      s.publishes.push(publishes);
      s.p50.push(quantile(lag, 0.5) === null ? null : quantile(lag, 0.5) * 1000);
      s.p99.push(quantile(lag, 0.99) === null ? null : quantile(lag, 0.99) * 1000);
    }
    s.ping.push(n.redis.ping_ms ?? null);
    s.sessions.push(n.sessions);
    const q = n.delivery_lag_quantiles;
    const windowQ = (x) => (lag && quantile(lag, x) !== null ? fmtSecs(quantile(lag, x)) : "–");
    tiles.replaceChildren(
      tile("Connections", `${n.sessions}`, "sessions", `of ${n.max_sessions} (WebSocket + SSE)`),
      tile("Subscriptions", n.subscriptions, "subscriptions", `${n.tails} topic tail(s)`),
      tile("Deliveries/s", formatNumber(deliveries), "deliveries", `${formatNumber(delivered)} since start`),
      tile("Publishes/s", formatNumber(publishes), "publishes", `${formatNumber(n.messages_stored)} stored, ${n.publishes_rejected} refused`),
      tile("Delivery lag p50 / p99", `${windowQ(0.5)} / ${windowQ(0.99)}`, "lag-window", `since start: ${fmtSecs(q.p50)} / ${fmtSecs(q.p90)} / ${fmtSecs(q.p99)} (p50/p90/p99)`),
      tile("Redis", n.redis.up ? "up" : "down", "redis-up", n.redis.up ? `PING ${formatNumber(n.redis.ping_ms, "ms")}` : n.redis.error || ""),
      tile("Memory", fmtBytes(n.process.resident_memory_bytes), "rss", `${n.process.open_fds ?? "–"} of ${n.process.max_fds ?? "–"} file descriptors`),
      tile("CPU", cpu === null ? "–" : `${(cpu * 100).toFixed(0)} %`, "cpu", `up ${fmtSecs(n.process.uptime_seconds)} · v${n.version}`),
    );
    tiles.querySelector('[data-testid="redis-up"]').classList.toggle("bad", !n.redis.up);
    charts.replaceChildren(
      lineChart([{ name: "deliveries/s", values: s.deliveries.values }, { name: "publishes/s", values: s.publishes.values }], { title: "messages per second" }),
      lineChart([{ name: "p50", values: s.p50.values }, { name: "p99", values: s.p99.values }], { title: "delivery lag", unit: "ms" }),
      lineChart([{ name: "PING", values: s.ping.values }], { title: "Redis round trip", unit: "ms" }),
      lineChart([{ name: "connections", values: s.sessions.values }], { title: "open connections" }),
    );
    const r = n.redis;
    redisBox.replaceChildren(
      ...[["url", r.url], ["state", r.up ? "answering" : `not answering: ${r.error || "?"}`], ["version", r.version], ["role", r.role], ["uptime", fmtSecs(r.uptime_seconds)], ["clients", r.connected_clients], ["memory", `${fmtBytes(r.used_memory_bytes)}${r.maxmemory_bytes ? ` of ${fmtBytes(r.maxmemory_bytes)}` : " (no maxmemory)"}`], ["errors since start", n.redis_errors], ["reconnects since start", n.redis_reconnects]].flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { text: v ?? "–" })]),
    );
    before = n;
  });
}

// ---- start ----
function boot() {
  // `#key=…` (the link `streamhub dev` prints): taken in, then removed from the address bar.
  const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
  if (fragment.get("key")) {
    sessionStorage.setItem(KEY_STORE, fragment.get("key"));
    history.replaceState(null, "", `${location.pathname}#/topics`);
  }
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("key").value.trim();
    if (!key) return showSignIn("Paste a key, or continue without one.");
    signIn(key).catch((err) => showSignIn(err.message));
  });
  $("anonymous").addEventListener("click", () => signIn(ANON).catch((err) => showSignIn(err.message)));
  $("signout").addEventListener("click", () => {
    cleanup?.();
    cleanup = null;
    session.api = null;
    sessionStorage.removeItem(KEY_STORE);
    showSignIn();
  });
  window.addEventListener("hashchange", render);
  const stored = sessionStorage.getItem(KEY_STORE);
  if (stored) signIn(stored).catch((err) => showSignIn(err.message));
  else showSignIn();
}

boot();
