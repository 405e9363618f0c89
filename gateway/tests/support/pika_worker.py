"""A worker written the way the RabbitMQ Python RPC tutorial writes one, with pika.

It answers each request on `reply_to` with the same `correlation_id`, and its
reply body is the trace context it found in the request headers, as JSON, so
a test can check what a non-Rust consumer reads from the gateway's messages.

Usage: pika_worker.py AMQP_URL QUEUE
"""

import json
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
        ch.basic_publish(
            exchange="",
            routing_key=props.reply_to,
            properties=pika.BasicProperties(correlation_id=props.correlation_id, content_type="application/json"),
            body=json.dumps(seen).encode(),
        )
        ch.basic_ack(delivery_tag=method.delivery_tag)

    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(queue=queue, on_message_callback=on_request)
    print("consuming", flush=True)
    channel.start_consuming()


if __name__ == "__main__":
    main()
