"""The FastAPI application: its parts are made in the lifespan and kept on ``app.state``."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Request
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.responses import Response

from proxy.access.alerts import Alerter
from proxy.access.budgets import Budgets, HoldRules
from proxy.access.gate import Gate
from proxy.access.guard import admin_guard, usage_guard
from proxy.access.mode import access_mode
from proxy.api.admin import admin_router
from proxy.api.anomalies import anomalies_router
from proxy.api.budgets import budgets_router
from proxy.api.drift import drift_router
from proxy.api.metrics import metrics_router
from proxy.api.missing_v1 import missing_v1_router
from proxy.api.prices import prices_router
from proxy.api.reconciliation import reconciliation_router
from proxy.api.unavailable import install_database_error_handler
from proxy.api.usage import usage_router
from proxy.config import Settings
from proxy.dashboard import dashboard_router
from proxy.errors import install_error_handlers
from proxy.forward import Forwarder
from proxy.jobs import BackgroundJobs
from proxy.metering import meter_batch
from proxy.metrics import Metrics
from proxy.pricing import PriceBook
from proxy.reconcile.job import ReconcileJob
from proxy.records import Exchange, RequestRecord
from proxy.requestlog import logging_records
from proxy.session_costs import SessionCosts
from proxy.startup import QuietStartupFailure
from proxy.store.access import KeyStore
from proxy.store.availability import DatabaseUnusable, Schema, open_engine
from proxy.store.budgets import BudgetStore
from proxy.store.engine import create_engine
from proxy.store.journal import Journal, JournaledSink
from proxy.store.partitions import PartitionKeeper
from proxy.store.queries import UsageQueries
from proxy.store.replica import Reads, ReplicaMonitor
from proxy.store.spool import Spool
from proxy.store.writer import RecordWriter
from proxy.tokens import TokenCounter
from proxy.upstream_client import UpstreamClient

if TYPE_CHECKING:
    from proxy.otlp_process import OtlpProcess

log = logging.getLogger(__name__)

Prepare = Callable[[list[Exchange]], list[RequestRecord]]
PROXIED_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
SHUTDOWN_DRAIN_SECONDS = 30.0


def create_app(settings: Settings) -> FastAPI:
    """Build the app; nothing connects until the lifespan starts.

    Raises ``ConfigError`` for a configuration that would be open by accident.
    """
    mode = access_mode(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        spool = Spool(settings.database.spool_dir, settings.database.spool_max_bytes)
        engine, schema = await _open_database(app, settings.database.url, spool)
        prices = PriceBook(settings.prices)
        counter = TokenCounter(settings.tokenizers)
        # Loaded here, before the server is ready, rather than by the first request that counts:
        # that load holds the GIL for ~0.3 s (a stalled event loop), and its transient ranks,
        # freed among live objects, leave ~12 MB of fragmented heap. On this thread, as nothing
        # is served yet: in a worker thread's malloc arena the same vocabulary takes 5 MB more.
        if settings.metering.drift_sample_rate > 0:
            # Without drift samples only answers lacking usage are counted: a proxy in front
            # of providers that report usage never needs the ~43 MB of a vocabulary.
            counter.preload_default()
        metrics = Metrics()
        session_costs = SessionCosts(engine)
        journal = Journal(Path(settings.database.spool_dir) / "journal")
        export = _otlp_export(settings)
        if export is not None:
            metrics.track_export(export.stats)
        writer = RecordWriter(
            engine,
            _logging_records(settings, metrics.observing(partial(meter_batch, counter, prices))),
            queue_size=settings.database.queue_size,
            flush_interval=settings.database.flush_interval,
            max_batch=settings.database.max_batch,
            spool=spool,
            on_stored=_stored_hooks(session_costs, export),
            writable=lambda: schema.ready,
            on_settled=journal.settle,
        )
        await writer.start()
        sink = JournaledSink(journal, writer)
        await _record_recovered(journal.open(), sink, writer, settings.database.queue_size)
        client = _upstream_client(settings)
        metrics.track_pools(client.pool_stats)
        app.state.settings = settings
        app.state.engine = engine
        app.state.schema = schema
        metrics.track_writer(writer.stats)
        app.state.metrics = metrics
        app.state.writer = writer
        app.state.queries = UsageQueries(engine)
        app.state.reads = await _open_reads(settings, engine, app.state.queries)
        app.state.read_engines = _engine_reads(engine, app.state.reads)
        if app.state.reads.monitor is not None:
            metrics.track_replica(app.state.reads.monitor.stats)
        app.state.prices = prices
        app.state.keys = KeyStore(engine)
        app.state.gate = Gate(
            app.state.keys,
            require_virtual_keys=settings.access.require_virtual_keys,
            allow_anonymous=settings.access.allow_anonymous,
            cache_seconds=settings.access.key_cache_seconds,
            outage_tolerance=settings.access.outage_tolerance_seconds,
        )
        budget_store = BudgetStore(engine)
        app.state.budgets = Budgets(
            budget_store,
            counter,
            prices,
            refresh_seconds=settings.access.key_cache_seconds or 1.0,
            alerter=_alerter(settings, budget_store),
            outage_allowance=settings.access.budget_outage_allowance,
            rules=HoldRules(settings.budgets.default_max_output_tokens, settings.budgets.unpriced),
        )
        await app.state.budgets.start()
        app.state.forwarder = Forwarder(
            client,
            settings.routes,
            sink,
            prices,
            session_costs,
            settings.server.max_body_bytes,
            settings.metering.drift_sample_rate,
            gate=app.state.gate,
            budgets=app.state.budgets,
            refuse_unless_recordable=(
                writer if settings.database.when_unrecordable == "refuse" else None
            ),
        )
        for route in settings.routes:
            models = ", ".join(route.models) or "every other model"
            log.info("upstream %s (%s) at %s serves %s", route.name, route.kind, route.url, models)
        log.log(logging.WARNING if mode.name == "anonymous" else logging.INFO, mode.description)
        # Postgres: the next days' partitions of ``requests``, made ahead, off the request path.
        partition_keeper = PartitionKeeper(engine, ready=lambda: schema.ready)
        partition_keeper.start()
        # Anomaly detection and the daily digest, when configured: off the request path.
        jobs = BackgroundJobs(settings, engine)
        jobs.start()
        reconcile_job = _reconcile_job(settings, engine)
        # What start-up built (price data, routes, pools) lives as long as the process: moved
        # out of the collector's sight, old-generation collections stop scanning it per pause.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await jobs.stop()
            await app.state.budgets.stop()
            if reconcile_job is not None:
                await reconcile_job.stop()
            await partition_keeper.stop()
            await schema.stop()
            await client.aclose()
            await writer.stop(SHUTDOWN_DRAIN_SECONDS)
            if export is not None:
                await asyncio.to_thread(export.close)
            journal.close()
            await session_costs.close()
            await _close_reads(app.state.reads)  # its monitor reads the primary's engine too
            await engine.dispose()

    app = FastAPI(title="tallyproxy", lifespan=lifespan, docs_url=None, redoc_url=None)
    # An API answers a path or 404s; a redirect to a guessed path only confuses clients.
    app.router.redirect_slashes = False
    install_error_handlers(app)
    install_database_error_handler(app)
    app.add_middleware(QuietStartupFailure)
    guard = [Depends(admin_guard(settings.admin_token))]
    reader = [Depends(usage_guard(settings.admin_token))]
    app.include_router(usage_router(dependencies=reader))
    app.include_router(budgets_router(dependencies=reader))
    app.include_router(anomalies_router(dependencies=reader))
    app.include_router(admin_router(dependencies=guard))
    app.include_router(reconciliation_router(dependencies=guard))
    app.include_router(prices_router(dependencies=guard))
    app.include_router(metrics_router(dependencies=guard))
    app.include_router(drift_router(dependencies=guard))
    app.include_router(dashboard_router())  # no guard: the page asks for the token itself
    app.include_router(missing_v1_router())
    # The OpenAI API (and others), Gemini's native API, the Azure OpenAI client's paths.
    for prefix in ("/v1", "/v1beta", "/openai"):
        app.router.add_route(
            prefix + "/{path:path}", _proxy, methods=PROXIED_METHODS, include_in_schema=False
        )
    return app


def _otlp_export(settings: Settings) -> OtlpProcess | None:
    """The OpenTelemetry export, started in its own process, when an endpoint is
    configured; the SDK is imported there only."""
    if settings.telemetry.otlp_endpoint is None:
        return None
    from proxy.otlp_process import OtlpProcess

    export = OtlpProcess(settings)
    export.start()
    log.info(
        "exporting GenAI spans and metrics over OTLP/HTTP to %s",
        _without_secrets(settings.telemetry.otlp_endpoint),
    )
    return export


def _without_secrets(url: str) -> str:
    """A URL fit for a log line: user info (a token in ``https://key@host``) and query cut."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _stored_hooks(
    session_costs: SessionCosts, export: OtlpProcess | None
) -> Callable[[list[RequestRecord]], None]:
    """What the writer calls after each commit: session costs, then the export's queue."""
    if export is None:
        return session_costs.confirm_stored

    def stored(records: list[RequestRecord]) -> None:
        session_costs.confirm_stored(records)
        export.submit(records)

    return stored


