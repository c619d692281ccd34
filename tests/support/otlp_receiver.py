"""A real OTLP/HTTP receiver for tests: decodes what exporters send with opentelemetry-proto.

``POST /v1/traces`` and ``POST /v1/metrics`` take protobuf bodies (gzip or not), as the
official exporters send them; spans and metric data points are kept, decoded, for the test
to compare with stored records. ``refuse`` makes it answer 503 (a collector down).
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.servers import run_asgi_server

PROTOBUF = "application/x-protobuf"


@dataclass
class ReceivedSpan:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    status_code: int
    attributes: dict[str, Any]
    resource: dict[str, Any]


@dataclass
class OtlpReceiver:
    refuse: bool = False
    spans: list[ReceivedSpan] = field(default_factory=list)
    metrics: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    headers: list[dict[str, str]] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stack = ExitStack()

    def start(self) -> OtlpReceiver:
        app = Starlette(
            routes=[
                Route("/v1/traces", self._traces, methods=["POST"]),
                Route("/v1/metrics", self._metrics, methods=["POST"]),
            ]
        )
        self.url = self._stack.enter_context(run_asgi_server(app, lifespan="off"))
        return self

    def stop(self) -> None:
        self._stack.close()

    def wait_for_spans(self, count: int, timeout: float = 10.0) -> list[ReceivedSpan]:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self.spans) >= count:
                    return list(self.spans)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.spans)} spans received, wanted {count}")
            time.sleep(0.02)

    def wait_for_metric(self, name: str, points: int, timeout: float = 10.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = self.metrics.get(name, [])
                if sum(int(p.get("count", 0)) for p in found) >= points:
                    return list(found)
            if time.monotonic() > deadline:
                raise TimeoutError(f"metric {name}: {found}")
            time.sleep(0.05)

    async def _body(self, request: Request) -> bytes:
        with self._lock:
            self.headers.append(dict(request.headers))
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        return body

    async def _traces(self, request: Request) -> Response:
        body = await self._body(request)
        if self.refuse:
            return Response(status_code=503)
        message = ExportTraceServiceRequest.FromString(body)
        received = list(_spans(message))
        with self._lock:
            self.spans.extend(received)
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type=PROTOBUF)

    async def _metrics(self, request: Request) -> Response:
        body = await self._body(request)
        if self.refuse:
            return Response(status_code=503)
        message = ExportMetricsServiceRequest.FromString(body)
        with self._lock:
            for resource_metrics in message.resource_metrics:
                for scope in resource_metrics.scope_metrics:
                    for metric in scope.metrics:
                        data = MessageToDict(metric)
                        points = data.get("histogram", {}).get("dataPoints", [])
                        for point in points:
                            point["attributes"] = {
                                a["key"]: next(iter(a["value"].values()))
                                for a in point.get("attributes", [])
                            }
                        # Cumulative: the newest export holds every point so far.
                        self.metrics[metric.name] = points
        return Response(ExportMetricsServiceResponse().SerializeToString(), media_type=PROTOBUF)


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


def _spans(message: ExportTraceServiceRequest) -> Iterator[ReceivedSpan]:
    for resource_spans in message.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope in resource_spans.scope_spans:
            for span in scope.spans:
                yield ReceivedSpan(
                    name=span.name,
                    kind=span.kind,
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    status_code=span.status.code,
                    attributes={a.key: _value(a.value) for a in span.attributes},
                    resource=resource,
                )
