"""The database schema: one ``requests`` row per metered request, one ``sessions`` row per
session, one ``virtual_keys`` row per issued key, and budgets: their definitions, the spend
per budget and period, and the reservations of requests on their way.

``sessions`` is a running total kept by the writer in the same transaction as the request rows
it sums, so a session summary is one primary-key lookup however long the session is.
``rollups`` are the same idea per hour and per day, by the cubes of ``proxy.store.cubes``: the
usage summaries read them instead of scanning raw rows. On Postgres ``requests`` is
partitioned by day (``proxy.store.partitions``); the partitions are not tables of this schema.
Migrations in ``migrations/versions`` must produce exactly this schema (a test checks it).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from proxy.store.types import EmptyJsonObject, Money, UTCDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

TOKEN_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
    "prompt_audio_tokens",
    "completion_audio_tokens",
)
"""The ``Usage`` fields, in order; each is a column of both tables."""

requests = Table(
    "requests",
    metadata,
    # The key is (id, created_at): on Postgres the table is partitioned by day of
    # ``created_at`` (``proxy.store.partitions``), and a partitioned table's key must hold the
    # partition key. A record keeps its ``created_at`` through every replay, so its id still
    # identifies it.
    Column("id", String(32), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    # Server defaults for what a row put in by SQL (an import, a restore) cannot know:
    # the proxy itself always writes every column.
    Column("endpoint", String(512), nullable=False, server_default=text("''")),
    Column("method", String(16), nullable=False, server_default=text("'POST'")),
    Column("status_code", Integer, nullable=False, server_default=text("200")),
    Column("stream", Boolean, nullable=False, server_default=text("false")),
    Column("model", String(256)),
    Column("response_model", String(256)),
    Column("upstream", String(1024), nullable=False, server_default=text("''")),
    Column("session_id", String(256)),
    Column("user_id", String(256)),
    Column("properties", JSON, nullable=False, server_default=EmptyJsonObject()),
    # Token counts are null when the usage is unknown, which is not the same as zero.
    *(Column(name, Integer) for name in TOKEN_FIELDS),
    Column("usage_source", String(16)),
    # The provider's total was smaller than its parts (e.g. 0), and replaced by their sum.
    Column("usage_repaired", Boolean, nullable=False, server_default=text("false")),
    Column("cost_usd", Money()),
    # Where the price came from ("genai-prices", "config") and which version of it, so that
    # history can be repriced and a change of price explained.
    Column("price_source", String(32)),
    Column("price_version", String(64)),
    Column("estimated_prompt_tokens", Integer),
    Column("estimated_completion_tokens", Integer),
    Column("estimate_excludes", String(64)),
    Column("latency_ms", Float),
    Column("ttft_ms", Float),
    Column("error", Text),
    # The virtual key the request came with (its id, never the key itself); null otherwise.
    Column("key_id", String(32)),
    # X-Session-Path / X-Session-Name, and the caller's traceparent (trace id, its span id).
    Column("session_path", String(256)),
    Column("session_name", String(256)),
    Column("trace_id", String(32)),
    Column("span_id", String(16)),
    # The model the client asked for, when a budget action sent another (``model``).
    Column("downgraded_from", String(256)),
    # The tool calls the answer asked for, and the tool results the request sent back.
    Column("tool_calls", Integer, nullable=False, server_default=text("0")),
    Column("tool_results", Integer, nullable=False, server_default=text("0")),
    PrimaryKeyConstraint("id", "created_at"),
    # Listings page newest first by id: with id last, one model's (user's, key's, session's)
    # newest records are the end of an index range in each day's partition.
    Index(None, "session_id", "id"),
    Index(None, "user_id", "id"),
    Index(None, "model", "id"),
    Index(None, "key_id", "id"),
    Index(None, "created_at"),
)

sessions = Table(
    "sessions",
    metadata,
    Column("session_id", String(256), primary_key=True),
    Column("user_id", String(256)),
    Column("requests", BigInteger, nullable=False, server_default=text("0")),
    *(Column(name, BigInteger, nullable=False, server_default=text("0")) for name in TOKEN_FIELDS),
    # Sum of the known costs; null while no request of the session has a price.
    Column("cost_usd", Money()),
    Column("unpriced_requests", BigInteger, nullable=False, server_default=text("0")),
    Column("first_request_at", UTCDateTime(), nullable=False),
    Column("last_request_at", UTCDateTime(), nullable=False),
    # The name last seen (X-Session-Name); requests that failed (non-2xx, or a stream cut
    # short, as the rollups count errors); the sum of their latencies; the tool calls asked.
    Column("name", String(256)),
    Column("errors", BigInteger, nullable=False, server_default=text("0")),
    Column("latency_ms", Float, nullable=False, server_default=text("0")),
    Column("tool_calls", BigInteger, nullable=False, server_default=text("0")),
    Index(None, "user_id"),
    Index(None, "last_request_at"),
)

SESSION_MEASURES = (
    "requests",
    *TOKEN_FIELDS,
    "unpriced_requests",
    "errors",
    "latency_ms",
    "tool_calls",
)
"""The additive totals of a session and of a path node, beside ``cost_usd``."""

# The same totals per path node of a session (X-Session-Path), each node's own requests
# only: ``proxy.store.session_tree`` adds up the branches. Requests without a path, or with
# the root ``/``, have no row here: the root's share is the session's less its nodes'.
session_paths = Table(
    "session_paths",
    metadata,
    Column("session_id", String(256), nullable=False),
    Column("path", String(256), nullable=False),
    Column("requests", BigInteger, nullable=False, server_default=text("0")),
    *(Column(name, BigInteger, nullable=False, server_default=text("0")) for name in TOKEN_FIELDS),
    Column("cost_usd", Money()),
    Column("unpriced_requests", BigInteger, nullable=False, server_default=text("0")),
    Column("errors", BigInteger, nullable=False, server_default=text("0")),
    Column("latency_ms", Float, nullable=False, server_default=text("0")),
    Column("first_request_at", UTCDateTime(), nullable=False),
    Column("last_request_at", UTCDateTime(), nullable=False),
    Column("tool_calls", BigInteger, nullable=False, server_default=text("0")),
    PrimaryKeyConstraint("session_id", "path"),
)

virtual_keys = Table(
    "virtual_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("user_id", String(256)),
    # SHA-256 of the key, hex: the key itself is shown once and never stored.
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("display_prefix", String(16), nullable=False),
    # Model names or globs the key may call; empty: every model.
    Column("models", JSON, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime()),
    Column("revoked_at", UTCDateTime()),
)

budgets = Table(
    "budgets",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("scope", String(16), nullable=False),  # key | user | session | global
    Column("subject", String(256)),  # the key id, user or session; null for global
    Column("period", String(8), nullable=False),  # hour | day | month | total
    Column("limit_usd", Money()),
    Column("limit_tokens", BigInteger),
    Column("alerts", JSON, nullable=False),  # percentages of the limit that fire a webhook
    Column("actions", JSON),  # downgrade / refuse by threshold (proxy.spend.actions); null: none
    Column("created_at", UTCDateTime(), nullable=False),
)

budget_spend = Table(
    "budget_spend",
    metadata,
    Column("budget_id", String(32), nullable=False),
    Column("period_start", UTCDateTime(), nullable=False),
    # Settled from stored records; reserved by requests on their way (estimates).
    Column("spent_usd", Money(), nullable=False),
    Column("spent_tokens", BigInteger, nullable=False),
    Column("reserved_usd", Money(), nullable=False),
    Column("reserved_tokens", BigInteger, nullable=False),
    PrimaryKeyConstraint("budget_id", "period_start"),
)

budget_burn = Table(
    "budget_burn",
    metadata,
    # What stored records spent per budget and 5 minutes, for the burn rate and forecast of
    # /usage/budgets; settled with budget_spend, kept for two days.
    Column("budget_id", String(32), nullable=False),
    Column("bucket_start", UTCDateTime(), nullable=False),
    Column("usd", Money(), nullable=False),
    Column("tokens", BigInteger, nullable=False),
    PrimaryKeyConstraint("budget_id", "bucket_start"),
)

budget_reservations = Table(
    "budget_reservations",
    metadata,
    Column("request_id", String(32), nullable=False),
    Column("budget_id", String(32), nullable=False),
    Column("period_start", UTCDateTime(), nullable=False),
    Column("usd", Money(), nullable=False),
    Column("tokens", BigInteger, nullable=False),
    # A reservation whose record never arrives (a crashed replica) is released after this.
    Column("expires_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("request_id", "budget_id"),
    Index(None, "expires_at"),
)

budget_alerts = Table(
    "budget_alerts",
    metadata,
    # One row per budget, period and threshold: whichever replica inserts it sends the alert.
    Column("budget_id", String(32), nullable=False),
    Column("period_start", UTCDateTime(), nullable=False),
    Column("threshold", Integer, nullable=False),
    Column("fired_at", UTCDateTime(), nullable=False),
    Column("delivered_at", UTCDateTime()),
    PrimaryKeyConstraint("budget_id", "period_start", "threshold"),
)

rollups = Table(
    "rollups",
    metadata,
    # Which cube (``proxy.store.cubes.CUBES``), "hour" or "day", the bucket's start (UTC) and
    # a hash of the cell's dimension values: dimensions may be null, key columns may not.
    Column("cube", String(16), nullable=False),
    Column("grain", String(4), nullable=False),
    Column("bucket_start", UTCDateTime(), nullable=False),
    Column("cell", String(32), nullable=False),
    # The dimension values; a column that is not one of the cube's dimensions is null.
    Column("model", String(256)),
    Column("user_id", String(256)),
    Column("key_id", String(32)),
    Column("endpoint", String(512)),
    Column("upstream", String(1024)),
    Column("session_id", String(256)),
    Column("property_name", Text),
    Column("property_value", Text),
    Column("requests", BigInteger, nullable=False),
    *(Column(name, BigInteger, nullable=False) for name in TOKEN_FIELDS),
    Column("unpriced_requests", BigInteger, nullable=False),
    Column("error_requests", BigInteger, nullable=False),
    Column("latency_requests", BigInteger, nullable=False),
    # Sum of the known costs (0 while none is known: ``unpriced_requests`` tells), so that
    # every measure is a plain sum that can grow and shrink.
    Column("cost_usd", Money(), nullable=False),
    Column("latency_ms_sum", Float, nullable=False),
    # Cells older than migration 0013 counted no tool calls (nor did their records).
    Column("tool_calls", BigInteger, nullable=False, server_default=text("0")),
    PrimaryKeyConstraint("cube", "grain", "bucket_start", "cell"),
    # A session's cells (its totals, its models), whatever the day: a page of sessions.
    Index(
        "ix_rollups_session",
        "cube",
        "grain",
        "session_id",
        "bucket_start",
        postgresql_where=text("session_id IS NOT NULL"),
        sqlite_where=text("session_id IS NOT NULL"),
    ),
    # Migration 0010 adds ix_rollups_property, (cube, grain, property name, value or, on
    # Postgres, the value's MD5, bucket_start): an expression on one database, so not here.
)

rollup_state = Table(
    "rollup_state",
    metadata,
    Column("id", Integer, primary_key=True),  # a single row, id 1
    # False while records stored before the rollups existed (or put in by SQL) are not in
    # them: summaries then read raw rows until ``tallyproxy rollups rebuild`` has run.
    Column("complete", Boolean, nullable=False),
    Column("rebuilt_at", UTCDateTime()),
    # Daily cells of the days before this have been rewritten in key order (compaction).
    Column("compacted_until", UTCDateTime()),
)

digest_runs = Table(
    "digest_runs",
    metadata,
    # One row per digested day (its UTC midnight): whichever replica inserts it sends it.
    Column("day", UTCDateTime(), primary_key=True),
    Column("claimed_at", UTCDateTime(), nullable=False),
    Column("delivered_at", UTCDateTime()),
)

anomalies = Table(
    "anomalies",
    metadata,
    Column("id", String(32), primary_key=True),
    # A session, user or key, and the window its spend stood out in: one row per subject and
    # window, whichever replica inserts it sends the webhook.
    Column("kind", String(16), nullable=False),
    Column("subject", String(256), nullable=False),
    Column("peer_group", String(256)),  # a session's user; null: all of the kind
    Column("window_start", UTCDateTime(), nullable=False),
    Column("window_end", UTCDateTime(), nullable=False),
    Column("detected_at", UTCDateTime(), nullable=False),
    Column("cost_usd", Money(), nullable=False),
    Column("total_tokens", BigInteger, nullable=False),
    # Per measure exceeded: the peers' median, MAD, count and the threshold crossed.
    Column("baseline", JSON, nullable=False),
    Column("top_requests", JSON, nullable=False),
    Column("delivered_at", UTCDateTime()),
    UniqueConstraint("kind", "subject", "window_start"),
    Index(None, "detected_at"),
)

reconciliations = Table(
    "reconciliations",
    metadata,
    # One row per provider, bucket width and bucket: the newest comparison of that bucket
    # with the provider's report; ``final`` once the bucket is closed (its report settled),
    # when ``billed_cost_usd`` is the provider's cost for it, beside the metered one.
    Column("provider", String(32), nullable=False),
    Column("bucket_width", String(4), nullable=False),
    Column("bucket_start", UTCDateTime(), nullable=False),
    Column("bucket_end", UTCDateTime(), nullable=False),
    Column("final", Boolean, nullable=False),
    Column("computed_at", UTCDateTime(), nullable=False),
    Column("measure", String(16), nullable=False),  # what difference_pct compares
    Column("difference_pct", Float),
    Column("billed_cost_usd", Money()),
    Column("metered_cost_usd", Money()),
    Column("unpriced_requests", BigInteger, nullable=False),
    Column("bypass", Boolean, nullable=False),
    # The bucket's totals and its rows (model, key), as the API renders them.
    Column("comparison", JSON, nullable=False),
    # Set by the replica that claimed the alert for this bucket (once).
    Column("alerted_at", UTCDateTime()),
    PrimaryKeyConstraint("provider", "bucket_width", "bucket_start"),
)

reconcile_runs = Table(
    "reconcile_runs",
    metadata,
    # When each provider's periodic reconciliation is next due: the replica whose update
    # moves ``due_at`` on runs it, so one replica runs each round.
    Column("provider", String(32), primary_key=True),
    Column("due_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime()),
    Column("finished_at", UTCDateTime()),
    Column("last_error", Text),
)
