"""The digest's and the anomalies' settings: what they accept, and errors that name the key."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config import ConfigError, load_settings

SMTP = {"host": "smtp.example.com", "from": "t@example.com", "to": "ops@example.com"}


def settings(environ: dict[str, str] | None = None, **sections: Any) -> Any:
    overrides = {(name,): value for name, value in sections.items()}
    return load_settings(None, overrides, environ=environ or {})


def test_defaults_send_nothing() -> None:
    loaded = settings()
    assert not loaded.digest.enabled and loaded.digest.send_time == (8, 0)
    assert not loaded.anomalies.enabled and loaded.anomalies.window_hours == 1


@pytest.mark.parametrize(("at", "expected"), [("8:05", (8, 5)), ("23:59", (23, 59))])
def test_send_time(at: str, expected: tuple[int, int]) -> None:
    assert settings(digest={"at": at}).digest.send_time == expected


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"digest": {"at": "8"}}, "config key 'digest.at'"),
        ({"digest": {"at": "24:00"}}, "config key 'digest.at'"),
        ({"digest": {"webhook_url": "hooks.example.com"}}, "'digest.webhook_url'"),
        ({"digest": {"smtp": {"host": "h", "to": "x@y.z"}}}, "'digest.smtp.from'"),
        ({"digest": {"smtp": {**SMTP, "password_env": "P"}}}, "password_env needs user"),
        ({"digest": {"smtp": {**SMTP, "user": "u", "password_env": "NOPE"}}},
         "'digest.smtp.password_env': environment variable NOPE is not set"),
        ({"anomalies": {"window": "5h"}}, "'anomalies.window'"),
        ({"anomalies": {"window": "soon"}}, "'anomalies.window'"),
        ({"anomalies": {"k": 1}}, "'anomalies.k'"),
        ({"anomalies": {"subjects": ["model"]}}, "'anomalies.subjects.0'"),
    ],
)  # fmt: skip
def test_errors_name_the_key(sections: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        settings(**sections)


def test_the_smtp_password_comes_from_the_environment_and_stays_out_of_reprs() -> None:
    smtp = {**SMTP, "user": "tally", "password_env": "SMTP_PW"}
    loaded = settings({"SMTP_PW": "hunter2"}, digest={"smtp": smtp})
    assert loaded.digest.smtp.password == "hunter2" and loaded.digest.smtp.to == (
        "ops@example.com",
    )
    assert "hunter2" not in repr(loaded) and loaded.digest.enabled


@pytest.mark.parametrize(("window", "hours"), [("1h", 1), ("6h", 6), ("24h", 24), ("7d", 168)])
def test_windows(window: str, hours: int) -> None:
    assert settings(anomalies={"window": window}).anomalies.window_hours == hours
