"""A digest as plain text, as HTML with a bar chart of the week, and as the webhook's JSON.

Pure: the text and the HTML say the same things; the HTML's chart is table cells with
inline widths, which mail clients show (most strip SVG and style sheets).
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from html import escape
from typing import Any

import orjson

from proxy.digest.content import DIMENSIONS, BudgetLine, Digest, Driver, Totals
from proxy.money import format_usd

_TITLES = {"model": "Models", "user": "Users", "property": "Property values"}
_BAR_PIXELS = 240


def subject(digest: Digest) -> str:
    """Short enough for one header line: a folded subject keeps a leading space."""
    totals = digest.totals
    change = digest.day_change["tokens"]
    return (
        f"tallyproxy {digest.day.isoformat()}: {totals.tokens:,} tokens, "
        f"{usd(totals.cost_usd)}" + ("" if change is None else f", {change:+}% on the day")
    )


def usd(amount: Decimal) -> str:
    """``$12.35`` (cents), or more digits for amounts under a cent."""
    if amount != 0 and abs(amount) < Decimal("0.01"):
        return f"${format_usd(amount.quantize(Decimal('0.000001')))}"
    return f"${amount.quantize(Decimal('0.01')):,}"


def percent(value: Decimal | None) -> str:
    return "new" if value is None else f"{value:+}%"


def _signed_usd(amount: Decimal) -> str:
    return ("+" if amount >= 0 else "-") + usd(abs(amount))


def text(digest: Digest) -> str:
    """The plain-text part."""
    lines = [f"tallyproxy daily digest for {digest.day.isoformat()} (UTC)", ""]
    if not digest.rollups_complete:
        lines += ["Note: the rollups miss older records; run `tallyproxy rollups rebuild`.", ""]
    lines += _totals_lines(digest)
    lines += ["", "Last 7 days:"]
    widest = max((t.tokens for _, t in digest.last_days), default=0)
    for day, totals in digest.last_days:
        bar = "#" * (round(30 * totals.tokens / widest) if widest else 0)
        line = f"  {day.isoformat()}  {totals.tokens:>14,} tokens  {usd(totals.cost_usd):>12}"
        lines.append(f"{line}  {bar}" if bar else line)
    for name in DIMENSIONS:
        drivers = digest.drivers.get(name, ())
        if drivers:
            lines += ["", f"{_TITLES[name]} that moved most since the day before:"]
            lines += [f"  {_driver_text(d)}" for d in drivers]
    if digest.budgets:
        lines += ["", "Budgets near their limit:"]
        lines += [f"  {_budget_text(b)}" for b in digest.budgets]
    if digest.anomalies:
        lines += ["", "Anomalies:"]
        lines += [f"  {_anomaly_text(a)}" for a in digest.anomalies]
    return "\n".join(lines) + "\n"


def _totals_lines(digest: Digest) -> list[str]:
    day, week, totals = digest.day_change, digest.week_change, digest.totals
    rows = (
        ("Requests", f"{totals.requests:,}", "requests"),
        ("Tokens", f"{totals.tokens:,}", "tokens"),
        ("Cost", usd(totals.cost_usd), "cost_usd"),
    )
    lines = [
        f"{label:<9} {value:>16}   {percent(day[key])} on the day before, "
        f"{percent(week[key])} on the week before"
        for label, value, key in rows
    ]
    lines.append(f"Unpriced requests: {totals.unpriced_requests:,}")
    return lines


def _driver_text(driver: Driver) -> str:
    return (
        f"{driver.key}: {driver.day.tokens:,} tokens ({driver.tokens_delta:+,}), "
        f"{usd(driver.day.cost_usd)} ({_signed_usd(driver.cost_delta)})"
    )


def _budget_text(line: BudgetLine) -> str:
    amounts = (
        f"{usd(line.spent)} of {usd(line.limit)}"
        if line.unit == "usd"
        else f"{line.spent:,} of {line.limit:,} tokens"
    )
    resets = f", resets {line.resets_at:%Y-%m-%d %H:%M} UTC" if line.resets_at else ""
    return f"{line.name}: {line.percent}% ({amounts}{resets})"


def _anomaly_text(anomaly: dict[str, Any]) -> str:
    return (
        f"{anomaly['kind']} {anomaly['subject']}: {anomaly['total_tokens']:,} tokens, "
        f"{usd(Decimal(anomaly['cost_usd']))} from {anomaly['window_start']}"
    )


def html(digest: Digest) -> str:
    """The HTML part: the same content, a bar chart of the last seven days' tokens."""
    parts = [
        '<html><body style="font-family:sans-serif;color:#222">',
        f"<h2>tallyproxy daily digest for {digest.day.isoformat()} (UTC)</h2>",
    ]
    if not digest.rollups_complete:
        parts.append("<p><b>Note:</b> the rollups miss older records; run "
                     "<code>tallyproxy rollups rebuild</code>.</p>")  # fmt: skip
    parts.append(_totals_table(digest))
    parts.append(_chart(digest.last_days))
    for name in DIMENSIONS:
        drivers = digest.drivers.get(name, ())
        if drivers:
            parts.append(f"<h3>{_TITLES[name]} that moved most since the day before</h3>")
            parts.append(_list(_driver_text(d) for d in drivers))
    if digest.budgets:
        parts.append("<h3>Budgets near their limit</h3>")
        parts.append(_list(_budget_text(b) for b in digest.budgets))
    if digest.anomalies:
        parts.append("<h3>Anomalies</h3>")
        parts.append(_list(_anomaly_text(a) for a in digest.anomalies))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _totals_table(digest: Digest) -> str:
    day, week, totals = digest.day_change, digest.week_change, digest.totals
    rows = [
        ("Requests", f"{totals.requests:,}", "requests"),
        ("Tokens", f"{totals.tokens:,}", "tokens"),
        ("Cost", usd(totals.cost_usd), "cost_usd"),
    ]
    cells = "".join(
        f'<tr><td>{label}</td><td style="text-align:right"><b>{value}</b></td>'
        f"<td>{percent(day[key])}</td><td>{percent(week[key])}</td></tr>"
        for label, value, key in rows
    )
    return (
        '<table cellpadding="4"><tr><th></th><th>Total</th><th>Day before</th>'
        f"<th>Week before</th></tr>{cells}</table>"
        f"<p>Unpriced requests: {totals.unpriced_requests:,}</p>"
    )


