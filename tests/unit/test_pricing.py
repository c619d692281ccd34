"""Pricing against the providers' published per-million prices, worked out by hand.

Each row states the rates it uses and the page they come from; the expected cost is the sum of
tokens x rate / 1,000,000, written out in the comment. When genai-prices' bundled data and the
published page disagree, the failure message names both.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from decimal import Decimal

import genai_prices
import pytest
from genai_prices import data_snapshot
from genai_prices import types as gp
from genai_prices.data import providers

from proxy.config import PriceOverride
from proxy.pricing import Cost, PriceBook, _Compiled, _Counts
from proxy.usage import Usage

NOON = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
OPENAI = "https://platform.openai.com/docs/pricing"
ANTHROPIC = "https://docs.anthropic.com/en/docs/about-claude/pricing"
DEEPSEEK = "https://api-docs.deepseek.com/quick_start/pricing"
DASHSCOPE = "https://www.alibabacloud.com/help/en/model-studio/models"
VERSION = genai_prices.__version__


def chat(prompt: int, completion: int, *, cached: int = 0, reasoning: int = 0) -> Usage:
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_tokens=cached,
        reasoning_tokens=reasoning,
    )


def anthropic(fresh: int, written: int, read: int, output: int) -> Usage:
    """Anthropic's usage as proxy.usage reads it: the prompt is the sum of the three inputs."""
    prompt = fresh + written + read
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=output,
        total_tokens=prompt + output,
        cached_tokens=read,
        cache_creation_tokens=written,
    )


def audio(prompt: int, prompt_audio: int, completion: int, completion_audio: int) -> Usage:
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_audio_tokens=prompt_audio,
        completion_audio_tokens=completion_audio,
    )


PUBLISHED = [
    pytest.param(
        # gpt-4o: $2.50 input, $1.25 cached input, $10.00 output (OPENAI)
        # 800 x 2.50 + 200 x 1.25 + 500 x 10 = 2000 + 250 + 5000 = 7250 -> 0.00725
        "gpt-4o",
        None,
        chat(1000, 500, cached=200),
        "gpt-4o",
        Decimal("0.00725"),
        OPENAI,
        id="gpt-4o-cached",
    ),
    pytest.param(
        # gpt-4o-mini: $0.15 input, $0.075 cached input, $0.60 output (OPENAI)
        # 1000 x 0.15 + 1000 x 0.075 + 300 x 0.60 = 150 + 75 + 180 = 405 -> 0.000405
        "gpt-4o-mini",
        None,
        chat(2000, 300, cached=1000),
        "gpt-4o-mini",
        Decimal("0.000405"),
        OPENAI,
        id="gpt-4o-mini-cached",
    ),
    pytest.param(
        # o4-mini: $1.10 input, $4.40 output; reasoning tokens are output tokens (OPENAI)
        # 500 x 1.10 + 2000 x 4.40 = 550 + 8800 = 9350 -> 0.00935 (the 1500 reasoning tokens
        # are inside the 2000 and priced once)
        "o4-mini",
        None,
        chat(500, 2000, reasoning=1500),
        "o4-mini",
        Decimal("0.00935"),
        OPENAI,
        id="o4-mini-reasoning",
    ),
    pytest.param(
        # o4-mini cached input: $0.275 (OPENAI)
        # 1000 x 1.10 + 3000 x 0.275 + 100 x 4.40 = 1100 + 825 + 440 = 2365 -> 0.002365
        "o4-mini",
        None,
        chat(4000, 100, cached=3000),
        "o4-mini",
        Decimal("0.002365"),
        OPENAI,
        id="o4-mini-cached",
    ),
    pytest.param(
        # The dated snapshot behind the gpt-4o alias, same prices as gpt-4o (OPENAI)
        "gpt-4o-2024-08-06",
        None,
        chat(1000, 500, cached=200),
        "gpt-4o",
        Decimal("0.00725"),
        OPENAI,
        id="gpt-4o-2024-08-06",
    ),
    pytest.param(
        # gpt-4o-2024-05-13: $5.00 input, $15.00 output (OPENAI)
        # 1000 x 5 + 500 x 15 = 5000 + 7500 = 12500 -> 0.0125
        "gpt-4o-2024-05-13",
        None,
        chat(1000, 500),
        "gpt-4o-2024-05-13",
        Decimal("0.0125"),
        OPENAI,
        id="gpt-4o-2024-05-13",
    ),
    pytest.param(
        # Claude Sonnet 4: $3 base input, $3.75 5m cache writes, $0.30 cache hits, $15 output
        # (ANTHROPIC). 100 x 3 + 2000 x 3.75 + 10000 x 0.30 + 400 x 15
        # = 300 + 7500 + 3000 + 6000 = 16800 -> 0.0168
        "claude-sonnet-4-20250514",
        None,
        anthropic(100, 2000, 10000, 400),
        "claude-sonnet-4-0",
        Decimal("0.0168"),
        ANTHROPIC,
        id="claude-sonnet-4-cache-read-and-write",
    ),
    pytest.param(
        # Claude Sonnet 3.5: same rates as Sonnet 4 (ANTHROPIC)
        "claude-3-5-sonnet-20241022",
        "anthropic",
        anthropic(100, 2000, 10000, 400),
        "claude-3-5-sonnet",
        Decimal("0.0168"),
        ANTHROPIC,
        id="claude-3-5-sonnet-cache-read-and-write",
    ),
    pytest.param(
        # gpt-audio: $2.50 text input, $10 text output, $32 audio input, $64 audio output
        # (OPENAI). 400 x 2.50 + 600 x 32 + 100 x 10 + 400 x 64
        # = 1000 + 19200 + 1000 + 25600 = 46800 -> 0.0468
        "gpt-audio",
        None,
        audio(1000, 600, 500, 400),
        "gpt-audio",
        Decimal("0.0468"),
        OPENAI,
        id="gpt-audio",
    ),
    pytest.param(
        # Azure OpenAI bills gpt-4o like OpenAI: 0.00725 as above
        "gpt-4o",
        "azure",
        chat(1000, 500, cached=200),
        "gpt-4o",
        Decimal("0.00725"),
        OPENAI,
        id="gpt-4o-on-azure",
    ),
    pytest.param(
        # A provider prefix is the provider: openai/gpt-4o is gpt-4o
        "openai/gpt-4o",
        None,
        chat(1000, 500, cached=200),
        "gpt-4o",
        Decimal("0.00725"),
        OPENAI,
        id="openai-prefix",
    ),
    pytest.param(
        "azure/gpt-4o",
        None,
        chat(1000, 500, cached=200),
        "gpt-4o",
        Decimal("0.00725"),
        OPENAI,
        id="azure-prefix",
    ),
]


