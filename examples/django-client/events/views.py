"""/trigger_event/: the seed's view, calling the gateway instead of RabbitMQ."""

from __future__ import annotations

import logging
import re

import grpc
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from . import gateway

LOG = logging.getLogger(__name__)

TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")

# gRPC status -> HTTP status for this endpoint's callers.
#   INVALID_ARGUMENT    400  the request is wrong: never retry it as is
#   RESOURCE_EXHAUSTED  429  payload over the limit, or the gateway shed load
#   UNAVAILABLE         503  no worker queue, broker down: retry with backoff
#   DEADLINE_EXCEEDED   504  no reply in time; the work may still happen
#   anything else       502  the worker (upstream) answered with an error
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 502)


@csrf_exempt  # an API endpoint called by programs, not a form
@require_http_methods(["GET", "POST"])
def trigger_event(request: HttpRequest) -> JsonResponse:
    # POST: the body is the payload, with its content type. GET (or an empty
    # POST): the `message` query parameter, as text.
    if request.method == "POST" and request.body:
        payload, content_type = request.body, request.content_type or ""
    else:
        payload, content_type = request.GET.get("message", "").encode("utf-8"), "text/plain"
    traceparent = request.headers.get("traceparent")
    if traceparent and not TRACEPARENT.match(traceparent):
        traceparent = None

    try:
        reply = gateway.process(payload, content_type=content_type, traceparent=traceparent)
    except gateway.GatewayError as error:
        status = http_status(error.code)
        LOG.warning("gateway call failed: %s", error)
        response = JsonResponse(
            {"code": error.code.name, "message": error.message, "correlation_id": error.correlation_id},
            status=status,
        )
        if status in (429, 503):
            response["Retry-After"] = "1"
        return response

    response = JsonResponse(
        {
            "code": "OK",
            "payload": reply.payload.decode("utf-8", errors="replace"),
            "content_type": reply.content_type,
            "headers": reply.headers,
            "correlation_id": reply.correlation_id,
        }
    )
    response["X-Correlation-Id"] = reply.correlation_id
    return response
