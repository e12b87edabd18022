'use strict';
// BullMQ's worker doing what streamhub's webhook target does: for every job, one HTTP POST
// of the job's data to a receiver that answers 200, the job completing when the answer
// comes. The peer of `streamhub-bench consume`'s "consume webhook" row (docs/BENCHMARKS.md),
// which a no-op BullMQ processor is not: that one makes no request at all.
//
// Runs from a copy of the peer harness, whose node_modules hold bullmq and ioredis:
//   cp -r ../shared/peers /tmp/peers && (cd /tmp/peers && npm ci)
//   NODE_PATH=/tmp/peers/node_modules node scripts/peers/bullmq-webhook.js \
//     --redis redis://127.0.0.1:7777 --n 100000 --concurrency 16 --payload 128
// Loopback only; bounded by --n and --timeout-s.

const http = require('http');
const { Queue, Worker } = require('bullmq');

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, a, i, all) => (a.startsWith('--') ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), []),
);
const redisUrl = new URL(args.redis || 'redis://127.0.0.1:6379');
if (!['127.0.0.1', 'localhost'].includes(redisUrl.hostname)) throw new Error('loopback Redis only');
const n = Number(args.n || 100000);
const concurrency = Number(args.concurrency || 16);
const payload = Number(args.payload || 128);
const timeoutS = Number(args['timeout-s'] || 300);
const connection = { host: redisUrl.hostname, port: Number(redisUrl.port || 6379), maxRetriesPerRequest: null };
const data = { p: 'x'.repeat(Math.max(0, payload - 8)) };

async function main() {
  // The receiver, in this process as streamhub-bench's is in its own.
  let received = 0;
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      received++;
      res.writeHead(200, { 'content-length': 0 });
      res.end();
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  // Keep-alive connections, at most one per job in flight (as the webhook target's pool).
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  const post = (body) =>
    new Promise((resolve, reject) => {
      const req = http.request(
        { host: '127.0.0.1', port, path: '/hook', method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } },
        (res) => {
          res.resume();
          res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`status ${res.statusCode}`))));
        },
      );
      req.on('error', reject);
      req.end(body);
    });

  const name = `bench-webhook-${process.pid}-${Date.now().toString(36)}`;
  const queue = new Queue(name, { connection });
  await queue.waitUntilReady();
  for (let i = 0; i < n; i += 1000) {
    const jobs = [];
    for (let j = i; j < Math.min(n, i + 1000); j++) jobs.push({ name: 'j', data, opts: { removeOnComplete: true, removeOnFail: true } });
    await queue.addBulk(jobs);
  }
  let done = 0, first = null, last = null;
  const worker = new Worker(name, async (job) => post(JSON.stringify(job.data)), { connection, concurrency, autorun: false });
  worker.on('completed', () => {
    const t = performance.now();
    done++;
    if (first === null) first = t;
    last = t;
  });
  worker.on('error', (e) => process.stderr.write(`worker error: ${e.message}\n`));
  await worker.waitUntilReady();
  const cpu0 = process.cpuUsage();
  const started = performance.now();
  worker.run().catch((e) => process.stderr.write(`run: ${e.message}\n`));
  while (done < n && performance.now() - started < timeoutS * 1000) await new Promise((r) => setTimeout(r, 5));
  const cpu = process.cpuUsage(cpu0);
  await worker.close(true);
  await queue.obliterate({ force: true }).catch(() => {});
  await queue.close();
  server.close();
  agent.destroy();
  const seconds = first !== null && last > first ? (last - first) / 1000 : null;
  const result = {
    jobs: n, completed: done, received, concurrency, payload,
    seconds_first_to_last: seconds && Number(seconds.toFixed(3)),
    jobs_per_s: seconds && Math.round((done - 1) / seconds),
    process_cpu_pct: Math.round(((cpu.user + cpu.system) / 1e6 / ((performance.now() - started) / 1000)) * 100),
  };
  console.log(JSON.stringify(result));
  process.exit(done === n && received === n ? 0 : 1);
}

main().catch((e) => {
  console.error(e);
  process.exit(2);
});
