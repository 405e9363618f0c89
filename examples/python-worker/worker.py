#!/usr/bin/env python3
"""A gateway worker in Python, written like the RabbitMQ Python RPC tutorial.

The classic tutorial worker (BlockingConnection, basic_consume, reply with
basic_publish to props.reply_to with the same correlation_id) is already a
valid worker for the gateway. This one adds what the gateway's AMQP contract
asks of a production worker (see docs/amqp-contract.md):

- a request whose `x-deadline` (Unix epoch ms) has passed is acked and dropped
  without work: the caller has already been answered DEADLINE_EXCEEDED;
- a message without `reply_to` or `correlation_id` is rejected without
  requeue: nobody could receive its reply;
- errors are replied with `x-status-code` / `x-status-message`, which the
  gateway returns to the gRPC caller as that status;
- the request is acked only after the broker has confirmed the reply
  (publisher confirms): at-least-once, a crash before the ack means redelivery;
- OpenTelemetry (when OTEL_EXPORTER_OTLP_ENDPOINT is set): the pika
  instrumentation continues the trace from the request's `traceparent` and
  injects the worker's context into the reply;
- SIGTERM/SIGINT: stop consuming, finish the message in hand, close, exit 0.

Configuration (environment):
    AMQP_URL        broker URL, default amqp://guest:guest@127.0.0.1:5672/%2f
    ROUTE           route served, i.e. the queue consumed, default "echo"
    PREFETCH        unacknowledged requests held at once, default 16
    QUEUE_DURABLE   "true"/"false", default "true"; must match an existing
                    queue's durability (the Rust worker's --durable)
    OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME (default "python-worker")
                    and the other standard OTEL_* variables

The handler answers JSON:
    {"worker": "python", "payload": <request body as UTF-8 text>,
     "headers": <the caller's string headers>}
and, when the request carries the application header `fail` with a gRPC
status code name or number (`NOT_FOUND` or `5`), an empty body with that
status and the message "failed on request".
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pika
import pika.exceptions

LOG = logging.getLogger("python-worker")

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"

# gRPC status codes by name, as the gateway understands `x-status-code`.
GRPC_CODES = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}
CODE_NAMES = {number: name for name, number in GRPC_CODES.items()}

# Header names that are not application headers: trace context, set by the
# gateway's propagator, and the `x-` names reserved for the gateway.
TRACE_CONTEXT_HEADERS = frozenset({"traceparent", "tracestate", "baggage"})
RESERVED_PREFIX = "x-"

STATUS_CODE_HEADER = "x-status-code"
STATUS_MESSAGE_HEADER = "x-status-message"
DEADLINE_HEADER = "x-deadline"


# --------------------------------------------------------------------------
# Configuration


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise SystemExit(f"{name} must be true or false, not {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, not {raw!r}") from None
    if value < 0:
        raise SystemExit(f"{name} must not be negative, not {raw!r}")
    return value


@dataclass(frozen=True)
class Config:
    amqp_url: str
    route: str
    prefetch: int
    durable: bool

    @classmethod
    def from_env(cls) -> Config:
        return cls(
            amqp_url=os.environ.get("AMQP_URL") or DEFAULT_AMQP_URL,
            route=os.environ.get("ROUTE") or "echo",
            prefetch=env_int("PREFETCH", 16),
            durable=env_bool("QUEUE_DURABLE", True),
        )


def redacted(url: str) -> str:
    """The broker URL without its password, for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{parts.path}"


# --------------------------------------------------------------------------
# Tracing (optional)


