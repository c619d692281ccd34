"""Settings: one frozen object read once from a YAML file, TALLYPROXY_* variables and flags.

Precedence, lowest first: defaults, the YAML file, environment variables, command-line flags.
This is the only module that reads the environment. The background jobs' sections are in
``proxy.job_settings``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from proxy.job_settings import AnomalySettings, DigestSettings, ReconcileSettings
from proxy.settings_section import Section, webhook_url

LogLevel = Literal["debug", "info", "warning", "error"]


class ConfigError(ValueError):
    """A setting is missing, mistyped or out of range; the message names the key and the fix."""


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    log_level: LogLevel = "info"
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    shutdown_grace: float = Field(default=30.0, ge=0)
    header_timeout: float = Field(default=10.0, gt=0, le=300)
    max_connections: int | None = Field(default=None, ge=1)
    max_connections_per_client: int | None = Field(default=256, ge=1)


UpstreamKind = Literal["openai", "azure", "openai-compatible", "anthropic", "gemini"]
# Google's API hosts: an OpenAI-compatible upstream there is Gemini, priced from Google's list.
GOOGLE_API_HOSTS = ("generativelanguage.googleapis.com", "aiplatform.googleapis.com")


class UpstreamSettings(Section):
    """One provider endpoint. ``models`` (exact names or globs) route requests to it."""

    name: str = "default"
    kind: UpstreamKind = "openai"
    url: str = "https://api.openai.com/v1"
    models: tuple[str, ...] = ()
    api_key: str | None = None
    api_key_env: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    api_version: str | None = None
    deployments: dict[str, str] = Field(default_factory=dict)
    provider: str | None = None
    inject_stream_usage: bool | None = None
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=600.0, gt=0)
    max_connections: int = Field(default=256, ge=1)
    pool_timeout: float = Field(default=10.0, gt=0)
    trust_env: bool = False

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://, e.g. https://api.openai.com/v1")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _consistent(self) -> UpstreamSettings:
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError("give api_key or api_key_env, not both")
        if self.api_version is not None and self.kind != "azure":
            raise ValueError("api_version is for kind: azure (deployment URLs) only")
        if self.kind == "gemini" and urlsplit(self.url).path.rstrip("/").endswith(_VERSIONS):
            raise ValueError(
                "for kind: gemini give the API root, e.g. https://generativelanguage.googleapis.com:"
                " the version (v1beta, v1) comes from the client's path"
            )
        return self

    @property
    def stream_usage(self) -> bool:
        """Whether to ask streams for ``stream_options.include_usage``."""
        if self.inject_stream_usage is not None:
            return self.inject_stream_usage
        # Anthropic and Gemini's native API report usage in every stream unasked.
        return self.kind not in ("anthropic", "gemini")

    @property
    def pricing_provider(self) -> str | None:
        """The provider whose price list applies, as a hint for pricing."""
        if self.provider is not None:
            return self.provider
        if _host(self.url) in GOOGLE_API_HOSTS:
            return "google"  # Gemini's OpenAI-compatible endpoint, whatever the kind
        return _KIND_PROVIDERS.get(self.kind)


_KIND_PROVIDERS = {
    "openai": "openai",
    "azure": "azure",
    "anthropic": "anthropic",
    "gemini": "google",
}
_VERSIONS = ("/v1", "/v1beta", "/v1alpha")


def _host(url: str) -> str:
    """The host of an ``http(s)://`` URL (``urlsplit`` would also check its port)."""
    return url.split("/", 3)[2].rpartition("@")[2].split(":", 1)[0].lower()


