// Console, read-only use: a key without the admin scope (here `reader`, which may only
// subscribe to `orders`) sees the topic pages its grants allow and is refused, visibly,
// everything else; without any key (no anonymous rules on this node) nothing opens. Run
// by tests/console.rs.
import { assert, env, run, until } from "./lib/browser.mjs";

const base = env("STREAMHUB_URL");
const key = env("READER_KEY");
const text = (page, selector) => page.locator(selector).first().textContent();
const tailSeqs = (page) => page.$$eval('[data-testid="tail"] li.msg', (rows) => rows.map((r) => Number(r.dataset.seq)));

run("readonly", async ({ page, step, screenshot }) => {
  await step("sign in with a key without the admin scope", async () => {
    await page.goto(`${base}/console/`);
    await page.fill('[data-testid="key"]', key);
    await page.click('[data-testid="signin"]');
    await until("the limited badge", async () => (await text(page, '[data-testid="who"]')) === "signed in · no admin scope");
    await until("the admin-only notice", async () => (await text(page, "main")).includes("needs an API key with the admin scope"));
  });

  await step("a topic its grants allow opens with its live tail and history", async () => {
    await page.fill('[data-testid="open-topic"]', "orders");
    await page.press('[data-testid="open-topic"]', "Enter");
    await until("the tail to be live", async () => (await page.getAttribute('[data-testid="tail-status"]', "data-state")) === "live");
    await until("seqs 1..3 in the tail", async () => JSON.stringify(await tailSeqs(page)) === "[3,2,1]");
    await until("the history page", async () => (await text(page, '[data-testid="history-range"]')).startsWith("seq 1–3"));
  });

  await step("publishing without the grant is refused with the node's reason", async () => {
    await page.fill('[data-testid="publish-data"]', '{"n": 4}');
    await page.click('[data-testid="publish"]');
    await until("the refusal", async () => (await text(page, '[data-testid="publish-result"]')).startsWith("forbidden: reader may not publish on orders"));
    assert(JSON.stringify(await tailSeqs(page)) === "[3,2,1]", "nothing was published");
  });
  await screenshot("reader-topic");

  await step("a topic outside its grants shows the refusal instead of a tail", async () => {
    await page.goto(`${base}/console/#/topic/payroll`);
    await until("the forbidden status", async () => (await text(page, '[data-testid="tail-status"]')).startsWith("forbidden:"));
    assert((await page.locator('[data-testid="tail"] li.msg').count()) === 0, "no message of a forbidden topic");
  });

  await step("the node and group pages need the admin scope", async () => {
    for (const path of ["#/node", "#/groups", "#/group/orders/any"]) {
      await page.goto(`${base}/console/${path}`);
      await until(`${path} refusing`, async () => (await text(page, "main")).includes("needs an API key with the admin scope"));
    }
  });

  await step("the key is never shown", async () => {
    assert(!(await page.content()).includes(key), "the page's HTML contains the key");
    assert(!page.url().includes(key), "the address contains the key");
  });

  await step("without a key nothing opens on a node without anonymous rules", async () => {
    await page.click("#signout");
    await page.click("#anonymous");
    await until("the read-only badge", async () => (await text(page, '[data-testid="who"]')) === "anonymous · read-only");
    await page.goto(`${base}/console/#/topic/orders`);
    await until("the unauthorized status", async () => (await text(page, '[data-testid="tail-status"]')).startsWith("unauthorized:"));
  });
  await screenshot("anonymous-refused");
});
