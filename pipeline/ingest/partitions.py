"""Publishing a batch: each date's quarantine file and (unless the date failed) its lake partition.

Every file is written under a temporary name beside its target and renamed into place
(`pipeline.atomic.AtomicParquetWriter`), so readers see the old or the new file, never a partial one.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from pipeline.atomic import AtomicParquetWriter
from pipeline.catalog import Catalog
from pipeline.ingest.errors import IngestError
from pipeline.ingest.kinds import Kind
from pipeline.ingest.ledger import FileCounts, by_day
from pipeline.sql import relation

log = logging.getLogger(__name__)

STREAMED_WRITE_ROWS = 50_000      # dates with more accepted rows (on average) are written one by one
STREAM_BATCH_ROWS = 122_880
WRITE_QUEUE = 4                   # Arrow batches waiting for the background Parquet writer


def publish(con: duckdb.DuckDBPyConnection, kind: Kind, catalog: Catalog, counts: list[FileCounts],
            failed: dict[dt.date, str], ingested_at: dt.datetime) -> None:
    """Replace each date's quarantine file and (unless the date failed) its lake partition.

    Big dates are streamed one by one (row order within a partition is not significant: the key is dt +
    event_id); many small dates come from one query ordered by date.
    """
    days = list(by_day(counts))
    bind = {"kind": kind.name, "ingested_at": ingested_at}
    rejected = relation(con, "ingest/quarantine", bind)
    _write_by_date(rejected, days, kind, functools.partial(catalog.quarantine_file, kind.name), keep_empty=False)
    published = [d for d in days if d not in failed]
    accepted = sum(c.accepted for c in counts if c.day in published)
    path_of = functools.partial(catalog.partition_file, kind.lake_table)
    if published and accepted >= STREAMED_WRITE_ROWS * len(published):
        for day in published:
            _write_by_date(relation(con, kind.lake_query, {**bind, "dates": [day]}), [day], kind, path_of)
    else:
        ordered = relation(con, kind.lake_query, {**bind, "dates": published}).order(kind.out_order)
        _write_by_date(ordered, published, kind, path_of)


def _partition_writer(target: Path, schema: pa.Schema, kind: Kind) -> AtomicParquetWriter:
    return AtomicParquetWriter(target, schema, compression="zstd", use_dictionary=list(kind.dictionary_columns))


def _write_by_date(rel: duckdb.DuckDBPyRelation, days: list[dt.date], kind: Kind,
                   path_of: Callable[[dt.date], Path], keep_empty: bool = True) -> None:
    """Stream a relation ordered by `dt` into one Parquet file per date (bounded memory).

    Dates of `days` without rows get an empty file (keep_empty) or lose their old file."""
    reader = rel.to_arrow_reader(STREAM_BATCH_ROWS)
    files = _DateFiles(reader.schema, kind, path_of)
    try:
        for batch in reader:
            for day, start, stop in _date_runs(batch.column("dt")):
                files.add(day, batch.slice(start, stop - start))
    except BaseException:
        files.abort()
        raise
    files.close()
    for day in days:
        if day not in files.days:
            if keep_empty:
                _partition_writer(path_of(day), reader.schema, kind).commit()
            else:
                path_of(day).unlink(missing_ok=True)


class _DateFiles:
    """Writes batches that arrive ordered by date into one file per date. Parquet encoding runs on one
    background thread, overlapping DuckDB producing the next batch; at most WRITE_QUEUE batches wait."""

    def __init__(self, schema: pa.Schema, kind: Kind, path_of: Callable[[dt.date], Path]) -> None:
        self.schema, self.kind, self.path_of = schema, kind, path_of
        self.days: set[dt.date] = set()
        self._last: dt.date | None = None
        self._current: AtomicParquetWriter | None = None  # used on the worker thread only
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-parquet")
        self._pending: deque[Future[None]] = deque()

    def add(self, day: dt.date, batch: pa.RecordBatch) -> None:
        if day != self._last:
            if day in self.days:
                raise IngestError(f"rows for {day} are not contiguous; cannot write its partition")
            self.days.add(day)
            self._last = day
            self._submit(self._open, day)
        self._submit(self._write, batch)

    def close(self) -> None:
        """Commit the last file; raises what the worker raised (after discarding the unfinished file)."""
        try:
            self._submit(self._finish, True)
            while self._pending:
                self._pending.popleft().result()
        except BaseException:
            self.abort()
            raise
        self._pool.shutdown(wait=True)

    def abort(self) -> None:
        """Stop the worker and discard the unfinished file (committed dates stay)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
        try:
            self._finish(commit=False)
        except (OSError, pa.ArrowException) as err:
            log.warning("could not discard an unfinished partition file: %s", err)

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        self._pending.append(self._pool.submit(fn, *args))
        while len(self._pending) > WRITE_QUEUE:
            self._pending.popleft().result()

    def _open(self, day: dt.date) -> None:
        self._finish(commit=True)
        self._current = _partition_writer(self.path_of(day), self.schema, self.kind)

    def _write(self, batch: pa.RecordBatch) -> None:
        assert self._current is not None, "a batch before its date's file was opened"
        self._current.write(batch)

    def _finish(self, commit: bool) -> None:
        current, self._current = self._current, None
        if current is not None:
            current.commit() if commit else current.discard()


def _date_runs(column: pa.Array) -> list[tuple[dt.date, int, int]]:
    """(date, start, stop) of each run of equal dates in a date32 column."""
    days = column.cast(pa.int32()).to_numpy(zero_copy_only=False)
    cuts = np.concatenate(([0], np.flatnonzero(np.diff(days)) + 1, [len(days)]))
    epoch = dt.date(1970, 1, 1)
    return [(epoch + dt.timedelta(days=int(days[a])), int(a), int(b))
            for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]
