'use strict';

// An example Node.js worker for the gRPC-to-AMQP gateway.
//
// It is the consumer of the classic RabbitMQ RPC tutorial (consume the route's
// queue, answer each message on `replyTo` with the same `correlationId`),
// extended with what the gateway's AMQP contract asks of a worker:
//   - TCP_NODELAY on the broker socket (see connect() below);
//   - requests whose `x-deadline` (Unix epoch ms) has passed are acked and
//     dropped without work: nobody is waiting for the answer;
//   - messages without `replyTo` or `correlationId` are rejected, not requeued;
//   - a request is acked only after the broker confirmed its reply
//     (at-least-once: a worker dying before that gets it redelivered);
//   - errors are reported with the `x-status-code` / `x-status-message` headers;
//   - OpenTelemetry (tracing.js) continues the trace from `traceparent`;
//   - graceful shutdown on SIGTERM/SIGINT.
//
// Configuration (environment):
//   AMQP_URL           broker, default amqp://guest:guest@127.0.0.1:5672/%2f
//   ROUTE              queue consumed (the gateway's route), default "echo"
//   PREFETCH           requests handled at once, default 16
//   QUEUE_DURABLE      "true" | "false", how the queue is declared, default "true"
//                      (must match an existing queue's declaration)
//   SHUTDOWN_GRACE_MS  time in-flight requests get after SIGTERM, default 10000
//   DELAY_MS           wait this long before answering (play a slow worker), default 0
//   OTEL_*             tracing, see tracing.js
//
// stdout carries exactly one line, `consuming`, once the consumer is
// registered (a readiness signal for scripts and tests); logs go to stderr.

// Tracing first: the amqplib instrumentation must be in place before amqplib
// is loaded.
const tracing = require('./tracing');

const fs = require('node:fs');
const amqp = require('amqplib');
const otel = require('@opentelemetry/api');

// ---------------------------------------------------------------- config

function fail(message) {
  process.stderr.write(`node-worker: ${message}\n`);
  process.exit(2);
}

function envInt(name, fallback, min, max) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw.trim())) fail(`${name} must be an integer, got ${JSON.stringify(raw)}`);
  const value = Number(raw.trim());
  if (value < min || value > max) fail(`${name} must be between ${min} and ${max}, got ${value}`);
  return value;
}

function envBool(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const v = raw.trim().toLowerCase();
  if (v === 'true') return true;
  if (v === 'false') return false;
  return fail(`${name} must be "true" or "false", got ${JSON.stringify(raw)}`);
}

const config = {
  url: process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2f',
  route: process.env.ROUTE || 'echo',
  prefetch: envInt('PREFETCH', 16, 1, 65535),
  durable: envBool('QUEUE_DURABLE', true),
  graceMs: envInt('SHUTDOWN_GRACE_MS', 10000, 0, 3600000),
  delayMs: envInt('DELAY_MS', 0, 0, 3600000),
};

// ---------------------------------------------------------------- logging

/** Logs one line to stderr, with the trace id when a sampled span is active. */
function log(message) {
  const span = otel.trace.getActiveSpan();
  const ctx = span && span.spanContext();
  const trace = ctx && otel.isSpanContextValid(ctx) ? ` trace_id=${ctx.traceId}` : '';
  process.stderr.write(`${new Date().toISOString()} node-worker[${config.route}] ${message}${trace}\n`);
}

// ---------------------------------------------------------------- contract

// gRPC status codes, by canonical name (the values of `x-status-code`).
const GRPC_CODES = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
};

const CODE_NAMES = Object.fromEntries(Object.entries(GRPC_CODES).map(([name, n]) => [n, name]));

/** A gRPC code from a name ("NOT_FOUND", "not_found") or a number ("5"), or null. */
function parseCode(value) {
  const text = String(value).trim();
  if (/^\d+$/.test(text)) {
    const n = Number(text);
    return n <= 16 ? n : null;
  }
  const name = text.toUpperCase();
  return Object.hasOwn(GRPC_CODES, name) ? GRPC_CODES[name] : null;
}

/**
 * The `x-deadline` header as Unix epoch milliseconds, or null when absent or
 * not a number.
 *
 * The gateway sends it as a signed 64-bit integer (AMQP field type 'l').
 * amqplib >= 2.0.1 decodes 'l' with Buffer#readBigInt64BE and converts it with
 * Number(), so it arrives as a plain number (exact: epoch milliseconds are far
 * below 2^53). Other clients and versions differ: older amqplib used the
 * buffer-more-ints package (also a number), some libraries give a BigInt or a
 * Long object ({low, high}, toNumber()), amqplib's typed form is
 * {'!': type, value}, and a proxy may turn it into a decimal string. All are
 * accepted here.
 */
