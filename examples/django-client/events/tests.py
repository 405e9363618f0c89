"""Tests of /trigger_event/ against a real gateway.

    GATEWAY_ADDR=127.0.0.1:50051 python manage.py test

The gateway at GATEWAY_ADDR must allow the route GATEWAY_ROUTE (default
"echo") and have a worker on it (the Rust `worker --route echo`, or
examples/python-worker). Without GATEWAY_ADDR, or with nothing answering
there, the tests that need the gateway FAIL: they do not skip, so a run
without a gateway can never pass by accident.
"""

from __future__ import annotations

import os
import uuid

import grpc
from django.conf import settings
from django.test import SimpleTestCase

from . import gateway
from .views import http_status

READY_TIMEOUT = 5.0  # seconds to wait for the gateway's port to answer


class GatewayTestCase(SimpleTestCase):
    """Fails each test unless a gateway answers at GATEWAY_ADDR."""

    gateway_address = ""
    gateway_problem: str | None = None

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        # Checked once per class; each test then fails on its own (a failure,
        # not a skip and not a class-level error that hides the test names).
        cls.gateway_address = os.environ.get("GATEWAY_ADDR", "").strip()
        if not cls.gateway_address:
            cls.gateway_problem = (
                "GATEWAY_ADDR is not set: these tests call a real gateway, e.g. "
                "GATEWAY_ADDR=127.0.0.1:50051 python manage.py test (see README.md)"
            )
            return
        channel = grpc.insecure_channel(cls.gateway_address)
        try:
            grpc.channel_ready_future(channel).result(timeout=READY_TIMEOUT)
        except grpc.FutureTimeoutError:
            cls.gateway_problem = f"no gateway answers at GATEWAY_ADDR={cls.gateway_address} within {READY_TIMEOUT} s"
        finally:
            channel.close()

    def setUp(self) -> None:
        super().setUp()
        if self.gateway_problem:
            self.fail(self.gateway_problem)
        override = self.settings(GATEWAY_ADDR=self.gateway_address)
        override.enable()
        self.addCleanup(override.disable)


class TriggerEventTests(GatewayTestCase):
    def test_get_returns_the_workers_reply(self) -> None:
        response = self.client.get("/trigger_event/", {"message": "hello"})

        self.assertEqual(response.status_code, 200, response.content)
        body = response.json()
        self.assertEqual(body["code"], "OK")
        # The echo worker returns the payload itself; the Python worker a
        # JSON document that contains it.
        self.assertIn("hello", body["payload"])
        self.assertTrue(body["correlation_id"])
        self.assertEqual(response["X-Correlation-Id"], body["correlation_id"])

    def test_post_body_is_the_payload(self) -> None:
        response = self.client.post("/trigger_event/", data=b"posted body", content_type="text/plain")

        self.assertEqual(response.status_code, 200, response.content)
        self.assertIn("posted body", response.json()["payload"])

    def test_route_not_allowed_is_400(self) -> None:
        with self.settings(GATEWAY_ROUTE=f"not-allowed-{uuid.uuid4().hex[:8]}"):
            response = self.client.get("/trigger_event/", {"message": "hello"})

        self.assertEqual(response.status_code, 400, response.content)
        body = response.json()
        self.assertEqual(body["code"], "INVALID_ARGUMENT")
        self.assertIn("not allowed", body["message"])
        # The gateway names every call, refused ones too.
        self.assertTrue(body["correlation_id"])

    def test_deadline_exceeded_is_504(self) -> None:
        # A deadline too short for any round trip: this client's own timer
        # ends the call, so no correlation id comes back.
        with self.settings(GATEWAY_TIMEOUT=0.000001):
            response = self.client.get("/trigger_event/", {"message": "hello"})

        self.assertEqual(response.status_code, 504, response.content)
        self.assertEqual(response.json()["code"], "DEADLINE_EXCEEDED")

    def test_one_channel_per_process(self) -> None:
        for _ in range(3):
            self.assertEqual(self.client.get("/trigger_event/", {"message": "again"}).status_code, 200)

        self.assertIs(gateway.stub(), gateway.stub(settings.GATEWAY_ADDR))
        self.assertEqual(list(gateway._stubs), [settings.GATEWAY_ADDR])


class MappingTests(SimpleTestCase):
    """The gRPC -> HTTP mapping; needs no gateway."""

    def test_http_status_of_each_code(self) -> None:
        expected = {
            grpc.StatusCode.INVALID_ARGUMENT: 400,
            grpc.StatusCode.DEADLINE_EXCEEDED: 504,
            grpc.StatusCode.UNAVAILABLE: 503,
            grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
            grpc.StatusCode.NOT_FOUND: 502,
            grpc.StatusCode.INTERNAL: 502,
            grpc.StatusCode.UNKNOWN: 502,
        }
        for code, status in expected.items():
            with self.subTest(code=code.name):
                self.assertEqual(http_status(code), status)

    def test_other_methods_are_405(self) -> None:
        self.assertEqual(self.client.put("/trigger_event/").status_code, 405)