async def _proxy(request: Request) -> Response:
    forwarder: Forwarder = request.app.state.forwarder
    return await forwarder.handle(request)


async def _open_database(app: FastAPI, url: str, spool: Spool) -> tuple[AsyncEngine, Schema]:
    """The engine and its schema: migrated now, or in the background once the database is
    reachable. A misconfigured database stops start-up with one line, not a traceback."""
    try:
        engine = open_engine(url)
        schema = Schema(engine, spooled=lambda: spool.pending_records)
        try:
            await schema.start(str(spool.location.resolve()))
        except BaseException:
            await engine.dispose()
            raise
    except DatabaseUnusable as exc:
        log.error("%s", exc)
        app.state.startup_failure = str(exc)  # see proxy.startup
        raise
    return engine, schema


async def _record_recovered(
    exchanges: list[Exchange], sink: JournaledSink, writer: RecordWriter[Exchange], room: int
) -> None:
    """File what killed processes left in their journals, before serving: at the writer's
    pace, as a large backlog must not overflow its queue."""
    pending = deque(exchanges)
    while pending:
        if not writer.recordable:
            # Database down and the spool full: waiting would keep the proxy from serving.
            # The rest stays in this process's journal, unsettled, for the next start.
            log.warning(
                "journal: %d recovered records stay in the journal for the next start: the "
                "database and the spool take no records now",
                len(pending),
            )
            return
        if writer.queue_depth < room // 2:
            sink.submit(pending.popleft())
        else:
            await asyncio.sleep(0.01)


