"""Pure pricing: (model, Usage) -> exact Decimal cost in USD, or None when the price is unknown.

Prices come from the config's overrides first, then from the price data bundled in the
``genai-prices`` package. Only the bundled snapshot is used: the ``PriceBook`` builds its own
``DataSnapshot`` from ``genai_prices.data`` and never starts genai-prices' ``UpdatePrices``
downloader, so nothing is fetched at run time and a snapshot swapped in process-wide by another
library (``set_custom_snapshot``) is ignored.

How a model name is resolved, first hit wins:

1. an override whose ``model`` equals the name (case-insensitive), in config order; then an
   override whose ``model`` glob matches it, in config order. An override with ``alias``
   resolves the alias the same way (a loop of aliases is unpriced and logged);
2. fine-tuned models (``ft:...``) stop here: OpenAI bills their inference at other rates than
   the base model's (gpt-4o-mini: $0.30/$1.20 against $0.15/$0.60), so they stay unpriced unless
   an override (e.g. ``ft:gpt-4o-mini-*``) prices them;
3. genai-prices with the ``provider`` hint (``azure``, ``openrouter``...), then without it (an
   unknown hint or a hint whose provider lacks the model is ignored). genai-prices matches dated
   snapshots (``gpt-4o-2024-08-06`` is priced as ``gpt-4o``, ``gpt-4o-2024-05-13`` at its own
   price) and names case-insensitively;
4. ``prefix/name`` (``openai/gpt-4o``, ``azure/gpt-4o``): ``name`` again from step 1, with
   ``prefix`` as the provider hint when genai-prices knows such a provider.

Usage is mapped so that every token is priced exactly once: cache reads at the cached rate,
cache writes at the write rate (Anthropic's 5-minute rate; usage does not tell 1-hour writes
apart), input audio at the input-audio rate, the rest of the prompt at the input rate; reasoning
at the reasoning rate (genai-prices has one for few models; otherwise the output rate), output
audio at the output-audio rate, the rest of the completion at the output rate. A detail count
larger than what is left of its total is capped, so bad upstream numbers can never price a token
twice or a negative count.

A rate the usage needs but the genai-prices entry lacks: cache rates fall back to the input rate
(what the provider bills when it has no cache price), reasoning to output. Audio has no such
fallback: providers bill audio many times the text rate (gpt-4o-audio-preview: $40/M audio in
against $2.50/M text), so a request with audio tokens and no audio rate is unpriced and logged,
and ``describe`` shows the audio rates as null; an override can supply them.
"""

from __future__ import annotations

import bisect
import fnmatch
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

import genai_prices
from genai_prices import data_snapshot
from genai_prices import types as gp

from proxy.config import PriceOverride
from proxy.usage import Usage

logger = logging.getLogger(__name__)

_MILLION = Decimal(1_000_000)
# Costs are stored with 12 decimal places; 60 significant digits keep every product and sum
# on the way exact (a rate has a few digits, a count at most ten).
_PRECISION = 60
_STORED_PLACES = Decimal("1e-12")
# Model names come from clients: bound what they can make the book remember.
_MAX_REMEMBERED = 10_000

# genai-prices price keys shown by describe(), under our names.
_RATE_NAMES = {
    "input_mtok": "input",
    "cache_read_mtok": "cached_input",
    "cache_write_mtok": "cache_write",
    "cache_write_1h_mtok": "cache_write_1h",
    "output_mtok": "output",
    "output_reasoning_mtok": "reasoning",
    "input_audio_mtok": "input_audio",
    "cache_audio_read_mtok": "cached_input_audio",
    "output_audio_mtok": "output_audio",
}


@dataclass(frozen=True, slots=True)
class Cost:
    """The exact price of one request and where it came from (kept on the record for repricing)."""

    usd: Decimal
    source: str
    version: str
    priced_as: str


NOTHING_CHARGED = Cost(Decimal(0), source="", version="", priced_as="")
"""The cost of a request refused before it reached the provider: zero, from no price list
(its record's ``price_source`` and ``price_version`` are null)."""


@dataclass(frozen=True, slots=True)
class _Counts:
    """Usage split into disjoint buckets: each token in exactly one."""

    input: int
    cached_input: int
    cache_write: int
    input_audio: int
    output: int
    reasoning: int
    output_audio: int


