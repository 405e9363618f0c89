'use strict';

// OpenTelemetry for the example worker. worker.js requires this file before
// amqplib (or run `node --require ./tracing.js worker.js`): the amqplib
// instrumentation patches amqplib when it is loaded, so the SDK has to be
// started first.
//
// Nothing is loaded unless OTEL_EXPORTER_OTLP_ENDPOINT (or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set, e.g. http://127.0.0.1:4317.
// Then:
//   - spans go over OTLP/gRPC to that collector, in batches;
//   - the service name is OTEL_SERVICE_NAME, default "node-worker";
//   - @opentelemetry/instrumentation-amqplib starts a CONSUMER span
//     "<queue> process" for each delivery whose parent is the context in the
//     message headers `traceparent`/`tracestate` (W3C, the gateway's producer
//     span), ends it on ack/nack, and injects the context of a PRODUCER span
//     ("publish <default>", child of the consumer span) into the reply's
//     headers, so the gateway's reply span joins the same trace;
//   - the standard variables apply (OTEL_TRACES_SAMPLER, OTEL_RESOURCE_ATTRIBUTES,
//     OTEL_BSP_*, OTEL_SDK_DISABLED, OTEL_PROPAGATORS, ...).
// Metrics and logs are not exported (their readers are set empty explicitly,
// otherwise the SDK would start OTLP/HTTP exporters for them from the same
// endpoint variable).

const enabled = Boolean(
  process.env.OTEL_EXPORTER_OTLP_ENDPOINT || process.env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
);

let sdk = null;

if (enabled) {
  const { NodeSDK } = require('@opentelemetry/sdk-node');
  const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-grpc');
  const { AmqplibInstrumentation } = require('@opentelemetry/instrumentation-amqplib');

  sdk = new NodeSDK({
    serviceName: process.env.OTEL_SERVICE_NAME || 'node-worker',
    // Reads OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, _HEADERS, _TIMEOUT, ...
    traceExporter: new OTLPTraceExporter(),
    metricReaders: [],
    logRecordProcessors: [],
    instrumentations: [new AmqplibInstrumentation()],
  });
  sdk.start();
}

let shutdownPromise = null;

/**
 * Flushes buffered spans and stops the SDK (at most `timeoutMs`). Safe to call
 * more than once and when tracing is off.
 */
function shutdown(timeoutMs = 5000) {
  if (!sdk) return Promise.resolve();
  if (!shutdownPromise) {
    let timer;
    const timeout = new Promise((resolve) => {
      timer = setTimeout(() => {
        process.stderr.write('node-worker: OpenTelemetry shutdown timed out\n');
        resolve();
      }, timeoutMs);
    });
    const done = sdk.shutdown().catch((err) => {
      process.stderr.write(`node-worker: OpenTelemetry shutdown failed: ${err}\n`);
    });
    shutdownPromise = Promise.race([done, timeout]).finally(() => clearTimeout(timer));
  }
  return shutdownPromise;
}

module.exports = { enabled, shutdown };
