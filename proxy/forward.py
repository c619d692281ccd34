"""Forwarding: one request to the upstream and its answer back, metered on the side."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from starlette.requests import Request
from starlette.responses import Response

from proxy.access.budgets import Budgets
from proxy.access.gate import Gate
from proxy.access.keys import VirtualKey
from proxy.answer import BufferedAnswer
from proxy.azure_paths import azure_call, without_api_version
from proxy.body import read_body
from proxy.config import UpstreamSettings
from proxy.errors import (
    BodyTooLarge,
    BudgetExceeded,
    DatabaseUnavailable,
    ErrorShape,
    InvalidRequest,
    ModelNotRouted,
    RecordsUnavailable,
    TallyError,
    UpstreamPoolExhausted,
    UpstreamTimeout,
    UpstreamUnreachable,
    error_response,
)
from proxy.gemini_api import (
    KEY_HEADER,
    NATIVE_PREFIX,
    is_native,
    lift_query_key,
    native_call,
    version_of,
)
from proxy.metering import completion_text_from_payload, priced_model, wants_estimate
from proxy.money import format_usd
from proxy.plan import (
    BodyError,
    RequestPlan,
    client_headers,
    for_gemini,
    plan_request,
    upstream_headers,
    with_deployment,
    with_model,
    with_stream_usage,
)
from proxy.pricing import NOTHING_CHARGED, PriceBook
from proxy.records import PROXY_SHUTTING_DOWN, Exchange, new_record_id
from proxy.routing import (
    NoRoute,
    Target,
    UnsafePath,
    check_path,
    choose_upstream,
    credential_headers,
    target,
    upstream_path,
)
from proxy.session_costs import SessionCosts
from proxy.spend.budget import Budget
from proxy.sse import json_object
from proxy.store.writer import Recordable
from proxy.streaming import PassthroughStream, shutdown_event, shutdown_response
from proxy.tags import TagError, parse_tags
from proxy.tee import ExchangeSink, Framing, StreamTee, elapsed_ms
from proxy.tool_calls import tool_calls_in, tool_results_in
from proxy.upstream_client import (
    PoolExhaustedError,
    Timeouts,
    UpstreamClient,
    UpstreamConnectError,
    UpstreamHTTPError,
    UpstreamResponse,
    UpstreamTimeoutError,
    timeouts_of,
)
from proxy.usage import response_model_of, usage_from_payload

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-tally-request-id"
DOWNGRADED_HEADER = "x-tally-downgraded-from"
TOTAL_TOKENS_HEADER = "x-tally-total-tokens"
COST_HEADER = "x-tally-cost-usd"
SESSION_COST_HEADER = "x-tally-session-cost-usd"
RECORDS_UNAVAILABLE = (
    "tallyproxy cannot record requests now (database down and spool full, or its queue "
    "full), so it does not serve them (database.when_unrecordable: refuse); retry shortly"
)
NO_GEMINI_ROUTE = (
    "no upstream of kind gemini is configured, so Gemini's native API (/v1beta/...) is not "
    "served; add one to 'upstreams:' (url: https://generativelanguage.googleapis.com)"
)
UNKNOWN_MODEL = (
    "tallyproxy cannot tell which model this request is for (the body is neither a JSON "
    "object nor a form with one 'model' field, or its readings disagree), and a model list "
    "or a budget applies to it; send JSON with a string 'model'"
)


class Forwarder:
    """Sends client requests to their upstream through one pooled client; meters the answers."""

    def __init__(
        self,
        client: UpstreamClient,
        routes: Sequence[UpstreamSettings],
        sink: ExchangeSink,
        prices: PriceBook,
        session_costs: SessionCosts,
        max_body_bytes: int,
        drift_sample_rate: float = 0.0,
        *,
        gate: Gate | None = None,
        budgets: Budgets | None = None,
        refuse_unless_recordable: Recordable | None = None,
    ) -> None:
        self.client = client
        self.routes = tuple(routes)
        # Gemini's native API goes to gemini upstreams only, the OpenAI API to the others
        # (to all of them when there are no others: a lone upstream takes everything).
        self.gemini_routes = tuple(route for route in self.routes if route.kind == "gemini")
        self.api_routes = (
            tuple(route for route in self.routes if route.kind != "gemini") or self.routes
        )
        self.sink = sink
        self.prices = prices
        self.session_costs = session_costs
        self.drift_sample_rate = drift_sample_rate
        self.max_body_bytes = max_body_bytes
        # Without a gate of the app's, virtual keys are unknown and pass-through stays open.
        self.gate = gate if gate is not None else Gate(None, allow_anonymous=True)
        self.budgets = budgets
        # database.when_unrecordable: refuse; None serves whatever the writer's state.
        self.records = refuse_unless_recordable

    async def handle(self, request: Request) -> Response:
        """The endpoint behind ``/v1/{path}``."""
        if self.records is not None and not self.records.recordable:
            return error_response(RecordsUnavailable(RECORDS_UNAVAILABLE), {"retry-after": "1"})
        started = time.perf_counter()
        record_id = new_record_id()
        id_header = {REQUEST_ID_HEADER: record_id}
        endpoint: str = request.scope["path"]
        headers = request.headers.items()
        path: str = request.path_params["path"]
        query = request.scope["query_string"].decode("latin-1")
        raw_path: bytes | None = request.scope.get("raw_path")
        azure = azure_call(endpoint, raw_path)
        sent_path = path  # what the client named, checked whole (the deployment too)
        raw = (raw_path, _prefix(endpoint))
        if azure is not None:
            # Served as the OpenAI operation it stands for: routed and recorded as that.
            endpoint, path = azure.endpoint, azure.operation
            raw = (raw_path, azure.raw_prefix) if azure.raw_prefix else (None, b"")
        call = native_call(endpoint, path)
        native = call is not None or endpoint.startswith(NATIVE_PREFIX)
        shape: ErrorShape = "gemini" if native else "openai"
        if native:
            headers, query = _key_from_query(headers, query)
        try:
            # Before anything else: a path that could reach another target goes nowhere.
            check_path(sent_path)
            body = await read_body(request, self.max_body_bytes)
            plan = plan_request(endpoint, body, request.headers.get("content-type", ""))
            if native:
                plan = for_gemini(plan, call)
            elif azure is not None:
                plan = with_deployment(plan, azure.deployment)
            tags = parse_tags(headers, plan.json)
            upstream = self._route(plan.model, native)
            where = target(
                upstream,
                upstream_path(path, *raw),
                plan.model,
                version_of(endpoint),
            )
            if upstream.kind != "azure":
                query = without_api_version(query)  # only Azure reads it
            # A virtual key is resolved here; it never reaches the upstream, whose own key
            # replaces it (upstream_headers drops every client credential header).
            admission = await self.gate.admit(headers, plan.model, upstream)
        except BodyError as exc:
            return error_response(InvalidRequest(str(exc)), id_header, shape)
        except TagError as exc:
            return error_response(InvalidRequest(str(exc), param=exc.header), id_header, shape)
        except BodyTooLarge as exc:
            # Closed after the 413: a body drained only up to its bound leaves no known state.
            return error_response(exc, {**id_header, "connection": "close"}, shape)
        except NoRoute as exc:
            return error_response(ModelNotRouted(str(exc), param="model"), id_header, shape)
        except UnsafePath as exc:
            return error_response(InvalidRequest(str(exc), param=exc.param), id_header, shape)
        except TallyError as exc:
            return error_response(exc, id_header, shape)
        if upstream.stream_usage:
            plan = with_stream_usage(plan, endpoint)

        exchange = Exchange(
            id=record_id,
            created_at=datetime.now(UTC),
            method=request.method,
            endpoint=endpoint,
            upstream=upstream.url,
            provider=upstream.pricing_provider,
            stream=plan.stream,
            model=plan.model,
            session_id=tags.session_id,
            user_id=_user_of(admission.key, tags.user_id),
            properties=tags.properties,
            key_id=None if admission.key is None else admission.key.id,
            request_body=plan.json,
            sample_estimate=self.drift_sample_rate > random.random(),
            session_path=tags.session_path,
            session_name=tags.session_name,
            trace_id=None if tags.trace is None else tags.trace.trace_id,
            span_id=None if tags.trace is None else tags.trace.span_id,
            tool_results=tool_results_in(plan.json),
        )
        if not plan.model_known and _model_matters(admission.key, self.budgets, exchange):
            return error_response(InvalidRequest(UNKNOWN_MODEL, param="model"), id_header, shape)
        if self.budgets is not None:
            decision = self.budgets.act(exchange)
            if decision.refused_by is not None:
                refusal = BudgetExceeded(refused_by_action(decision.refused_by))
                return self._refused(exchange, started, refusal)
            if decision.model is not None and not native:
                downgraded = self._downgraded(plan, decision.model, path, raw, endpoint)
                if downgraded is not None:
                    plan, upstream, where = downgraded
                    exchange.downgraded_from, exchange.model = exchange.model, plan.model
                    exchange.upstream, exchange.provider = upstream.url, upstream.pricing_provider
                    exchange.request_body = plan.json
                    if upstream.kind != "azure":
                        query = without_api_version(query)
            try:
                await self.budgets.reserve(exchange)
            except (BudgetExceeded, DatabaseUnavailable) as exc:
                return self._refused(exchange, started, exc)
        try:
            response = await self.client.send(
                request.method,
                _with_query(where.url, query, where.query),
                upstream_headers(
                    headers, credential_headers(upstream, headers), upstream.headers, plan.stream
                ),
                plan.body,
                upstream_timeout(upstream),
                upstream,
            )
        except UpstreamHTTPError as exc:
            return self._upstream_failed(exchange, started, exc)
        except asyncio.CancelledError:
            return self._cut_by_shutdown(exchange, started)
        exchange.status_code = response.status_code
        content_type = response.header("content-type")
        if "text/event-stream" in content_type:
            return self._stream(response, exchange, plan, started, native)
        if "json" in content_type:
            if native and plan.stream and response.is_success:
                # streamGenerateContent without alt=sse: one JSON array, sent as it grows.
                return self._stream(response, exchange, plan, started, native, "json-array")
            return await self._buffered(response, exchange, started)
        return self._stream(response, exchange, None, started)

    def _downgraded(
        self,
        plan: RequestPlan,
        model: str,
        path: str,
        raw: tuple[bytes | None, bytes],
        endpoint: str,
    ) -> tuple[RequestPlan, UpstreamSettings, Target] | None:
        """The request as a budget action sends it: another model, routed as that model."""
        changed = with_model(plan, model)
        if changed is None:
            return None
        try:
            upstream = self._route(model, False)
        except NoRoute:
            log.warning(
                "a budget downgrades to %r, which no upstream serves: not downgraded", model
            )
            return None
        where = target(
            upstream,
            upstream_path(path, *raw),
            model,
            version_of(endpoint),
        )
        return changed, upstream, where

    def _route(self, model: str | None, native: bool) -> UpstreamSettings:
        """The upstream for ``model``, among those that speak the API the client called."""
        if not native:
            return choose_upstream(self.api_routes, model)
        if not self.gemini_routes:
            raise NoRoute(NO_GEMINI_ROUTE)
        return choose_upstream(self.gemini_routes, model)

    def _upstream_failed(
        self, exchange: Exchange, started: float, exc: UpstreamHTTPError
    ) -> Response:
        error = _describe_upstream_error(exc, exchange.upstream)
        exchange.status_code = error.status_code
        exchange.error = error.message
        exchange.latency_ms = elapsed_ms(started)
        exchange.request_body = None
        self.sink.submit(exchange)
        return error_response(error, {REQUEST_ID_HEADER: exchange.id}, _shape(exchange))

    def _refused(self, exchange: Exchange, started: float, exc: TallyError) -> Response:
        """A budget refused the request before the upstream was asked: it is recorded, at
        no cost and without usage, so that its request id names a record."""
        exchange.status_code = exc.status_code
        exchange.error = exc.message
        exchange.cost = NOTHING_CHARGED
        exchange.latency_ms = elapsed_ms(started)
        exchange.request_body = None
        self.sink.submit(exchange)
        return error_response(exc, {REQUEST_ID_HEADER: exchange.id}, _shape(exchange))

    def _cut_by_shutdown(self, exchange: Exchange, started: float) -> Response:
        """Only the server cancels a request: its shutdown grace is over. The upstream may
        have charged for it, so it is recorded, and the client told why (not a traceback)."""
        log.info("proxy shutting down: cut a request still waiting for %s", exchange.upstream)
        exchange.status_code = 503
        exchange.error = PROXY_SHUTTING_DOWN
        exchange.latency_ms = elapsed_ms(started)
        exchange.request_body = None
        self.sink.submit(exchange)
        return shutdown_response({REQUEST_ID_HEADER: exchange.id}, _shape(exchange))

    async def _buffered(
        self, response: UpstreamResponse, exchange: Exchange, started: float
    ) -> Response:
        try:
            content = await response.read()
        except UpstreamHTTPError as exc:
            return self._upstream_failed(exchange, started, exc)
        except asyncio.CancelledError:
            return self._cut_by_shutdown(exchange, started)
        finally:
            response.close()
        exchange.latency_ms = elapsed_ms(started)
        exchange.completed = True
        headers = _headers_without_encoding(response)
        headers.extend(_tally_headers(exchange))
        payload = json_object(content)
        if payload is not None:
            exchange.response_model = response_model_of(payload)
            exchange.provider_usage = usage_from_payload(payload)
            exchange.tool_calls = tool_calls_in(payload)
        usage = exchange.provider_usage
        if usage is not None:
            headers.append((TOTAL_TOKENS_HEADER, str(usage.total_tokens)))
            exchange.cost = self.prices.cost(
                priced_model(exchange), usage, provider=exchange.provider, at=exchange.created_at
            )
            if exchange.cost is not None:
                headers.append((COST_HEADER, format_usd(exchange.cost.usd)))
            session_cost = await self.session_costs.running_total(exchange)
            if session_cost is not None:
                headers.append((SESSION_COST_HEADER, format_usd(session_cost)))
        if not response.is_success:
            exchange.error = _upstream_error_message(payload, response.status_code)
            exchange.request_body = None
        elif wants_estimate(exchange) and payload is not None:
            exchange.completion_text = completion_text_from_payload(payload)
        else:
            exchange.request_body = None
        self.sink.submit(exchange)
        return BufferedAnswer(content, response.status_code, headers)

    def _stream(
        self,
        response: UpstreamResponse,
        exchange: Exchange,
        plan: RequestPlan | None,
        started: float,
        native: bool = False,
        framing: Framing = "sse",
    ) -> Response:
        tee = StreamTee(
            response,
            exchange,
            watch_events=plan is not None,
            strip_usage=plan is not None and plan.strip_usage_chunk,
            started=started,
            sink=self.sink,
            prices=self.prices,
            session_costs=self.session_costs,
            # Gemini's SDKs read every line as data: no tally comment for them.
            tally=not native,
            framing=framing,
        )
        headers = _headers_without_encoding(response)
        headers.extend(_tally_headers(exchange))
        self.sink.begin(exchange)
        return PassthroughStream(
            tee.chunks(),
            response.status_code,
            headers,
            tee.finish,
            on_end=tee.journal_end,
            goodbye=_goodbye(plan is not None, native, framing),
        )


def _goodbye(events: bool, native: bool, framing: Framing) -> bytes:
    """What a stream cut by the proxy's shutdown ends with: an error event in the client's
    API's shape; nothing for bytes that are not events (nor inside a JSON array)."""
    if not events or framing != "sse":
        return b""
    return shutdown_event("gemini" if native else "openai")


