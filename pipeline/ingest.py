"""Ingest: landing files -> validated, deduplicated, date-partitioned Parquet; bad rows -> quarantine.

A landing file belongs to the data date its name starts with (``events/2026-11-21.jsonl``,
``events/2026-11-21-late.csv``). Ingesting night D (re)ingests every date <= D whose files are new or changed
since the ledger last saw them, so late files land in their own date and a first run loads history.

Formats: JSONL, CSV (header line, one record per line) and Parquet, chosen by the file suffix or else by
the ``events_format`` / ``items_format`` setting; ``event_columns`` / ``item_columns`` map pipeline fields to
source columns. Text files are streamed in blocks and split into lines with numpy (zero-copy Arrow slices);
every format is reduced to the same text fields and validated by one SQL file per kind (``stg_events.sql``,
``stg_items.sql``), so the rules live in one place.

Every row read ends up accepted, dropped as a duplicate (events: same deterministic ``event_id`` on the same
date; items: superseded by a later row) or quarantined with a reason; the ledger records the counts per file
and they always reconcile. Each partition file is written under a temporary name beside it and renamed into
place, so a crash never leaves half a partition. A date whose quarantined fraction is above the threshold is
not published.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import hashlib
import logging
import re
import shutil
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import warehouse
from pipeline.config import DEFAULT_EVENT_COLUMNS, DEFAULT_ITEM_COLUMNS, Settings
from pipeline.sql import relation

log = logging.getLogger(__name__)

DATE_PREFIX = re.compile(r"^(\d{4}-\d{2}-\d{2})")
TS_MIN = dt.datetime(1995, 1, 1, tzinfo=dt.UTC)
READ_BLOCK_BYTES = 16 * 1024 * 1024
COALESCE_ROWS = 65_536            # lines of small files are packed into Arrow batches of about this many rows
BATCH_INPUT_BYTES = 1 << 30       # consecutive dates are ingested together up to this much input
TOP_REASONS = 3
MAX_LISTED_FAILURES = 5
SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv",
                  ".parquet": "parquet", ".pq": "parquet"}
STREAMED_WRITE_ROWS = 50_000      # dates with more accepted rows (on average) are written one by one
STREAM_BATCH_ROWS = 122_880
WRITE_QUEUE = 4                   # Arrow batches waiting for the background Parquet writer
UTF8_BOM = b"\xef\xbb\xbf"
RAW_LINES_SCHEMA = pa.schema([("file_no", pa.int32()), ("line_no", pa.int64()), ("raw", pa.large_binary())])


class IngestError(RuntimeError):
    """Ingest could not complete (no event files for the date, counts that do not reconcile)."""


class IngestFormatError(IngestError):
    """A landing file cannot be read at all (e.g. not a Parquet file); nothing of its date is published."""


class IngestQualityError(IngestError):
    """Too many rows of a night were quarantined; nothing for that date is published downstream."""


@dataclass(frozen=True)
class Kind:
    """What is ingested: events (-> lake/interactions) or the item catalog (-> lake/items)."""

    name: str                          # ledger kind, quarantine file name and SQL prefix (stg_<name>...)
    lake_table: str                    # lake folder of the accepted rows
    fields: tuple[str, ...]            # pipeline fields read from the source
    required: tuple[str, ...]          # fields a CSV header / Parquet schema must have
    list_fields: tuple[str, ...] = ()  # fields holding lists (item attributes)
    dictionary_columns: tuple[str, ...] = ()  # lake columns worth dictionary encoding (few distinct values)
    out_order: str = "dt"              # a stable order of the lake rows (column names of stg_<name>_out)

    def sql(self, step: str = "") -> str:
        return f"staging/stg_{self.name}" + (f"_{step}" if step else "")

    @property
    def fields_view(self) -> str:
        return f"{self.name.removesuffix('s')}_fields"  # what stg_events.sql / stg_items.sql read


EVENTS = Kind("events", "interactions", tuple(DEFAULT_EVENT_COLUMNS), ("user_id", "item_id", "timestamp"),
              dictionary_columns=("event_type", "dt", "source_file", "ingested_at"),
              out_order="dt, source_file, line_no")
ITEMS = Kind("items", "items", tuple(DEFAULT_ITEM_COLUMNS), ("item_id",), ("genres", "categories", "tags"),
             dictionary_columns=("brand", "dt", "source_file", "ingested_at"), out_order="dt, item_id")


@dataclass(frozen=True)
class SourceFile:
    file_no: int   # position in the batch (the order of files of a date = name order)
    path: Path
    day: dt.date   # data date, from the file name
    fmt: str       # jsonl | csv | parquet


@dataclass
class FileCounts:
    source_file: str
    checksum: str
    rows_read: int = 0
    accepted: int = 0
    quarantined: int = 0
    duplicates: int = 0
    unknown_items: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    day: dt.date | None = None

    def reconciles(self) -> bool:
        return self.rows_read == self.accepted + self.quarantined + self.duplicates


@dataclass
class BatchResult:
    counts: list[FileCounts]
    failed_days: dict[dt.date, str]  # day -> why it was not published


# ---------------------------------------------------------------------------------------------- landing files


def landing_files(folder: Path) -> dict[dt.date, list[Path]]:
    """Landing files grouped by the data date their names start with (others are ignored, with a warning)."""
    by_date: dict[dt.date, list[Path]] = {}
    if not folder.is_dir():
        return by_date
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        match = DATE_PREFIX.match(path.name)
        if not match:
            log.warning("ignoring landing file without a YYYY-MM-DD prefix: %s", path)
            continue
        try:
            day = dt.date.fromisoformat(match.group(1))
        except ValueError:
            log.warning("ignoring landing file with an invalid date prefix: %s", path)
            continue
        by_date.setdefault(day, []).append(path)
    return by_date


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_format(path: Path, default: str) -> str:
    """jsonl | csv | parquet: from a known suffix, else the configured default."""
    return SUFFIX_FORMATS.get(path.suffix.lower(), default)


# ---------------------------------------------------------------------------------------------- reading


def iter_raw_lines(path: Path, block_bytes: int = READ_BLOCK_BYTES, max_line_bytes: int = 1 << 20,
                   on_block: Callable[[bytes], Any] | None = None) -> Iterator[pa.RecordBatch]:
    """Stream a text file as Arrow batches (line_no, raw) without one Python object per line.

    Lines end at \\n, \\r\\n or a lone \\r; blank lines are not rows; line_no is the 1-based physical line.
    `raw` is a zero-copy slice of the block read: the line followed by its terminator (and any blank lines
    after it). A line longer than max_line_bytes is cut to its first max_line_bytes + 1 bytes and the rest is
    skipped, so memory stays bounded and the row can be quarantined as too long. on_block sees every block
    read (e.g. a checksum).
    """
    line_no = 0
    carry = b""
    skipping = False  # inside an over-long line whose start was already emitted
    with path.open("rb") as fh:
        first = True
        while True:
            block = fh.read(block_bytes)
            eof = not block
            if on_block is not None and block:
                on_block(block)
            if first and block.startswith(UTF8_BOM):
                block = block[len(UTF8_BOM):]  # a byte order mark is not part of the first line
            first = False
            data = carry + block if carry else block
            carry = b""
            if skipping:
                data, skipping = _rest_after_long_line(data)
                if skipping:
                    if eof:
                        break
                    continue
            if not data:
                if eof:
                    break
                continue
            buf = np.frombuffer(data, dtype=np.uint8)
            ends = _line_ends(buf, eof, has_cr=b"\r" in data)
            if eof and (len(ends) == 0 or ends[-1] != len(buf) - 1):
                ends = np.append(ends, len(buf))  # the last line has no terminator
            if len(ends):
                batch = _lines_batch(data, buf, ends, line_no)
                line_no += len(ends)
                if batch is not None:
                    yield batch
                carry = data[ends[-1] + 1:] if not eof else b""
            else:
                carry = data
            if len(carry) > max_line_bytes:
                yield pa.record_batch({"line_no": pa.array([line_no + 1], pa.int64()),
                                       "raw": pa.array([carry[: max_line_bytes + 1]], pa.large_binary())})
                carry, skipping = b"", True  # line_no moves on when the skipped line's terminator is read
            if eof:
                break


def _line_ends(buf: np.ndarray, eof: bool, has_cr: bool) -> np.ndarray:
    """Positions of line terminators: every \\n, and every \\r not followed by \\n (a \\r that ends a block
    before the end of the file may be half of a \\r\\n, so it waits for the next block)."""
    ends = np.flatnonzero(buf == 10)
    cr = np.flatnonzero(buf == 13) if has_cr else ()
    if len(cr):
        nxt = cr + 1
        lone = np.where(nxt == len(buf), eof, buf[np.minimum(nxt, len(buf) - 1)] != 10)
        ends = np.union1d(ends, cr[lone])
    return ends


def _lines_batch(data: bytes, buf: np.ndarray, ends: np.ndarray, line_no: int) -> pa.RecordBatch | None:
    starts = np.empty(len(ends), dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    first = buf[np.minimum(starts, len(buf) - 1)]
    blank = (starts >= len(buf)) | (first == 10) | (first == 13)  # a line starting with a terminator is blank
    numbers = np.arange(line_no + 1, line_no + 1 + len(starts), dtype=np.int64)
    if blank.any():
        keep = ~blank
        starts, ends, numbers = starts[keep], ends[keep], numbers[keep]
    if not len(starts):
        return None
    offsets = np.empty(len(starts) + 1, dtype=np.int64)
    offsets[:-1] = starts
    offsets[-1] = min(int(ends[-1]) + 1, len(buf))
    raw = pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(starts),
                                           [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    return pa.record_batch({"line_no": pa.array(numbers), "raw": raw})


def _rest_after_long_line(data: bytes) -> tuple[bytes, bool]:
    """(data from the end of the line being skipped, still skipping)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    hits = np.flatnonzero((buf == 10) | (buf == 13))
    if not len(hits):
        return b"", True
    return data[hits[0]:], False  # the terminator reads as a blank line, which advances line_no


