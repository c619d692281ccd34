"""A reconciliation as JSON (the API's body, the stored comparison), a table or CSV: pure."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from proxy.money import format_usd
from proxy.reconcile.compare import (
    MEASURES,
    BucketTotals,
    ComparisonRow,
    Difference,
    Reconciliation,
    Totals,
)

CSV_COLUMNS: Final = (
    "bucket_start", "model", "api_key_id", "project_id", "held",
    *(f"{side}_{m}" for m in MEASURES for side in ("provider", "tallyproxy")),
    "difference_input_tokens", "relative_input_tokens", "difference_output_tokens",
    "relative_output_tokens", "difference_cost_usd", "relative_cost_usd",
    "unpriced_requests", "bypass_requests", "bypass_input_tokens", "bypass_output_tokens",
)  # fmt: skip


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _number(value: int | Decimal | None) -> int | str | None:
    if value is None or isinstance(value, int):
        return value
    return format_usd(value)


def totals_json(totals: Totals) -> dict[str, Any]:
    return {
        "requests": totals.requests,
        "input_tokens": totals.input_tokens,
        "cached_input_tokens": totals.cached_input_tokens,
        "output_tokens": totals.output_tokens,
        "cost_usd": None if totals.cost_usd is None else format_usd(totals.cost_usd),
    }


def differences_json(differences: dict[str, Difference]) -> dict[str, Any]:
    return {
        name: {"absolute": _number(d.absolute), "relative": _number(d.relative)}
        for name, d in differences.items()
    }


def row_json(row: ComparisonRow) -> dict[str, Any]:
    bypass = row.bypass
    return {
        "bucket_start": iso(row.start),
        "bucket_end": iso(row.end),
        "model": row.model,
        "api_key_id": row.api_key_id,
        "project_id": row.project_id,
        "held": row.held,
        "provider": totals_json(row.provider),
        "tallyproxy": totals_json(row.local),
        "difference": differences_json(row.differences),
        "unpriced_requests": row.unpriced_requests,
        "bypass": None if bypass is None else {
            "requests": bypass.requests,
            "input_tokens": bypass.input_tokens,
            "output_tokens": bypass.output_tokens,
        },
    }  # fmt: skip


def bucket_json(bucket: BucketTotals) -> dict[str, Any]:
    pct = bucket.difference_pct
    return {
        "bucket_start": iso(bucket.start),
        "bucket_end": iso(bucket.end),
        "final": bucket.closed,
        "provider": totals_json(bucket.provider),
        "tallyproxy": totals_json(bucket.local),
        "difference": differences_json(bucket.differences),
        "measure": bucket.measure,
        "difference_pct": None if pct is None else format_usd(pct.quantize(Decimal("0.01"))),
        "unpriced_requests": bucket.unpriced_requests,
    }


def reconciliation_json(reconciliation: Reconciliation) -> dict[str, Any]:
    """The whole comparison: per bucket totals (``days``/hours) and per model/key rows."""
    return {
        "provider": reconciliation.provider,
        "bucket_width": reconciliation.width,
        "since": iso(reconciliation.since),
        "until": iso(reconciliation.until),
        "buckets": [bucket_json(b) for b in reconciliation.buckets],
        "data": [row_json(r) for r in reconciliation.rows],
        "bypass": any(r.bypassed for r in reconciliation.rows),
    }


def render_table(reconciliation: Reconciliation) -> str:
    """A terminal table: a line per bucket, model and key, then the bucket totals."""
    header = ("bucket", "model", "key", "req prov/tally", "input prov/tally", "Δin %",
              "output prov/tally", "Δout %", "cost prov/tally", "Δcost %", "flags")  # fmt: skip
    lines = [header]
    for row in reconciliation.rows:
        d = row.differences
        flags = []
        if row.unpriced_requests:
            flags.append(f"unpriced:{row.unpriced_requests}")
        if row.bypassed:
            flags.append("BYPASS")
        if not row.seen_by_provider:
            flags.append("not in report")
        lines.append(
            (
                _bucket_label(row.start, reconciliation.width),
                row.model or "(none)",
                row.api_key_id or "-",
                f"{_text(row.provider.requests)}/{_text(row.local.requests)}",
                f"{row.provider.input_tokens}/{row.local.input_tokens}",
                _pct(d["input_tokens"].relative),
                f"{row.provider.output_tokens}/{row.local.output_tokens}",
                _pct(d["output_tokens"].relative),
                f"{_usd(row.provider.cost_usd)}/{_usd(row.local.cost_usd)}",
                _pct(d["cost_usd"].relative),
                " ".join(flags),
            )
        )
    for bucket in reconciliation.buckets:
        pct = bucket.difference_pct
        lines.append(
            (
                _bucket_label(bucket.start, reconciliation.width),
                "(total)",
                "final" if bucket.closed else "open",
                f"{_text(bucket.provider.requests)}/{_text(bucket.local.requests)}",
                f"{bucket.provider.input_tokens}/{bucket.local.input_tokens}",
                "",
                f"{bucket.provider.output_tokens}/{bucket.local.output_tokens}",
                "",
                f"{_usd(bucket.provider.cost_usd)}/{_usd(bucket.local.cost_usd)}",
                "" if pct is None else f"{pct:.2f}",
                f"by {bucket.measure}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def render_csv(reconciliation: Reconciliation) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in reconciliation.rows:
        d = row.differences
        bypass = row.bypass
        writer.writerow(
            [
                iso(row.start), row.model or "", row.api_key_id or "", row.project_id or "",
                "true" if row.held else "false",
                *(_cell(getattr(side, m)) for m in MEASURES for side in (row.provider, row.local)),
                _cell(d["input_tokens"].absolute), _cell(d["input_tokens"].relative),
                _cell(d["output_tokens"].absolute), _cell(d["output_tokens"].relative),
                _cell(d["cost_usd"].absolute), _cell(d["cost_usd"].relative),
                row.unpriced_requests,
                *(("", "", "") if bypass is None else
                  (_cell(bypass.requests), bypass.input_tokens, bypass.output_tokens)),
            ]
        )  # fmt: skip
    return out.getvalue().rstrip("\n")


def _bucket_label(start: datetime, width: str) -> str:
    return start.strftime("%Y-%m-%d" if width == "1d" else "%Y-%m-%d %H:00")


def _text(value: int | None) -> str:
    return "-" if value is None else str(value)


def _usd(value: Decimal | None) -> str:
    return "-" if value is None else format_usd(value.quantize(Decimal("0.0001")))


def _pct(relative: Decimal | None) -> str:
    return "" if relative is None else f"{relative * 100:.1f}"


def _cell(value: int | Decimal | None) -> str:
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else format_usd(value)
