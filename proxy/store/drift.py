"""How far local estimates stray from the providers' numbers, per model.

Sampled records carry both counts. Completion drift is measured against the visible output
(completion minus reasoning and audio tokens), which is all a local count can see; samples
whose estimate left inputs out (images, audio) are not compared.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, and_, cast, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.store.tables import requests


async def drift_by_model(
    engine: AsyncEngine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    model: str | None = None,
) -> list[dict[str, Any]]:
    """Per model: samples, token sums both ways, signed drift and mean absolute error (%)."""
    r = requests.c
    visible = r.completion_tokens - r.reasoning_tokens - r.completion_audio_tokens
    conditions = [
        r.usage_source == "provider",
        r.estimated_prompt_tokens.is_not(None),
        r.estimate_excludes.is_(None),
    ]
    if since is not None:
        conditions.append(r.created_at >= since)
    if until is not None:
        conditions.append(r.created_at < until)
    model_key = func.coalesce(r.response_model, r.model)
    if model is not None:
        conditions.append(model_key == model)
    query = (
        select(
            model_key.label("model"),
            func.count().label("samples"),
            func.sum(r.prompt_tokens).label("provider_prompt"),
            func.sum(r.estimated_prompt_tokens).label("estimated_prompt"),
            func.avg(_relative_error(r.estimated_prompt_tokens, r.prompt_tokens)).label(
                "prompt_error"
            ),
            func.sum(visible).label("provider_completion"),
            func.sum(r.estimated_completion_tokens).label("estimated_completion"),
            func.avg(_relative_error(r.estimated_completion_tokens, visible)).label(
                "completion_error"
            ),
        )
        .where(and_(*conditions))
        .group_by(model_key)
        .order_by(func.count().desc(), model_key)
    )
    async with engine.connect() as connection:
        rows = (await connection.execute(query)).mappings().all()
    return [_row(row) for row in rows]


def _relative_error(estimate: Any, actual: Any) -> Any:
    # NULL where the provider counted nothing: such a sample says nothing about a ratio.
    return func.abs(cast(estimate - actual, Float)) / func.nullif(cast(actual, Float), 0)


def _row(row: Any) -> dict[str, Any]:
    return {
        "model": row["model"],
        "samples": row["samples"],
        "prompt": _side(row["provider_prompt"], row["estimated_prompt"], row["prompt_error"]),
        "completion": _side(
            row["provider_completion"], row["estimated_completion"], row["completion_error"]
        ),
    }


def _side(provider: int | None, estimated: int | None, error: float | None) -> dict[str, Any]:
    provider, estimated = int(provider or 0), int(estimated or 0)
    drift = None if provider == 0 else round(100 * (estimated - provider) / provider, 2)
    return {
        "provider_tokens": provider,
        "estimated_tokens": estimated,
        "drift_pct": drift,
        "mean_abs_error_pct": None if error is None else round(100 * float(error), 2),
    }