async def _open_reads(
    settings: Settings, primary: AsyncEngine, queries: UsageQueries
) -> Reads[UsageQueries]:
    """The usage API's reads: on ``database.read_url`` while it keeps up, else the primary."""
    if settings.database.read_url is None:
        return Reads(queries)
    # A replica that cannot be reached must not hold a read for asyncpg's 60 s connect
    # timeout: the read goes to the primary instead.
    replica = create_engine(
        settings.database.read_url, application_name="tallyproxy-reads", connect_timeout=5.0
    )
    monitor = ReplicaMonitor(primary, replica, settings.database.read_max_lag_seconds)
    await monitor.start()
    return Reads(queries, UsageQueries(replica), monitor)


def _engine_reads(primary: AsyncEngine, reads: Reads[UsageQueries]) -> Reads[AsyncEngine]:
    """The same routing, for reads that take an engine rather than ``UsageQueries``."""
    if reads.monitor is None:
        return Reads(primary)
    return Reads(primary, reads.monitor.replica, reads.monitor)


async def _close_reads(reads: Reads[UsageQueries]) -> None:
    if reads.monitor is not None:
        await reads.monitor.stop()
        await reads.monitor.replica.dispose()


def _alerter(settings: Settings, store: BudgetStore) -> Alerter | None:
    alerts = settings.alerts
    if alerts.webhook_url is None:
        return None
    return Alerter(
        store,
        alerts.webhook_url,
        alerts.webhook_secret,
        max_attempts=alerts.max_attempts,
        retry_seconds=alerts.retry_seconds,
        forecast_hours=alerts.forecast_hours,
    )


def _reconcile_job(settings: Settings, engine: AsyncEngine) -> ReconcileJob | None:
    """The periodic reconciliation, started, when an interval and a provider are configured."""
    if settings.reconcile.interval is None or not settings.reconcile.providers:
        return None
    job = ReconcileJob(settings, engine)
    job.start()
    return job


def _logging_records(settings: Settings, prepare: Prepare) -> Prepare:
    return logging_records(prepare) if settings.logging.access else prepare


def _upstream_client(settings: Settings) -> UpstreamClient:
    # Each route its own pool, of its own max_connections: one slow upstream holds only its own.
    return UpstreamClient(settings.routes)