def csv_header(path: Path, delimiter: str, max_line_bytes: int) -> list[str] | None:
    """The column names of a CSV file (its first non-blank line), or None for a file without lines."""
    first = next(iter_raw_lines(path, block_bytes=1 << 16, max_line_bytes=max_line_bytes), None)
    if first is None:
        return None
    text = first.column("raw")[0].as_py().rstrip(b"\r\n").decode("utf-8", errors="replace")
    return [name.strip() for name in next(csv.reader([text], delimiter=delimiter), [])]


def _text_batches(files: list[SourceFile], settings: Settings, rows_read: dict[int, int],
                  hashers: dict[int, Any]) -> Iterator[pa.RecordBatch]:
    """Raw lines of JSONL/CSV files (CSV headers left out) tagged with file_no; small files are packed."""
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for src in files:
        hasher = hashers.get(src.file_no)
        header_left = src.fmt == "csv"
        for lines in iter_raw_lines(src.path, max_line_bytes=settings.ingest.max_line_bytes,
                                    on_block=hasher.update if hasher is not None else None):
            if header_left:
                lines, header_left = lines.slice(1), False
            if not lines.num_rows:
                continue
            rows_read[src.file_no] += lines.num_rows
            pending.append(pa.record_batch(
                [pa.array(np.full(lines.num_rows, src.file_no, np.int32)), lines.column(0), lines.column(1)],
                schema=RAW_LINES_SCHEMA))
            pending_rows += lines.num_rows
            if pending_rows >= COALESCE_ROWS:
                yield _concat(pending)
                pending, pending_rows = [], 0
    if pending:
        yield _concat(pending)


