"""Pure extraction of token usage from provider payloads and stream events."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one request, as a provider reports them or as estimated locally.

    ``prompt_tokens`` includes cached and cache-creation tokens; ``completion_tokens`` includes
    reasoning and audio output tokens.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0
    prompt_audio_tokens: int = 0
    completion_audio_tokens: int = 0
