// Console, node page: this node's connections, subscriptions, deliveries and publishes
// per second, delivery-lag percentiles and Redis health, refreshed live. The Rust test
// keeps a WebSocket subscriber connected and publishes 20 messages a second meanwhile.
import { assert, env, run, until } from "./lib/browser.mjs";

const base = env("STREAMHUB_URL");
const key = env("STREAMHUB_ADMIN_KEY");
const text = (page, selector) => page.locator(selector).first().textContent();
const number = async (page, id) => Number((await text(page, `[data-testid="${id}"]`)).replace(/[^0-9.]/g, ""));

run("node", async ({ page, step, screenshot }) => {
  await step("sign in with the admin key", async () => {
    await page.goto(`${base}/console/#/node`);
    await page.fill('[data-testid="key"]', key);
    await page.click('[data-testid="signin"]');
    await until("the admin badge", async () => (await text(page, '[data-testid="who"]')) === "admin");
  });

  await step("the node page shows open connections and subscriptions", async () => {
    await until("a connection", async () => (await number(page, "sessions")) >= 1);
    await until("a subscription", async () => (await number(page, "subscriptions")) >= 1);
  });

  await step("deliveries per second and publishes per second are live", async () => {
    await until("deliveries per second above zero", async () => (await number(page, "deliveries")) > 0);
    await until("publishes per second above zero", async () => (await number(page, "publishes")) > 0);
  });

  await step("delivery lag percentiles are shown", async () => {
    await until("p50 / p99 of the last interval", async () => {
      const lag = await text(page, '[data-testid="lag-window"]');
      return /\d.*\/.*\d/.test(lag) && !lag.includes("–");
    });
  });

  await step("redis is reported up with its version and round trip", async () => {
    await until("redis up", async () => (await text(page, '[data-testid="redis-up"]')) === "up");
    const redis = await text(page, '[data-testid="redis"]');
    assert(/version\s*[78]\./.test(redis), `redis facts: ${redis}`);
    assert(redis.includes("answering"), `redis facts: ${redis}`);
  });
  // Let the charts gather a few readings for the artifact.
  await new Promise((r) => setTimeout(r, 4000));
  await screenshot("node");
});
