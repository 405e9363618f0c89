"""A worker written the way the RabbitMQ Python RPC tutorial writes one, with pika.

It answers each request on `reply_to` with the same `correlation_id`, and its
reply body is the trace context it found in the request headers, as JSON, so
a test can check what a non-Rust consumer reads from the gateway's messages.
Its reply carries a `traceparent` of its own (a new span in the same trace),
as a traced worker would, so the test can check the gateway continues it.

Usage: pika_worker.py AMQP_URL QUEUE
"""

import json
import secrets
import sys

import pika


def main() -> None:
    url, queue = sys.argv[1], sys.argv[2]
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare(queue=queue)

    def on_request(ch, method, props, body):
        headers = props.headers or {}
        seen = {
            name: (value.decode() if isinstance(value, bytes) else value)
            for name, value in headers.items()
            if name in ("traceparent", "tracestate", "baggage", "x-deadline")
        }
        seen["payload"] = body.decode(errors="replace")
        reply_headers = {}
        parts = str(seen.get("traceparent", "")).split("-")
        if len(parts) == 4:
            seen["reply_span_id"] = secrets.token_hex(8)
            reply_headers["traceparent"] = f"00-{parts[1]}-{seen['reply_span_id']}-01"
        ch.basic_publish(
            exchange="",
            routing_key=props.reply_to,
            properties=pika.BasicProperties(
                correlation_id=props.correlation_id,
                content_type="application/json",
                headers=reply_headers,
            ),
            body=json.dumps(seen).encode(),
        )
        ch.basic_ack(delivery_tag=method.delivery_tag)

    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(queue=queue, on_message_callback=on_request)
    print("consuming", flush=True)
    channel.start_consuming()


if __name__ == "__main__":
    main()