def _split_usage(usage: Usage) -> _Counts:
    """Split ``usage`` into disjoint token buckets, capping detail counts at what is left."""
    prompt = max(usage.prompt_tokens, 0)
    cached = _cap(usage.cached_tokens, prompt)
    written = _cap(usage.cache_creation_tokens, prompt - cached)
    audio_in = _cap(usage.prompt_audio_tokens, prompt - cached - written)
    completion = max(usage.completion_tokens, 0)
    reasoning = _cap(usage.reasoning_tokens, completion)
    audio_out = _cap(usage.completion_audio_tokens, completion - reasoning)
    return _Counts(
        input=prompt - cached - written - audio_in,
        cached_input=cached,
        cache_write=written,
        input_audio=audio_in,
        output=completion - reasoning - audio_out,
        reasoning=reasoning,
        output_audio=audio_out,
    )


def _cap(value: int, limit: int) -> int:
    return min(max(value, 0), limit)


@dataclass(frozen=True, slots=True)
class _Rates:
    """Rates in USD per 1M tokens, one per bucket, fallbacks applied; None means no rate."""

    input: Decimal | None
    cached_input: Decimal | None
    cache_write: Decimal | None
    output: Decimal | None
    reasoning: Decimal | None
    input_audio: Decimal | None
    output_audio: Decimal | None

    @classmethod
    def from_override(cls, override: PriceOverride) -> _Rates:
        # The config demands input or output; a side left out is taken as free, e.g. an
        # embeddings model priced with only ``input``.
        input_rate = _first(override.input, Decimal(0))
        output_rate = _first(override.output, Decimal(0))
        return cls(
            input=input_rate,
            cached_input=_first(override.cached_input, input_rate),
            cache_write=_first(override.cache_write, input_rate),
            output=output_rate,
            reasoning=_first(override.reasoning, output_rate),
            input_audio=_first(override.input_audio, input_rate),
            output_audio=_first(override.output_audio, output_rate),
        )

    @classmethod
    def from_listed(cls, prices: gp.ModelPrice, prompt_tokens: int = 0) -> _Rates:
        """The rates of a genai-prices entry for a prompt of ``prompt_tokens``, with fallbacks.

        Cache rates fall back to input and reasoning to output, as providers bill them when
        they list no separate price; audio has no fallback (see the module docstring).
        """

        def rate(value: Decimal | gp.TieredPrices | None) -> Decimal | None:
            return _tier_rate(value, prompt_tokens)

        input_rate = rate(prices.input_mtok)
        output_rate = rate(prices.output_mtok)
        return cls(
            input=input_rate,
            cached_input=_else(rate(prices.cache_read_mtok), input_rate),
            cache_write=_else(rate(prices.cache_write_mtok), input_rate),
            output=output_rate,
            reasoning=_else(rate(prices.output_reasoning_mtok), output_rate),
            input_audio=rate(prices.input_audio_mtok),
            output_audio=rate(prices.output_audio_mtok),
        )

    def missing(self, counts: _Counts) -> str | None:
        """The name of the first rate ``counts`` need and these rates lack, or None."""
        for name in _BUCKETS:
            if getattr(counts, name) and getattr(self, name) is None:
                return name
        return None

    def usd(self, counts: _Counts) -> Decimal:
        """The exact cost of ``counts`` at these rates (a bucket without a rate must be 0)."""
        total = Decimal(0)
        with localcontext(prec=_PRECISION):
            for name in _BUCKETS:
                count = getattr(counts, name)
                if count:
                    total += getattr(self, name) * count
            return total / _MILLION

    def as_strings(self) -> dict[str, str | None]:
        return {name: _plain(getattr(self, name)) for name in _BUCKETS}


_BUCKETS = tuple(field.name for field in fields(_Rates))
"""The rate buckets, in order (``dataclasses.fields`` is slow enough to matter per request)."""


def _first(value: Decimal | None, fallback: Decimal) -> Decimal:
    return fallback if value is None else value


def _else(value: Decimal | None, fallback: Decimal | None) -> Decimal | None:
    return fallback if value is None else value


def _base(value: Decimal | gp.TieredPrices | None) -> Decimal | None:
    return _tier_rate(value, 0)


