"""How tallyproxy's log lines look: the root handler, and the library lines nobody needs.

Alembic announces its plugins and its dialect on every migration ("setup plugin ...",
"Context impl PostgresqlImpl.", "Will assume transactional DDL."): noise at start-up. Its
"Running upgrade" lines stay, as they say what changed.
"""

from __future__ import annotations

import logging

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_ALEMBIC_CHATTER = ("Context impl ", "Will assume ")


class _QuietAlembic(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_ALEMBIC_CHATTER)


def configure_logging(level: str) -> None:
    """The root logger at ``level`` (a name such as ``info``), library noise silenced."""
    logging.basicConfig(level=level.upper(), format=TEXT_FORMAT)
    quiet_alembic()


def quiet_alembic() -> None:
    """Drop Alembic's plugin and dialect announcements; keep its upgrade lines."""
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    migration = logging.getLogger("alembic.runtime.migration")
    if not any(isinstance(f, _QuietAlembic) for f in migration.filters):
        migration.addFilter(_QuietAlembic())