def _concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    return batches[0] if len(batches) == 1 else pa.concat_batches(batches)


def _source_schema(kind: Kind) -> pa.Schema:
    columns = [(f, pa.list_(pa.string()) if f in kind.list_fields else pa.string()) for f in kind.fields]
    return pa.schema([("file_no", pa.int32()), ("line_no", pa.int64()), *columns])


def _parquet_batches(files: list[SourceFile], kind: Kind, mapping: dict[str, str], ts_format: str,
                     rows_read: dict[int, int]) -> Iterator[pa.RecordBatch]:
    """The mapped columns of Parquet files as text (lists of text for attributes), tagged with file/row."""
    schema = _source_schema(kind)
    for src in files:
        parquet = pq.ParquetFile(src.path)
        present = set(parquet.schema_arrow.names)
        columns = sorted({mapping[f] for f in kind.fields if mapping.get(f) in present})
        row = 0
        for batch in parquet.iter_batches(batch_size=COALESCE_ROWS, columns=columns):
            n = batch.num_rows
            arrays = [pa.array(np.full(n, src.file_no, np.int32)), pa.array(np.arange(row + 1, row + n + 1))]
            for name in kind.fields:
                source = mapping.get(name)
                column = batch.column(source) if source in present else None
                ts = ts_format if name == "timestamp" else ""
                arrays.append(_as_text(column, n, schema.field(name).type, ts))
            rows_read[src.file_no] += n
            row += n
            yield pa.record_batch(arrays, schema=schema)