@pytest.mark.parametrize(
    ("model", "provider", "usage", "priced_as", "published", "page"), PUBLISHED
)
def test_published_prices(
    model: str, provider: str | None, usage: Usage, priced_as: str, published: Decimal, page: str
) -> None:
    cost = PriceBook().cost(model, usage, provider=provider, at=NOON)
    assert cost is not None, f"genai-prices {VERSION} has no price for {model}"
    assert cost.usd == published, (
        f"genai-prices {VERSION} prices {model} ({usage}) at {cost.usd} USD; "
        f"the published rates on {page} give {published}"
    )
    assert cost == Cost(published, "genai-prices", VERSION, priced_as)


@pytest.mark.parametrize(
    ("at", "published"),
    [
        # Until 2025-09-05 16:00 UTC (DEEPSEEK, the page's "current price list" then):
        # 00:30-16:30 UTC standard: $0.27 cache miss, $0.07 cache hit, $1.10 output
        # 400 x 0.27 + 600 x 0.07 + 200 x 1.10 = 108 + 42 + 220 = 370 -> 0.00037
        pytest.param(datetime(2025, 3, 1, 12, 0, tzinfo=UTC), Decimal("0.00037"), id="standard"),
        # 16:30-00:30 UTC discount: $0.135 miss, $0.035 hit, $0.55 output
        # 400 x 0.135 + 600 x 0.035 + 200 x 0.55 = 54 + 21 + 110 = 185 -> 0.000185
        pytest.param(datetime(2025, 3, 1, 20, 0, tzinfo=UTC), Decimal("0.000185"), id="night"),
        # Since 2025-09-29, DeepSeek-V3.2 (DEEPSEEK): $0.28 miss, $0.028 hit, $0.42 output, no
        # night discount. 400 x 0.28 + 600 x 0.028 + 200 x 0.42 = 112 + 16.8 + 84 = 212.8
        pytest.param(
            NOON,
            Decimal("0.0002128"),
            id="v3.2",
            marks=pytest.mark.xfail(
                strict=True,
                reason="genai-prices 0.2.3 still has DeepSeek's 2025 prices with the night "
                "discount ($0.27/$0.07/$1.10); add a price override until it catches up",
            ),
        ),
    ],
)
def test_deepseek_cache_hits(at: datetime, published: Decimal) -> None:
    usage = Usage(prompt_tokens=1000, completion_tokens=200, total_tokens=1200, cached_tokens=600)
    cost = PriceBook().cost("deepseek-chat", usage, provider="deepseek", at=at)
    assert cost is not None
    assert cost.usd == published, (
        f"genai-prices {VERSION} prices deepseek-chat at {cost.usd} USD on {at:%Y-%m-%d %H:%M}; "
        f"the published rates on {DEEPSEEK} give {published}"
    )


