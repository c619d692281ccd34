"""Which database errors mean "not reachable yet" (wait and retry) and which stop start-up."""

from __future__ import annotations

import socket
import sqlite3

import pytest
from sqlalchemy.exc import DBAPIError, OperationalError

from proxy.store.availability import is_unreachable


class PostgresError(Exception):
    """Stands for an asyncpg error: what matters is its SQLSTATE."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"SQLSTATE {sqlstate}")
        self.sqlstate = sqlstate


def wrapped(orig: Exception) -> DBAPIError:
    return DBAPIError("SELECT 1", {}, orig)


@pytest.mark.parametrize(
    ("error", "backend", "unreachable"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "postgresql", True),
        (socket.gaierror(-2, "Name or service not known"), "postgresql", True),
        (TimeoutError(), "postgresql", True),
        (wrapped(PostgresError("57P03")), "postgresql", True),  # the server is starting up
        (wrapped(PostgresError("53300")), "postgresql", True),  # too many connections
        (wrapped(PostgresError("08006")), "postgresql", True),  # connection failure
        (PostgresError("57P01"), "postgresql", True),  # shut down by an administrator
        (wrapped(PostgresError("28P01")), "postgresql", False),  # wrong password
        (PostgresError("3D000"), "postgresql", False),  # no such database
        (wrapped(PostgresError("42501")), "postgresql", False),  # permission denied
        (
            OperationalError("", {}, sqlite3.OperationalError("unable to open database file")),
            "sqlite",
            False,
        ),
        (OperationalError("", {}, sqlite3.OperationalError("database is locked")), "sqlite", True),
        (PermissionError(13, "Permission denied"), "sqlite", False),
    ],
)
def test_unreachable_or_misconfigured(error: Exception, backend: str, unreachable: bool) -> None:
    assert is_unreachable(error, backend) is unreachable


def test_the_cause_of_an_error_counts() -> None:
    try:
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError as reset:
            raise RuntimeError("while migrating") from reset
    except RuntimeError as error:
        assert is_unreachable(error, "postgresql")