def _as_text(column: pa.Array | None, n: int, target: pa.DataType, ts_format: str) -> pa.Array:
    """A Parquet column as text (native timestamps in the configured timestamp format) or a list of text."""
    if column is None:
        return pa.nulls(n, target)
    if pa.types.is_list(target):
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            return pc.cast(column, target)
        one_each = pa.array(np.arange(n + 1, dtype=np.int32))
        return pa.ListArray.from_arrays(one_each, pc.cast(column, pa.string()))
    if ts_format and (pa.types.is_timestamp(column.type) or pa.types.is_date(column.type)):
        utc = pc.cast(pc.cast(column, pa.timestamp("us")) if pa.types.is_date(column.type) else column,
                      pa.timestamp("us", tz="UTC"))
        if ts_format == "iso":
            return pc.cast(utc, pa.string())
        micros = pc.cast(pc.cast(utc, pa.int64()), pa.float64())
        return pc.cast(pc.divide(micros, 1e6 if ts_format == "epoch_s" else 1e3), pa.string())
    return pc.cast(column, pa.string())


# ---------------------------------------------------------------------------------------------- staging


def _mapping(settings: Settings, kind: Kind) -> dict[str, str]:
    return dict(settings.ingest.event_columns if kind is EVENTS else settings.ingest.item_columns)


def _csv_patterns(delimiter: str) -> tuple[str, str]:
    """RE2 patterns: a whole well-quoted record, and one field followed by its delimiter."""
    delim = f"\\x{{{ord(delimiter):x}}}"
    one = f'"(?:[^"]|"")*"|[^{delim}"]*'
    return f"(?:{one})(?:{delim}(?:{one}))*", f"({one}){delim}"


def _sql_params(settings: Settings, kind: Kind) -> dict[str, Any]:
    mapping = _mapping(settings, kind)
    mapped = [f for f in kind.fields if f in mapping]
    record_pattern, field_pattern = _csv_patterns(settings.ingest.csv_delimiter)
    return {
        "paths": ['$."' + mapping[f].replace('"', '\\"') + '"' for f in mapped],
        **{f"{f}_idx": (mapped.index(f) + 1 if f in mapping else None) for f in kind.fields},
        "delimiter": settings.ingest.csv_delimiter,
        "record_pattern": record_pattern,
        "field_pattern": field_pattern,
        "max_line_bytes": settings.ingest.max_line_bytes,
        "max_raw_chars": settings.ingest.max_raw_chars,
        "max_field_chars": settings.ingest.max_field_chars,
        "ts_format": settings.ingest.timestamp_format,
        "ts_min": TS_MIN,
        "allowed_event_types": list(settings.ingest.allowed_event_types),
        "default_event_type": settings.ingest.default_event_type,
    }


def _file_layout(src: SourceFile, kind: Kind, settings: Settings) -> dict[str, Any]:
    """One row of `ingest_files`: where the mapped fields are in a CSV header; required ones absent."""
    mapping = _mapping(settings, kind)
    layout: dict[str, Any] = {"file_no": src.file_no, "source_file": src.path.name, "dt": src.day,
                              "missing_columns": None, "n_columns": None,
                              **{f"{f}_pos": None for f in kind.fields}}
    names: list[str] | None = None
    if src.fmt == "csv":
        names = csv_header(src.path, settings.ingest.csv_delimiter, settings.ingest.max_line_bytes)
        if names is not None:
            layout["n_columns"] = len(names)
            first = {name: i + 1 for i, name in reversed(list(enumerate(names)))}
            layout.update({f"{f}_pos": first.get(mapping[f]) for f in kind.fields if f in mapping})
    elif src.fmt == "parquet":
        try:
            names = pq.ParquetFile(src.path).schema_arrow.names
        except (OSError, pa.ArrowException) as err:
            raise IngestFormatError(f"{src.path}: not a readable Parquet file: {err}") from err
    if names is not None:
        missing = [mapping[f] for f in kind.required if mapping[f] not in names]
        layout["missing_columns"] = ", ".join(missing) or None
    return layout