def test_audio_without_an_audio_rate_is_unpriced(caplog: pytest.LogCaptureFixture) -> None:
    # gpt-4o-audio-preview bills audio at $40 in / $80 out per 1M (OPENAI), 16x its text rate;
    # genai-prices lists only the text rates, so audio usage must not be priced as text.
    book = PriceBook()
    with caplog.at_level(logging.WARNING, logger="proxy.pricing"):
        assert book.cost("gpt-4o-audio-preview", audio(1000, 600, 500, 400), at=NOON) is None
    assert "input_audio" in caplog.text
    # Text only: $2.50 / $10 -> 1000 x 2.50 + 500 x 10 = 7500 -> 0.0075
    text_only = book.cost("gpt-4o-audio-preview", chat(1000, 500), at=NOON)
    assert text_only is not None
    assert text_only.usd == Decimal("0.0075")


QWEN_MAX = PriceOverride(model="qwen-max", input=Decimal("1.6"), output=Decimal("6.4"))


@pytest.mark.parametrize(
    ("overrides", "model", "provider", "usage", "expected"),
    [
        pytest.param(
            # qwen-max on DashScope international: $1.6 input, $6.4 output (DASHSCOPE)
            # 1000 x 1.6 + 500 x 6.4 = 1600 + 3200 = 4800 -> 0.0048
            [QWEN_MAX],
            "qwen-max",
            None,
            chat(1000, 500),
            Cost(Decimal("0.0048"), "config", "config", "qwen-max"),
            id="explicit-rates",
        ),
        pytest.param(
            # No cached_input: cached tokens at the input rate, so the same 0.0048
            [QWEN_MAX],
            "qwen-max",
            None,
            chat(1000, 500, cached=400),
            Cost(Decimal("0.0048"), "config", "config", "qwen-max"),
            id="cache-rate-falls-back-to-input",
        ),
        pytest.param(
            # cached_input $0.64: 600 x 1.6 + 400 x 0.64 + 500 x 6.4 = 960 + 256 + 3200 = 4416
            [QWEN_MAX.model_copy(update={"cached_input": Decimal("0.64")})],
            "qwen-max",
            None,
            chat(1000, 500, cached=400),
            Cost(Decimal("0.004416"), "config", "config", "qwen-max"),
            id="cached-rate",
        ),
        pytest.param(
            # Every rate its own: 100 x 1 + 200 x 0.1 + 300 x 1.25 + 400 x 8 (audio in)
            # + 10 x 2 + 20 x 3 (reasoning) + 30 x 16 (audio out)
            # = 100 + 20 + 375 + 3200 + 20 + 60 + 480 = 4255 -> 0.004255
            [
                PriceOverride(
                    model="omni",
                    input=Decimal(1),
                    cached_input=Decimal("0.1"),
                    cache_write=Decimal("1.25"),
                    output=Decimal(2),
                    reasoning=Decimal(3),
                    input_audio=Decimal(8),
                    output_audio=Decimal(16),
                )
            ],
            "omni",
            None,
            Usage(
                prompt_tokens=1000,
                cached_tokens=200,
                cache_creation_tokens=300,
                prompt_audio_tokens=400,
                completion_tokens=60,
                reasoning_tokens=20,
                completion_audio_tokens=30,
            ),
            Cost(Decimal("0.004255"), "config", "config", "omni"),
            id="every-rate",
        ),
        pytest.param(
            # qwen-plus: $0.4 input, $1.2 output (DASHSCOPE); 1000 x 0.4 + 1000 x 1.2 = 1600
            [PriceOverride(model="qwen-plus*", input=Decimal("0.4"), output=Decimal("1.2"))],
            "qwen-plus-2025-01-25",
            None,
            chat(1000, 1000),
            Cost(Decimal("0.0016"), "config", "config", "qwen-plus*"),
            id="glob",
        ),
        pytest.param(
            # An exact name wins over an earlier glob
            [PriceOverride(model="qwen-*", input=Decimal(9), output=Decimal(9)), QWEN_MAX],
            "qwen-max",
            None,
            chat(1000, 500),
            Cost(Decimal("0.0048"), "config", "config", "qwen-max"),
            id="exact-before-glob",
        ),
        pytest.param(
            # An Azure deployment name priced as gpt-4o through genai-prices: 0.00725 as above
            [PriceOverride(model="prod-gpt4o-eastus", alias="gpt-4o")],
            "prod-gpt4o-eastus",
            "azure",
            chat(1000, 500, cached=200),
            Cost(Decimal("0.00725"), "genai-prices", VERSION, "gpt-4o"),
            id="alias-to-genai-prices",
        ),
        pytest.param(
            [PriceOverride(model="dashscope-default", alias="qwen-max"), QWEN_MAX],
            "dashscope-default",
            None,
            chat(1000, 500),
            Cost(Decimal("0.0048"), "config", "config", "qwen-max"),
            id="alias-to-override",
        ),
        pytest.param(
            # Overrides win over genai-prices: 1000 x 1 + 500 x 2 = 2000 -> 0.002
            [PriceOverride(model="gpt-4o-mini", input=Decimal(1), output=Decimal(2))],
            "gpt-4o-mini",
            None,
            chat(1000, 500),
            Cost(Decimal("0.002"), "config", "config", "gpt-4o-mini"),
            id="override-wins",
        ),
        pytest.param(
            # A self-hosted vLLM model: free is a known price, not an unknown one
            [PriceOverride(model="meta-llama/*", input=Decimal(0), output=Decimal(0))],
            "meta-llama/Llama-3.1-8B-Instruct",
            None,
            chat(1000, 500),
            Cost(Decimal(0), "config", "config", "meta-llama/*"),
            id="zero-price",
        ),
        pytest.param(
            # Fine-tuned gpt-4o-mini: $0.30 input, $1.20 output (OPENAI)
            # 1000 x 0.30 + 500 x 1.20 = 300 + 600 = 900 -> 0.0009
            [
                PriceOverride(
                    model="ft:gpt-4o-mini-2024-07-18:*", input=Decimal("0.3"), output=Decimal("1.2")
                )
            ],
            "ft:gpt-4o-mini-2024-07-18:acme::9abc",
            None,
            chat(1000, 500),
            Cost(Decimal("0.0009"), "config", "config", "ft:gpt-4o-mini-2024-07-18:*"),
            id="fine-tune",
        ),
    ],
)
def test_overrides(
    overrides: list[PriceOverride],
    model: str,
    provider: str | None,
    usage: Usage,
    expected: Cost,
) -> None:
    cost = PriceBook(overrides).cost(model, usage, provider=provider, at=NOON)
    assert cost == expected