function epochMillis(value) {
  if (value === undefined || value === null) return null;
  switch (typeof value) {
    case 'number':
      return Number.isFinite(value) ? value : null;
    case 'bigint':
      return Number(value);
    case 'string': {
      const text = value.trim();
      return /^-?\d+$/.test(text) ? Number(text) : null;
    }
    case 'object':
      if (Buffer.isBuffer(value)) return epochMillis(value.toString('utf8'));
      if (Object.hasOwn(value, '!')) return epochMillis(value.value);
      if (typeof value.toNumber === 'function') return value.toNumber();
      if (typeof value.high === 'number' && typeof value.low === 'number') {
        return value.high * 2 ** 32 + (value.low >>> 0);
      }
      return null;
    default:
      return null;
  }
}

// Headers a handler does not see as application headers: the gateway's
// reserved `x-` names and the trace context.
const TRACE_CONTEXT = new Set(['traceparent', 'tracestate', 'baggage']);

/** The request's application headers: string values, no `x-`, no trace context. */
function applicationHeaders(headers) {
  const out = {};
  for (const [name, value] of Object.entries(headers || {})) {
    const lower = name.toLowerCase();
    if (lower.startsWith('x-') || TRACE_CONTEXT.has(lower)) continue;
    if (typeof value === 'string') out[name] = value;
  }
  return out;
}

// ---------------------------------------------------------------- handler

/**
 * The example handler. Returns {body, options} for the reply.
 *
 * - Normally: a JSON body {"worker":"node","payload":<payload as UTF-8 text>,
 *   "headers":<application headers>}.
 * - With the application header `fail` = a gRPC code name or number: an empty
 *   body with `x-status-code` = that code and `x-status-message` = "failed on
 *   request", which the gateway turns into that gRPC status.
 */
function handle(msg) {
  const headers = applicationHeaders(msg.properties.headers);
  if (Object.hasOwn(headers, 'fail')) {
    const code = parseCode(headers.fail);
    if (code === null) {
      return statusReply(GRPC_CODES.INVALID_ARGUMENT, `"fail" header is not a gRPC status code: ${headers.fail}`);
    }
    return statusReply(code, 'failed on request');
  }
  const body = {
    worker: 'node',
    payload: msg.content.toString('utf8'),
    headers,
  };
  return {
    body: Buffer.from(JSON.stringify(body)),
    options: { contentType: 'application/json' },
  };
}

/** A reply carrying only a status: empty body, `x-status-code`, `x-status-message`. */
function statusReply(code, message) {
  return {
    code,
    message,
    body: Buffer.alloc(0),
    // amqplib encodes a small JS number as a one-byte integer ('b'); the
    // gateway accepts any integer width (or a decimal string).
    options: { headers: { 'x-status-code': code, 'x-status-message': message } },
  };
}

// ---------------------------------------------------------------- consumer

// In-flight handlers, so shutdown can wait for them.
const inFlight = new Set();
let stopping = false;
let channel = null;
let connection = null;
let consumerTag = null;

/**
 * Connects with TCP_NODELAY. amqplib passes the second argument of connect()
 * (its "socket options") to net.connect() / tls.connect() and, on connect,
 * calls sock.setNoDelay(!!noDelay) itself (lib/connect.js). The default is
 * false: Nagle's algorithm stays on, and a request/reply worker then waits on
 * the peer's delayed ACK (~40 ms on Linux) for small writes, capping a worker
 * at prefetch 1 at about 25 requests/s.
 */
function connect() {
  return amqp.connect(config.url, {
    noDelay: true,
    clientProperties: { connection_name: `node-worker ${config.route}` },
  });
}

/** Publishes the reply and resolves once the broker confirms it. */
function publishReply(ch, replyTo, body, options) {
  return new Promise((resolve, reject) => {
    // On a ConfirmChannel the callback runs on the broker's ack (err null) or
    // nack (err set), or when the channel closes first.
    ch.sendToQueue(replyTo, body, options, (err) => (err ? reject(err) : resolve()));
  });
}