def _files_table(layouts: list[dict[str, Any]], kind: Kind) -> pa.Table:
    schema = pa.schema([("file_no", pa.int32()), ("source_file", pa.string()), ("dt", pa.date32()),
                        ("missing_columns", pa.string()), ("n_columns", pa.int32()),
                        *[(f"{f}_pos", pa.int32()) for f in kind.fields]])
    return pa.Table.from_pylist(layouts, schema=schema)


def _scratch_connection(tmp_dir: Path, settings: Settings) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that spills to tmp_dir (DuckDB creates it when needed), so memory stays bounded."""
    tmp_dir.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("set TimeZone = 'UTC'")
    con.execute("set enable_progress_bar = false")
    con.execute("set memory_limit = $limit", {"limit": f"{settings.ingest.ingest_memory_mb}MB"})
    con.execute("set temp_directory = $dir", {"dir": str(tmp_dir)})
    if settings.ingest.ingest_threads:
        con.execute("set threads = $n", {"n": settings.ingest.ingest_threads})
    return con


def _stage(con: duckdb.DuckDBPyConnection, kind: Kind, files: list[SourceFile], settings: Settings,
           hashers: dict[int, Any]) -> dict[int, int]:
    """Validate every row of the batch's files into the table `staged`; returns rows read per file_no."""
    params = _sql_params(settings, kind)
    rows_read = dict.fromkeys((f.file_no for f in files), 0)
    staged_exists = False
    for fmt in ("jsonl", "csv", "parquet"):
        group = [f for f in files if f.fmt == fmt]
        if not group:
            continue
        if fmt == "parquet":
            mapping = _mapping(settings, kind)
            batches = _parquet_batches(group, kind, mapping, settings.ingest.timestamp_format, rows_read)
            con.register("source_rows", pa.RecordBatchReader.from_batches(_source_schema(kind), batches))
            steps = [(kind.sql("fields_parquet"), kind.fields_view)]
        else:
            batches = _text_batches(group, settings, rows_read, hashers)
            con.register("raw_lines", pa.RecordBatchReader.from_batches(RAW_LINES_SCHEMA, batches))
            steps = [("staging/stg_ingest_lines", "ingest_lines"),
                     (kind.sql(f"fields_{fmt}"), kind.fields_view)]
        for name, view in steps:
            relation(con, name, params).create_view(view, replace=True)
        validated = relation(con, kind.sql(), params)
        try:
            if staged_exists:
                validated.insert_into("staged")
            else:
                validated.create("staged")
                staged_exists = True
        except duckdb.Error as err:
            names = ", ".join(f.path.name for f in group)
            raise IngestFormatError(f"{kind.name} files {names}: could not be read: {err}") from err
        finally:
            con.unregister("source_rows" if fmt == "parquet" else "raw_lines")
    return rows_read


def _known_items(con: duckdb.DuckDBPyConnection, settings: Settings, kind: Kind) -> None:
    """Table `known_items` (item_id, first_dt) from the lake catalog; empty for items or without a catalog."""
    parts = settings.paths.lake_dir / "items"
    if kind is EVENTS and any(parts.glob("dt=*/*.parquet")):
        relation(con, "staging/stg_items_known", {"items_glob": str(parts / "dt=*" / "*.parquet")}).create(
            "known_items")
    else:
        con.execute("create table known_items (item_id varchar, first_dt date)")


def _file_counts(con: duckdb.DuckDBPyConnection, kind: Kind, files: list[SourceFile],
                 rows_read: dict[int, int], checksums: dict[Path, str]) -> list[FileCounts]:
    """Per-file counts of the batch; fails loudly if they do not reconcile with the rows read."""
    reasons: dict[int, dict[str, int]] = {}
    for file_no, reason, n in relation(con, "staging/stg_ingest_reasons").fetchall():
        reasons.setdefault(file_no, {})[reason] = n
    staged = {row[0]: row[1:] for row in relation(con, "staging/stg_ingest_file_counts",
                                                  {"count_unknown_items": kind is EVENTS}).fetchall()}
    result = []
    for src in files:
        rows, accepted, quarantined, duplicates, unknown = staged[src.file_no]
        counts = FileCounts(src.path.name, checksums[src.path], rows_read[src.file_no], accepted, quarantined,
                            duplicates, unknown, reasons.get(src.file_no, {}), src.day)
        if rows != counts.rows_read or not counts.reconciles():
            raise IngestError(f"{src.path}: counts do not reconcile ({rows} rows staged): {counts}")
        result.append(counts)
    return result