class Tracing:
    """OpenTelemetry set-up; does nothing unless OTEL_EXPORTER_OTLP_ENDPOINT is set."""

    def __init__(self) -> None:
        self.provider = None
        self._trace = None
        self._instrumentor = None

    def start(self) -> None:
        if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            return
        # Imported here so the worker also runs where only pika is installed.
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.pika import PikaInstrumentor
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES; the sampler
        # (OTEL_TRACES_SAMPLER), the exporter (OTEL_EXPORTER_OTLP_*) and the
        # batching (OTEL_BSP_*) read their own variables.
        service = os.environ.get("OTEL_SERVICE_NAME") or "python-worker"
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        self.provider = provider
        self._trace = trace
        self._instrumentor = PikaInstrumentor

    def instrument(self, channel: Any) -> None:
        """Traces one BlockingChannel: its consumers and its basic_publish.

        Call it before basic_consume. Per channel, not the global
        `PikaInstrumentor().instrument()`: that one wraps both
        BlockingConnection.channel and the SelectConnection.channel beneath
        it, so each BlockingChannel.basic_publish goes through two
        instrumented publishes and a reply gets two nested "send" spans.
        """
        if self.provider is None:
            return
        self._instrumentor.instrument_channel(channel, tracer_provider=self.provider, publish_hook=_name_reply_span)

    def mark_error(self, code: int, message: str) -> None:
        """Marks the current (consumer) span failed, as the Rust worker does."""
        if self._trace is None:
            return
        from opentelemetry.trace import Status, StatusCode

        span = self._trace.get_current_span()
        span.set_attribute("error.type", CODE_NAMES.get(code, "UNKNOWN"))
        span.set_status(Status(StatusCode.ERROR, message))

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()  # flushes the spans still batched


def _name_reply_span(span: Any, body: bytes, properties: pika.BasicProperties) -> None:
    """publish_hook: keep the reply-to address out of the span name.

    The pika instrumentation names a publish span "<exchange or routing key>
    send". A reply is published to the default exchange with the routing key
    `reply_to`, a per-channel Direct Reply-to address
    (amq.rabbitmq.reply-to.g1h2...): one span name per gateway channel, and an
    address that means nothing to a reader. Name it like the gateway's
    "receive (anonymous)" instead.
    """
    span.update_name("(anonymous) send")
    span.set_attribute("messaging.destination", "(anonymous)")
    span.set_attribute("messaging.destination.anonymous", True)


# --------------------------------------------------------------------------
# The handler


class HandlerError(Exception):
    """A failure the handler answers with a gRPC status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def text(value: Any) -> str | None:
    """A header value as text, or None when it is not a string."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):  # pika leaves non-UTF-8 long strings as bytes
        return value.decode("utf-8", errors="replace")
    return None


def application_headers(headers: dict[str, Any] | None) -> dict[str, str]:
    """The caller's string headers: no `x-` names, no trace context."""
    result = {}
    for name, value in (headers or {}).items():
        lowered = name.lower()
        if lowered.startswith(RESERVED_PREFIX) or lowered in TRACE_CONTEXT_HEADERS:
            continue
        value = text(value)
        if value is not None:
            result[name] = value
    return result


def status_code(value: str) -> int:
    """A gRPC status code from its name (`NOT_FOUND`) or number (`5`)."""
    value = value.strip()
    if value.isdigit():
        code = int(value)
        return code if code in CODE_NAMES else GRPC_CODES["UNKNOWN"]
    return GRPC_CODES.get(value.upper(), GRPC_CODES["UNKNOWN"])


def handle(body: bytes, headers: dict[str, str]) -> tuple[bytes, str]:
    """The work: returns (reply body, content type) or raises HandlerError."""
    fail = headers.get("fail")
    if fail is not None:
        code = status_code(fail)
        if code != GRPC_CODES["OK"]:
            raise HandlerError(code, "failed on request")
    reply = {
        "worker": "python",
        "payload": body.decode("utf-8", errors="replace"),
        "headers": headers,
    }
    return json.dumps(reply, ensure_ascii=False).encode("utf-8"), "application/json"


# --------------------------------------------------------------------------
# The AMQP side


