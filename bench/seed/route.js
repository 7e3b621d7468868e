'use strict';
// The seed design's submit route: POST /v1/jobs verifies the user's
// Supabase JWT (HS256), reserves the operation's cost with one call of
// reserve_credit in Postgres, then adds a BullMQ job in Redis. Two stores,
// no transaction between them: a crash between the two strands the hold.
//
// Environment: PORT, DATABASE_URL, REDIS_HOST, REDIS_PORT, JWT_SECRET,
// QUEUE_NAME (ai), PG_POOL_MAX (20).
const http = require('node:http');
const jwt = require('jsonwebtoken');
const { Pool } = require('pg');
const { Queue } = require('bullmq');
const catalog = require('./catalog');

const secret = process.env.JWT_SECRET;
if (!secret) throw new Error('JWT_SECRET is required');
const pool = new Pool({
  connectionString: process.env.DATABASE_URL,
  max: Number(process.env.PG_POOL_MAX || 20),
});
const queue = new Queue(process.env.QUEUE_NAME || 'ai', {
  connection: { host: process.env.REDIS_HOST || '127.0.0.1', port: Number(process.env.REDIS_PORT || 6379) },
  defaultJobOptions: {
    attempts: 3,
    backoff: { type: 'exponential', delay: 500 },
    removeOnComplete: 1000,
    removeOnFail: 5000,
  },
});
const maxBody = 1 << 20;

function send(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) });
  res.end(data);
}

async function submit(req, res, raw) {
  const auth = req.headers.authorization || '';
  let claims;
  try {
    if (!auth.startsWith('Bearer ')) throw new Error('no bearer token');
    claims = jwt.verify(auth.slice(7), secret, { algorithms: ['HS256'], audience: 'authenticated' });
  } catch {
    res.setHeader('WWW-Authenticate', 'Bearer');
    return send(res, 401, { title: 'Unauthorized' });
  }
  let input;
  try {
    input = JSON.parse(raw);
  } catch {
    return send(res, 400, { title: 'Bad Request', detail: 'body is not JSON' });
  }
  const op = input && catalog[input.operation];
  if (!op || typeof input.params !== 'object' || input.params === null) {
    return send(res, 422, { title: 'Unprocessable Entity', detail: 'unknown operation or missing params' });
  }
  let holdId;
  try {
    const r = await pool.query('SELECT reserve_credit($1, $2) AS hold_id', [claims.sub, op.cost]);
    holdId = r.rows[0].hold_id;
  } catch (err) {
    if (err.code === 'SC402') return send(res, 402, { title: 'Payment Required', needed: op.cost });
    return send(res, 503, { title: 'Service Unavailable' });
  }
  let job;
  try {
    job = await queue.add(input.operation, {
      holdId, userId: claims.sub, operation: input.operation, model: op.model, params: input.params,
    });
  } catch {
    await pool.query('SELECT refund_credit($1)', [holdId]).catch(() => {});
    return send(res, 503, { title: 'Service Unavailable' });
  }
  return send(res, 202, {
    id: job.id, operation: input.operation, state: 'queued',
    credits: { amount: op.cost, state: 'reserved' },
  });
}

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/healthz') return send(res, 200, { ok: true });
  if (req.method !== 'POST' || req.url !== '/v1/jobs') return send(res, 404, { title: 'Not Found' });
  const chunks = [];
  let size = 0;
  req.on('data', (c) => {
    size += c.length;
    if (size > maxBody) {
      send(res, 413, { title: 'Payload Too Large' });
      req.destroy();
      return;
    }
    chunks.push(c);
  });
  req.on('end', () => {
    if (size > maxBody) return;
    submit(req, res, Buffer.concat(chunks).toString('utf8')).catch(() => send(res, 500, { title: 'Internal Server Error' }));
  });
});
server.keepAliveTimeout = 65000;
server.listen(Number(process.env.PORT || 3000), '127.0.0.1', () => {
  console.log(`seed route listening on 127.0.0.1:${server.address().port}`);
});

function shutdown() {
  server.close();
  Promise.allSettled([queue.close(), pool.end()]).then(() => process.exit(0));
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