def _tally_headers(exchange: Exchange) -> list[tuple[str, str]]:
    headers = [(REQUEST_ID_HEADER, exchange.id)]
    if exchange.downgraded_from is not None:
        headers.append((DOWNGRADED_HEADER, quote(exchange.downgraded_from, safe=_MODEL_CHARS)))
    return headers


_MODEL_CHARS = "/:*@+,;=!$&'()~"


def refused_by_action(budget: Budget) -> str:
    return (
        f"{budget.describe()} refuses requests past "
        f"{min(a.at for a in budget.actions if a.refuse)}% of its limit (its actions)"
    )


def _shape(exchange: Exchange) -> ErrorShape:
    """The error shape of the API an exchange's client called."""
    return "gemini" if is_native(exchange.endpoint) else "openai"


def _prefix(endpoint: str) -> bytes:
    return b"/v1beta/" if endpoint.startswith(NATIVE_PREFIX) else b"/v1/"


def _key_from_query(
    headers: list[tuple[str, str]], query: str
) -> tuple[list[tuple[str, str]], str]:
    """A Gemini client's ``key`` query parameter, moved to the ``x-goog-api-key`` header it
    stands for (where the gate finds virtual keys and the upstream's own key replaces it):
    no URL the proxy sends or keeps holds a key. A key header already sent wins."""
    query, key = lift_query_key(query)
    if key is None:
        return headers, query
    if any(name == KEY_HEADER for name, _ in headers):
        return headers, query
    return [*headers, (KEY_HEADER, key)], query


