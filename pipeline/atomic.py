"""Atomic file writes: write under a hidden temporary name beside the target, then rename onto it.

Readers see the old file or the new one, never half of one, and `*.parquet` / `*.jsonl` globs never match a
file being written. `PendingFile` is the one implementation; the context managers are built on it. (The
lake's tables do not use it: they are Delta tables, see pipeline.lake.)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


class PendingFile:
    """A temporary path beside `target` (its folder is created): commit() renames it onto the target,
    discard() removes it. For writes that span several calls; within one block use `atomic_path`."""

    def __init__(self, target: Path) -> None:
        self.target = target
        target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"

    def commit(self) -> None:
        self.tmp.replace(self.target)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path beside `target`, renamed onto it when the block succeeds and removed otherwise."""
    pending = PendingFile(target)
    try:
        yield pending.tmp
        pending.commit()
    finally:
        pending.discard()


@contextmanager
def atomic_open(target: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """A file object whose contents appear at `target` (replacing it) only once the block succeeds."""
    with atomic_path(target) as tmp, tmp.open(mode) as fh:
        yield fh
