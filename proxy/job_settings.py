"""Settings of the background jobs: the daily digest (and its mail), anomaly detection and
reconciliation with the providers' reports. Sections of ``proxy.config.Settings``."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from proxy.settings_section import Section, webhook_url


class SmtpSettings(Section):
    """Where the daily digest is mailed: an SMTP server, STARTTLS by default.

    The password comes from the environment variable ``password_env`` names, never the file.
    ``ca_file`` trusts a private CA (PEM) for STARTTLS, instead of the system's.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    starttls: bool = True
    user: str | None = None
    password_env: str | None = None
    sender: str = Field(alias="from", min_length=3)
    to: tuple[str, ...] = Field(min_length=1)
    ca_file: str | None = None
    timeout: float = Field(default=30.0, gt=0, le=600)

    # Read from ``password_env`` by ``load_settings``; never a key of the file.
    _password: str | None = PrivateAttr(default=None)

    @property
    def password(self) -> str | None:
        return self._password

    def with_password(self, password: str) -> SmtpSettings:
        copy = self.model_copy()
        copy._password = password
        return copy

    @field_validator("to", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _login(self) -> SmtpSettings:
        if self.password_env is not None and self.user is None:
            raise ValueError("password_env needs user (the SMTP login)")
        return self


def _clock(value: str) -> str:
    hours, colon, minutes = value.partition(":")
    if not (colon and hours.isdigit() and minutes.isdigit() and len(minutes) == 2):
        raise ValueError('use HH:MM in UTC, e.g. "08:00"')
    if not (0 <= int(hours) <= 23 and 0 <= int(minutes) <= 59):
        raise ValueError('use HH:MM in UTC, from "00:00" to "23:59"')
    return f"{int(hours):02d}:{minutes}"


class DigestSettings(Section):
    """The daily digest: sent at ``at`` (UTC) for the day before, to the webhook and/or by
    mail; off while neither is configured. ``webhook_secret`` defaults to the alerts' one."""

    at: str = "08:00"
    webhook_url: str | None = None
    webhook_secret: str | None = None
    smtp: SmtpSettings | None = None
    top: int = Field(default=5, ge=1, le=50)
    budget_warn_percent: int = Field(default=80, ge=1, le=1000)

    @field_validator("at")
    @classmethod
    def _at_clock(cls, value: str) -> str:
        return _clock(value)

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return webhook_url(value)

    @property
    def enabled(self) -> bool:
        return self.webhook_url is not None or self.smtp is not None

    @property
    def send_time(self) -> tuple[int, int]:
        hours, minutes = self.at.split(":")
        return int(hours), int(minutes)


AnomalySubject = Literal["session", "user", "key"]


class AnomalySettings(Section):
    """Anomalies: a session, user or key whose cost or tokens in a window exceed ``k`` times
    the median of its peers over ``baseline_days`` (and ``k`` robust deviations above it).
    Peers of a session are the other sessions of its user; of a user or key, the others."""

    enabled: bool = False
    k: float = Field(default=10.0, gt=1, le=1000)
    window: str = "1h"
    baseline_days: int = Field(default=7, ge=1, le=90)
    min_peers: int = Field(default=5, ge=1)
    subjects: tuple[AnomalySubject, ...] = ("session", "user", "key")
    interval_seconds: float = Field(default=60.0, ge=1, le=86400)
    top_requests: int = Field(default=5, ge=1, le=50)
    webhook_url: str | None = None
    webhook_secret: str | None = None

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return webhook_url(value)

    @field_validator("window")
    @classmethod
    def _whole_hours(cls, value: str) -> str:
        hours = _window_hours(value)
        if hours is None or hours < 1 or (24 % hours != 0 and hours % 24 != 0):
            raise ValueError(
                'use whole hours that divide a day, or whole days: "1h", "6h", "24h", "7d"'
            )
        return value

    @property
    def window_hours(self) -> int:
        return _window_hours(self.window) or 1


def _window_hours(value: str) -> int | None:
    text = value.strip().lower()
    if text[:-1].isdigit() and text[-1:] in ("h", "d"):
        return int(text[:-1]) * (24 if text.endswith("d") else 1)
    return None


class HeldKey(Section):
    """A provider key tallyproxy holds: the provider's id of it (OpenAI ``key_...``,
    Anthropic ``apikey_...``) and the upstream whose ``api_key`` it is."""

    api_key_id: str = Field(min_length=1)
    upstream: str = Field(min_length=1)


class ReconcileProvider(Section):
    """One provider's admin reports: the admin key's environment variable (the key is read
    from it at start, never written to the config, a record or a log), the API root, and the
    keys tallyproxy holds, whose traffic beyond the proxy's records is bypass."""

    api_key_env: str = Field(min_length=1)
    url: str | None = None
    keys: tuple[HeldKey, ...] = ()
    api_key: SecretStr | None = Field(default=None, exclude=True)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://, e.g. https://api.openai.com")
        return value

    @field_validator("api_key")
    @classmethod
    def _not_in_the_file(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            raise ValueError(
                "an admin key is not written into the config: name its variable in api_key_env"
            )
        return value


class ReconcileSettings(Section):
    """Reconciliation with the providers' usage and cost reports (``tallyproxy reconcile``,
    ``GET /usage/reconciliation``); with ``interval`` a periodic job stores each comparison
    and alerts (the budget alerts' webhook) when a closed day differs by ``alert_pct``."""

    providers: dict[Literal["openai", "anthropic"], ReconcileProvider] = Field(default_factory=dict)
    interval: float | None = Field(default=None, ge=60, le=7 * 86400)
    alert_pct: Decimal = Field(default=Decimal(10), gt=0, le=1000)
    bucket_width: Literal["1d", "1h"] = "1d"
    lookback_days: int = Field(default=7, ge=1, le=90)
    # A bucket is final this long after it ends: the providers' reports settle late.
    settle_hours: float = Field(default=6.0, ge=0, le=240)