def _over_threshold(kind: Kind, counts: list[FileCounts], threshold: float) -> dict[dt.date, str]:
    """Dates whose quarantined fraction of event rows is above the threshold, with a message naming the worst
    file and its top reasons."""
    failed: dict[dt.date, str] = {}
    if kind is not EVENTS:
        return failed
    for day, of_day in _by_day(counts).items():
        total, bad = sum(c.rows_read for c in of_day), sum(c.quarantined for c in of_day)
        if total and bad / total > threshold:
            worst = max(of_day, key=lambda c: (c.quarantined / max(c.rows_read, 1), c.quarantined))
            failed[day] = (
                f"{day}: {bad} of {total} event rows quarantined ({bad / total:.1%}), above the threshold "
                f"{threshold:.1%}; worst file {worst.source_file}: {top_reasons(worst.reasons)}. "
                f"Nothing for {day} is published; see lake/quarantine/dt={day}/events.parquet"
            )
    return failed


def _by_day(counts: list[FileCounts]) -> dict[dt.date, list[FileCounts]]:
    grouped: dict[dt.date, list[FileCounts]] = {}
    for c in counts:
        if c.day is not None:
            grouped.setdefault(c.day, []).append(c)
    return grouped


# ---------------------------------------------------------------------------------------------- publishing


def _publish(con: duckdb.DuckDBPyConnection, kind: Kind, settings: Settings, counts: list[FileCounts],
             failed: dict[dt.date, str], ingested_at: dt.datetime) -> None:
    """Replace each date's quarantine file and (unless the date failed) its lake partition.

    Every file is written under a temporary name beside its target and renamed into place, so readers see the
    old or the new file, never a partial one. Big dates are streamed one by one (row order within a partition
    is not significant: the key is dt + event_id); many small dates come from one query ordered by date.
    """
    by_day = _by_day(counts)
    bind = {"kind": kind.name, "ingested_at": ingested_at}
    rejected = relation(con, "staging/stg_ingest_quarantine", bind)
    quarantine_of = functools.partial(_partition_file, settings.paths.lake_dir / "quarantine", f"{kind.name}.parquet")
    _write_by_date(rejected, list(by_day), kind, quarantine_of, keep_empty=False)
    published = [d for d in by_day if d not in failed]
    accepted = sum(c.accepted for d in published for c in by_day[d])
    path_of = functools.partial(_partition_file, settings.paths.lake_dir / kind.lake_table, "part-0.parquet")
    if published and accepted >= STREAMED_WRITE_ROWS * len(published):
        for day in published:
            _write_by_date(relation(con, kind.sql("out"), {**bind, "dates": [day]}), [day], kind, path_of)
    else:
        ordered = relation(con, kind.sql("out"), {**bind, "dates": published}).order(kind.out_order)
        _write_by_date(ordered, published, kind, path_of)


def _partition_file(folder: Path, name: str, day: dt.date) -> Path:
    return folder / f"dt={day.isoformat()}" / name


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
                _PartitionWriter(day, path_of(day), reader.schema, kind).commit()
            else:
                path_of(day).unlink(missing_ok=True)


class _DateFiles:
    """Writes batches that arrive ordered by date into one file per date. Parquet encoding runs on one
    background thread, overlapping DuckDB producing the next batch; at most WRITE_QUEUE batches wait."""

    def __init__(self, schema: pa.Schema, kind: Kind, path_of: Callable[[dt.date], Path]) -> None:
        self.schema, self.kind, self.path_of = schema, kind, path_of
        self.days: set[dt.date] = set()
        self._last: dt.date | None = None
        self._current: _PartitionWriter | None = None  # used on the worker thread only
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
        self._current = _PartitionWriter(day, self.path_of(day), self.schema, self.kind)

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


class _PartitionWriter:
    """One Parquet file written under a temporary name beside its target, renamed into place on commit."""

    def __init__(self, day: dt.date, target: Path, schema: pa.Schema, kind: Kind) -> None:
        self.day = day
        self.target = target
        target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        self.writer = pq.ParquetWriter(self.tmp, schema, compression="zstd",
                                       use_dictionary=list(kind.dictionary_columns))

    def write(self, batch: pa.RecordBatch) -> None:
        self.writer.write_batch(batch)

    def commit(self) -> None:
        self.writer.close()
        self.tmp.replace(self.target)

    def discard(self) -> None:
        self.writer.close()
        self.tmp.unlink(missing_ok=True)


