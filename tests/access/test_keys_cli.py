"""``tallyproxy keys create|list|revoke`` against a real database."""

from __future__ import annotations

import json

import pytest

from proxy.cli import main


def test_create_list_and_revoke(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    db = ["--database-url", database_url]
    created = main(
        ["keys", "create", *db, "--name", "billing", "--user", "alice", "--models", "gpt-4o,o3*"]
    )
    assert created == 0
    secret, message = capsys.readouterr().out.splitlines()
    assert secret.startswith("tp-") and "shown only this once" in message
    assert main(["keys", "list", *db, "--json"]) == 0
    [listed] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert listed["prefix"] == secret[:10] and listed["user"] == "alice"
    assert listed["models"] == ["gpt-4o", "o3*"] and listed["revoked_at"] is None
    assert main(["keys", "list", *db]) == 0
    table = capsys.readouterr().out
    assert listed["id"] in table and "active" in table and secret not in table
    assert main(["keys", "revoke", *db, listed["id"]]) == 0
    capsys.readouterr()
    assert main(["keys", "list", *db]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["keys", "revoke", *db, "no-such-key"]) == 1
