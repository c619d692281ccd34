"""``tallyproxy keys create|list|revoke`` against a real database."""

from __future__ import annotations

import json

import pytest

from proxy.cli import main


@pytest.fixture(autouse=True)
def migrated(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The database exists, as where `tallyproxy serve` ran: the commands refuse a new file."""
    assert main(["migrate", "--database-url", database_url]) == 0
    capsys.readouterr()


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


def test_budgets_create_list_delete(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    db = ["--database-url", database_url]
    create = ["budgets", "create", *db, "--scope", "user", "--subject", "alice"]
    assert main([*create, "--period", "day", "--usd", "10", "--alert", "50,80,100"]) == 0
    assert "defined" in capsys.readouterr().out
    assert main(["budgets", "create", *db, "--scope", "global", "--period", "total",
                 "--tokens", "1000"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["budgets", "list", *db]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_scope = {b["scope"]: b for b in listed}
    assert by_scope["user"]["limit_usd"] == "10" and by_scope["user"]["alerts"] == [50, 80, 100]
    assert by_scope["user"]["remaining_usd"] == "10" and by_scope["user"]["resets_at"]
    assert by_scope["global"]["remaining_tokens"] == 1000
    assert main(["budgets", "delete", *db, by_scope["user"]["id"]]) == 0
    assert main(["budgets", "delete", *db, by_scope["user"]["id"]]) == 1
    assert main(["budgets", "create", *db, "--scope", "global", "--subject", "x",
                 "--period", "day", "--usd", "1"]) == 2  # fmt: skip


@pytest.mark.parametrize("limit", [["--usd", "1e30"], ["--usd", "1e18"]])
def test_budgets_create_refuses_a_usd_limit_the_database_cannot_hold(
    database_url: str, capsys: pytest.CaptureFixture[str], limit: list[str]
) -> None:
    db = ["--database-url", database_url]
    create = ["budgets", "create", *db, "--scope", "global", "--period", "day", *limit]
    assert main(create) == 2
    assert "--usd" in capsys.readouterr().out
    assert main(["budgets", "list", *db]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("limit", [["--tokens", str(2**63)], ["--usd", "inf"]])
def test_budgets_create_refuses_limits_no_database_holds_before_opening_one(
    capsys: pytest.CaptureFixture[str], limit: list[str]
) -> None:
    create = ["budgets", "create", "--scope", "global", "--period", "day"]
    with pytest.raises(SystemExit) as exited:
        main([*create, *limit])
    assert exited.value.code == 2
    assert limit[0] in capsys.readouterr().err
