"""The reconcile section: admin keys from the environment only, held keys name upstreams."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config import ConfigError, load_settings

ADMIN_KEY = "sk-admin-very-secret"


def _overrides(**section: Any) -> dict[tuple[str, ...], Any]:
    provider = {"api_key_env": "OPENAI_ADMIN_KEY", **section}
    return {("reconcile", "providers"): {"openai": provider}}


def test_the_admin_key_comes_from_its_variable_and_is_never_shown() -> None:
    settings = load_settings(None, _overrides(), environ={"OPENAI_ADMIN_KEY": ADMIN_KEY})
    section = settings.reconcile.providers["openai"]
    assert section.api_key is not None and section.api_key.get_secret_value() == ADMIN_KEY
    assert ADMIN_KEY not in repr(settings) and ADMIN_KEY not in settings.model_dump_json()


@pytest.mark.parametrize(
    ("overrides", "environ", "message"),
    [
        (_overrides(), {}, "reconcile.providers.openai.api_key_env': environment variable "
                           "OPENAI_ADMIN_KEY is not set"),
        (_overrides(keys=[{"api_key_id": "key_1", "upstream": "nope"}]),
         {"OPENAI_ADMIN_KEY": ADMIN_KEY}, "no upstream is named 'nope'"),
        (_overrides(url="api.openai.com"), {"OPENAI_ADMIN_KEY": ADMIN_KEY},
         "must start with http"),
        ({("reconcile", "providers"): {"gemini": {"api_key_env": "X"}}}, {"X": "y"},
         "reconcile.providers.gemini"),
        ({("reconcile", "interval"): 5}, {}, "reconcile.interval"),
        (_overrides(api_key=ADMIN_KEY), {"OPENAI_ADMIN_KEY": ADMIN_KEY}, "name its variable"),
    ],
)  # fmt: skip
def test_mistakes_name_the_key(
    overrides: dict[tuple[str, ...], Any], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(None, overrides, environ=environ)
    assert ADMIN_KEY not in str(caught.value)
