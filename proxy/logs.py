"""How tallyproxy's log lines look: the root handler, and the library lines nobody needs.

Alembic announces its plugins and its dialect on every migration ("setup plugin ...",
"Context impl PostgresqlImpl.", "Will assume transactional DDL."): noise at start-up. Its
"Running upgrade" lines stay, as they say what changed.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson

from proxy.requestlog import AccessLine

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_ALEMBIC_CHATTER = ("Context impl ", "Will assume ")


class _QuietAlembic(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_ALEMBIC_CHATTER)


class JsonLines(logging.Formatter):
    """One JSON object a line, for log shippers: ``ts``, ``level``, ``logger``, ``message``.

    An access-log line's fields join the line's own.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        args = record.args
        if isinstance(args, tuple) and len(args) == 1 and isinstance(args[0], AccessLine):
            line.update(args[0].fields)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def configure_logging(level: str, log_format: str = "text") -> None:
    """The root logger at ``level`` (a name such as ``info``), library noise silenced."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    quiet_alembic()


def quiet_alembic() -> None:
    """Drop Alembic's plugin and dialect announcements; keep its upgrade lines."""
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    migration = logging.getLogger("alembic.runtime.migration")
    if not any(isinstance(f, _QuietAlembic) for f in migration.filters):
        migration.addFilter(_QuietAlembic())
