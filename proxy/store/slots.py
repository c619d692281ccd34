"""Per-process slots in a shared directory, held by an exclusive ``flock``.

A process holds ``<directory>/slot-<n>/LOCK`` locked for as long as it runs, so replicas and
``--workers`` sharing a host never write the same files. The lock dies with its process: the
files of a slot whose lock can be taken were left by a process that is gone.

The spool and the journal each keep their files in slots of their own directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import BinaryIO

MAX_SLOTS = 256


class SlotError(OSError):
    """No slot is free in the directory."""


def acquire_slot(directory: Path) -> tuple[Path, BinaryIO]:
    """Lock the first free slot of ``directory`` (made if missing); its path and lock file."""
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(MAX_SLOTS):
        slot = directory / f"slot-{index}"
        lock_file = lock_slot(slot)
        if lock_file is not None:
            return slot, lock_file
    raise SlotError(
        f"no free slot in {directory} ({MAX_SLOTS} processes hold one each): give each "
        "group of processes its own database.spool_dir"
    )


def slot_dirs(directory: Path) -> list[Path]:
    """Every slot directory under ``directory``, live or dead."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("slot-*") if p.is_dir())


def lock_slot(slot: Path, *, create: bool = True) -> BinaryIO | None:
    """Lock ``slot`` for this process, or None when another process holds it."""
    path = slot / "LOCK"
    try:
        if create:
            slot.mkdir(parents=True, exist_ok=True)
        lock_file = open(path, "ab")  # noqa: SIM115 (held until release)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        return None
    try:
        same = os.path.samestat(os.fstat(lock_file.fileno()), os.stat(path))
    except FileNotFoundError:
        same = False
    if not same:  # the slot was removed by its owner between our open and our lock
        lock_file.close()
        return lock_slot(slot, create=create) if create else None
    return lock_file


def release_slot(slot: Path, lock_file: BinaryIO, *, remove: bool = False) -> None:
    """Unlock ``slot``; with ``remove``, delete it too (it must hold nothing but its lock)."""
    if remove:
        # Unlink while still holding the lock; lock_slot notices a lock on a removed file.
        with contextlib.suppress(OSError):
            (slot / "LOCK").unlink()
            slot.rmdir()
    lock_file.close()
