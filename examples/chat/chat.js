// streamhub chat: rooms with history, live messages that resume exactly after a network
// drop, who is in the room (online, or last seen), and typing indicators.
//
// It talks to streamhub only through its documented protocol (docs/PROTOCOL.md): one
// WebSocket (`/v1/ws`) for subscriptions, publishes, presence and ephemeral events, and
// `GET /v1/topics/{topic}` once per room to start its history 50 messages back. Plain
// JavaScript, no build step; every text from the network is written with textContent.
"use strict";

(() => {
  const HISTORY = 50;               // messages shown when entering a room
  const TYPING_EVERY_MS = 2000;     // at most one "typing" event per this long
  const TYPING_SHOWN_MS = 3500;     // an indicator disappears this long after the last one
  const STATUS_EVERY_MS = 5000;     // how often absent members' last-seen is re-read
  const REQUEST_TIMEOUT_MS = 10000;
  const BACKOFF_MIN_MS = 250;
  const BACKOFF_MAX_MS = 5000;
  const MAX_KNOWN_MEMBERS = 100;    // absent members whose status is followed, per room
  const ROOM_NAME = /^[A-Za-z0-9_-]{1,64}$/;

  const $ = (id) => document.getElementById(id);
  const el = (tag, props = {}, ...children) => {
    const node = Object.assign(document.createElement(tag), props);
    for (const child of children) node.append(child);
    return node;
  };

  // ---- Configuration: server, token, rooms ------------------------------------------

  const params = new URLSearchParams(location.search);
  const served = location.protocol === "http:" || location.protocol === "https:";
  const config = {
    server: params.get("server") || sessionStorage.getItem("chat.server") || (served ? location.origin : ""),
    token: params.get("token") || sessionStorage.getItem("chat.token") || "",
    rooms: (params.get("rooms") || "general,random").split(",").filter((r) => ROOM_NAME.test(r)),
  };
  if (params.has("token")) {
    // Keep the token out of the address bar, the history and screenshots.
    params.delete("token");
    history.replaceState(null, "", `${location.pathname}${params.size ? `?${params}` : ""}${location.hash}`);
  }

  /** The subject of a JWT (for display only: the broker verifies it, not the page). */
  function subjectOf(token) {
    const parts = token.split(".");
    if (parts.length !== 3) return "(API key)";
    try {
      const json = atob(parts[1].replace(/-/g, "+").replace(/_/g, "/"));
      return JSON.parse(json).sub || "(no subject)";
    } catch {
      return "(unreadable token)";
    }
  }

  const newKey = () =>
    (globalThis.crypto?.randomUUID?.() ?? `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`);

  // ---- State ---------------------------------------------------------------------------

  /** One room: its position (the last message shown), who is there, who was. */
  class Room {
    constructor(name) {
      this.name = name;
      this.topic = `chat.${name}`;
      this.epoch = null;        // null until the room was entered once
      this.seq = 0;             // the last seq shown (or skipped as expired)
      this.subscribed = false;
      this.shown = new Set();   // "<epoch>:<seq>" of every message shown
      this.duplicates = 0;      // messages delivered twice (the broker promises none)
      this.present = new Set(); // users in the room now
      this.known = new Map();   // user → { lastSeen, online } of members not in the room
      this.typing = new Map();  // user → timer
      this.unread = 0;
      this.list = el("ol", { className: "messages" });
      this.list.dataset.room = name;
    }
  }

  const state = {
    me: "",
    ws: null,
    connected: false,
    nextId: 1,
    pending: new Map(),   // request id → { resolve, reject, timer }
    rooms: new Map(),
    current: null,
    outbox: [],           // publishes waiting for a connection: { topic, data, key }
    backoff: BACKOFF_MIN_MS,
    retryTimer: null,
    lastTypingSent: 0,
    stopped: false,
  };

  // ---- The connection -----------------------------------------------------------------

  function wsUrl() {
    const base = config.server.replace(/^http/, "ws").replace(/\/$/, "");
    return `${base}/v1/ws?token=${encodeURIComponent(config.token)}`;
  }

  function setConnection(text, cls) {
    const c = $("conn");
    c.textContent = text;
    c.className = `state ${cls}`;
  }

  function connect() {
    clearTimeout(state.retryTimer);
    if (state.stopped) return;
    setConnection("connecting", "connecting");
    const ws = new WebSocket(wsUrl());
    state.ws = ws;
    ws.onopen = () => {
      if (state.ws !== ws) return;
      state.connected = true;
      state.backoff = BACKOFF_MIN_MS;
      setConnection("connected", "up");
      for (const room of state.rooms.values()) enter(room);
      flushOutbox();
    };
    ws.onmessage = (event) => {
      if (state.ws !== ws) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      onFrame(frame);
    };
    ws.onclose = (event) => {
      if (state.ws !== ws) return;
      state.ws = null;
      state.connected = false;
      for (const room of state.rooms.values()) room.subscribed = false;
      for (const [id, p] of state.pending) {
        clearTimeout(p.timer);
        p.reject(new Error("disconnected"));
        state.pending.delete(id);
      }
      if (event.code === 4002 || event.code === 4003) {
        // Credentials refused or expired: reconnecting with them would fail the same way.
        signOut(event.code === 4003 ? "Your token expired: sign in again." : `Signed out: ${event.reason || "credentials refused"}.`);
        return;
      }
      const wait = Math.min(state.backoff, BACKOFF_MAX_MS) * (0.5 + Math.random() / 2);
      state.backoff = Math.min(state.backoff * 2, BACKOFF_MAX_MS);
      setConnection(`reconnecting in ${(wait / 1000).toFixed(1)} s`, "down");
      state.retryTimer = setTimeout(connect, wait);
    };
  }

  /** Sends a frame and resolves with its reply (rejects with the error frame's code). */
  function request(frame) {
    return new Promise((resolve, reject) => {
      const ws = state.ws;
      if (!ws || ws.readyState !== WebSocket.OPEN) {
        reject(new Error("disconnected"));
        return;
      }
      const id = state.nextId++;
      const timer = setTimeout(() => {
        state.pending.delete(id);
        reject(new Error("no answer"));
      }, REQUEST_TIMEOUT_MS);
      state.pending.set(id, { resolve, reject, timer });
      ws.send(JSON.stringify({ ...frame, id }));
    });
  }

  function onFrame(frame) {
    if (frame.id !== undefined && state.pending.has(frame.id) && frame.type !== "message") {
      const p = state.pending.get(frame.id);
      state.pending.delete(frame.id);
      clearTimeout(p.timer);
      if (frame.type === "error") {
        const err = new Error(frame.message);
        err.code = frame.code;
        p.reject(err);
      } else {
        p.resolve(frame);
      }
      return;
    }
    const room = state.rooms.get(roomOf(frame.topic));
    switch (frame.type) {
      case "message": if (room) onMessage(room, frame); break;
      case "expired": if (room) onExpired(room, frame); break;
      case "subscribed": if (room) onJump(room, frame); break;
      case "join": if (room) onJoin(room, frame); break;
      case "leave": if (room) onLeave(room, frame); break;
      case "ephemeral": if (room) onEphemeral(room, frame); break;
      case "error": note(`${frame.code}: ${frame.message}`); break;
      default: break;
    }
  }

  const roomOf = (topic) => (typeof topic === "string" && topic.startsWith("chat.") ? topic.slice(5) : "");

  // ---- Rooms: history, resume, presence ------------------------------------------------

  /** Subscribes to a room: the last HISTORY messages the first time, exactly after the
   *  last one shown on every later (re)connection. */
  async function enter(room) {
    if (!state.connected || room.subscribed) return;
    room.subscribed = true;
    try {
      let since;
      if (room.epoch === null) {
        since = await historyStart(room);
      } else if (room.epoch === "") {
        since = "earliest"; // nothing was published when we came: everything since
      } else {
        since = { epoch: room.epoch, seq: room.seq };
      }
      const reply = await request({ op: "subscribe", topic: room.topic, since, join_leave: true, info: { name: state.me } });
      if (room.epoch === null) room.epoch = reply.epoch;
      if (reply.recovered === false && reply.reason) {
        roomNote(room, `Some messages could not be recovered (${reply.reason}).`);
      }
      await readPresence(room);
    } catch (e) {
      room.subscribed = false;
      if (e.message !== "disconnected") roomNote(room, `Could not enter ${room.name}: ${e.code || ""} ${e.message}`);
    }
  }

  /** Where a room's first subscription starts: HISTORY messages before its top. */
  async function historyStart(room) {
    const response = await fetch(`${config.server}/v1/topics/${encodeURIComponent(room.topic)}`, {
      headers: { authorization: `Bearer ${config.token}` },
      cache: "no-store",
    });
    if (response.status === 404) return "earliest"; // an empty room
    if (!response.ok) throw Object.assign(new Error(`topic info: HTTP ${response.status}`), { code: "http" });
    const info = await response.json();
    if (!info.epoch || info.seq <= HISTORY) return "earliest";
    return { epoch: info.epoch, seq: info.seq - HISTORY };
  }

  async function readPresence(room) {
    const list = await request({ op: "presence", topic: room.topic });
    room.present.clear();
    for (const m of list.members) addPresent(room, m.user);
    renderMembers(room);
  }

  function addPresent(room, user) {
    room.present.add(user);
    room.known.delete(user);
  }

  function remember(room, user, lastSeen) {
    if (user === "" || room.present.has(user)) return;
    if (!room.known.has(user) && room.known.size >= MAX_KNOWN_MEMBERS) return;
    room.known.set(user, { lastSeen: lastSeen ?? room.known.get(user)?.lastSeen ?? null, online: false });
  }

  function onMessage(room, m) {
    const key = `${m.epoch}:${m.seq}`;
    if (room.shown.has(key) || (m.epoch === room.epoch && m.seq <= room.seq)) {
      room.duplicates += 1;
      room.list.dataset.duplicates = String(room.duplicates);
      return;
    }
    room.shown.add(key);
    room.epoch = m.epoch;
    room.seq = m.seq;
    const author = m.from?.user ?? "";
    const text = typeof m.data?.text === "string" ? m.data.text : JSON.stringify(m.data ?? m.data_base64 ?? "");
    const item = el(
      "li",
      { className: author === state.me ? "mine" : "" },
      el("span", { className: "who", textContent: author || "anonymous" }),
      el("span", { className: "text", textContent: text }),
      el("time", { textContent: new Date(m.ts).toLocaleTimeString(), dateTime: new Date(m.ts).toISOString() }),
    );
    item.dataset.seq = String(m.seq);
    room.list.append(item);
    stopTyping(room, author);
    if (author) {
      remember(room, author);
      renderMembers(room);
    }
    if (room === state.current) {
      room.list.lastElementChild?.scrollIntoView({ block: "end" });
    } else {
      room.unread += 1;
      renderRooms();
    }
  }

  function onExpired(room, e) {
    room.epoch = e.epoch;
    room.seq = e.to;
    room.list.append(el("li", { className: "system", textContent: `${e.to - e.from + 1} message(s) expired before they could be shown.` }));
  }

  /** A `subscribed` notice: the room's position jumped (its history was lost or trimmed). */
  function onJump(room, n) {
    room.epoch = n.epoch;
    room.seq = n.seq;
    roomNote(room, `The room's history moved on (${n.reason || "reset"}); some messages may be missing.`);
  }

  function onJoin(room, j) {
    addPresent(room, j.user);
    renderMembers(room);
  }

  function onLeave(room, l) {
    room.present.delete(l.user);
    stopTyping(room, l.user);
    remember(room, l.user, null);
    renderMembers(room);
    refreshStatus(room, l.user);
  }

  // ---- Member list --------------------------------------------------------------------

  async function refreshStatus(room, user) {
    if (!state.connected || user === "") return;
    try {
      const s = await request({ op: "user_status", user });
      if (room.present.has(user)) return;
      room.known.set(user, { lastSeen: s.last_seen_ms ?? null, online: s.online });
      renderMembers(room);
    } catch {
      // Not allowed to read others' status (no `presence` grant on "@user"): shown offline.
    }
  }

  function ago(ms) {
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    return new Date(ms).toLocaleString();
  }

  function renderMembers(room) {
    if (room !== state.current) return;
    const ul = $("members");
    ul.replaceChildren();
    const present = [...room.present].sort();
    for (const user of present) {
      const li = el("li", { className: "online" }, el("span", { className: "dot" }), el("span", { className: "name", textContent: user || "anonymous" }), el("span", { className: "seen", textContent: "online" }));
      li.dataset.user = user;
      li.dataset.online = "true";
      ul.append(li);
    }
    for (const [user, s] of [...room.known.entries()].sort()) {
      const seen = s.online ? "online, not in this room" : s.lastSeen ? `last seen ${ago(s.lastSeen)}` : "offline";
      const li = el("li", { className: "offline" }, el("span", { className: "dot" }), el("span", { className: "name", textContent: user }), el("span", { className: "seen", textContent: seen }));
      li.dataset.user = user;
      li.dataset.online = "false";
      if (s.lastSeen) li.title = new Date(s.lastSeen).toLocaleString();
      ul.append(li);
    }
  }

  // ---- Typing indicators (ephemeral events: never stored, at most once) -------------------

  function onEphemeral(room, e) {
    if (!e.user || e.user === state.me || !e.data || typeof e.data.typing !== "boolean") return;
    if (!e.data.typing) {
      stopTyping(room, e.user);
      return;
    }
    clearTimeout(room.typing.get(e.user));
    room.typing.set(e.user, setTimeout(() => stopTyping(room, e.user), TYPING_SHOWN_MS));
    renderTyping();
  }

  function stopTyping(room, user) {
    if (!room.typing.has(user)) return;
    clearTimeout(room.typing.get(user));
    room.typing.delete(user);
    renderTyping();
  }

  function renderTyping() {
    const room = state.current;
    const users = room ? [...room.typing.keys()].sort() : [];
    $("typing").textContent =
      users.length === 0 ? "" : users.length === 1 ? `${users[0]} is typing…` : `${users.join(", ")} are typing…`;
  }

  function typed() {
    const room = state.current;
    const now = Date.now();
    if (!room || !state.connected || now - state.lastTypingSent < TYPING_EVERY_MS) return;
    state.lastTypingSent = now;
    request({ op: "publish", topic: room.topic, data: { typing: true }, ephemeral: true }).catch(() => {});
  }

  // ---- Sending --------------------------------------------------------------------------

  /** Publishes a message; kept until stored, and re-sent with the same idempotency key
   *  after a reconnection, so it is stored once however often it is sent. */
  function send(text) {
    const room = state.current;
    if (!room) return;
    state.outbox.push({ topic: room.topic, data: { text }, key: newKey() });
    if (state.connected) {
      request({ op: "publish", topic: room.topic, data: { typing: false }, ephemeral: true }).catch(() => {});
    }
    state.lastTypingSent = 0;
    flushOutbox();
  }

  let flushing = false;
  async function flushOutbox() {
    if (flushing) return;
    flushing = true;
    try {
      while (state.outbox.length > 0 && state.connected) {
        const next = state.outbox[0];
        try {
          await request({ op: "publish", topic: next.topic, data: next.data, idempotency_key: next.key });
          state.outbox.shift();
        } catch (e) {
          if (e.message === "disconnected" || e.message === "no answer") break;
          state.outbox.shift(); // refused (too large, forbidden, rate limited): say so
          note(`Not sent: ${e.code}: ${e.message}`);
        }
      }
    } finally {
      flushing = false;
      const waiting = state.outbox.length;
      $("room-note").textContent = waiting ? `${waiting} message(s) waiting to be sent` : "";
    }
  }

  // ---- Rendering and navigation ---------------------------------------------------------

  function note(text) {
    $("room-note").textContent = text;
  }

  function roomNote(room, text) {
    room.list.append(el("li", { className: "system", textContent: text }));
  }

  function renderRooms() {
    const ul = $("rooms");
    ul.replaceChildren();
    for (const room of state.rooms.values()) {
      const a = el("a", { href: `#${room.name}`, textContent: `# ${room.name}` });
      if (room.unread) a.append(el("span", { className: "unread", textContent: String(room.unread) }));
      const li = el("li", { className: room === state.current ? "current" : "" }, a);
      ul.append(li);
    }
  }

  function addRoom(name) {
    if (!ROOM_NAME.test(name)) return null;
    let room = state.rooms.get(name);
    if (!room) {
      room = new Room(name);
      state.rooms.set(name, room);
      enter(room);
    }
    return room;
  }

  function show(name) {
    const room = addRoom(name) || state.rooms.values().next().value;
    if (!room) return;
    state.current = room;
    room.unread = 0;
    $("room-title").textContent = `# ${room.name}`;
    $("messages").replaceWith(room.list);
    room.list.id = "messages";
    room.list.dataset.testid = "messages";
    room.list.lastElementChild?.scrollIntoView({ block: "end" });
    renderRooms();
    renderMembers(room);
    renderTyping();
    $("text").focus();
  }

  function signOut(message) {
    state.stopped = true;
    state.ws?.close(1000, "signed out");
    sessionStorage.removeItem("chat.token");
    $("app").hidden = true;
    $("signin").hidden = false;
    $("signin-error").textContent = message || "";
  }

  function start() {
    state.me = subjectOf(config.token);
    state.stopped = false;
    sessionStorage.setItem("chat.token", config.token);
    sessionStorage.setItem("chat.server", config.server);
    $("me").textContent = state.me;
    $("signin").hidden = true;
    $("app").hidden = false;
    for (const name of config.rooms) addRoom(name);
    connect();
    show(decodeURIComponent(location.hash.slice(1)) || config.rooms[0] || "general");
    setInterval(() => {
      const room = state.current;
      if (!room) return;
      for (const user of room.known.keys()) refreshStatus(room, user);
    }, STATUS_EVERY_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("signin-server").value = config.server;
    $("signin-form").addEventListener("submit", (e) => {
      e.preventDefault();
      config.server = $("signin-server").value.trim().replace(/\/$/, "");
      config.token = $("signin-token").value.trim();
      if (config.server && config.token) start();
    });
    $("send-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const text = $("text").value.trim();
      if (text) send(text);
      $("text").value = "";
    });
    $("text").addEventListener("input", typed);
    $("room-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const name = $("room-name").value.trim();
      if (ROOM_NAME.test(name)) location.hash = name;
      $("room-name").value = "";
    });
    window.addEventListener("hashchange", () => show(decodeURIComponent(location.hash.slice(1))));
    // Back online: try at once instead of waiting for the backoff.
    window.addEventListener("online", () => {
      if (!state.ws && !state.stopped) connect();
    });
    if (config.server && config.token) start();
    else $("signin").hidden = false;
  });

  // For tests and curious people: the room state, and a way to cut the connection as a
  // network drop would.
  window.chat = {
    state,
    drop() {
      state.ws?.close(4000, "dropped");
    },
  };
})();
