"""What a provider's usage and cost reports say, as plain values, and what can go wrong.

ReportError                 a report could not be had; names the provider and the call
├── ReportRefused           401/403: the admin key is wrong, expired or lacks the scope
├── ReportUnavailable       the provider is down, times out or keeps rate limiting
└── MalformedReport         a page is not in the documented shape
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

Provider = Literal["openai", "anthropic"]
BucketWidth = Literal["1d", "1h"]


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One result of one time bucket of a usage report.

    ``input_tokens`` counts every input token, cache reads and writes included (as
    tallyproxy's ``prompt_tokens``); ``requests`` is None where the report has no count
    (Anthropic's). ``project_id`` is OpenAI's project or Anthropic's workspace.
    """

    start: datetime
    end: datetime
    model: str | None
    project_id: str | None
    api_key_id: str | None
    requests: int | None
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class CostRow:
    """One line of a cost report: a day's cost, in USD, for a model where the line names one."""

    start: datetime
    end: datetime
    model: str | None
    project_id: str | None
    amount_usd: Decimal


@dataclass(frozen=True, slots=True)
class Page:
    """A page of a report: its rows, and the cursor of the next page (None: the last)."""

    usage: tuple[UsageRow, ...]
    costs: tuple[CostRow, ...]
    next_page: str | None


class ReportError(Exception):
    """A provider's report could not be read; ``str()`` names the provider and the call."""

    def __init__(self, provider: str, call: str, problem: str) -> None:
        super().__init__(f"{provider}: {call}: {problem}")
        self.provider = provider
        self.call = call
        self.problem = problem


class ReportRefused(ReportError):
    """The provider refused the admin key (401, 403)."""


class ReportUnavailable(ReportError):
    """The provider could not be reached, failed, or kept answering 429."""


class MalformedReport(ReportError):
    """A page did not have the documented shape."""


class PageShapeError(ValueError):
    """Raised by the pure parsers; the fetcher names the provider and call around it."""
