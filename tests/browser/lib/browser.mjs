// Shared launcher for streamhub's browser tests: Debian's headless chromium driven by
// playwright-core (no browser download), a fresh profile per run, screenshots saved as
// artifacts, and a tiny step/assert vocabulary whose output the Rust driver checks.
//
// Environment (set by the Rust test that started the node):
//   STREAMHUB_URL        base URL of the node's HTTP API, e.g. http://127.0.0.1:41234
//   STREAMHUB_ADMIN_KEY  an admin API key (optional for specs that test read-only use)
//   ARTIFACTS_DIR        where screenshots go (default target/browser-artifacts)
//   CHROMIUM             the browser binary (default /usr/bin/chromium)
//   STEP_TIMEOUT_MS      how long one expectation may take (default 15000)
import { chromium } from "playwright-core";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

// Flags for a sandboxed, offline machine: no GPU, and none of Chromium's background
// connections (they are refused here, many at a time, and slow every start).
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-dev-shm-usage",
];

export const STEP_TIMEOUT_MS = Number(process.env.STEP_TIMEOUT_MS || 15000);

export function env(name, fallback) {
  const value = process.env[name] ?? fallback;
  if (value === undefined) {
    throw new Error(`${name} is not set (the Rust test that starts the node sets it)`);
  }
  return value;
}

/// Starts chromium with a fresh profile; returns { browser, context, page, artifacts,
/// screenshot(name), close() }. Console errors and failed page loads are collected in
/// `problems` so a spec can assert that the page logged none.
export async function launch({ name }) {
  const executablePath = env("CHROMIUM", "/usr/bin/chromium");
  const artifacts = resolve(env("ARTIFACTS_DIR", "target/browser-artifacts"), name);
  mkdirSync(artifacts, { recursive: true });
  const profile = mkdtempSync(join(tmpdir(), "streamhub-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    args: CHROMIUM_ARGS,
    headless: true,
    viewport: { width: 1280, height: 860 },
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    // The browser logs every 4xx answer as an error; the API's refusals (401 for a key
    // it does not accept, 403 outside a grant, 404 topic_not_found) are answers the page
    // handles and shows, not faults of the page.
    if (m.type() === "error" && !/status of 4\d\d/.test(m.text())) problems.push(`console error: ${m.text()}`);
  });
  let shots = 0;
  return {
    context,
    page,
    artifacts,
    problems,
    async screenshot(label) {
      shots += 1;
      const file = join(artifacts, `${String(shots).padStart(2, "0")}-${label}.png`);
      await page.screenshot({ path: file, fullPage: true });
      console.log(`screenshot ${file}`);
      return file;
    },
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/// Runs a spec: each step is logged as `ok <name>` or `FAIL <name>: <why>`; on a failure
/// a screenshot is saved and the process exits 1. The last line is `N passed, M failed`.
export async function run(name, body) {
  let session;
  let passed = 0;
  const step = async (label, fn) => {
    try {
      await fn();
      passed += 1;
      console.log(`ok ${label}`);
    } catch (e) {
      console.log(`FAIL ${label}: ${e?.stack || e}`);
      if (session) {
        try {
          await session.screenshot(`failed-${label.replace(/[^a-z0-9]+/gi, "-")}`);
        } catch {}
      }
      throw Object.assign(new Error("step failed"), { reported: true });
    }
  };
  let failed = 0;
  try {
    session = await launch({ name });
    await body({ ...session, step });
    if (session.problems.length) {
      failed += 1;
      console.log(`FAIL the page logged no errors: ${session.problems.join(" | ")}`);
    } else {
      passed += 1;
      console.log("ok the page logged no errors");
    }
  } catch (e) {
    failed += 1;
    if (!e.reported) console.log(`FAIL ${name}: ${e?.stack || e}`);
  } finally {
    if (session) await session.close().catch(() => {});
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

/// Waits until `probe()` returns a truthy value (polled; the page's own refresh is the
/// readiness signal) and returns it; fails with `what` and the last value seen.
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
    await new Promise((r) => setTimeout(r, 100));
  }
}

export function assert(condition, message) {
  if (!condition) throw new Error(message);
}

/// A call of the node's HTTP API from the test itself (not through the page).
export async function api(method, path, { body, key } = {}) {
  const headers = {};
  if (key) headers.authorization = `Bearer ${key}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(env("STREAMHUB_URL") + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return json;
}
