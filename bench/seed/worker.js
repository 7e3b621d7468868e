'use strict';
// The seed design's worker: a BullMQ worker (concurrency 32) that submits
// each job to fal's queue API, polls its status until COMPLETED, fetches
// the result and confirms the hold (confirm_credit); a job's last failed
// attempt refunds it (refund_credit). A kill -9 between fal's answer and
// the confirm leaves the hold reserved and BullMQ runs the job again
// (stalled): fal is paid twice.
//
// Environment: DATABASE_URL, REDIS_HOST, REDIS_PORT, FAL_URL
// (https://queue.fal.run), FAL_KEY, QUEUE_NAME (ai), CONCURRENCY (32),
// PG_POOL_MAX (10).
const { Pool } = require('pg');
const { Worker, UnrecoverableError } = require('bullmq');

const falURL = (process.env.FAL_URL || 'https://queue.fal.run').replace(/\/$/, '');
const falKey = process.env.FAL_KEY;
if (!falKey) throw new Error('FAL_KEY is required');
const pool = new Pool({
  connectionString: process.env.DATABASE_URL,
  max: Number(process.env.PG_POOL_MAX || 10),
});
const headers = { Authorization: `Key ${falKey}`, 'Content-Type': 'application/json' };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function fal(url, init) {
  const res = await fetch(url, { ...init, headers, signal: AbortSignal.timeout(30000) });
  const body = await res.json();
  if (res.status >= 400) {
    const err = new Error(`fal ${res.status}: ${JSON.stringify(body).slice(0, 200)}`);
    err.status = res.status;
    throw err;
  }
  return { status: res.status, body };
}

// runFal submits, polls the status at once and then every 100 ms doubling
// up to 1 s, and returns the result.
async function runFal(model, params) {
  const sub = await fal(`${falURL}/${model}`, { method: 'POST', body: JSON.stringify(params) });
  let wait = 100;
  for (;;) {
    const st = await fal(sub.body.status_url, { method: 'GET' });
    if (st.body.status === 'COMPLETED') break;
    await sleep(wait);
    wait = Math.min(wait * 2, 1000);
  }
  return (await fal(sub.body.response_url, { method: 'GET' })).body;
}

const worker = new Worker(process.env.QUEUE_NAME || 'ai', async (job) => {
  const { holdId, model, params } = job.data;
  try {
    const result = await runFal(model, params);
    await pool.query('SELECT confirm_credit($1)', [holdId]);
    return { images: result.images ? result.images.length : 0 };
  } catch (err) {
    const last = job.attemptsMade + 1 >= (job.opts.attempts || 1);
    if (last || err.status === 422) {
      await pool.query('SELECT refund_credit($1)', [holdId]);
    }
    throw err.status === 422 ? new UnrecoverableError(err.message) : err;
  }
}, {
  connection: { host: process.env.REDIS_HOST || '127.0.0.1', port: Number(process.env.REDIS_PORT || 6379) },
  concurrency: Number(process.env.CONCURRENCY || 32),
});
worker.on('error', (err) => console.error('worker error:', err.message));
worker.on('ready', () => console.log('seed worker ready'));

function shutdown() {
  Promise.allSettled([worker.close(), pool.end()]).then(() => process.exit(0));
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
