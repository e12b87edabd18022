// The example chat (examples/chat/, served at /chat) with two users in two tabs: history
// on joining, A sees B join, B types and A sees it, A sends and B receives, B's network
// is cut and restored and B gets what it missed exactly once, B leaves and A sees B
// offline with a last-seen time. Run by tests/console.rs with two tokens.
import { join } from "node:path";
import { api, assert, env, run, until } from "./lib/browser.mjs";

const base = env("STREAMHUB_URL");
const alice = env("TOKEN_ALICE");
const bob = env("TOKEN_BOB");
const room = "general";

const messages = (page) =>
  page.$$eval('[data-testid="messages"] li[data-seq]', (rows) =>
    rows.map((r) => ({ seq: Number(r.dataset.seq), who: r.querySelector(".who").textContent, text: r.querySelector(".text").textContent })),
  );
const member = (page, user) =>
  page.$eval(`[data-testid="members"] li[data-user="${user}"]`, (li) => ({ online: li.dataset.online, seen: li.querySelector(".seen").textContent })).catch(() => null);

async function send(page, text) {
  await page.fill('[data-testid="text"]', text);
  await page.press('[data-testid="text"]', "Enter");
}

run("chat", async ({ page: a, context, step, screenshot, artifacts }) => {
  let b;
  const shootB = (label) => b.screenshot({ path: join(artifacts, `b-${label}.png`), fullPage: true });

  await step("A signs in with a token in the address, which then leaves the address bar", async () => {
    await a.goto(`${base}/chat/?token=${alice}#${room}`);
    await until("connected", async () => (await a.textContent('[data-testid="connection"]')) === "connected");
    assert(!a.url().includes("token="), `the token stays in the URL: ${a.url()}`);
    assert((await a.textContent('[data-testid="me"]')) === "alice", "signed in as alice");
  });

  await step("A's message before B arrives is B's history on joining the room", async () => {
    await send(a, "welcome to the room");
    await until("A sees its own message", async () => (await messages(a)).some((m) => m.text === "welcome to the room"));
    b = await context.newPage();
    await b.goto(`${base}/chat/?token=${bob}#${room}`);
    await until("B's history", async () => (await messages(b)).some((m) => m.text === "welcome to the room" && m.who === "alice"));
    await shootB("joined");
  });

  await step("A sees B join, online", async () => {
    await until("bob online in A's members", async () => (await member(a, "bob"))?.online === "true");
    await screenshot("bob-joined");
  });

  await step("B types and A sees the indicator", async () => {
    await b.type('[data-testid="text"]', "hel", { delay: 30 });
    await until("A's typing line", async () => (await a.textContent('[data-testid="typing"]')).includes("bob is typing"));
    await screenshot("bob-typing");
    await b.fill('[data-testid="text"]', "");
  });

  await step("A sends and B receives", async () => {
    await send(a, "hello bob");
    await until("B gets it", async () => (await messages(b)).some((m) => m.text === "hello bob" && m.who === "alice"));
    await shootB("received");
  });

  await step("B's network is cut and restored: B gets what it missed exactly once", async () => {
    const cdp = await context.newCDPSession(b);
    const offline = (value) =>
      cdp.send("Network.emulateNetworkConditions", { offline: value, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
    await offline(true);
    await b.evaluate(() => window.chat.drop());
    await until("B knows it is down", async () => !(await b.textContent('[data-testid="connection"]')).startsWith("connected"));
    for (const n of [1, 2, 3]) await send(a, `missed ${n}`);
    await until("A has them", async () => (await messages(a)).filter((m) => m.text.startsWith("missed ")).length === 3);
    await shootB("offline");
    await offline(false);
    await until("B reconnected", async () => (await b.textContent('[data-testid="connection"]')) === "connected", 20000);
    await until("B has the three", async () => (await messages(b)).filter((m) => m.text.startsWith("missed ")).length >= 3);
    const got = await messages(b);
    const missed = got.filter((m) => m.text.startsWith("missed ")).map((m) => m.text);
    assert(JSON.stringify(missed) === JSON.stringify(["missed 1", "missed 2", "missed 3"]), `in order, once: ${missed}`);
    const seqs = got.map((m) => m.seq);
    assert(new Set(seqs).size === seqs.length, `no seq twice: ${seqs}`);
    assert(seqs.every((s, i) => i === 0 || s === seqs[i - 1] + 1), `no gap: ${seqs}`);
    const duplicates = await b.$eval('[data-testid="messages"]', (ol) => ol.dataset.duplicates || "0");
    assert(duplicates === "0", `the broker delivered ${duplicates} message(s) twice`);
    await shootB("resumed");
  });

  await step("B leaves and A sees B offline with a last-seen time", async () => {
    await b.close();
    await until("bob offline with last seen", async () => {
      const m = await member(a, "bob");
      return m && m.online === "false" && m.seen.startsWith("last seen");
    }, 20000);
    assert((await a.textContent('[data-testid="typing"]')) === "", "a user who left is not typing");
    await screenshot("bob-left");
  });

  await step("what was said is in the topic once, named by its authors", async () => {
    const history = await api("GET", `/v1/topics/chat.${room}/messages?since=0`, { key: env("STREAMHUB_ADMIN_KEY") });
    const texts = history.messages.map((m) => `${m.from.user}: ${m.data.text}`);
    assert(
      JSON.stringify(texts) ===
        JSON.stringify(["alice: welcome to the room", "alice: hello bob", "alice: missed 1", "alice: missed 2", "alice: missed 3"]),
      JSON.stringify(texts),
    );
  });
});
