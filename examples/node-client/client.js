#!/usr/bin/env node
'use strict';

// An example Node.js client for the gRPC-to-AMQP gateway: one call to
// gateway.v1.Gateway/Process, printed as ONE line of JSON on stdout.
//
//   node client.js --target 127.0.0.1:50051 --route echo --payload 'hello' \
//       [--content-type text/plain] [--header k=v ...] [--deadline-ms 5000] \
//       [--traceparent 00-<trace id>-<span id>-01] [--tracestate k=v]
//
// Success: {"code":"OK","payload":"<reply as UTF-8>","contentType":"...","headers":{...},"correlationId":"..."}
// Failure: {"code":"<status name>","message":"...","correlationId":"..."}
//
// Exit status: 0 whenever the call produced a gRPC status (OK or not: the JSON
// says which), 2 for usage errors.
//
// The proto is loaded at run time from ../../proto/gateway/v1/gateway.proto
// (relative to this file) with @grpc/proto-loader, keepCase: false, so fields
// are camelCase in JavaScript (contentType, correlationId), as in the JSON
// mapping of proto3 and in grpcurl's output.

const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
const PROTO_FILE = 'gateway/v1/gateway.proto';

const USAGE = `usage: node client.js [--target HOST:PORT] [--route ROUTE] [--payload TEXT]
                      [--content-type TYPE] [--header NAME=VALUE ...]
                      [--deadline-ms MS] [--traceparent TP] [--tracestate TS]

  --target        gateway address (default 127.0.0.1:50051)
  --route         route (worker pool); empty means the gateway's default route
  --payload       request payload, sent as UTF-8 bytes (default empty)
  --content-type  MIME type of the payload (default none)
  --header        application header, repeatable (no x- names, no trace context)
  --deadline-ms   deadline of the call in milliseconds (default 5000)
  --traceparent   W3C traceparent sent as gRPC metadata (continue this trace)
  --tracestate    W3C tracestate sent with it
`;

// What a caller should do with each status code the gateway can return. The
// gateway maps its own failures onto a few codes (see the README's table);
// any other code comes from the worker's `x-status-code`.
//
//   OK                  done. `correlationId` finds the call in worker logs/traces.
//   INVALID_ARGUMENT    the request is wrong (route not allow-listed, reserved or
//                       too many/too large headers, or the worker said so).
//                       Do not retry: fix the request.
//   DEADLINE_EXCEEDED   no reply in time. The worker may still have done (or
//                       still do) the work: retry only idempotent calls, with a
//                       new deadline, and consider whether the deadline is too
//                       short or the worker pool too small.
//   UNAVAILABLE         no worker queue bound to the route, the broker is
//                       unreachable, or the gateway is shutting down. Transient:
//                       retry with exponential backoff and jitter (another
//                       gateway instance may answer). A connection lost mid-call
//                       also gives UNAVAILABLE after the worker may have taken
//                       the request: retry only idempotent calls.
//   RESOURCE_EXHAUSTED  payload over the gateway's limit (the message says
//                       which: do not retry, shrink the payload), or the gateway
//                       is shedding load at its in-flight limit (back off, then
//                       retry).
//   CANCELLED           the call was cancelled (normally by this client).
//   NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, FAILED_PRECONDITION,
//   ABORTED, OUT_OF_RANGE, UNIMPLEMENTED, UNAUTHENTICATED, DATA_LOSS
//                       application errors from the worker, with its message:
//                       handle them like the same codes from any gRPC service
//                       (ABORTED: retry the whole transaction; the others: do
//                       not retry blindly).
//   INTERNAL, UNKNOWN   a bug or an unexpected failure in the worker (or a
//                       reply status the gateway could not read). Do not retry
//                       blindly; report it with the correlation id.

/** Status code names by number (grpc.status maps names to numbers). */
const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, n]) => [n, name]));

function usage(message) {
  if (message) process.stderr.write(`client.js: ${message}\n`);
  process.stderr.write(USAGE);
  process.exit(2);
}

function parseCommandLine(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: {
        target: { type: 'string', default: '127.0.0.1:50051' },
        route: { type: 'string', default: '' },
        payload: { type: 'string', default: '' },
        'content-type': { type: 'string', default: '' },
        header: { type: 'string', multiple: true, default: [] },
        'deadline-ms': { type: 'string', default: '5000' },
        traceparent: { type: 'string' },
        tracestate: { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
      allowPositionals: false,
    });
  } catch (err) {
    return usage(err.message);
  }
  const v = parsed.values;
  if (v.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }

  const headers = {};
  for (const h of v.header) {
    const eq = h.indexOf('=');
    if (eq <= 0) usage(`--header must be NAME=VALUE, got ${JSON.stringify(h)}`);
    headers[h.slice(0, eq)] = h.slice(eq + 1);
  }

  if (!/^\d+$/.test(v['deadline-ms'])) usage(`--deadline-ms must be a whole number of milliseconds, got ${JSON.stringify(v['deadline-ms'])}`);
  const deadlineMs = Number(v['deadline-ms']);

  return {
    target: v.target,
    route: v.route,
    payload: v.payload,
    contentType: v['content-type'],
    headers,
    deadlineMs,
    traceparent: v.traceparent,
    tracestate: v.tracestate,
  };
}

function loadService() {
  const definition = protoLoader.loadSync(PROTO_FILE, {
    includeDirs: [PROTO_ROOT],
    keepCase: false, // camelCase field names: contentType, correlationId
    longs: String,
    enums: String,
    defaults: true, // absent fields read as '' / empty Buffer / {}
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).gateway.v1.Gateway;
}

/** The first value of `correlation-id` in any of the metadata objects given. */
function correlationIdFrom(...metadatas) {
  for (const md of metadatas) {
    if (!md) continue;
    const values = md.get('correlation-id');
    if (values.length > 0) return String(values[0]);
  }
  return '';
}

function main() {
  const args = parseCommandLine(process.argv.slice(2));
  const Gateway = loadService();
  const client = new Gateway(args.target, grpc.credentials.createInsecure());

  const metadata = new grpc.Metadata();
  // Trace context travels as gRPC metadata (never in `headers`): the gateway
  // continues this trace instead of starting a new one.
  if (args.traceparent) metadata.set('traceparent', args.traceparent);
  if (args.tracestate) metadata.set('tracestate', args.tracestate);

  const request = {
    route: args.route,
    payload: Buffer.from(args.payload, 'utf8'),
    contentType: args.contentType,
    headers: args.headers,
  };

  // The deadline bounds the whole round trip through the broker and the
  // worker; the gateway enforces it and tells the worker (x-deadline).
  const deadline = new Date(Date.now() + args.deadlineMs);

  let initialMetadata = null;
  const call = client.process(request, metadata, { deadline }, (err, response) => {
    let out;
    if (err) {
      out = {
        code: CODE_NAMES[err.code] || String(err.code),
        message: err.details || '',
        correlationId: correlationIdFrom(err.metadata, initialMetadata),
      };
    } else {
      out = {
        code: 'OK',
        payload: Buffer.from(response.payload).toString('utf8'),
        contentType: response.contentType,
        headers: response.headers,
        correlationId: response.correlationId || correlationIdFrom(initialMetadata),
      };
    }
    process.stdout.write(`${JSON.stringify(out)}\n`);
    client.close();
  });
  call.on('metadata', (md) => {
    initialMetadata = md;
  });
}

main();