def deadline_ms(headers: dict[str, Any] | None) -> int | None:
    """`x-deadline`: Unix epoch milliseconds. Integers of any width, or decimal text."""
    value = (headers or {}).get(DEADLINE_HEADER)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    value = text(value)
    if value is not None:
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def make_on_request(tracing: Tracing) -> Callable[..., None]:
    def on_request(
        ch: pika.adapters.blocking_connection.BlockingChannel,
        method: pika.spec.Basic.Deliver,
        props: pika.BasicProperties,
        body: bytes,
    ) -> None:
        if not props.reply_to or not props.correlation_id:
            LOG.warning(
                "rejecting a message without reply_to or correlation_id "
                "(reply_to=%r, correlation_id=%r): nobody could receive its reply",
                props.reply_to,
                props.correlation_id,
            )
            ch.basic_reject(delivery_tag=method.delivery_tag, requeue=False)
            return

        deadline = deadline_ms(props.headers)
        if deadline is not None and deadline <= time.time() * 1000:
            # The gateway has already answered DEADLINE_EXCEEDED: no work.
            LOG.info("dropping expired request %s", props.correlation_id)
            ch.basic_ack(delivery_tag=method.delivery_tag)
            return

        reply_headers: dict[str, Any] = {}
        try:
            reply_body, content_type = handle(body, application_headers(props.headers))
        except HandlerError as error:
            reply_body, content_type = b"", None
            reply_headers = {STATUS_CODE_HEADER: error.code, STATUS_MESSAGE_HEADER: error.message}
            tracing.mark_error(error.code, error.message)
        except Exception:  # a bug in the handler: answer INTERNAL, do not die
            LOG.exception("handler failed on %s", props.correlation_id)
            code = GRPC_CODES["INTERNAL"]
            reply_body, content_type = b"", None
            reply_headers = {STATUS_CODE_HEADER: code, STATUS_MESSAGE_HEADER: "the worker's handler failed"}
            tracing.mark_error(code, "the worker's handler failed")

        try:
            # With confirm_delivery on, basic_publish returns once the broker
            # has confirmed the reply, and raises if the broker refuses it.
            # With tracing on, the instrumentation starts a PRODUCER span
            # here and injects its traceparent into reply_headers.
            ch.basic_publish(
                exchange="",
                routing_key=props.reply_to,
                properties=pika.BasicProperties(
                    correlation_id=props.correlation_id,
                    content_type=content_type,
                    headers=reply_headers,
                ),
                body=reply_body,
            )
        except pika.exceptions.NackError:
            # The broker refused the reply. Requeue the request: it is tried
            # again until its x-deadline passes, then dropped above.
            LOG.warning("the broker refused the reply to %s; requeueing the request", props.correlation_id)
            ch.basic_nack(delivery_tag=method.delivery_tag, requeue=True)
            return
        # Only now: at-least-once.
        ch.basic_ack(delivery_tag=method.delivery_tag)

    return on_request


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pika").setLevel(logging.WARNING)  # pika is chatty at INFO
    config = Config.from_env()

    # A signal only sets a flag; the loop below checks it between messages.
    # (Calling into pika from a signal handler could re-enter it mid-I/O.)
    stopping = False

    def request_stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        LOG.info("%s received: stopping", signal.Signals(signum).name)
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    tracing = Tracing()
    tracing.start()

    try:
        connection = pika.BlockingConnection(pika.URLParameters(config.amqp_url))
        channel = connection.channel()
        tracing.instrument(channel)
        channel.confirm_delivery()
        channel.queue_declare(queue=config.route, durable=config.durable)
        channel.basic_qos(prefetch_count=config.prefetch)
        channel.basic_consume(queue=config.route, on_message_callback=make_on_request(tracing))
        LOG.info("consuming %r on %s (prefetch %d)", config.route, redacted(config.amqp_url), config.prefetch)
        print("consuming", flush=True)

        # channel.start_consuming(), but with a way out: process_data_events
        # dispatches deliveries to on_request, one at a time, and returns at
        # least every 0.2 s to look at the flag.
        while not stopping:
            connection.process_data_events(time_limit=0.2)

        # Cancel the consumer: deliveries prefetched but not yet handled go
        # back to the queue for another worker. The one in hand is finished.
        channel.stop_consuming()
        connection.close()
    except pika.exceptions.AMQPError as error:
        # No reconnection here: unacked requests go back to the queue, and a
        # supervisor (systemd, Kubernetes, docker --restart) starts us again.
        LOG.error("broker connection failed: %r", error)
        tracing.shutdown()
        return 1
    tracing.shutdown()
    LOG.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
