// The console's only ways to talk to streamhub: the documented HTTP API
// (docs/PROTOCOL.md §1, §10) and the WebSocket protocol (§2), with the credentials the
// user typed in. Nothing here knows a rule of the broker; errors carry the API's code.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const enc = encodeURIComponent;

export class Api {
  constructor(key) {
    this.key = key || null;
  }

  async call(method, path, body) {
    const headers = { accept: "application/json" };
    if (this.key) headers.authorization = `Bearer ${this.key}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (e) {
      throw new ApiError(0, "unreachable", `the node did not answer (${e.message})`);
    }
    const text = await response.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    if (!response.ok) {
      const err = json?.error;
      throw new ApiError(response.status, err?.code || `http_${response.status}`, err?.message || text || response.statusText);
    }
    return json;
  }

  node() { return this.call("GET", "/v1/node"); }
  topics() { return this.call("GET", "/v1/topics"); }
  topic(t) { return this.call("GET", `/v1/topics/${enc(t)}`); }
  history(t, since, limit) { return this.call("GET", `/v1/topics/${enc(t)}/messages?since=${since}&limit=${limit}`); }
  publish(t, body) { return this.call("POST", `/v1/topics/${enc(t)}/messages`, body); }
  groups(t) { return this.call("GET", `/v1/topics/${enc(t)}/groups`); }
  pause(t, g, paused) { return this.call("POST", `/v1/topics/${enc(t)}/groups/${enc(g)}:${paused ? "pause" : "resume"}`); }
  dlq(t, g, after, limit) {
    const q = new URLSearchParams({ limit: String(limit) });
    if (after) q.set("after", after);
    return this.call("GET", `/v1/topics/${enc(t)}/groups/${enc(g)}/dlq?${q}`);
  }
  deadLetter(t, g, id) { return this.call("GET", `/v1/topics/${enc(t)}/groups/${enc(g)}/dlq/${enc(id)}`); }
  dlqAct(t, g, action, selection) { return this.call("POST", `/v1/topics/${enc(t)}/groups/${enc(g)}/dlq:${action}`, selection); }
}

/// Runs `fn` over `items` with at most `limit` calls in flight; results in order.
export async function mapLimited(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i).catch((e) => e);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

// Reconnect backoff of the live tail: doubling from the first to the last, with jitter.
const RECONNECT_MIN_MS = 250;
const RECONNECT_MAX_MS = 10000;

/// A live tail of one topic over the WebSocket protocol, resuming exactly: it keeps the
/// `(epoch, seq)` of the last message it handed out, and every (re)connection subscribes
/// `since` that position (PROTOCOL.md §2.4 "Resuming exactly"). Callbacks:
/// onMessage(frame), onExpired(frame), onStatus({state, text, recovered, reason}),
/// onPosition(pos).
export class Tail {
  constructor({ topic, key, since, resumed, onMessage, onExpired, onStatus, onPosition }) {
    Object.assign(this, { topic, key, onMessage, onExpired, onStatus, onPosition });
    // Whether the first subscription continues an earlier view (a reload, a return).
    this.resumed = Boolean(resumed);
    this.position = since || null; // {epoch, seq} or null for new messages only
    this.closed = false;
    this.delay = RECONNECT_MIN_MS;
    this.nextId = 1;
    this.connect();
  }

  connect() {
    if (this.closed) return;
    const url = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/v1/ws`;
    const ws = new WebSocket(url, "streamhub.v1.json");
    this.ws = ws;
    this.onStatus({ state: "connecting", text: "connecting…" });
    ws.onopen = () => {
      // Credentials as the first frame, never in the URL (URLs end up in logs).
      if (this.key) ws.send(JSON.stringify({ op: "auth", id: this.nextId++, token: this.key }));
      const frame = { op: "subscribe", id: this.nextId++, topic: this.topic };
      if (this.position) frame.since = this.position;
      this.subscribeId = frame.id;
      ws.send(JSON.stringify(frame));
    };
    ws.onmessage = (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      this.handle(frame);
    };
    ws.onclose = (event) => {
      if (this.closed) return;
      const wait = Math.round(this.delay * (0.8 + Math.random() * 0.4));
      this.delay = Math.min(this.delay * 2, RECONNECT_MAX_MS);
      this.onStatus({ state: "disconnected", text: `disconnected (${event.code || "no code"}${event.reason ? `: ${event.reason}` : ""}); reconnecting in ${(wait / 1000).toFixed(1)} s` });
      this.timer = setTimeout(() => this.connect(), wait);
    };
  }

  handle(frame) {
    switch (frame.type) {
      case "subscribed": {
        const asked = this.position;
        const resumed = this.resumed;
        if (frame.id === this.subscribeId) {
          this.delay = RECONNECT_MIN_MS;
          this.resumed = true; // every later (re)subscription continues this one
        }
        if (!frame.recovered || !asked) this.setPosition({ epoch: frame.epoch, seq: frame.seq });
        this.onStatus({
          state: "live",
          recovered: frame.recovered,
          reason: frame.reason,
          solicited: frame.id !== undefined,
          text: frame.recovered
            ? asked
              ? resumed ? `live · resumed after seq ${asked.seq}, nothing missed` : `live · following after seq ${asked.seq}`
              : `live · new messages after seq ${frame.seq}`
            : `live · position jumped to seq ${frame.seq} (${frame.reason})`,
        });
        break;
      }
      case "message":
        this.setPosition({ epoch: frame.epoch, seq: frame.seq });
        this.onMessage(frame);
        break;
      case "expired":
        // Messages `from`..`to` expired before delivery: they will not come, and the
        // position moves past them (PROTOCOL.md §2.3, §2.4).
        this.setPosition({ epoch: frame.epoch, seq: frame.to });
        this.onExpired?.(frame);
        break;
      case "error":
        this.onStatus({ state: "error", text: `${frame.code}: ${frame.message}` });
        if (["unauthorized", "forbidden", "invalid_topic", "token_expired"].includes(frame.code)) this.close();
        break;
      default:
        break;
    }
  }

  setPosition(pos) {
    this.position = pos;
    this.onPosition?.(pos);
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    try {
      this.ws?.close(1000);
    } catch {}
  }
}
