// The small vocabulary of the Centrifugo client specs: numbered steps that print
// `ok <step>` or `FAIL <step>: <why>`, a final `N passed, M failed` line that
// tests/centrifugo.rs checks, waits that poll a condition (never a fixed sleep where a
// signal exists), and calls of streamhub's own HTTP API.
import { execFileSync } from "node:child_process";

export const STEP_TIMEOUT_MS = Number(process.env.STEP_TIMEOUT_MS || 20000);

export function env(name) {
  const value = process.env[name];
  if (value === undefined) throw new Error(`${name} is not set (tests/centrifugo.rs sets it)`);
  return value;
}

export function assert(condition, message) {
  if (!condition) throw new Error(message);
}

/// Runs the spec's steps in order; stops at the first failure.
export async function run(body) {
  let passed = 0;
  let failed = 0;
  const step = async (label, fn) => {
    try {
      await fn();
      passed += 1;
      console.log(`ok ${label}`);
    } catch (e) {
      failed += 1;
      console.log(`FAIL ${label}: ${e?.stack || e}`);
      throw Object.assign(new Error("step failed"), { reported: true });
    }
  };
  try {
    await body(step);
  } catch (e) {
    if (!e.reported) {
      failed += 1;
      console.log(`FAIL spec: ${e?.stack || e}`);
    }
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

/// Waits until `probe()` is truthy (polled every 20 ms) and returns it.
export async function until(what, probe, timeoutMs = STEP_TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last) return last;
    } catch (e) {
      last = e.message;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/// The next event `name` of `emitter` (a centrifuge Client or Subscription).
export function once(emitter, name, timeoutMs = STEP_TIMEOUT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${name} event within ${timeoutMs} ms`)), timeoutMs);
    emitter.once(name, (ctx) => {
      clearTimeout(timer);
      resolve(ctx);
    });
  });
}

/// A call of streamhub's native HTTP API with the admin key.
export async function api(base, method, path, body) {
  const response = await fetch(base + path, {
    method,
    headers: { authorization: `Bearer ${env("ADMIN_KEY")}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/// Publishes `n` JSON messages `{n: first..first+n-1}` to `topic` over HTTP, in batches.
export async function publishMany(base, topic, first, n) {
  for (let i = 0; i < n; i += 100) {
    const k = Math.min(100, n - i);
    const messages = Array.from({ length: k }, (_, j) => ({ data: { n: first + i + j } }));
    await api(base, "POST", `/v1/topics/${encodeURIComponent(topic)}/messages:batch`, { messages });
  }
}

/// A command on the tests' Redis (to lose a topic's history on purpose).
export function redis(...args) {
  return execFileSync("redis-cli", ["-p", env("REDIS_PORT"), ...args], { encoding: "utf8" }).trim();
}

/// An HS256 JWT for the node's test key (`JWT_SECRET`, `JWT_KID`), valid `ttlSecs`.
export async function jwt(sub, grants, ttlSecs = 3600) {
  const { createHmac } = await import("node:crypto");
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const header = b64({ alg: "HS256", typ: "JWT", kid: env("JWT_KID") });
  const payload = b64({ sub, exp: Math.floor(Date.now() / 1000) + ttlSecs, streamhub: grants });
  const signature = createHmac("sha256", env("JWT_SECRET")).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${signature}`;
}

/// What the specs' users may do: their own channels, rooms with presence, trimmed topics.
export const GRANTS = {
  subscribe: ["cf.*", "room.*", "trim.*"],
  publish: ["cf.*", "room.*"],
  presence: ["room.*"],
};
