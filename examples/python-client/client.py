#!/usr/bin/env python3
"""Calls gateway.v1.Gateway/Process once and prints the outcome as one JSON line.

    python client.py --target 127.0.0.1:50051 --route echo --payload hello \\
        [--header k=v ...] [--content-type text/plain] [--deadline 5.0] \\
        [--traceparent 00-<32 hex>-<16 hex>-01]

Success:
    {"code": "OK", "payload": "<text>", "content_type": "...",
     "headers": {...}, "correlation_id": "..."}
Any gRPC error:
    {"code": "<grpc.StatusCode name>", "message": "...",
     "correlation_id": "<from 'correlation-id' response metadata, or null>"}
and, on stderr, what a caller should do about it (see ADVICE below).

Exit status 0 for any gRPC status (the status is in the JSON), 2 for usage
errors (and for missing generated stubs: run ./generate.sh first).

The stubs are generated from ../../proto by ./generate.sh into gen/, which
is put on sys.path here; generated code is not committed.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

GEN = Path(__file__).resolve().parent / "gen"
sys.path.insert(0, str(GEN))
try:
    from gateway.v1 import gateway_pb2, gateway_pb2_grpc  # noqa: E402  (generated)
except ImportError as error:  # pragma: no cover - set-up error
    sys.stderr.write(f"client.py: cannot import the generated stubs from {GEN} ({error}); run ./generate.sh first\n")
    sys.exit(2)

CORRELATION_METADATA = "correlation-id"
TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")

# What a caller should do with each status the gateway can return. Retries
# need backoff (exponential, with jitter, capped) and a budget, and only for
# idempotent calls: UNAVAILABLE and DEADLINE_EXCEEDED do not mean "not
# executed": a worker may have taken the request before the failure.
ADVICE: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "done",
    grpc.StatusCode.INVALID_ARGUMENT: (
        "never retry: the request itself is wrong (route not allow-listed, empty route without a "
        "default, reserved x- or trace-context header names, too many or too large headers); fix it"
    ),
    grpc.StatusCode.DEADLINE_EXCEEDED: (
        "no reply in time; the work may still have happened (or still happen): retry only if "
        "idempotent, with backoff, or deduplicate on your own request id"
    ),
    grpc.StatusCode.UNAVAILABLE: (
        "transient: no worker queue bound to the route, broker down, or gateway shutting down; "
        "retry with exponential backoff and jitter (another gateway if you have several); if the "
        "call may have reached a worker, retry only idempotent work"
    ),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (
        "the payload is over the gateway's limit (the limit is in the message: do not retry, "
        "send less) or the gateway shed load at its in-flight limit (retry with backoff)"
    ),
    grpc.StatusCode.CANCELLED: "the call was cancelled (by this client or a proxy); retry only if you still want it",
    grpc.StatusCode.UNKNOWN: "the worker replied with an unusable status code; do not retry blindly, check the worker",
    grpc.StatusCode.INTERNAL: "the worker failed (a bug); do not retry blindly, check its logs by correlation id",
}
DEFAULT_ADVICE = (
    "the worker answered with this status (x-status-code): act on its meaning for your route; "
    "ABORTED may be retried, NOT_FOUND/ALREADY_EXISTS/PERMISSION_DENIED/FAILED_PRECONDITION/"
    "OUT_OF_RANGE/UNIMPLEMENTED/UNAUTHENTICATED are not fixed by retrying"
)


def advice(code: grpc.StatusCode) -> str:
    return ADVICE.get(code, DEFAULT_ADVICE)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Call gateway.v1.Gateway/Process once.")
    parser.add_argument("--target", default="127.0.0.1:50051", help="gateway address host:port")
    parser.add_argument("--route", default="", help="route (worker pool); empty: the gateway's default route")
    parser.add_argument("--payload", default="", help="request payload, sent as UTF-8")
    parser.add_argument("--content-type", default="text/plain", help="content type of the payload")
    parser.add_argument("--header", action="append", default=[], metavar="K=V", help="application header (repeatable)")
    parser.add_argument("--deadline", type=float, default=5.0, help="deadline in seconds (default 5.0)")
    parser.add_argument("--traceparent", help="W3C traceparent to continue, sent as gRPC metadata")
    args = parser.parse_args(argv)

    headers = {}
    for item in args.header:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--header wants K=V, not {item!r}")
        headers[name] = value
    args.headers = headers
    if not args.deadline > 0:
        parser.error("--deadline must be a positive number of seconds")
    if args.traceparent is not None and not TRACEPARENT.match(args.traceparent):
        parser.error("--traceparent wants 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>")
    return args


def correlation_id(*metadata_sets: Any) -> str | None:
    """The `correlation-id` response metadata, from whichever set carries it."""
    for metadata in metadata_sets:
        for key, value in metadata or ():
            if key == CORRELATION_METADATA:
                return value
    return None


def call(
    stub: gateway_pb2_grpc.GatewayStub,
    route: str,
    payload: bytes,
    content_type: str = "",
    headers: dict[str, str] | None = None,
    deadline: float = 5.0,
    traceparent: str | None = None,
) -> dict[str, Any]:
    """One Process call, as the JSON-ready dict this example prints."""
    request = gateway_pb2.ProcessRequest(route=route, payload=payload, content_type=content_type, headers=headers or {})
    # Trace context travels in gRPC metadata, never in `headers` (the gateway
    # refuses traceparent there).
    metadata = [("traceparent", traceparent)] if traceparent else []
    try:
        # timeout= is the call's deadline: it travels as grpc-timeout and the
        # gateway bounds the whole AMQP round trip by it.
        response, _call = stub.Process.with_call(request, timeout=deadline, metadata=metadata)
    except grpc.RpcError as error:  # also a grpc.Call: code, details, metadata
        return {
            "code": error.code().name,
            "message": error.details() or "",
            "correlation_id": correlation_id(error.trailing_metadata(), error.initial_metadata()),
        }
    result: dict[str, Any] = {
        "code": "OK",
        "payload": response.payload.decode("utf-8", errors="replace"),
        "content_type": response.content_type,
        "headers": dict(response.headers),
        "correlation_id": response.correlation_id,
    }
    try:
        response.payload.decode("utf-8")
    except UnicodeDecodeError:  # binary reply: keep the exact bytes too
        result["payload_base64"] = base64.b64encode(response.payload).decode("ascii")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # One channel for the process's lifetime in a real program: a channel is
    # a pool of HTTP/2 connections, made to be shared by all calls.
    with grpc.insecure_channel(args.target) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        result = call(
            stub,
            route=args.route,
            payload=args.payload.encode("utf-8"),
            content_type=args.content_type,
            headers=args.headers,
            deadline=args.deadline,
            traceparent=args.traceparent,
        )
    print(json.dumps(result, ensure_ascii=False), flush=True)
    if result["code"] != "OK":
        sys.stderr.write(f"{result['code']}: {advice(grpc.StatusCode[result['code']])}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