class DatabaseSettings(Section):
    url: str = "sqlite+aiosqlite:///./tallyproxy.db"
    queue_size: int = Field(default=10_000, ge=1)
    flush_interval: float = Field(default=0.5, gt=0, le=60)
    max_batch: int = Field(default=500, ge=1)
    spool_dir: str = "./tallyproxy-spool"
    spool_max_bytes: int = Field(default=1024**3, ge=1024 * 1024)
    # While a new record could not be stored (database down and spool full, or memory at the
    # queue bound): serve the request unmetered (counted as lost), or refuse it with a 503.
    when_unrecordable: Literal["serve", "refuse"] = "serve"
    # A Postgres streaming replica for the usage API, the dashboard and reports; writes,
    # key lookups and budgets stay on ``url``. Past ``read_max_lag_seconds`` behind the
    # primary (or down), reads go to the primary.
    read_url: str | None = None
    read_max_lag_seconds: float = Field(default=10.0, ge=0, le=86400)

    @field_validator("url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        return _async_driver(value)

    @field_validator("read_url")
    @classmethod
    def _replica_driver(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if _async_driver(value).startswith("sqlite"):
            raise ValueError(
                "a read replica is a Postgres standby (postgresql+asyncpg://...); SQLite has "
                "no replicas: leave read_url unset"
            )
        return value

    @model_validator(mode="after")
    def _replica_of_postgres(self) -> DatabaseSettings:
        if self.read_url is not None and not self.url.startswith("postgresql"):
            raise ValueError(
                "read_url needs a Postgres primary in database.url: a standby of an SQLite "
                "file cannot exist; leave read_url unset"
            )
        return self


def _async_driver(value: str) -> str:
    if value.startswith(("postgres://", "postgresql://")):
        raise ValueError("use the asyncpg driver: postgresql+asyncpg://user:pass@host/db")
    if value.startswith("sqlite://"):
        raise ValueError("use the aiosqlite driver: sqlite+aiosqlite:///path/to/file.db")
    if not value.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        raise ValueError("expected postgresql+asyncpg://... or sqlite+aiosqlite:///...")
    return value


class PriceOverride(Section):
    """A price for models the bundled price data lacks or prices differently (USD per 1M tokens).

    ``model`` is an exact name or a glob (``qwen-*``). Either ``alias`` (price it as another
    model, e.g. an Azure deployment name as ``gpt-4o``) or the rates; a rate left out falls
    back to ``input`` (cache rates) or ``output`` (reasoning, audio output).
    """

    model: str = Field(min_length=1)
    alias: str | None = None
    input: Decimal | None = Field(default=None, ge=0)
    cached_input: Decimal | None = Field(default=None, ge=0)
    cache_write: Decimal | None = Field(default=None, ge=0)
    output: Decimal | None = Field(default=None, ge=0)
    reasoning: Decimal | None = Field(default=None, ge=0)
    input_audio: Decimal | None = Field(default=None, ge=0)
    output_audio: Decimal | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _alias_or_rates(self) -> PriceOverride:
        has_rates = self.input is not None or self.output is not None
        if self.alias is not None and has_rates:
            raise ValueError("give either alias or input/output rates, not both")
        if self.alias is None and not has_rates:
            raise ValueError("give input and output rates (USD per 1M tokens), or an alias")
        return self


class TokenizerRule(Section):
    """Count a model's tokens with a given tokenizer instead of the default for its family."""

    model: str = Field(min_length=1)
    encoding: str | None = None
    file: str | None = None
    kind: Literal["tiktoken", "huggingface"] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> TokenizerRule:
        if (self.encoding is None) == (self.file is None):
            raise ValueError("give either encoding (e.g. o200k_base) or file (a tokenizer file)")
        return self


class MeteringSettings(Section):
    # Off by default: a sample needs a vocabulary resident (o200k_base ~43 MB), which a proxy
    # in front of providers that report usage otherwise never loads.
    drift_sample_rate: float = Field(default=0.0, ge=0, le=1)


class AccessSettings(Section):
    """Virtual keys: whether they are required, and how long a replica trusts a lookup.

    While the database is unavailable, a key looked up within ``outage_tolerance_seconds``
    stays as it was, and budgets admit from their last known usage, up to
    ``budget_outage_allowance`` of each limit per replica (0: refuse budgeted requests).

    ``allow_anonymous`` runs open on purpose: without it, a proxy that listens beyond
    loopback or holds a provider key needs ``admin_token``, and a request to an upstream
    whose key it holds needs a virtual key (see ``proxy.access.mode``).
    """

    require_virtual_keys: bool = False
    allow_anonymous: bool = False
    key_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    outage_tolerance_seconds: float = Field(default=300.0, ge=0, le=86400)
    budget_outage_allowance: float = Field(default=0.1, ge=0, le=1)


class BudgetSettings(Section):
    """How a request's reservation is sized when the request does not bound it.

    Without ``max_tokens`` a request reserves the model's maximum output from the vendored
    model table (``proxy.spend.limits``), else ``default_max_output_tokens``. A model without
    a price cannot be held against a USD budget: ``unpriced: refuse`` (the default) refuses
    it once a USD budget applies, ``allow`` reserves no money for it (tokens still count).
    """

    default_max_output_tokens: int = Field(default=4096, ge=1, le=10_000_000)
    unpriced: Literal["refuse", "allow"] = "refuse"


class AlertSettings(Section):
    """Budget alerts: a signed JSON POST to ``webhook_url`` as a threshold is crossed, and
    when a budget's forecast runs out within ``forecast_hours``."""

    webhook_url: str | None = None
    webhook_secret: str | None = None
    forecast_hours: float | None = Field(default=None, gt=0, le=24 * 366)
    max_attempts: int = Field(default=6, ge=1, le=20)
    retry_seconds: float = Field(default=2.0, gt=0, le=600)

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return webhook_url(value)


class LoggingSettings(Section):
    """The access log (a line per request, ``tallyproxy.access``) and how lines look."""

    access: bool = True
    format: Literal["text", "json"] = "text"


class TelemetrySettings(Section):
    """OpenTelemetry export (GenAI spans and metrics over OTLP/HTTP), off unless an endpoint
    is set here or in ``OTEL_EXPORTER_OTLP_ENDPOINT``."""

    otlp_endpoint: str | None = None
    # Sent with every export (a collector's API key): never logged.
    otlp_headers: dict[str, str] = Field(default_factory=dict)
    service_name: str = "tallyproxy"
    export_timeout: float = Field(default=10.0, gt=0, le=300)
    metric_interval: float = Field(default=60.0, gt=0, le=3600)
    # Records waiting for export; past it the newest are dropped and counted in /metrics.
    queue_size: int = Field(default=20_000, ge=1)

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https:// (OTLP over HTTP)")
        return value


class Settings(Section):
    """Everything tallyproxy can be told; see config.example.yaml for each key.

    ``upstreams`` routes by model; without it, ``upstream`` serves every request.
    """

    server: ServerSettings = ServerSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    upstreams: tuple[UpstreamSettings, ...] = ()
    database: DatabaseSettings = DatabaseSettings()
    metering: MeteringSettings = MeteringSettings()
    access: AccessSettings = AccessSettings()
    budgets: BudgetSettings = BudgetSettings()
    alerts: AlertSettings = AlertSettings()
    digest: DigestSettings = DigestSettings()
    anomalies: AnomalySettings = AnomalySettings()
    logging: LoggingSettings = LoggingSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    reconcile: ReconcileSettings = ReconcileSettings()
    prices: tuple[PriceOverride, ...] = ()
    tokenizers: tuple[TokenizerRule, ...] = ()
    admin_token: str | None = None

    @property
    def routes(self) -> tuple[UpstreamSettings, ...]:
        """The upstreams requests are routed over, in order."""
        return self.upstreams or (self.upstream,)

    @model_validator(mode="after")
    def _held_keys_name_upstreams(self) -> Settings:
        names = {route.name for route in self.routes}
        for provider, section in self.reconcile.providers.items():
            for i, key in enumerate(section.keys):
                if key.upstream not in names:
                    raise ValueError(
                        f"reconcile.providers.{provider}.keys.{i}.upstream: no upstream is "
                        f"named {key.upstream!r} (upstreams: {', '.join(sorted(names))})"
                    )
        return self


ENV_KEYS: Mapping[str, tuple[str, ...]] = {
    "TALLYPROXY_UPSTREAM_URL": ("upstream", "url"),
    "TALLYPROXY_UPSTREAM_API_KEY": ("upstream", "api_key"),
    "TALLYPROXY_DATABASE_URL": ("database", "url"),
    "TALLYPROXY_DATABASE_READ_URL": ("database", "read_url"),
    "TALLYPROXY_ADMIN_TOKEN": ("admin_token",),
    "TALLYPROXY_ALERT_WEBHOOK_URL": ("alerts", "webhook_url"),
    "TALLYPROXY_ALERT_WEBHOOK_SECRET": ("alerts", "webhook_secret"),
    "TALLYPROXY_HOST": ("server", "host"),
    "TALLYPROXY_PORT": ("server", "port"),
    "TALLYPROXY_LOG_LEVEL": ("server", "log_level"),
    "TALLYPROXY_LOG_FORMAT": ("logging", "format"),
    "TALLYPROXY_MAX_CONNECTIONS_PER_CLIENT": ("server", "max_connections_per_client"),
    # OpenTelemetry's own variables, as every SDK reads them.
    "OTEL_EXPORTER_OTLP_ENDPOINT": ("telemetry", "otlp_endpoint"),
    "OTEL_SERVICE_NAME": ("telemetry", "service_name"),
}


def load_settings(
    config_file: str | Path | None = None,
    overrides: Mapping[tuple[str, ...], Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings from the file (or ``TALLYPROXY_CONFIG``), the environment and flags.

    ``overrides`` maps key paths such as ``("server", "port")`` to flag values; ``None`` values
    are ignored so that unset flags do not mask the file or the environment.
    """
    env = os.environ if environ is None else environ
    path = config_file or env.get("TALLYPROXY_CONFIG")
    raw: dict[str, Any] = _read_yaml(Path(path)) if path else {}
    for name, key in ENV_KEYS.items():
        if env.get(name):
            _set_path(raw, key, env[name])
    if env.get("OTEL_EXPORTER_OTLP_HEADERS"):
        _set_path(
            raw, ("telemetry", "otlp_headers"), otlp_headers(env["OTEL_EXPORTER_OTLP_HEADERS"])
        )
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_path(raw, key, value)
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        _set_path(raw, ("telemetry", "otlp_endpoint"), None)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    return _with_keys_from_env(settings, env)


def otlp_headers(value: str) -> dict[str, str]:
    """``OTEL_EXPORTER_OTLP_HEADERS``: ``key=value`` pairs by commas, values URL-encoded."""
    headers: dict[str, str] = {}
    for pair in value.split(","):
        key, equals, text = pair.partition("=")
        if not equals or not key.strip():
            raise ConfigError("OTEL_EXPORTER_OTLP_HEADERS: expected key=value pairs, by commas")
        headers[key.strip()] = unquote(text.strip())
    return headers


def _with_keys_from_env(settings: Settings, env: Mapping[str, str]) -> Settings:
    """Fill ``api_key`` from ``api_key_env``, so keys need not be written into the file."""

    def resolved(upstream: UpstreamSettings, key: str) -> UpstreamSettings:
        if upstream.api_key_env is None:
            return upstream
        value = env.get(upstream.api_key_env)
        if not value:
            raise ConfigError(
                f"config key '{key}.api_key_env': environment variable "
                f"{upstream.api_key_env} is not set"
            )
        return upstream.model_copy(update={"api_key": value})

    admin_keys = {}
    for provider, section in settings.reconcile.providers.items():
        value = env.get(section.api_key_env)
        if not value:
            raise ConfigError(
                f"config key 'reconcile.providers.{provider}.api_key_env': environment "
                f"variable {section.api_key_env} is not set (it holds the admin key)"
            )
        admin_keys[provider] = section.model_copy(update={"api_key": SecretStr(value)})
    reconcile = settings.reconcile.model_copy(update={"providers": admin_keys})
    return settings.model_copy(
        update={
            "reconcile": reconcile,
            "upstream": resolved(settings.upstream, "upstream"),
            "upstreams": tuple(
                resolved(u, f"upstreams.{i}") for i, u in enumerate(settings.upstreams)
            ),
            "digest": _with_smtp_password(settings.digest, env),
        }
    )


def _with_smtp_password(digest: DigestSettings, env: Mapping[str, str]) -> DigestSettings:
    smtp = digest.smtp
    if smtp is None or smtp.password_env is None:
        return digest
    value = env.get(smtp.password_env)
    if not value:
        raise ConfigError(
            f"config key 'digest.smtp.password_env': environment variable "
            f"{smtp.password_env} is not set"
        )
    return digest.model_copy(update={"smtp": smtp.with_password(value)})


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of keys, not {type(loaded).__name__}"
        )
    return loaded


def _set_path(raw: dict[str, Any], key: tuple[str, ...], value: Any) -> None:
    node = raw
    for part in key[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[key[-1]] = value


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key; see config.example.yaml for the keys tallyproxy knows"
        problems.append(f"config key '{key}': {message}")
    return "; ".join(problems)