def _chart(days: tuple[tuple[date, Totals], ...]) -> str:
    widest = max((t.tokens for _, t in days), default=0)
    rows = []
    for day, totals in days:
        width = round(_BAR_PIXELS * totals.tokens / widest) if widest else 0
        bar = f'<div style="background:#4a7bd0;height:14px;width:{width}px"></div>' if width else ""
        rows.append(
            f'<tr><td>{day.isoformat()}</td><td style="width:{_BAR_PIXELS}px">{bar}</td>'
            f'<td style="text-align:right">{totals.tokens:,}</td>'
            f'<td style="text-align:right">{usd(totals.cost_usd)}</td></tr>'
        )
    return (
        '<h3>Last 7 days</h3><table class="chart" cellpadding="2">'
        "<tr><th>Day</th><th></th><th>Tokens</th><th>Cost</th></tr>" + "".join(rows) + "</table>"
    )


def _list(items: Any) -> str:
    return "<ul>" + "".join(f"<li>{escape(item)}</li>" for item in items) + "</ul>"


def webhook_body(digest: Digest) -> bytes:
    """The webhook's JSON: every figure, money as decimal strings."""
    return orjson.dumps(
        {
            "type": "digest.daily",
            "day": digest.day.isoformat(),
            "rollups_complete": digest.rollups_complete,
            "totals": _totals_json(digest.totals),
            "day_before": _totals_json(digest.day_before),
            "week_before": _totals_json(digest.week_before),
            "change_percent": {
                "day": _changes_json(digest.day_change),
                "week": _changes_json(digest.week_change),
            },
            "last_days": [
                {"day": day.isoformat(), **_totals_json(totals)} for day, totals in digest.last_days
            ],
            "drivers": {
                name: [_driver_json(d) for d in drivers] for name, drivers in digest.drivers.items()
            },
            "budgets": [_budget_json(b) for b in digest.budgets],
            "anomalies": list(digest.anomalies),
        }
    )


def _totals_json(totals: Totals) -> dict[str, Any]:
    return {
        "requests": totals.requests,
        "total_tokens": totals.tokens,
        "cost_usd": format_usd(totals.cost_usd),
        "unpriced_requests": totals.unpriced_requests,
    }


def _changes_json(values: dict[str, Decimal | None]) -> dict[str, str | None]:
    return {k: None if v is None else format_usd(v) for k, v in values.items()}


def _driver_json(driver: Driver) -> dict[str, Any]:
    return {
        "key": driver.key,
        "total_tokens": driver.day.tokens,
        "tokens_delta": driver.tokens_delta,
        "cost_usd": format_usd(driver.day.cost_usd),
        "cost_delta_usd": format_usd(driver.cost_delta),
        "requests": driver.day.requests,
    }


def _budget_json(line: BudgetLine) -> dict[str, Any]:
    return {
        "name": line.name,
        "percent": format_usd(line.percent),
        "spent": format_usd(line.spent),
        "limit": format_usd(line.limit),
        "unit": line.unit,
        "resets_at": None if line.resets_at is None else line.resets_at.isoformat(),
    }
