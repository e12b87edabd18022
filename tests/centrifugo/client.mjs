// centrifuge-js (Centrifugo's JavaScript SDK, pinned in package.json), unchanged, against
// two streamhub nodes on one Redis: connect, subscribe, publications with offsets,
// recovery after a disconnect and after unsubscribe/subscribe, `since` on another node,
// an epoch lost and a history trimmed (recovered: false, live delivery goes on), token
// refresh (connection and subscription), pings, a close that must not reconnect, client
// publish, history, presence with join and leave, and the protocol's errors.
//
// FORMAT=json uses the default build; FORMAT=protobuf the Protobuf build
// (`centrifuge/build/protobuf`, subprotocol centrifuge-protobuf, binary payloads).
import WebSocket from "ws";
import { api, assert, env, GRANTS, jwt, once, publishMany, redis, run, until } from "./lib.mjs";

const FORMAT = env("FORMAT");
const { Centrifuge } =
  FORMAT === "protobuf" ? await import("centrifuge/build/protobuf") : await import("centrifuge");
const A = env("NODE_A");
const B = env("NODE_B");
const PREFIX = env("PREFIX");
const TOPIC = `cf.${FORMAT}`;

const TOKEN_ALICE = await jwt("alice", GRANTS);
const TOKEN_BOB = await jwt("bob", GRANTS);

const encoder = new TextEncoder();
const decoder = new TextDecoder();
// Payloads: JSON values in the JSON build, bytes (of JSON text) in the Protobuf build.
const out = (value) => (FORMAT === "protobuf" ? encoder.encode(JSON.stringify(value)) : value);
const into = (data) => (FORMAT === "protobuf" ? JSON.parse(decoder.decode(data)) : data);

function client(base, options = {}) {
  const c = new Centrifuge(`${base.replace("http", "ws")}/connection/websocket`, {
    websocket: WebSocket,
    token: TOKEN_ALICE,
    minReconnectDelay: 100,
    maxReconnectDelay: 500,
    timeout: 8000,
    ...options,
  });
  c.events = [];
  for (const name of ["connecting", "connected", "disconnected", "error"]) {
    c.on(name, (ctx) => c.events.push({ name, code: ctx.code, reason: ctx.reason }));
  }
  return c;
}

/// A subscription that records what it gets: publications (offset, data), subscribed
/// contexts, joins, leaves, unsubscribes.
function subscription(c, channel, options = {}) {
  const sub = c.newSubscription(channel, options);
  sub.got = [];
  sub.subscribedCtx = [];
  sub.joins = [];
  sub.leaves = [];
  sub.unsubscribes = [];
  sub.on("publication", (ctx) => sub.got.push({ offset: Number(ctx.offset ?? 0), data: into(ctx.data), info: ctx.info, tags: ctx.tags }));
  sub.on("subscribed", (ctx) => sub.subscribedCtx.push(ctx));
  sub.on("join", (ctx) => sub.joins.push(ctx.info));
  sub.on("leave", (ctx) => sub.leaves.push(ctx.info));
  sub.on("unsubscribed", (ctx) => sub.unsubscribes.push(ctx));
  return sub;
}

const offsets = (sub) => sub.got.filter((p) => p.offset > 0).map((p) => p.offset);

function assertContiguous(list, from, to, what) {
  assert(list.length === to - from + 1, `${what}: ${list.length} publications, expected ${to - from + 1} (${list.slice(0, 5)}…${list.slice(-5)})`);
  list.forEach((o, i) => assert(o === from + i, `${what}: offset ${o} at ${i}, expected ${from + i}`));
}