@pytest.mark.parametrize(
    ("overrides", "model"),
    [
        pytest.param([], "llama3", id="unknown"),
        pytest.param([], "text-embedding-3-small", id="not-in-genai-prices"),
        # Fine-tunes are billed above their base model: not priced as it.
        pytest.param([], "ft:gpt-4o-mini-2024-07-18:acme::9abc", id="fine-tune"),
        pytest.param([], "azure/my-deployment", id="prefix-of-unknown"),
        pytest.param(
            [
                PriceOverride(model="a", alias="b"),
                PriceOverride(model="b", alias="a"),
            ],
            "a",
            id="alias-loop",
        ),
    ],
)
def test_unpriced_is_none_and_logged_once(
    overrides: list[PriceOverride], model: str, caplog: pytest.LogCaptureFixture
) -> None:
    book = PriceBook(overrides)
    with caplog.at_level(logging.WARNING, logger="proxy.pricing"):
        for _ in range(3):
            assert book.cost(model, chat(10, 10), at=NOON) is None
        assert book.describe(model) is None
    assert len(caplog.records) == 1
    assert model in caplog.records[0].getMessage()


def test_no_model_is_unpriced() -> None:
    assert PriceBook().cost(None, chat(10, 10)) is None
    assert PriceBook().cost("", chat(10, 10)) is None


def test_openrouter_hint_uses_openrouter_prices() -> None:
    cost = PriceBook().cost("openai/gpt-4o", chat(1000, 500), provider="openrouter", at=NOON)
    assert cost is not None
    assert cost.priced_as == "openai/gpt-4o"


