// Console, topic pages: sign-in, the topic list, a topic's live tail (over the WebSocket
// protocol, resuming exactly after leaving and after a reload), the publish form, history
// paging, and read-only use without a key. Run by tests/console.rs.
import { api, assert, env, run, until } from "./lib/browser.mjs";

const base = env("STREAMHUB_URL");
const key = env("STREAMHUB_ADMIN_KEY");
const topic = env("TOPIC", "orders");

const text = (page, selector) => page.locator(selector).first().textContent();
const tailSeqs = (page) => page.$$eval('[data-testid="tail"] li.msg', (rows) => rows.map((r) => Number(r.dataset.seq)));

/// The tail lists every seq from `from` to `to` exactly once, newest first.
async function tailHolds(page, from, to) {
  const seqs = await tailSeqs(page);
  const want = [];
  for (let s = to; s >= from; s--) want.push(s);
  return JSON.stringify(seqs.slice(0, want.length)) === JSON.stringify(want) && new Set(seqs).size === seqs.length;
}

run("topics", async ({ page, step, screenshot }) => {
  await step("a key the node does not accept is refused at sign-in", async () => {
    await page.goto(`${base}/console/`);
    await page.fill('[data-testid="key"]', "not-a-key-of-this-node");
    await page.click('[data-testid="signin"]');
    await until("the sign-in error", async () => (await text(page, "#signin-error")).includes("did not accept"));
  });

  await step("sign in with the admin key", async () => {
    await page.fill('[data-testid="key"]', key);
    await page.click('[data-testid="signin"]');
    await until("the admin badge", async () => (await text(page, '[data-testid="who"]')) === "admin");
  });

  await step("the topic list shows the topic, its seq and length", async () => {
    await until("the topic's row with seq 30", async () => (await text(page, `tr[data-topic="${topic}"] [data-testid="seq"]`)) === "30");
    // A second reading gives a publish rate (0 here: nothing is being published).
    await until("a publish rate", async () => (await text(page, `tr[data-topic="${topic}"] [data-testid="rate"]`)) === "0");
  });
  await step("the filter narrows the list", async () => {
    await until("two topics listed", async () => (await page.locator('[data-testid="topics"] tr[data-topic]').count()) === 2);
    await page.fill('[data-testid="topic-filter"]', topic.slice(0, 3));
    await until("only the topic", async () => {
      const rows = await page.$$eval('[data-testid="topics"] tr[data-topic]', (r) => r.map((x) => x.dataset.topic));
      return JSON.stringify(rows) === JSON.stringify([topic]);
    });
    await page.fill('[data-testid="topic-filter"]', "");
  });
  await screenshot("topic-list");

  await step("the topic page opens a live tail with the latest messages", async () => {
    await page.click(`tr[data-topic="${topic}"] a`);
    await until("the tail to be live", async () => (await page.getAttribute('[data-testid="tail-status"]', "data-state")) === "live");
    await until("seqs 11..30 in the tail", () => tailHolds(page, 11, 30));
  });

  await step("a message published from the form appears in the live tail", async () => {
    await page.fill('[data-testid="publish-data"]', '{"from": "the console", "n": 31}');
    await page.click('[data-testid="publish"]');
    await until("the publish result", async () => (await text(page, '[data-testid="publish-result"]')).startsWith("stored as seq 31"));
    await until("seq 31 at the top of the tail", () => tailHolds(page, 11, 31));
    const payload = await text(page, '[data-testid="tail"] li.msg[data-seq="31"] [data-testid="payload"]');
    assert(payload.includes('"from":"the console"'), `payload shown: ${payload}`);
  });
  await screenshot("topic-live-tail");

  await step("messages published while away arrive exactly once when the page comes back", async () => {
    await page.goto("about:blank");
    for (const n of [32, 33]) await api("POST", `/v1/topics/${topic}/messages`, { key, body: { data: { n } } });
    await page.goto(`${base}/console/#/topic/${topic}`);
    await until("the resumed status", async () => (await text(page, '[data-testid="tail-status"]')).includes("resumed after seq 31, nothing missed"));
    await until("seqs 12..33, each once", () => tailHolds(page, 12, 33));
  });

  await step("after a reload the tail resumes after the last message seen", async () => {
    await page.reload();
    await until("the resumed status", async () => (await text(page, '[data-testid="tail-status"]')).includes("resumed after seq 33, nothing missed"));
    await api("POST", `/v1/topics/${topic}/messages`, { key, body: { data: { n: 34 } } });
    await until("seq 34 after the backlog, nothing twice", () => tailHolds(page, 14, 34));
  });

  await step("history pages back and forth", async () => {
    // The page opened before seq 34 was published: its first page ends at 33.
    await until("the first page", async () => (await text(page, '[data-testid="history-range"]')).startsWith("seq 9–33"));
    await page.click('[data-testid="history-latest"]');
    await until("the latest page", async () => (await text(page, '[data-testid="history-range"]')).startsWith("seq 10–34"));
    await page.click('[data-testid="history-older"]');
    await until("the oldest page", async () => (await text(page, '[data-testid="history-range"]')).startsWith("seq 1–25"));
    const first = await page.$$eval('[data-testid="history"] li.msg', (rows) => rows.map((r) => Number(r.dataset.seq)));
    assert(first.length === 25 && first[0] === 1 && first[24] === 25, `history rows: ${first}`);
    await page.click('[data-testid="history-newer"]');
    await until("the latest page again", async () => (await text(page, '[data-testid="history-range"]')).startsWith("seq 10–34"));
  });
  await screenshot("topic-history");

  await step("a message that expires while away is reported as expired, not as a gap", async () => {
    await page.goto("about:blank");
    await api("POST", `/v1/topics/${topic}/messages`, { key, body: { data: { n: 35 }, ttl_ms: 1 } });
    await new Promise((r) => setTimeout(r, 50)); // its TTL passes (time is the only signal)
    await api("POST", `/v1/topics/${topic}/messages`, { key, body: { data: { n: 36 } } });
    await page.goto(`${base}/console/#/topic/${topic}`);
    await until("the resumed status", async () => (await text(page, '[data-testid="tail-status"]')).includes("resumed after seq 34, nothing missed"));
    await until("the expired mark for seq 35", async () => (await page.locator('[data-testid="tail"] li[data-expired="35-35"]').count()) === 1);
    await until("seq 36 on top", async () => (await tailSeqs(page))[0] === 36);
    assert(!(await tailSeqs(page)).includes(35), "the expired message is not shown");
  });
  await screenshot("topic-expired");

  await step("the key is never shown", async () => {
    const html = await page.content();
    assert(!html.includes(key), "the page's HTML contains the key");
    const inputs = await page.$$eval("input, textarea", (els) => els.map((e) => e.value));
    assert(!inputs.includes(key), "an input holds the key");
    assert(!page.url().includes(key), "the address contains the key");
  });

  await step("without a key the console is read-only and topic pages still work", async () => {
    await page.click("#signout");
    await page.click("#anonymous");
    await until("the read-only badge", async () => (await text(page, '[data-testid="who"]')) === "anonymous · read-only");
    await page.goto(`${base}/console/#/topics`);
    await until("the admin-only notice", async () => (await text(page, "main")).includes("needs an API key with the admin scope"));
    await page.fill('[data-testid="open-topic"]', topic);
    await page.press('[data-testid="open-topic"]', "Enter");
    await until("the tail to be live", async () => (await page.getAttribute('[data-testid="tail-status"]', "data-state")) === "live");
    await until("the tail's newest message", async () => (await tailSeqs(page))[0] === 36);
    await page.goto(`${base}/console/#/node`);
    await until("the node page refusing", async () => (await text(page, "main")).includes("needs an API key with the admin scope"));
  });
  await screenshot("read-only");
});