def _tier_rate(value: Decimal | gp.TieredPrices | None, prompt_tokens: int) -> Decimal | None:
    """The rate for a prompt of ``prompt_tokens``: as genai-prices' tiers work, a prompt past a
    tier's start pays that tier's rate on every token (Anthropic's and Google's long context)."""
    if not isinstance(value, gp.TieredPrices):
        return value
    for tier in reversed(value.tiers):
        if prompt_tokens > tier.start:
            return tier.price
    return value.base


# Price keys whose cost our arithmetic reproduces exactly: the token kinds our usage reports,
# plus kinds it never reports (1-hour cache writes, cached audio, searches), which cost 0.
_PLAIN_KEYS = frozenset(
    {
        "input_mtok",
        "cache_read_mtok",
        "cache_write_mtok",
        "output_mtok",
        "output_reasoning_mtok",
        "input_audio_mtok",
        "output_audio_mtok",
        "cache_write_1h_mtok",
        "cache_audio_read_mtok",
        "web_searches_kcount",
        "storage_searches_kcount",
    }
)


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A genai-prices price prepared once.

    ``rates[i]`` apply to prompts longer than ``starts[i]`` tokens (``starts[0]`` is -1), the
    tiers of every rate merged. ``plain`` prices are computed from these rates alone, exactly
    as genai-prices would (a test checks every bundled price); others go through genai-prices.
    """

    prices: gp.ModelPrice  # kept so the id() it is cached under stays taken
    starts: tuple[int, ...]
    rates: tuple[_Rates, ...]
    plain: bool

    @classmethod
    def of(cls, prices: gp.ModelPrice) -> _Compiled:
        items = [(key, value) for key, value in vars(prices).items() if value is not None]
        plain = all(key in _PLAIN_KEYS for key, _ in items)
        tier_starts = {
            tier.start
            for _, value in items
            if isinstance(value, gp.TieredPrices)
            for tier in value.tiers
        }
        starts = (-1, *sorted(tier_starts))
        rates = tuple(_Rates.from_listed(prices, start + 1) for start in starts)
        return cls(prices, starts, rates, plain)

    def rates_for(self, prompt_tokens: int) -> _Rates:
        """The rates that apply to a prompt of ``prompt_tokens`` tokens."""
        return self.rates[bisect.bisect_left(self.starts, prompt_tokens) - 1]


@dataclass(frozen=True, slots=True)
class _Configured:
    rates: _Rates
    priced_as: str


@dataclass(frozen=True, slots=True)
class _Listed:
    provider: gp.Provider
    model: gp.ModelInfo


_Entry = _Configured | _Listed


class PriceBook:
    """Prices requests: the config's overrides first, then genai-prices' bundled data.

    Safe to share between threads. Each (model, provider) is resolved once and remembered, so
    repeated calls cost microseconds; unknown models are logged once each.
    """

    def __init__(self, overrides: Sequence[PriceOverride] = ()) -> None:
        """Build the book; ``overrides`` keep their config order (exact names before globs)."""
        from genai_prices.data import providers  # ~0.2 s: load when a book is made, not on import

        self._overrides = tuple(overrides)
        self._snapshot = _bundled_snapshot(providers)
        self._version = genai_prices.__version__
        self._resolved: dict[tuple[str, str | None], _Entry | None] = {}
        self._prepared: dict[int, _Compiled] = {}
        self._logged: set[str] = set()
        self._lock = threading.Lock()

    def cost(
        self,
        model: str | None,
        usage: Usage,
        *,
        provider: str | None = None,
        at: datetime | None = None,
    ) -> Cost | None:
        """Return the exact cost of ``usage`` on ``model``, or None when it cannot be priced.

        ``provider`` is a hint such as ``"azure"`` or ``"openrouter"``; ``at`` is when the request
        was made (default now), for prices that change by date or time of day. A model without a
        price, or a price without a rate the usage needs (audio), gives None, never 0; a known
        price of 0 (a self-hosted model) gives ``Decimal(0)``. The result is exact; only when it
        has more than 12 decimal places (the database keeps 12) is it rounded half-even to 12.
        """
        if not model:
            return None
        entry = self._entry(model, provider)
        if entry is None:
            return None
        counts = _split_usage(usage)
        if isinstance(entry, _Configured):
            return Cost(_stored(entry.rates.usd(counts)), "config", "config", entry.priced_as)
        usd = self._listed_usd(entry, counts, model, at)
        if usd is None:
            return None
        return Cost(_stored(usd), "genai-prices", self._version, entry.model.id)

    def describe(
        self, model: str, *, provider: str | None = None, at: datetime | None = None
    ) -> dict[str, Any] | None:
        """Describe the price ``cost`` would use for ``model``, for ``GET /usage/prices``.

        Rates are decimal strings in USD per 1M tokens, after fallbacks; a rate that is null
        leaves such tokens unpriced. ``notes`` explain tiers, time-of-day prices and fallbacks.
        Returns None when the model has no price.
        """
        entry = self._entry(model, provider)
        if entry is None:
            return None
        if isinstance(entry, _Configured):
            return {
                "model": model,
                "priced_as": entry.priced_as,
                "source": "config",
                "version": "config",
                "provider": provider,
                "usd_per_million": entry.rates.as_strings(),
                "notes": [],
            }
        when = at or datetime.now(tz=UTC)
        prices = entry.model.get_prices(when)
        return {
            "model": model,
            "priced_as": entry.model.id,
            "source": "genai-prices",
            "version": self._version,
            "provider": entry.provider.id,
            "usd_per_million": _listed_rates(prices),
            "notes": _listed_notes(entry.model, prices, when),
        }

    def _entry(self, model: str, provider: str | None) -> _Entry | None:
        key = (model, provider)
        try:
            return self._resolved[key]
        except KeyError:
            pass
        entry = self._resolve(model, provider, ())
        if entry is None:
            self._log_once(model, "no price for model %r; add a price override to price it", model)
        with self._lock:
            if len(self._resolved) >= _MAX_REMEMBERED:
                self._resolved.clear()
                # genai-prices' snapshot remembers every name it failed to match: start afresh.
                self._snapshot = _bundled_snapshot(self._snapshot.providers)
            self._resolved[key] = entry
        return entry

    def _resolve(self, model: str, provider: str | None, chain: tuple[str, ...]) -> _Entry | None:
        """Find the price entry for ``model``; ``chain`` holds the names that led here."""
        override = self._override(model)
        if override is not None:
            if override.alias is None:
                return _Configured(_Rates.from_override(override), override.model)
            chain = (*chain, model.lower())
            if override.alias.lower() in chain:
                loop = " -> ".join((*chain, override.alias))
                # Keyed by the name asked for, so this replaces its "no price" warning.
                self._log_once(chain[0], "price overrides alias in a loop: %s", loop)
                return None
            return self._resolve(override.alias, provider, chain)
        if model.lower().startswith("ft:"):
            return None
        listed = self._listed(model, provider)
        if listed is not None:
            return listed
        prefix, slash, rest = model.partition("/")
        if slash and rest:
            known = data_snapshot.find_provider_by_id(self._snapshot.providers, prefix)
            return self._resolve(rest, prefix if known else provider, (*chain, model.lower()))
        return None

    def _override(self, model: str) -> PriceOverride | None:
        name = model.lower()
        for override in self._overrides:
            if override.model.lower() == name:
                return override
        for override in self._overrides:
            if fnmatch.fnmatchcase(name, override.model.lower()):
                return override
        return None

    def _listed(self, model: str, provider: str | None) -> _Listed | None:
        hints: Iterable[str | None] = (provider, None) if provider else (None,)
        for hint in hints:
            try:
                found, info = self._snapshot.find_provider_model(model, None, hint, None)
            except LookupError:
                continue
            return _Listed(found, info)
        return None

    def _listed_usd(
        self, entry: _Listed, counts: _Counts, model: str, at: datetime | None
    ) -> Decimal | None:
        compiled = self._compiled(entry.model.get_prices(at or datetime.now(tz=UTC)))
        rates = compiled.rates_for(
            counts.input + counts.cached_input + counts.cache_write + counts.input_audio
        )
        missing = rates.missing(counts)
        if missing is not None:
            self._log_once(
                f"{model}\0{missing}",
                "price of %r (genai-prices %s) has no %s rate; request left unpriced, "
                "add a price override with it",
                model,
                entry.model.id,
                missing,
            )
            return None
        if compiled.plain:
            return rates.usd(counts)
        return self._calc_with_genai_prices(compiled.prices, counts, model)

    def _compiled(self, prices: gp.ModelPrice) -> _Compiled:
        # ModelPrice is unhashable; the entries live as long as the snapshot, and the cached
        # value holds a reference, so an id() is never reused while cached.
        key = id(prices)
        compiled = self._prepared.get(key)
        if compiled is None:
            compiled = _Compiled.of(prices)
            with self._lock:
                self._prepared[key] = compiled
        return compiled

    def _calc_with_genai_prices(
        self, prices: gp.ModelPrice, counts: _Counts, model: str
    ) -> Decimal | None:
        """Price tiers, per-request fees and other kinds ours does not model, via genai-prices.

        genai-prices' ``input_tokens`` include cache reads and writes and input audio (its
        Anthropic extractor adds cache_creation and cache_read to input_tokens) and it prices
        each of those at its own rate only; likewise ``output_tokens`` include reasoning and
        audio.
        """
        usage = gp.Usage(
            input_tokens=counts.input
            + counts.cached_input
            + counts.cache_write
            + counts.input_audio,
            cache_read_tokens=counts.cached_input,
            cache_write_tokens=counts.cache_write,
            input_audio_tokens=counts.input_audio,
            output_tokens=counts.output + counts.reasoning + counts.output_audio,
            output_reasoning_tokens=counts.reasoning,
            output_audio_tokens=counts.output_audio,
            # Where two reported kinds overlap (cached audio, audio reasoning), genai-prices
            # wants the overlap spelled out; our buckets are disjoint, so it is 0.
            cache_audio_read_tokens=0,
            cache_audio_write_tokens=0,
            output_audio_reasoning_tokens=0,
        )
        try:
            with localcontext(prec=_PRECISION):
                return prices.calc_price(usage)["total_price"]
        except ValueError as exc:
            # genai-prices rejects usage it finds inconsistent; an unpriced record beats a guess.
            self._log_once(f"{model}\0{exc}", "cannot price %r: %s", model, exc)
            return None

    def _log_once(self, key: str, message: str, *args: object) -> None:
        with self._lock:
            if key in self._logged:
                return
            if len(self._logged) >= _MAX_REMEMBERED:
                self._logged.clear()
            self._logged.add(key)
        logger.warning(message, *args)


def _bundled_snapshot(providers: list[gp.Provider]) -> data_snapshot.DataSnapshot:
    """Our own snapshot of the bundled data: never replaced by a downloaded one."""
    return data_snapshot.DataSnapshot(providers=providers, from_auto_update=False)


def _listed_rates(prices: gp.ModelPrice) -> dict[str, str | None]:
    """The rates ``cost`` applies under our names, then any other price the entry lists."""
    rates = _Rates.from_listed(prices).as_strings()
    for key, value in vars(prices).items():
        name = _RATE_NAMES.get(key, key)
        if value is not None and name not in rates and not key.startswith("_"):
            rates[name] = _plain(_base(value))
    return rates


def _listed_notes(info: gp.ModelInfo, prices: gp.ModelPrice, when: datetime) -> list[str]:
    notes: list[str] = []
    if isinstance(info.prices, list) and len(info.prices) > 1:
        notes.append(
            "price depends on the date or time of day (UTC); rates shown are for "
            + when.isoformat()
        )
    for key, value in vars(prices).items():
        if isinstance(value, gp.TieredPrices):
            name = _RATE_NAMES.get(key, key)
            for tier in value.tiers:
                notes.append(
                    f"{name}: {_plain(tier.price)} per million for every token once the prompt "
                    f"has more than {tier.start} tokens"
                )
    if prices.output_reasoning_mtok is None:
        notes.append("reasoning tokens are billed as output tokens")
    if prices.cache_write_mtok is not None:
        notes.append("cache writes are priced at the 5-minute rate")
    if prices.input_audio_mtok is None or prices.output_audio_mtok is None:
        notes.append("no audio rate: a request with audio tokens is left unpriced")
    return notes


def _plain(value: Decimal | None) -> str | None:
    """A rate as a plain decimal string: ``2.5``, not ``2.50`` or ``2.5E+0``."""
    if value is None:
        return None
    return format(value.normalize(), "f")


def _stored(usd: Decimal) -> Decimal:
    """The cost as stored: exact, unless it has more than 12 decimal places (then half-even)."""
    exponent = usd.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -12:
        with localcontext(prec=_PRECISION):
            return usd.quantize(_STORED_PLACES, rounding=ROUND_HALF_EVEN)
    return usd
