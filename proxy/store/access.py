"""The SQL of virtual keys: issue, list, revoke, and look one up by its hash."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.access.keys import NewKey, VirtualKey, new_key
from proxy.store.tables import virtual_keys

KEY_FIELDS = (
    "id",
    "name",
    "user_id",
    "display_prefix",
    "models",
    "created_at",
    "expires_at",
    "revoked_at",
)
"""What a listing shows of a key: everything but its hash."""


class KeyStore:
    """Virtual keys in the ``virtual_keys`` table."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(
        self,
        name: str,
        *,
        user_id: str | None = None,
        models: Sequence[str] = (),
        expires_at: datetime | None = None,
    ) -> tuple[NewKey, dict[str, Any]]:
        """Issue a key; the returned ``NewKey.secret`` is the only copy of it."""
        key = new_key()
        row = {
            "id": key.id,
            "name": name,
            "user_id": user_id,
            "key_hash": key.hash,
            "display_prefix": key.display,
            "models": list(models),
            "created_at": datetime.now(UTC),
            "expires_at": expires_at,
            "revoked_at": None,
        }
        async with self._engine.begin() as connection:
            await connection.execute(virtual_keys.insert().values(**row))
        return key, {name: row[name] for name in KEY_FIELDS}

    async def list(self) -> list[dict[str, Any]]:
        """Every key, newest first, without hashes."""
        columns = [virtual_keys.c[name] for name in KEY_FIELDS]
        query = select(*columns).order_by(virtual_keys.c.created_at.desc(), virtual_keys.c.id)
        async with self._engine.connect() as connection:
            result = await connection.execute(query)
            return [dict(row) for row in result.mappings()]

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key; False when there is no such key. Revoking twice keeps the first time."""
        async with self._engine.begin() as connection:
            found = await connection.scalar(
                select(virtual_keys.c.id).where(virtual_keys.c.id == key_id)
            )
            if found is None:
                return False
            await connection.execute(
                update(virtual_keys)
                .where(virtual_keys.c.id == key_id, virtual_keys.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        return True

    async def find(self, key_hash: str) -> VirtualKey | None:
        """The key with this hash, or None."""
        query = select(virtual_keys).where(virtual_keys.c.key_hash == key_hash)
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).mappings().first()
        if row is None:
            return None
        return VirtualKey(
            id=row["id"],
            name=row["name"],
            user_id=row["user_id"],
            models=tuple(row["models"] or ()),
            expires_at=row["expires_at"],
            revoked_at=row["revoked_at"],
        )