await run(async (step) => {
  const idle = client(A);
  let idleStart = 0;
  let alice;
  let sub;
  let position;

  await step("a 1 s ping interval: a quiet connection gets pings and answers pongs", async () => {
    idle.connect();
    await once(idle, "connected");
    idleStart = Date.now();
  });

  await step("connect with a streamhub JWT; the reply names the client", async () => {
    alice = client(A);
    alice.connect();
    const ctx = await once(alice, "connected");
    assert(ctx.client && ctx.client.length > 0, `client id: ${ctx.client}`);
  });

  await step("subscribe, then receive what streamhub's HTTP API publishes on the other node, with offsets", async () => {
    sub = subscription(alice, TOPIC);
    sub.subscribe();
    const ctx = await once(sub, "subscribed");
    assert(ctx.recoverable && ctx.positioned, `recoverable/positioned: ${JSON.stringify(ctx)}`);
    await publishMany(B, TOPIC, 1, 3);
    await until("3 publications", () => sub.got.length >= 3);
    assertContiguous(offsets(sub), 1, 3, "live");
    assert(sub.got[2].data.n === 3, `data: ${JSON.stringify(sub.got[2].data)}`);
    // Subscribed before the first publish: the topic had no epoch yet.
    assert(sub.subscribedCtx[0].streamPosition.epoch === "", JSON.stringify(sub.subscribedCtx[0]));
    position = { epoch: (await api(A, "GET", `/v1/topics/${TOPIC}`)).epoch };
    assert(position.epoch, `the topic's epoch: ${JSON.stringify(position)}`);
  });

  await step("disconnect, 1,000 published, reconnect: recovered and wasRecovering, all 1,000 once and in order", async () => {
    alice.disconnect();
    await publishMany(B, TOPIC, 4, 1000);
    sub.subscribedCtx.length = 0;
    alice.connect();
    await until("subscribed again", () => sub.subscribedCtx.length > 0);
    const ctx = sub.subscribedCtx[0];
    assert(ctx.recovered === true && ctx.wasRecovering === true, `ctx: ${JSON.stringify(ctx)}`);
    await until("1,003 publications", () => sub.got.length >= 1003);
    assertContiguous(offsets(sub), 1, 1003, "after reconnect");
    assert(sub.got.every((p, i) => p.data.n === i + 1), "payloads in order");
  });

  await step("unsubscribe, 50 published, subscribe: recovered, the 50 once and in order", async () => {
    const unsubscribed = once(sub, "unsubscribed");
    sub.unsubscribe();
    await unsubscribed;
    await publishMany(B, TOPIC, 1004, 50);
    sub.subscribedCtx.length = 0;
    sub.subscribe();
    await until("subscribed again", () => sub.subscribedCtx.length > 0);
    assert(sub.subscribedCtx[0].recovered === true, `ctx: ${JSON.stringify(sub.subscribedCtx[0])}`);
    await until("1,053 publications", () => sub.got.length >= 1053);
    assertContiguous(offsets(sub), 1, 1053, "after resubscribe");
  });

  await step("since {offset, epoch} on the other node: exactly what follows", async () => {
    const bob = client(B, { token: TOKEN_BOB });
    const late = subscription(bob, TOPIC, { since: { offset: 1000, epoch: position.epoch } });
    late.subscribe();
    bob.connect();
    const ctx = await once(late, "subscribed");
    assert(ctx.recovered && ctx.wasRecovering, `ctx: ${JSON.stringify(ctx)}`);
    await until("53 publications", () => late.got.length >= 53);
    assertContiguous(offsets(late), 1001, 1053, "since");
    bob.disconnect();
  });

  await step("publish from the client: stored, delivered, and named as alice's", async () => {
    await sub.publish(out({ text: "from the SDK" }));
    await until("the client's publication", () => sub.got.find((p) => p.data.text === "from the SDK"));
    const p = sub.got.find((x) => x.data.text === "from the SDK");
    assert(p.offset === 1054, `offset ${p.offset}`);
    assert(p.info && p.info.user === "alice", `info: ${JSON.stringify(p.info)}`);
    const history = await api(A, "GET", `/v1/topics/${TOPIC}/messages?since=1053`);
    assert(history.messages[0].from.user === "alice", JSON.stringify(history.messages[0]));
  });

  await step("history: a page after an offset, newest first, and only the position", async () => {
    const h = await sub.history({ limit: 5, since: { offset: 10, epoch: position.epoch } });
    assert(h.epoch === position.epoch && Number(h.offset) === 1054, `position: ${h.epoch} ${h.offset}`);
    assert(JSON.stringify(h.publications.map((p) => Number(p.offset))) === "[11,12,13,14,15]", "forward page");
    const r = await sub.history({ limit: 3, reverse: true });
    assert(JSON.stringify(r.publications.map((p) => Number(p.offset))) === "[1054,1053,1052]", "reverse page");
    const top = await sub.history({ limit: 0 });
    assert(top.publications.length === 0 && Number(top.offset) === 1054, "position only");
    const stale = await sub.history({ limit: 1, since: { offset: 1, epoch: "0000000000000000" } }).catch((e) => e);
    assert(stale.code === 112, `another epoch: ${JSON.stringify(stale)}`);
  });

  await step("the epoch is lost while subscribed: resubscribed with recovered false, live delivery goes on", async () => {
    redis("DEL", `${PREFIX}:{${TOPIC}}:m`, `${PREFIX}:{${TOPIC}}:s`);
    sub.subscribedCtx.length = 0;
    await publishMany(B, TOPIC, 5000, 1);
    await until("a new subscribe", () => sub.subscribedCtx.length > 0);
    const ctx = sub.subscribedCtx[0];
    assert(ctx.recovered === false && ctx.wasRecovering === true, `ctx: ${JSON.stringify(ctx)}`);
    assert(ctx.streamPosition.epoch !== position.epoch, "a new epoch");
    const before = sub.got.length;
    await publishMany(B, TOPIC, 5001, 2);
    await until("live publications of the new epoch", () => sub.got.slice(before).some((p) => p.data.n === 5002));
    position = ctx.streamPosition;
  });

  await step("a trimmed history: recovered false after reconnecting, then live delivery", async () => {
    const trim = subscription(alice, "trim.cf");
    trim.subscribe();
    await once(trim, "subscribed");
    await publishMany(B, "trim.cf", 1, 1);
    await until("the first", () => trim.got.length === 1);
    alice.disconnect();
    await publishMany(B, "trim.cf", 2, 300);
    trim.subscribedCtx.length = 0;
    alice.connect();
    await until("subscribed again", () => trim.subscribedCtx.length > 0);
    const ctx = trim.subscribedCtx[0];
    assert(ctx.recovered === false && ctx.wasRecovering === true, `ctx: ${JSON.stringify(ctx)}`);
    await publishMany(B, "trim.cf", 302, 1);
    await until("live after the trim", () => trim.got.some((p) => p.data.n === 302));
  });

  await step("presence and its stats, join and leave", async () => {
    const room = subscription(alice, `room.${FORMAT}`, { joinLeave: true });
    room.subscribe();
    await once(room, "subscribed");
    const bob = client(B, { token: TOKEN_BOB, data: out({ name: "Bob" }) });
    const bobRoom = subscription(bob, `room.${FORMAT}`);
    bobRoom.subscribe();
    bob.connect();
    await once(bobRoom, "subscribed");
    await until("bob's join", () => room.joins.some((i) => i.user === "bob"));
    const presence = await room.presence();
    const users = Object.values(presence.clients).map((i) => i.user).sort();
    assert(JSON.stringify(users) === '["alice","bob"]', `presence: ${JSON.stringify(presence)}`);
    const stats = await room.presenceStats();
    assert(stats.numClients === 2 && stats.numUsers === 2, `stats: ${JSON.stringify(stats)}`);
    bob.disconnect();
    await until("bob's leave", () => room.leaves.some((i) => i.user === "bob"));
  });

  await step("errors: a channel outside the grants, rpc, an unknown node method", async () => {
    const denied = subscription(alice, "secret.x");
    denied.subscribe();
    const ctx = await once(denied, "unsubscribed");
    assert(ctx.code === 103, `unsubscribed: ${JSON.stringify(ctx)}`);
    const rpc = await alice.rpc("anything", out({})).catch((e) => e);
    assert(rpc.code === 104, `rpc: ${JSON.stringify(rpc)}`);
  });

  await step("token refresh: a connection whose token expires stays, with a fresh one", async () => {
    let asked = 0;
    const short = client(A, {
      token: await jwt("alice", GRANTS, 3),
      getToken: async () => {
        asked += 1;
        return TOKEN_ALICE;
      },
    });
    const s = subscription(short, TOPIC);
    s.subscribe();
    short.connect();
    await once(s, "subscribed");
    await until("a refresh", () => asked > 0, 10000);
    // Past the short token's expiry (plus the server's leeway): still connected.
    await new Promise((r) => setTimeout(r, 3000));
    assert(short.state === "connected", `state ${short.state}: ${JSON.stringify(short.events)}`);
    const after = short.events.slice(short.events.findIndex((e) => e.name === "connected") + 1);
    assert(!after.some((e) => e.name === "disconnected" || e.name === "connecting"), JSON.stringify(short.events));
    const before = s.got.length;
    await publishMany(B, TOPIC, 6000, 1);
    await until("a publication after the refresh", () => s.got.length > before);
    short.disconnect();
  });

  await step("subscription token refresh", async () => {
    let asked = 0;
    // The connection's token does not grant private.*: the subscription token does.
    const only = { subscribe: ["private.cf"] };
    const s = subscription(alice, "private.cf", {
      token: await jwt("alice", only, 3),
      getToken: async () => {
        asked += 1;
        return jwt("alice", only, 3600);
      },
    });
    s.subscribe();
    await once(s, "subscribed");
    await until("a sub_refresh", () => asked > 0, 10000);
    await new Promise((r) => setTimeout(r, 3000));
    assert(s.state === "subscribed" && s.unsubscribes.length === 0, `state ${s.state}: ${JSON.stringify(s.unsubscribes)}`);
  });

  await step("an invalid token closes with 3500 and the client does not reconnect", async () => {
    const bad = client(A, { token: "not.a.token" });
    bad.connect();
    const ctx = await once(bad, "disconnected");
    assert(ctx.code === 3500, `disconnected: ${JSON.stringify(ctx)}`);
    await new Promise((r) => setTimeout(r, 1500));
    assert(bad.state === "disconnected", `state ${bad.state}`);
    assert(!bad.events.slice(2).some((e) => e.name === "connecting"), JSON.stringify(bad.events));
  });

  await step("the quiet connection is still up after 12 s without a reconnect", async () => {
    const connected = idle.events.filter((e) => e.name === "connected").length;
    await until("12 s of connection", () => Date.now() - idleStart > 12000, 15000);
    assert(idle.state === "connected", `state ${idle.state}`);
    assert(idle.events.filter((e) => e.name === "connected").length === connected, JSON.stringify(idle.events));
    assert(!idle.events.some((e) => e.name === "connecting" && e.code !== 0), JSON.stringify(idle.events));
    idle.disconnect();
    alice.disconnect();
  });
});
