#!/usr/bin/env python3
"""Calls the orders example's API (orders.v1.Orders, ../orders/README.md)
through the gateway: Quote a basket, then Create the order at the quoted
price, both under one trace. Prints one JSON line.

    python orders_client.py --target 127.0.0.1:50051 [--customer alice] \\
        [--item tea=2 --item mug=1] [--priority express] [--deadline 5.0] \\
        [--traceparent 00-<32 hex>-<16 hex>-01]

Output, each call as {"code": "<grpc.StatusCode name>", "correlation_id":
"<from 'correlation-id' response metadata>", and "response" (the message in
proto3 JSON) when OK, "message" otherwise}:
    {"quote": {...}, "create": {...}}
"create" is null when Quote failed: there is no price to order at.

Exit status 0 for any gRPC status (the statuses are in the JSON), 2 for usage
errors and missing generated stubs (run ./generate.sh first).

The stubs are generated from ../orders/proto by ./generate.sh into gen/: the
gateway serves orders.v1 as its own gRPC API, so this is an ordinary gRPC
client of it, knowing nothing of AMQP.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

GEN = Path(__file__).resolve().parent / "gen"
sys.path.insert(0, str(GEN))
try:
    from orders.v1 import orders_pb2, orders_pb2_grpc  # noqa: E402  (generated)
except ImportError as error:  # pragma: no cover - set-up error
    sys.stderr.write(f"orders_client.py: cannot import the stubs from {GEN} ({error}); run ./generate.sh first\n")
    sys.exit(2)

CORRELATION_METADATA = "correlation-id"
TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
PRIORITIES = {"standard": orders_pb2.PRIORITY_STANDARD, "express": orders_pb2.PRIORITY_EXPRESS}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Quote, then create, an order through the gateway.")
    parser.add_argument("--target", default="127.0.0.1:50051", help="gateway address host:port")
    parser.add_argument("--customer", default="alice", help="customer id of the order (empty: Create refuses it)")
    parser.add_argument(
        "--item", action="append", metavar="SKU=QUANTITY", help="a line of the basket (repeatable; default tea=2 mug=1)"
    )
    parser.add_argument("--priority", choices=sorted(PRIORITIES), default="express", help="shipping priority")
    parser.add_argument("--deadline", type=float, default=5.0, help="deadline of each call in seconds (default 5.0)")
    parser.add_argument("--traceparent", help="W3C traceparent both calls continue, sent as gRPC metadata")
    args = parser.parse_args(argv)

    args.items = []
    for item in args.item or ["tea=2", "mug=1"]:
        sku, sep, quantity = item.partition("=")
        if not sep or not quantity.isdigit():
            parser.error(f"--item wants SKU=QUANTITY, not {item!r}")
        args.items.append(orders_pb2.LineItem(sku=sku, quantity=int(quantity)))
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
    method: Callable[..., Any], request: Message, metadata: list[tuple[str, str]], deadline: float
) -> tuple[Message | None, dict[str, Any]]:
    """One unary call: the response message (None on error), and the call as
    the JSON-ready dict this example prints."""
    try:
        response, rpc = method.with_call(request, timeout=deadline, metadata=metadata)
    except grpc.RpcError as error:
        return None, {
            "code": error.code().name,
            "message": error.details(),
            "correlation_id": correlation_id(error.initial_metadata(), error.trailing_metadata()),
        }
    return response, {
        "code": "OK",
        "correlation_id": correlation_id(rpc.initial_metadata(), rpc.trailing_metadata()),
        "response": json_format.MessageToDict(response),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Trace context travels in gRPC metadata; both calls continue the same
    # parent, so they land in one trace.
    metadata = [("traceparent", args.traceparent)] if args.traceparent else []
    with grpc.insecure_channel(args.target) as channel:
        orders = orders_pb2_grpc.OrdersStub(channel)
        priority = PRIORITIES[args.priority]
        request = orders_pb2.QuoteRequest(items=args.items, priority=priority)
        quote, quoted = call(orders.Quote, request, metadata, args.deadline)
        created = None
        if quote is not None:
            request = orders_pb2.CreateRequest(
                customer_id=args.customer, items=args.items, priority=priority, total_cents=quote.total_cents
            )
            _, created = call(orders.Create, request, metadata, args.deadline)
    print(json.dumps({"quote": quoted, "create": created}, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
