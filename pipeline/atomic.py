"""Atomic file writes: write under a hidden temporary name beside the target, then rename onto it.

Readers see the old file or the new one, never half of one, and `*.parquet` / `*.jsonl` globs never match a
file being written. `PendingFile` is the one implementation; the context managers and the streaming Parquet
writer are built on it for callers whose writes span one block or many calls.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # pyarrow is imported where it is used: DAG parsing imports this module and must stay light
    import pyarrow as pa


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


class AtomicParquetWriter:
    """A streaming Parquet writer for `target`: batches go to a temporary file beside it; commit() closes and
    renames it into place, discard() closes and removes it. Writer options (compression, use_dictionary)
    are passed to pyarrow's ParquetWriter."""

    def __init__(self, target: Path, schema: pa.Schema, **options: Any) -> None:
        import pyarrow.parquet as pq

        self.target = target
        self._pending = PendingFile(target)
        self._writer = pq.ParquetWriter(self._pending.tmp, schema, **options)

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def commit(self) -> None:
        self._writer.close()
        self._pending.commit()

    def discard(self) -> None:
        try:
            self._writer.close()
        finally:
            self._pending.discard()
