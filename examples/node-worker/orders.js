'use strict';

// The orders example's Node.js worker (../orders/README.md): serves
// orders.v1.Orders/Create, which the gateway transcodes to JSON
// (`--transcode-json orders.v1.Orders/Create`). It is the consumer of the
// RabbitMQ RPC tutorial: JSON.parse(msg.content), then JSON.stringify(reply)
// to msg.properties.replyTo with the same correlationId. No protobuf and no
// generated code here: the gateway turns the caller's CreateRequest into
// proto3 JSON, and this reply back into a CreateResponse.
//
// worker.js shows the rest of the contract (deadlines, confirms, graceful
// shutdown); this file keeps to the typed-method part.
//
// Environment: AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f),
// ROUTE (default orders.v1.Orders.Create, the method's default route),
// QUEUE_DURABLE ("false" to declare the queue transient), OTEL_* (tracing.js).
// Prints `consuming` on stdout when ready.

const tracing = require('./tracing'); // first: it instruments amqplib as it loads
const crypto = require('node:crypto');
const amqp = require('amqplib');

const url = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2f';
const queue = process.env.ROUTE || 'orders.v1.Orders.Create';
const durable = process.env.QUEUE_DURABLE !== 'false';

// gRPC status codes this worker replies with (`x-status-code`).
const INVALID_ARGUMENT = 3;
const INTERNAL = 13;

/** A request the caller must fix: answered INVALID_ARGUMENT with its message. */
class Invalid extends Error {}

/**
 * Places an order. `request` is a CreateRequest in proto3 JSON:
 *   {"customerId": "alice", "items": [{"sku": "tea", "quantity": 2}],
 *    "priority": "PRIORITY_EXPRESS", "totalCents": "3000"}
 * (lowerCamelCase names, enums by name, int64 as a string, and fields at
 * their default value left out). Returns a CreateResponse the same way.
 */
function create(request) {
  const { customerId = '', items = [], priority = 'PRIORITY_UNSPECIFIED', totalCents = '0' } = request;
  if (!customerId) throw new Invalid('customerId is required');
  if (items.length === 0) throw new Invalid('an order needs at least one item');
  if (BigInt(totalCents) <= 0n) throw new Invalid('totalCents is required: place the order at a price from Quote');
  return {
    orderId: crypto.randomUUID(),
    createdAt: new Date().toISOString(), // a google.protobuf.Timestamp
    priority: priority === 'PRIORITY_UNSPECIFIED' ? 'PRIORITY_STANDARD' : priority,
    itemCount: items.reduce((count, item) => count + (item.quantity || 0), 0),
  };
}

async function main() {
  const connection = await amqp.connect(url);
  const channel = await connection.createChannel();
  await channel.assertQueue(queue, { durable });

  await channel.consume(queue, (msg) => {
    let body = Buffer.alloc(0);
    let headers = {};
    try {
      body = Buffer.from(JSON.stringify(create(JSON.parse(msg.content))));
    } catch (err) {
      // SyntaxError: not JSON, or a totalCents that is not an integer.
      const invalid = err instanceof Invalid || err instanceof SyntaxError;
      if (!invalid) console.error(`orders.js: ${err.stack}`);
      headers = invalid
        ? { 'x-status-code': INVALID_ARGUMENT, 'x-status-message': err.message }
        : { 'x-status-code': INTERNAL, 'x-status-message': 'the order could not be placed' };
    }
    channel.sendToQueue(msg.properties.replyTo, body, {
      correlationId: msg.properties.correlationId,
      contentType: 'application/json',
      headers,
    });
    channel.ack(msg);
  });
  console.log('consuming');
}

// Flush the spans still buffered before exiting.
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => tracing.shutdown().finally(() => process.exit(0)));
}

main().catch((err) => {
  console.error(`orders.js: ${err.stack}`);
  tracing.shutdown().finally(() => process.exit(1));
});