def top_reasons(reasons: dict[str, int]) -> str:
    top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REASONS]
    return ", ".join(f"{reason} ({n})" for reason, n in top)


# ---------------------------------------------------------------------------------------------- batches


def _ingest_batch(settings: Settings, kind: Kind, batch: list[tuple[dt.date, list[Path]]],
                  checksums: dict[Path, str], ingested_at: dt.datetime) -> BatchResult:
    """Validate, deduplicate and publish consecutive dates of one kind in one pass over their files."""
    default_fmt = settings.ingest.events_format if kind is EVENTS else settings.ingest.items_format
    files = [SourceFile(i, path, day, file_format(path, default_fmt))
             for i, (day, path) in enumerate((day, p) for day, paths in batch for p in paths)]
    for src in files:
        if src.fmt == "parquet" and src.path not in checksums:
            checksums[src.path] = file_sha256(src.path)
    hashers = {f.file_no: hashlib.sha256() for f in files if f.path not in checksums}
    tmp_dir = settings.paths.lake_dir / "_tmp" / uuid.uuid4().hex
    con = _scratch_connection(tmp_dir, settings)
    try:
        con.register("ingest_files", _files_table([_file_layout(f, kind, settings) for f in files], kind))
        rows_read = _stage(con, kind, files, settings, hashers)
        checksums.update({f.path: hashers[f.file_no].hexdigest() for f in files if f.file_no in hashers})
        relation(con, kind.sql("dedup")).create("duplicates")
        _known_items(con, settings, kind)
        counts = _file_counts(con, kind, files, rows_read, checksums)
        failed = _over_threshold(kind, counts, settings.ingest.quarantine_threshold)
        _publish(con, kind, settings, counts, failed, ingested_at)
        return BatchResult(counts, failed)
    finally:
        con.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _batches(pending: list[tuple[dt.date, list[Path]]]) -> Iterator[list[tuple[dt.date, list[Path]]]]:
    """Consecutive dates grouped until their files reach BATCH_INPUT_BYTES (a date is never split)."""
    batch: list[tuple[dt.date, list[Path]]] = []
    size = 0
    for day, files in pending:
        batch.append((day, files))
        size += sum(p.stat().st_size for p in files)
        if size >= BATCH_INPUT_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _unchanged(files: list[Path], previous: list[FileCounts] | None, partition: Path,
               checksums: dict[Path, str]) -> bool:
    """Whether a date's files are exactly those of its last successful ingest (and its partition is there)."""
    if not previous or not partition.is_file():
        return False
    before = {c.source_file: c.checksum for c in previous}
    if set(before) != {p.name for p in files}:
        return False
    for path in files:
        checksums[path] = file_sha256(path)
    return all(before[p.name] == checksums[p] for p in files)


# ---------------------------------------------------------------------------------------------- ledger


def _ledger_state(wh: duckdb.DuckDBPyConnection) -> dict[tuple[str, dt.date], list[FileCounts]]:
    """The per-file counts of the latest successful (ok or noop) ingest of every (kind, date)."""
    state: dict[tuple[str, dt.date], list[FileCounts]] = {}
    for kind, day, *values in relation(wh, "staging/stg_ingest_ledger_latest").fetchall():
        state.setdefault((kind, day), []).append(FileCounts(*values, day=day))
    return state


def _record(wh: duckdb.DuckDBPyConnection, kind: Kind, rows: list[tuple[FileCounts, str]],
            at: dt.datetime) -> None:
    """Append one ledger row per (file counts, status) in a single insert."""
    if not rows:
        return
    table = pa.Table.from_pylist([
        {"dt": c.day, "kind": kind.name, "source_file": c.source_file, "checksum": c.checksum,
         "rows_read": c.rows_read, "accepted": c.accepted, "quarantined": c.quarantined,
         "duplicates": c.duplicates, "unknown_items": c.unknown_items, "status": status,
         "top_reasons": top_reasons(c.reasons) or None, "ingested_at": at}
        for c, status in rows
    ])
    wh.register("ledger_rows", table)
    try:
        wh.execute("insert into ingest_ledger by name select * from ledger_rows")
    finally:
        wh.unregister("ledger_rows")