def test_an_unknown_provider_hint_is_ignored() -> None:
    cost = PriceBook().cost("gpt-4o", chat(1000, 500, cached=200), provider="vllm", at=NOON)
    assert cost is not None
    assert cost.usd == Decimal("0.00725")


def test_exact_to_the_token() -> None:
    book = PriceBook()
    # gpt-4o-mini input: $0.15 per 1M tokens (OPENAI), so one token is $0.00000015
    one = book.cost("gpt-4o-mini", Usage(prompt_tokens=1, total_tokens=1))
    assert one is not None
    assert one.usd == Decimal("0.00000015")
    assert sum((one.usd for _ in range(10_000)), Decimal(0)) == Decimal("0.0015")


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        # One token at $0.000001/M is 1e-12: twelve places, kept as is
        (Decimal("0.000001"), Decimal("0.000000000001")),
        # Past twelve places, half-even to twelve: 1.5e-12 -> 2e-12, 2.5e-12 -> 2e-12,
        # 1.25e-13 -> 0, 7.5e-13 -> 1e-12
        (Decimal("0.0000015"), Decimal("0.000000000002")),
        (Decimal("0.0000025"), Decimal("0.000000000002")),
        (Decimal("0.000000125"), Decimal(0)),
        (Decimal("0.00000075"), Decimal("0.000000000001")),
    ],
)
def test_rounds_only_past_twelve_places(rate: Decimal, expected: Decimal) -> None:
    book = PriceBook([PriceOverride(model="tiny", input=rate, output=rate)])
    cost = book.cost("tiny", Usage(prompt_tokens=1, total_tokens=1))
    assert cost is not None
    assert cost.usd == expected


def test_more_digits_than_the_default_context() -> None:
    # (10^22 + 1) tokens at $1.234567/M = 12345670000000000.000001234567: 29 significant
    # digits, one more than Python's default decimal context keeps.
    book = PriceBook([PriceOverride(model="big", input=Decimal("1.234567"), output=Decimal(0))])
    cost = book.cost("big", Usage(prompt_tokens=10**22 + 1))
    assert cost is not None
    assert cost.usd == Decimal("12345670000000000.000001234567")


def test_describe_genai_prices() -> None:
    described = PriceBook().describe("gpt-4o-2024-08-06", at=NOON)
    assert described is not None
    assert described["model"] == "gpt-4o-2024-08-06"
    assert described["priced_as"] == "gpt-4o"
    assert (described["source"], described["version"]) == ("genai-prices", VERSION)
    assert described["provider"] == "openai"
    rates = described["usd_per_million"]
    assert (rates["input"], rates["cached_input"], rates["output"]) == ("2.5", "1.25", "10")
    assert rates["input_audio"] is None
    assert "reasoning tokens are billed as output tokens" in described["notes"]


def test_describe_override() -> None:
    described = PriceBook([QWEN_MAX]).describe("qwen-max")
    assert described == {
        "model": "qwen-max",
        "priced_as": "qwen-max",
        "source": "config",
        "version": "config",
        "provider": None,
        "usd_per_million": {
            "input": "1.6",
            "cached_input": "1.6",
            "cache_write": "1.6",
            "output": "6.4",
            "reasoning": "6.4",
            "input_audio": "1.6",
            "output_audio": "6.4",
        },
        "notes": [],
    }


def test_describe_time_of_day_and_tiers() -> None:
    book = PriceBook()
    deepseek = book.describe("deepseek-chat", at=datetime(2025, 3, 1, 20, 0, tzinfo=UTC))
    assert deepseek is not None
    assert deepseek["usd_per_million"]["input"] == "0.135"
    assert any("time of day" in note for note in deepseek["notes"])
    gemini = book.describe("gemini-2.5-pro", at=NOON)
    assert gemini is not None
    assert any("more than 200000 tokens" in note for note in gemini["notes"])