async function onMessage(ch, msg) {
  const { replyTo, correlationId } = msg.properties;
  if (!replyTo || !correlationId) {
    log(`rejected message without ${replyTo ? 'correlationId' : 'replyTo'} (message id ${msg.properties.messageId})`);
    ch.nack(msg, false, false);
    return;
  }

  const deadline = epochMillis(msg.properties.headers && msg.properties.headers['x-deadline']);
  if (deadline !== null && deadline <= Date.now()) {
    log(`dropped expired request ${correlationId} (deadline passed ${Date.now() - deadline} ms ago)`);
    ch.ack(msg);
    return;
  }

  if (config.delayMs > 0) await sleep(config.delayMs);

  let reply;
  try {
    reply = handle(msg);
  } catch (err) {
    log(`handler failed for ${correlationId}: ${err && err.stack ? err.stack : err}`);
    reply = statusReply(GRPC_CODES.INTERNAL, 'handler failed');
  }
  if (reply.code) {
    // Mark the consume span (active here when tracing is on) as failed, as the
    // Rust worker does: error.type = the status code name.
    const span = otel.trace.getActiveSpan();
    if (span) {
      span.setAttribute('error.type', CODE_NAMES[reply.code]);
      span.setStatus({ code: otel.SpanStatusCode.ERROR, message: reply.message });
    }
  }

  try {
    await publishReply(ch, replyTo, reply.body, { ...reply.options, correlationId });
  } catch (err) {
    // Not acked: requeue for another attempt (a redelivery past its deadline is
    // then dropped by the check above). If the channel is gone the broker
    // requeues it anyway.
    log(`reply to ${correlationId} failed: ${err && err.message ? err.message : err}`);
    try {
      ch.nack(msg, false, true);
    } catch (_) {
      // channel already closed
    }
    return;
  }
  ch.ack(msg);
}

async function main() {
  connection = await connect();
  connection.on('error', (err) => log(`connection error: ${err.message}`));
  connection.on('close', () => {
    if (!stopping) exitOnLoss('connection closed');
  });

  // One confirm channel: consume, reply (confirmed), ack.
  const ch = await connection.createConfirmChannel();
  channel = ch;
  ch.on('error', (err) => log(`channel error: ${err.message}`));
  ch.on('close', () => {
    if (!stopping) exitOnLoss('channel closed');
  });

  await ch.assertQueue(config.route, { durable: config.durable });
  await ch.prefetch(config.prefetch);

  const consumer = await ch.consume(config.route, (msg) => {
    if (msg === null) {
      // The broker cancelled the consumer (queue deleted).
      exitOnLoss('consumer cancelled by the broker');
      return;
    }
    const work = onMessage(ch, msg)
      .catch((err) => log(`unexpected error: ${err && err.stack ? err.stack : err}`))
      .finally(() => inFlight.delete(work));
    inFlight.add(work);
  });
  consumerTag = consumer.consumerTag;

  log(`consuming queue ${config.route} (prefetch ${config.prefetch}, durable ${config.durable})`);
  fs.writeSync(1, 'consuming\n');
}

/** Lost the broker: no reconnection here, exit non-zero for a supervisor to restart us. */
function exitOnLoss(reason) {
  if (stopping) return;
  stopping = true;
  log(`${reason}; exiting`);
  tracing.shutdown().finally(() => process.exit(1));
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

async function shutdown(signal) {
  if (stopping) {
    log(`${signal} again; exiting now`);
    process.exit(1);
  }
  stopping = true;
  log(`${signal}: stopping (${inFlight.size} in flight)`);
  try {
    // 1. Stop taking requests.
    if (channel && consumerTag) await channel.cancel(consumerTag);
    // 2. Let the requests in progress finish (reply + ack), within the grace period.
    if (inFlight.size > 0) {
      const finished = await Promise.race([
        Promise.allSettled([...inFlight]).then(() => true),
        sleep(config.graceMs).then(() => false),
      ]);
      if (!finished) log(`grace period over, ${inFlight.size} requests returned to the queue`);
    }
    // 3. Close cleanly: unacked requests go back to the queue.
    if (channel) await channel.close();
    if (connection) await connection.close();
  } catch (err) {
    log(`error while stopping: ${err && err.message ? err.message : err}`);
  }
  await tracing.shutdown();
  process.exit(0);
}

process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

main().catch((err) => {
  log(`start-up failed: ${err && err.message ? err.message : err}`);
  stopping = true;
  tracing.shutdown().finally(() => process.exit(1));
});