def _summarise(counts: list[FileCounts], status: str) -> dict[str, Any]:
    merged: dict[str, int] = {}
    for c in counts:
        for reason, n in c.reasons.items():
            merged[reason] = merged.get(reason, 0) + n
    return {
        "files": len(counts), "status": status,
        "rows_read": sum(c.rows_read for c in counts), "accepted": sum(c.accepted for c in counts),
        "quarantined": sum(c.quarantined for c in counts), "duplicates": sum(c.duplicates for c in counts),
        "unknown_items": sum(c.unknown_items for c in counts), "reasons": merged,
    }


# ---------------------------------------------------------------------------------------------- entry point


def ingest(settings: Settings, data_date: dt.date) -> dict[str, Any]:
    """Ingest night `data_date`: every date <= data_date whose landing files are new or changed.

    Returns the data date's counts per kind and the dates (re)ingested. Unchanged earlier dates are skipped;
    an unchanged data date is recorded in the ledger as a no-op. Raises IngestQualityError when a date's
    quarantined fraction is above the threshold (after publishing the other dates), IngestFormatError when a
    file cannot be read, IngestError when the data date has no event files.
    """
    ingested_at = dt.datetime.now(dt.UTC)
    event_files = landing_files(settings.paths.landing_dir / "events")
    if data_date not in event_files:
        raise IngestError(f"no event files for data date {data_date} in {settings.paths.landing_dir / 'events'}")
    sources = {ITEMS: landing_files(settings.paths.landing_dir / "items"), EVENTS: event_files}
    summary: dict[str, Any] = {"data_date": data_date.isoformat(), "ingested_dates": [], "noop_dates": []}
    failures: list[str] = []
    with warehouse.connect(settings.paths.warehouse_path) as wh:
        previous = _ledger_state(wh)
        for kind, by_date in sources.items():
            failures += _ingest_kind(settings, kind, by_date, data_date, previous, wh, ingested_at, summary)
    if failures:
        more = len(failures) - MAX_LISTED_FAILURES
        listed = "; ".join(failures[:MAX_LISTED_FAILURES]) + (f"; and {more} more dates" if more > 0 else "")
        raise IngestQualityError(listed)
    log.info("ingest %s: %s", data_date, summary.get("events"))
    return summary


def _ingest_kind(settings: Settings, kind: Kind, by_date: dict[dt.date, list[Path]], data_date: dt.date,
                 previous: dict[tuple[str, dt.date], list[FileCounts]], wh: duckdb.DuckDBPyConnection,
                 ingested_at: dt.datetime, summary: dict[str, Any]) -> list[str]:
    """Ingest the changed dates of one kind, record them in the ledger; returns quality failure messages."""
    checksums: dict[Path, str] = {}
    pending = []
    for day in sorted(d for d in by_date if d <= data_date):
        partition = settings.paths.lake_dir / kind.lake_table / f"dt={day.isoformat()}" / "part-0.parquet"
        before = previous.get((kind.name, day))
        if not _unchanged(by_date[day], before, partition, checksums):
            pending.append((day, by_date[day]))
        elif day == data_date and before:
            _record(wh, kind, [(c, "noop") for c in before], ingested_at)
            summary["noop_dates"].append(f"{kind.name}:{day}")
            summary[kind.name] = _summarise(before, "noop")
    failures: list[str] = []
    for batch in _batches(pending):
        try:
            result = _ingest_batch(settings, kind, batch, checksums, ingested_at)
        except IngestError:
            files = [(day, path) for day, paths in batch for path in paths]
            _record(wh, kind, [(FileCounts(p.name, checksums.get(p, ""), day=d), "failed") for d, p in files],
                    ingested_at)
            raise
        status = {day: "failed" if day in result.failed_days else "ok" for day, _ in batch}
        _record(wh, kind, [(c, status[c.day]) for c in result.counts if c.day is not None], ingested_at)
        summary["ingested_dates"] += [f"{kind.name}:{day}" for day, s in status.items() if s == "ok"]
        if data_date in status:
            of_day = [c for c in result.counts if c.day == data_date]
            summary[kind.name] = _summarise(of_day, status[data_date])
        failures += result.failed_days.values()
    return failures