@pytest.mark.parametrize(
    ("model", "usage", "published"),
    [
        # Claude Sonnet 4.5 up to 200K input tokens: $3 input, $0.30 cache hits, $15 output
        # (ANTHROPIC). 150000 x 3 + 50000 x 0.30 + 1000 x 15 = 450000 + 15000 + 15000 -> 0.48
        pytest.param(
            "claude-sonnet-4-5", chat(200_000, 1000, cached=50_000), Decimal("0.48"), id="4.5"
        ),
        # Over 200K every token pays the long-context rates: $6 input, $0.60 cache hits,
        # $22.50 output (ANTHROPIC, "Long context pricing").
        # 200000 x 6 + 50000 x 0.60 + 1000 x 22.50 = 1200000 + 30000 + 22500 -> 1.2525
        pytest.param(
            "claude-sonnet-4-5",
            chat(250_000, 1000, cached=50_000),
            Decimal("1.2525"),
            id="4.5-long",
        ),
        # Claude Sonnet 4 has the same long-context rates (ANTHROPIC)
        pytest.param(
            "claude-sonnet-4-20250514",
            chat(250_000, 1000, cached=50_000),
            Decimal("1.2525"),
            id="4-long",
            marks=pytest.mark.xfail(
                strict=True,
                reason="genai-prices 0.2.3 has no long-context tier for Claude Sonnet 4 "
                "(it has one for Sonnet 4.5); add an override if you use the 1M context",
            ),
        ),
    ],
)
def test_long_context_tiers(model: str, usage: Usage, published: Decimal) -> None:
    cost = PriceBook().cost(model, usage, at=NOON)
    assert cost is not None
    assert cost.usd == published, (
        f"genai-prices {VERSION} prices {model} ({usage.prompt_tokens} input tokens) at "
        f"{cost.usd} USD; the published rates on {ANTHROPIC} give {published}"
    )


def test_ignores_a_downloaded_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    empty = data_snapshot.DataSnapshot(providers=[], from_auto_update=True)
    monkeypatch.setattr(data_snapshot, "_custom_snapshot", empty)
    cost = PriceBook().cost("gpt-4o", chat(1000, 500, cached=200), at=NOON)
    assert cost is not None
    assert cost.usd == Decimal("0.00725")


def test_threads_share_a_book(caplog: pytest.LogCaptureFixture) -> None:
    book = PriceBook()
    results: list[Cost | None] = []
    lock = threading.Lock()

    def work() -> None:
        for model in ("gpt-4o", "nobody-knows-me") * 50:
            cost = book.cost(model, chat(1000, 500, cached=200), at=NOON)
            with lock:
                results.append(cost)

    with caplog.at_level(logging.WARNING, logger="proxy.pricing"):
        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    priced = [cost for cost in results if cost is not None]
    assert len(priced) == 400
    assert {cost.usd for cost in priced} == {Decimal("0.00725")}
    assert len(caplog.records) == 1


def _bundled_prices() -> list[tuple[str, gp.ModelPrice]]:
    found = []
    for provider in providers:
        for model in provider.models:
            options = model.prices if isinstance(model.prices, list) else [model.prices]
            for option in options:
                prices = option.prices if isinstance(option, gp.ConditionalPrice) else option
                found.append((f"{provider.id}/{model.id}", prices))
    return found


@pytest.mark.parametrize(
    ("counts", "at_least"),
    [
        (_Counts(900, 0, 0, 0, 700, 0, 0), 500),
        (_Counts(1000, 300, 200, 0, 500, 250, 0), 500),
        # Past the 200K tiers of Gemini and Claude
        (_Counts(250_000, 30_000, 0, 0, 10_000, 4_000, 0), 500),
        # Audio: only the few prices with audio rates
        (_Counts(100, 50, 0, 600, 100, 0, 400), 5),
    ],
)
def test_fast_path_matches_genai_prices(counts: _Counts, at_least: int) -> None:
    """Our arithmetic for plain prices gives exactly what genai-prices' own calc_price gives."""
    checked = 0
    for name, prices in _bundled_prices():
        compiled = _Compiled.of(prices)
        prompt = counts.input + counts.cached_input + counts.cache_write + counts.input_audio
        rates = compiled.rates_for(prompt)
        if not compiled.plain or rates.missing(counts) is not None:
            continue
        usage = gp.Usage(
            input_tokens=prompt,
            cache_read_tokens=counts.cached_input,
            cache_write_tokens=counts.cache_write,
            input_audio_tokens=counts.input_audio,
            output_tokens=counts.output + counts.reasoning + counts.output_audio,
            output_reasoning_tokens=counts.reasoning,
            output_audio_tokens=counts.output_audio,
            cache_audio_read_tokens=0,
            cache_audio_write_tokens=0,
            output_audio_reasoning_tokens=0,
        )
        expected = prices.calc_price(usage)["total_price"]
        assert rates.usd(counts) == expected, name
        checked += 1
    assert checked >= at_least
