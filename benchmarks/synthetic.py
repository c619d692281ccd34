"""Synthetic request rows shaped like a production deployment's, for the scale benchmarks.

Spread over ``days`` days ending at ``end``: more traffic by day than by night and on
weekdays, ``sessions`` sessions each living a few hours with one user, ``users`` users of
very unequal activity, ``models`` models of unequal popularity (two of them unpriced, one an
embeddings model), an ``env`` property (prod/staging/dev, skewed) and sometimes ``team`` and
``feature``, several endpoints and upstreams, virtual keys on most requests, realistic token
counts, exact Decimal costs, and a share of errors (no usage, no cost).

Rows come hour by hour, in time order, as dicts keyed by the ``requests`` column names with
Python values (aware datetimes, ``Decimal``, JSON text for ``properties``); ids sort by time as
``proxy.records.new_record_id`` makes them. The same seed gives the same rows.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from proxy.records import RequestRecord
from proxy.store.tables import TOKEN_FIELDS
from proxy.usage import Usage

ENVS = (("prod", 0.75), ("staging", 0.18), ("dev", 0.07))
TEAMS = tuple(f"team-{name}" for name in ("search", "support", "growth", "data", "infra",
                                           "mobile", "web", "billing", "ml", "sales"))  # fmt: skip
FEATURES = ("chat", "summarize", "classify", "extract", "translate", "autocomplete")
ERRORS = (
    (429, "upstream answered 429: rate limit reached for requests"),
    (500, "upstream answered 500: internal server error"),
    (502, "upstream unreachable: connection reset by peer"),
    (400, "upstream answered 400: context length exceeded"),
)
ERROR_SHARE = 0.02
NO_SESSION_SHARE = 0.2
NO_USER_SHARE = 0.03
KEY_SHARE = 0.65
STREAM_SHARE = 0.4
CACHED_SHARE = 0.25
ESTIMATED_SHARE = 0.03
RETIRED_AFTER = 2 / 3
"""Share of the days after which the last model is no longer called."""


@dataclass(frozen=True)
class Model:
    name: str
    upstream: str
    endpoint: str
    input_pico: int | None
    """USD per token in pico-dollars (10^-12 USD): USD per 1M tokens x 10^6; None: unpriced."""
    output_pico: int | None
    reasoning: bool = False


def models_for(count: int) -> list[Model]:
    """The first ``count`` models, most popular first (the last one is retired)."""
    base = [
        Model("gpt-4o-mini", "openai", "/v1/chat/completions", 150_000, 600_000),
        Model("gpt-4o", "openai", "/v1/chat/completions", 2_500_000, 10_000_000),
        Model("claude-3-5-haiku-latest", "anthropic", "/v1/messages", 800_000, 4_000_000),
        Model("gpt-4.1-mini", "openai", "/v1/responses", 400_000, 1_600_000),
        Model("text-embedding-3-small", "openai", "/v1/embeddings", 20_000, 0),
        Model("claude-sonnet-4-0", "anthropic", "/v1/messages", 3_000_000, 15_000_000),
        Model("o4-mini", "openai", "/v1/responses", 1_100_000, 4_400_000, reasoning=True),
        Model("gpt-4.1", "openai", "/v1/chat/completions", 2_000_000, 8_000_000),
        Model("local-llama-3-8b", "vllm", "/v1/chat/completions", None, None),
        Model("deepseek-chat", "deepseek", "/v1/chat/completions", 270_000, 1_100_000),
        Model("gpt-3.5-turbo-instruct", "openai", "/v1/completions", 1_500_000, 2_000_000),
        Model("mistral-small-latest", "mistral", "/v1/chat/completions", 200_000, 600_000),
        Model("o3", "openai", "/v1/responses", 2_000_000, 8_000_000, reasoning=True),
        Model("qwen-internal-72b", "vllm", "/v1/chat/completions", None, None),
    ]
    extra = [
        Model(f"ft:gpt-4o-mini:acme:{i}", "azure", "/v1/chat/completions", 300_000, 1_200_000)
        for i in range(max(0, count - len(base)))
    ]
    return (base + extra)[:count]


def _cumulative(weights: list[float]) -> list[float]:
    return list(itertools.accumulate(weights))


@dataclass(frozen=True)
class Shape:
    """How many of what; ``end`` is the newest moment of the data."""

    records: int
    end: datetime
    days: int = 30
    sessions: int = 50_000
    users: int = 1_000
    models: int = 20
    keys: int = 40
    seed: int = 14


class Synthetic:
    """The rows of one ``Shape``; iterate ``hours()`` for chunks in time order."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.random = random.Random(shape.seed)
        self.start = shape.end - timedelta(days=shape.days)
        self.models = models_for(shape.models)
        # Zipf-like popularity: the first model and user carry the most traffic.
        self.retired = self.models[-1]
        self.model_weights = _cumulative([1 / (i + 1) ** 1.1 for i in range(len(self.models))])
        self.users = [f"user-{i:04d}" for i in range(shape.users)]
        self.user_weights = _cumulative([1 / (i + 1) ** 0.9 for i in range(shape.users)])
        self.key_ids = [self._hex(32) for _ in range(shape.keys)]
        self.hour_counts = self._hour_counts()
        self.active = self._sessions()

    def _hex(self, digits: int) -> str:
        return f"{self.random.getrandbits(digits * 4):0{digits}x}"

    def _hour_weight(self, at: datetime) -> float:
        daily = 1 + 0.8 * math.sin((at.hour - 9) / 24 * 2 * math.pi)  # peaks mid-afternoon UTC
        return daily * (0.45 if at.weekday() >= 5 else 1.0)

    def _hour_counts(self) -> list[tuple[datetime, int]]:
        hours = [self.start + timedelta(hours=h) for h in range(self.shape.days * 24)]
        weights = [self._hour_weight(at) for at in hours]
        total = sum(weights)
        counts = [int(self.shape.records * w / total) for w in weights]
        for i in range(self.shape.records - sum(counts)):  # the remainder, one per hour
            counts[i % len(counts)] += 1
        return list(zip(hours, counts, strict=True))

    def _sessions(self) -> list[list[tuple[str, str | None]]]:
        """Per hour, the sessions active in it (id, user): each lives 1-6 hours."""
        hours = len(self.hour_counts)
        cumulative = _cumulative([count for _, count in self.hour_counts])
        active: list[list[tuple[str, str | None]]] = [[] for _ in range(hours)]
        for _ in range(self.shape.sessions):
            # Sessions start where the traffic is, so busy hours have more of them.
            first = bisect.bisect(cumulative, self.random.random() * cumulative[-1])
            first = min(first, hours - 1)
            user = self._user()
            session = (f"sess-{self._hex(16)}", user)
            for hour in range(first, min(hours, first + self.random.randint(1, 6))):
                active[hour].append(session)
        return active

    def _user(self) -> str | None:
        if self.random.random() < NO_USER_SHARE:
            return None
        return self.random.choices(self.users, cum_weights=self.user_weights)[0]

    def hours(self) -> Iterator[list[dict[str, Any]]]:
        """The rows hour by hour, oldest first."""
        for index in range(len(self.hour_counts)):
            yield self.hour(index)

    def hour(self, index: int) -> list[dict[str, Any]]:
        """The rows of hour ``index`` (0: the oldest), in time order.

        Each hour draws from its own generator, seeded by the shape's seed and the hour, so
        that processes can make different hours of the same data in parallel.
        """
        hour, count = self.hour_counts[index]
        sessions = self.active[index]
        rand = self.random = random.Random(f"{self.shape.seed}-{index}")
        offsets = sorted(rand.random() * 3600 for _ in range(count))
        models = rand.choices(self.models, cum_weights=self.model_weights, k=count)
        if index >= len(self.hour_counts) * RETIRED_AFTER:
            # The last model was retired: its traffic went to the most popular one.
            models = [self.models[0] if m is self.retired else m for m in models]
        rows = []
        for offset, model in zip(offsets, models, strict=True):
            at = hour + timedelta(seconds=offset)
            if sessions and rand.random() >= NO_SESSION_SHARE:
                session_id, user_id = rand.choice(sessions)
            else:
                session_id, user_id = None, self._user()
            rows.append(self._row(at, model, session_id, user_id))
        return rows

    def _row(
        self, at: datetime, model: Model, session_id: str | None, user_id: str | None
    ) -> dict[str, Any]:
        rand = self.random
        stream = model.endpoint != "/v1/embeddings" and rand.random() < STREAM_SHARE
        latency = rand.lognormvariate(6.6, 0.8)
        row: dict[str, Any] = {
            "id": f"{int(at.timestamp() * 1000):012x}{rand.getrandbits(80):020x}",
            "created_at": at,
            "endpoint": model.endpoint,
            "method": "POST",
            "status_code": 200,
            "stream": stream,
            "model": model.name,
            "response_model": model.name,
            "upstream": model.upstream,
            "session_id": session_id,
            "user_id": user_id,
            "properties": self._properties(),
            "estimated_prompt_tokens": None,
            "estimated_completion_tokens": None,
            "estimate_excludes": None,
            "latency_ms": round(latency, 3),
            "ttft_ms": round(latency * rand.uniform(0.05, 0.4), 3) if stream else None,
            "error": None,
            "key_id": self._key(user_id),
            "session_path": None,
            "session_name": None,
            "trace_id": None,
            "span_id": None,
            "tool_calls": 0,
            "tool_results": 0,
            "usage_repaired": False,
            "downgraded_from": None,
        }
        if rand.random() < ERROR_SHARE:
            row["status_code"], row["error"] = rand.choice(ERRORS)
            row["response_model"] = None
            row |= _NO_USAGE
            return row
        row |= self._usage(model)
        return row

    def _properties(self) -> str:
        rand = self.random
        draw = rand.random()
        env = "prod" if draw < 0.75 else "staging" if draw < 0.93 else "dev"
        text = f'{{"env": "{env}"'
        if rand.random() < 0.6:
            text += f', "team": "{rand.choice(TEAMS)}"'
        if rand.random() < 0.3:
            text += f', "feature": "{rand.choice(FEATURES)}"'
        return text + "}"

    def _key(self, user_id: str | None) -> str | None:
        if user_id is None or self.random.random() >= KEY_SHARE:
            return None
        # A user keeps to one or two keys, as teams hand them out.
        index = (int(user_id[5:]) + self.random.randint(0, 1)) % len(self.key_ids)
        return self.key_ids[index]

    def _usage(self, model: Model) -> dict[str, Any]:
        rand = self.random
        prompt = min(200_000, int(rand.lognormvariate(6.6, 1.1)) + 5)
        embeddings = model.endpoint == "/v1/embeddings"
        completion = 0 if embeddings else min(16_000, int(rand.lognormvariate(5.2, 1.0)) + 1)
        cached = (prompt // 128) * 64 if not embeddings and rand.random() < CACHED_SHARE else 0
        reasoning = int(completion * rand.uniform(0.3, 0.8)) if model.reasoning else 0
        cost = None
        if model.input_pico is not None and model.output_pico is not None:
            # Cached prompt tokens at a tenth of the price, as most providers bill them.
            pico = (prompt - cached) * model.input_pico + cached * model.input_pico // 10
            cost = Decimal(pico + completion * model.output_pico).scaleb(-12)
        estimated = rand.random() < ESTIMATED_SHARE
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "cached_tokens": cached,
            "cache_creation_tokens": 0,
            "reasoning_tokens": reasoning,
            "prompt_audio_tokens": 0,
            "completion_audio_tokens": 0,
            "usage_source": "estimated" if estimated else "provider",
            "cost_usd": cost,
            "price_source": None if cost is None else "genai-prices",
            "price_version": None if cost is None else "0.0.37",
        }

    def virtual_keys(self) -> list[dict[str, Any]]:
        """``virtual_keys`` rows for the key ids the requests carry."""
        return [
            {
                "id": key_id,
                "name": f"bench key {i}",
                "user_id": None,
                "key_hash": hashlib.sha256(key_id.encode()).hexdigest(),
                "display_prefix": f"tp-{key_id[:6]}",
                "models": "[]",
                "created_at": self.start,
                "expires_at": None,
                "revoked_at": None,
            }
            for i, key_id in enumerate(self.key_ids)
        ]


_NO_USAGE: dict[str, Any] = {
    "prompt_tokens": None,
    "completion_tokens": None,
    "total_tokens": None,
    "cached_tokens": None,
    "cache_creation_tokens": None,
    "reasoning_tokens": None,
    "prompt_audio_tokens": None,
    "completion_audio_tokens": None,
    "usage_source": None,
    "cost_usd": None,
    "price_source": None,
    "price_version": None,
}


def to_record(row: dict[str, Any]) -> RequestRecord:
    """The ``RequestRecord`` the proxy would have made for ``row``."""
    usage = None
    if row["prompt_tokens"] is not None:
        usage = Usage(**{name: row[name] for name in TOKEN_FIELDS})
    fields = {k: v for k, v in row.items() if k not in TOKEN_FIELDS}
    fields["properties"] = json.loads(row["properties"])
    return RequestRecord(**fields, usage=usage)


def now() -> datetime:
    """The current moment, UTC."""
    return datetime.now(UTC)
