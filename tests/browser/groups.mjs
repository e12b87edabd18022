// Console, consumer-group pages: a paused group's lag, resuming it and watching the lag
// fall to zero, a dead letter's details, replay (with a cancelled and a confirmed
// confirmation) and purge. The Rust test set up: jobs/mailer (a pull group) paused with
// 25 messages, payments/billing (a webhook group) with 2 dead letters and a webhook that
// now succeeds. This spec plays the pull consumer itself, over the HTTP API.
import { api, assert, env, run, until } from "./lib/browser.mjs";

const base = env("STREAMHUB_URL");
const key = env("STREAMHUB_ADMIN_KEY");

const text = (page, selector) => page.locator(selector).first().textContent();
const tileIs = async (page, id, value) => (await text(page, `[data-testid="${id}"]`)) === String(value);

run("groups", async ({ page, step, screenshot }) => {
  await step("sign in from a link carrying the key, which leaves the address bar", async () => {
    await page.goto(`${base}/console/#key=${encodeURIComponent(key)}`);
    await until("the admin badge", async () => (await text(page, '[data-testid="who"]')) === "admin");
    assert(!page.url().includes(key), `the address still holds the key: ${page.url()}`);
  });

  await step("the group list shows the paused group and its lag", async () => {
    await page.goto(`${base}/console/#/groups`);
    await until("jobs / mailer, paused, lag 25", async () => {
      const row = page.locator('tr[data-group="jobs/mailer"]');
      return (await row.count()) === 1 && (await row.locator('[data-testid="lag"]').textContent()) === "25" && (await row.textContent()).includes("paused");
    });
  });
  await screenshot("group-list");

  await step("the group page shows the paused group with its lag", async () => {
    await page.click('tr[data-group="jobs/mailer"] a');
    await until("state paused", () => tileIs(page, "group-state", "paused"));
    await until("lag 25", () => tileIs(page, "lag", 25));
  });
  await screenshot("group-paused");

  await step("resuming the group lets consumers fetch again", async () => {
    const paused = await api("POST", "/v1/topics/jobs/groups/mailer:fetch", { key, body: { max: 1 } });
    assert(paused.paused === true && paused.deliveries.length === 0, `a paused group hands out nothing: ${JSON.stringify(paused)}`);
    await page.click('[data-testid="pause-toggle"]');
    await until("state running", () => tileIs(page, "group-state", "running"));
    await until("the button offers to pause", async () => (await text(page, '[data-testid="pause-toggle"]')) === "Pause");
  });

  await step("the lag falls to zero as a consumer fetches and acknowledges", async () => {
    const seen = new Set();
    // Five fetches of five, each acknowledged, while the page refreshes: the lag steps down.
    for (let round = 0; round < 5; round++) {
      // Other nodes (and this node's own sweeper) follow a resume within
      // groups.sweep_interval_ms (PROTOCOL.md §10.2): a paused answer hands out nothing.
      const got = await until("a fetch of the resumed group", async () => {
        const answer = await api("POST", "/v1/topics/jobs/groups/mailer:fetch", { key, body: { max: 5 } });
        return answer.paused ? null : answer;
      });
      const lag = 25 - 5 * (round + 1);
      got.deliveries.forEach((d) => seen.add(d.message.seq));
      await until(`lag ${lag} with 5 pending`, async () => (await tileIs(page, "lag", lag)) && (await tileIs(page, "pending", 5)));
      await api("POST", "/v1/topics/jobs/groups/mailer:ack", { key, body: { tokens: got.deliveries.map((d) => d.token) } });
    }
    assert(seen.size === 25, `25 different messages fetched, got ${seen.size}`);
    await until("lag 0", () => tileIs(page, "lag", 0));
    await until("25 acknowledged", () => tileIs(page, "acked", 25));
    await until("nothing pending", () => tileIs(page, "pending", 0));
  });
  await screenshot("group-resumed");

  await step("a dead letter's details show its message and error", async () => {
    await page.goto(`${base}/console/#/group/payments/billing`);
    await until("2 dead letters", () => tileIs(page, "dead-letters", 2));
    await until("two rows", async () => (await page.locator('[data-testid="dlq"] tr[data-id]').count()) === 2);
    await page.locator('[data-testid="dlq-show"]').first().click();
    await until("the details", async () => {
      const detail = await text(page, '[data-testid="dlq-detail"]');
      return detail.includes('"error"') && detail.includes("500") && detail.includes('"message"');
    });
  });
  await screenshot("dead-letter-details");

  await step("cancelling the confirmation replays nothing", async () => {
    await page.locator('[data-testid="dlq"] tr[data-id] input[type="checkbox"]').first().check();
    await page.click('[data-testid="dlq-replay-selected"]');
    await page.waitForSelector("dialog#confirm[open]");
    assert((await text(page, "#confirm-text")).includes("Replay 1 selected dead letter"), "the confirmation names what it does");
    await page.click('[data-testid="confirm-cancel"]');
    await new Promise((r) => setTimeout(r, 2500)); // a refresh passes: still two
    assert(await tileIs(page, "dead-letters", 2), "a cancelled replay changed the queue");
  });

  await step("a replayed dead letter is delivered again and acknowledged", async () => {
    await page.click('[data-testid="dlq-replay-selected"]');
    await page.waitForSelector("dialog#confirm[open]");
    await screenshot("replay-confirmation");
    await page.click('[data-testid="confirm-ok"]');
    await until("1 dead letter left", () => tileIs(page, "dead-letters", 1));
    await until("the replayed one acknowledged", () => tileIs(page, "acked", 1), 30000);
  });

  await step("purge all, confirmed, empties the dead-letter queue", async () => {
    await page.click('[data-testid="dlq-purge-all"]');
    await page.waitForSelector("dialog#confirm[open]");
    assert((await text(page, "#confirm-text")).includes("deleted for good"), "the purge confirmation warns");
    await page.click('[data-testid="confirm-ok"]');
    await until("no dead letters", () => tileIs(page, "dead-letters", 0));
    await until("the empty table", async () => (await text(page, '[data-testid="dlq"]')).includes("No dead letters."));
  });
  await screenshot("dead-letters-empty");
});