def _model_matters(key: VirtualKey | None, budgets: Budgets | None, exchange: Exchange) -> bool:
    """Whether the key's model list or a budget applies: then the model must be known."""
    if key is not None and key.models:
        return True
    return budgets is not None and bool(budgets.matching(exchange))


def _user_of(key: VirtualKey | None, tagged: str | None) -> str | None:
    """A key issued to a user speaks for that user, whatever the request says."""
    if key is not None and key.user_id is not None:
        return key.user_id
    return tagged


def upstream_timeout(upstream: UpstreamSettings) -> Timeouts:
    """The upstream's own connect and read timeouts; a silent upstream gets a 504."""
    return timeouts_of(upstream)


def _with_query(url: str, client_query: str, route_query: dict[str, str]) -> str:
    """The upstream URL with the client's query string, the route's parameters winning."""
    if route_query:
        kept = [(k, v) for k, v in parse_qsl(client_query, True) if k not in route_query]
        client_query = urlencode([*kept, *route_query.items()])
    return f"{url}?{client_query}" if client_query else url


def _headers_without_encoding(response: UpstreamResponse) -> list[tuple[str, str]]:
    # The client hands over decoded bytes, so the upstream's content-encoding no longer applies.
    pairs = client_headers(response.headers)
    return [(name, value) for name, value in pairs if name != "content-encoding"]


def _upstream_error_message(payload: dict[str, Any] | None, status: int) -> str:
    error = payload.get("error") if payload else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return f"upstream {status}: {error['message'][:500]}"
    return f"upstream {status}"


def _describe_upstream_error(exc: UpstreamHTTPError, upstream: str) -> TallyError:
    if isinstance(exc, PoolExhaustedError):
        return UpstreamPoolExhausted(
            f"tallyproxy's connection pool for upstream '{exc.pool}' is full: all "
            f"{exc.max_connections} connections (its max_connections) stayed in use for "
            f"{exc.waited:g} s (its pool_timeout); the upstream was not asked, retry later"
        )
    if isinstance(exc, UpstreamTimeoutError):
        return UpstreamTimeout(f"the upstream {upstream} did not answer in time ({exc.kind})")
    if isinstance(exc, UpstreamConnectError):
        return UpstreamUnreachable(f"cannot connect to the upstream {upstream}: is it running?")
    return UpstreamUnreachable(f"the upstream {upstream} failed: {exc.kind}: {exc}")
