"""Ingest: landing files -> validated, deduplicated, date-partitioned Parquet; bad rows -> quarantine.

A landing file belongs to the data date its name starts with (``events/2026-11-21.jsonl``,
``events/2026-11-21-late.jsonl``). Ingesting night D (re)ingests every date <= D whose files are new or
changed since the ledger last saw them, so late files land in their own date and a first run loads history.

Every row read ends up accepted, deduplicated (same deterministic ``event_id``) or quarantined with a reason;
the ledger records the counts per file and they always reconcile. Partitions are written to a temporary
folder and renamed into place, so a crash never leaves half a partition.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import warehouse
from pipeline.config import Settings
from pipeline.sql import relation

log = logging.getLogger(__name__)

DATE_PREFIX = re.compile(r"^(\d{4}-\d{2}-\d{2})")
TS_MIN = dt.datetime(1995, 1, 1, tzinfo=dt.UTC)
READ_BLOCK_BYTES = 32 * 1024 * 1024
TOP_REASONS = 3


class IngestError(RuntimeError):
    """Ingest could not complete (unreadable landing folder, bad configuration)."""


class IngestQualityError(IngestError):
    """Too many rows of a night were quarantined; nothing for that date is published downstream."""


@dataclass
class FileCounts:
    source_file: str
    checksum: str
    rows_read: int = 0
    accepted: int = 0
    quarantined: int = 0
    duplicates: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def reconciles(self) -> bool:
        return self.rows_read == self.accepted + self.quarantined + self.duplicates


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


def iter_raw_lines(path: Path, block_bytes: int = READ_BLOCK_BYTES) -> Iterator[pa.Table]:
    """Stream a text file as Arrow batches (line_no, raw bytes) without one Python object per line.

    Lines end at \\n, \\r\\n or a lone \\r; blank lines are not rows. line_no is 1-based physical line.
    """
    line_no = 0
    carry = b""
    with path.open("rb") as fh:
        while True:
            block = fh.read(block_bytes)
            eof = not block
            data = carry + block
            if not data:
                break
            buf = np.frombuffer(data, dtype=np.uint8)
            is_nl = buf == 10
            is_cr = buf == 13
            lone_cr = is_cr.copy()
            lone_cr[:-1] &= ~is_nl[1:]
            if not eof and len(buf) and buf[-1] == 13:
                lone_cr[-1] = False  # may be the first half of \r\n split across blocks
            ends = np.flatnonzero(is_nl | lone_cr)
            if eof:
                if len(ends) == 0 or ends[-1] != len(buf) - 1:
                    ends = np.append(ends, len(buf))
                carry = b""
            else:
                carry = data[ends[-1] + 1 :] if len(ends) else data
                if len(ends) == 0:
                    continue
            starts = np.concatenate(([0], ends[:-1] + 1))
            stops = ends.copy()
            crlf = (stops > starts) & (stops < len(buf))
            crlf &= np.where(stops < len(buf), buf[np.minimum(stops, len(buf) - 1)] == 10, False)
            prev_cr = np.zeros_like(crlf)
            prev_cr[crlf] = buf[stops[crlf] - 1] == 13
            stops = stops - prev_cr
            numbers = line_no + 1 + np.arange(len(starts), dtype=np.int64)
            line_no += len(starts)
            keep = stops > starts
            if keep.any():
                yield _lines_table(data, starts[keep], stops[keep], numbers[keep])
            if eof:
                break


def _lines_table(data: bytes, starts: np.ndarray, stops: np.ndarray, numbers: np.ndarray) -> pa.Table:
    lengths = stops - starts
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    buf = np.frombuffer(data, dtype=np.uint8)
    index = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
    payload = buf[index]
    raw = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(payload.tobytes())]
    )
    return pa.table({"line_no": pa.array(numbers, pa.int64()), "raw": raw})


def _json_path(column: str) -> str:
    return '$."' + column.replace('"', '\\"') + '"'


def _event_params(settings: Settings, day: dt.date) -> dict[str, Any]:
    cols = settings.event_columns
    return {
        "user_path": _json_path(cols["user_id"]),
        "item_path": _json_path(cols["item_id"]),
        "event_type_path": _json_path(cols.get("event_type", "event_type")),
        "value_path": _json_path(cols.get("value", "value")),
        "ts_path": _json_path(cols["timestamp"]),
        "max_raw_chars": settings.max_raw_chars,
        "max_field_chars": settings.max_field_chars,
        "ts_format": settings.timestamp_format,
        "ts_min": TS_MIN,
        # events may be late (yesterday) but not from after the end of the data date + 1 day
        "ts_max": dt.datetime.combine(day + dt.timedelta(days=2), dt.time(), tzinfo=dt.UTC),
        "allowed_event_types": list(settings.allowed_event_types),
    }


def _scratch_connection(tmp_dir: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that spills to tmp_dir, so memory stays bounded on large files."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("set TimeZone = 'UTC'")
    con.execute("set memory_limit = '1GB'")
    con.execute("set temp_directory = $dir", {"dir": str(tmp_dir)})
    return con


def _stage_lines(
    con: duckdb.DuckDBPyConnection, path: Path, queries: list[str], params: dict[str, Any], table: str
) -> int:
    """Run a file's raw lines through the staging queries (each reads the previous as its input view)
    and append every output row to `table`; returns rows read."""
    if path.suffix not in (".jsonl", ".json", ".ndjson"):
        raise IngestError(f"{path}: unsupported file type {path.suffix!r} (expected .jsonl)")
    rows = 0
    for batch in iter_raw_lines(path):
        rows += batch.num_rows
        con.register("raw_lines", batch)
        rel = None
        for name, view in zip(queries, ["event_fields", None], strict=False):
            rel = relation(con, name, {**params, "source_file": path.name})
            if view:
                rel.create_view(view, replace=True)
        rel.insert_into(table)
        con.unregister("raw_lines")
    return rows


def _write_atomic(rel: duckdb.DuckDBPyRelation, target: Path) -> None:
    """Write a relation to Parquet under a temporary name, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    rel.write_parquet(str(tmp), compression="zstd")
    tmp.replace(target)


def _top_reasons(reasons: dict[str, int]) -> str:
    top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REASONS]
    return ", ".join(f"{reason} ({n})" for reason, n in top)


STAGED_EVENTS_DDL = """create table staged (
    line_no bigint, raw_text varchar, reason varchar, event_id varchar, user_id varchar, item_id varchar,
    event_type varchar, value double, event_ts timestamptz, source_file varchar)"""
STAGED_ITEMS_DDL = """create table staged (
    line_no bigint, raw_text varchar, reason varchar, item_id varchar, title varchar, description varchar,
    brand varchar, genres varchar[], categories varchar[], tags varchar[], updated_at timestamptz,
    source_file varchar)"""


def _file_counts(con: duckdb.DuckDBPyConnection, files: list[Path], rows_read: dict[str, int],
                 checksums: dict[str, str]) -> list[FileCounts]:
    """Per-file counts from the `staged` and `kept` tables; fails if they do not reconcile."""
    result = []
    for path in files:
        name = path.name
        (quarantined, valid) = con.execute(
            "select count(*) filter (where reason is not null), count(*) filter (where reason is null)"
            " from staged where source_file = $f",
            {"f": name},
        ).fetchall()[0]
        (kept,) = con.execute("select count(*) from kept where source_file = $f", {"f": name}).fetchall()[0]
        reasons = dict(con.execute(
            "select reason, count(*) from staged where source_file = $f and reason is not null group by reason",
            {"f": name},
        ).fetchall())
        counts = FileCounts(name, checksums[name], rows_read[name], kept, quarantined, valid - kept, reasons)
        if not counts.reconciles():
            raise IngestError(f"{path}: counts do not reconcile: {counts}")
        result.append(counts)
    return result


def _ingest_date(settings: Settings, kind: str, day: dt.date, files: list[Path],
                 checksums: dict[str, str], ingested_at: dt.datetime) -> list[FileCounts]:
    """Validate, deduplicate and publish one date of one kind ('events' or 'items')."""
    part = f"dt={day.isoformat()}"
    tmp_dir = settings.lake_dir / "_tmp" / uuid.uuid4().hex
    con = _scratch_connection(tmp_dir)
    try:
        if kind == "events":
            con.execute(STAGED_EVENTS_DDL)
            queries = ["staging/stg_event_fields_jsonl", "staging/stg_events"]
            params = _event_params(settings, day)
        else:
            con.execute(STAGED_ITEMS_DDL)
            queries = ["staging/stg_items_jsonl"]
            params = {"max_raw_chars": settings.max_raw_chars, "max_field_chars": settings.max_field_chars}
        rows_read = {p.name: _stage_lines(con, p, queries, params, "staged") for p in files}
        dedup_query = "staging/stg_events_dedup" if kind == "events" else "staging/stg_items_dedup"
        relation(con, dedup_query).create("kept")
        counts = _file_counts(con, files, rows_read, checksums)
        quarantined = sum(c.quarantined for c in counts)
        total = sum(c.rows_read for c in counts)
        bind = {"dt": day, "kind": kind, "ingested_at": ingested_at}
        _write_atomic(relation(con, "staging/stg_quarantine", bind), settings.lake_dir / "quarantine" / part /
                      f"{kind}.parquet")
        if kind == "events" and total and quarantined / total > settings.quarantine_threshold:
            worst = max(counts, key=lambda c: c.quarantined / max(c.rows_read, 1))
            raise IngestQualityError(
                f"{day}: {quarantined} of {total} event rows quarantined ({quarantined / total:.1%}), above the "
                f"threshold {settings.quarantine_threshold:.1%}; worst file {worst.source_file}: "
                f"{_top_reasons(worst.reasons)}. Nothing for {day} is published; see lake/quarantine/{part}/"
            )
        target = "interactions" if kind == "events" else "items"
        out_query = "staging/stg_interactions_out" if kind == "events" else "staging/stg_items_out"
        _write_atomic(relation(con, out_query, bind), settings.lake_dir / target / part / "part-0.parquet")
        return counts
    finally:
        con.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _record(con: duckdb.DuckDBPyConnection, day: dt.date, kind: str, counts: list[FileCounts], status: str,
            at: dt.datetime) -> None:
    for c in counts:
        con.execute(
            "insert into ingest_ledger values ($dt, $kind, $file, $sum, $read, $acc, $q, $dup, $status, $why, $at)",
            {"dt": day, "kind": kind, "file": c.source_file, "sum": c.checksum, "read": c.rows_read,
             "acc": c.accepted, "q": c.quarantined, "dup": c.duplicates, "status": status,
             "why": _top_reasons(c.reasons) or None, "at": at},
        )


def _previous_counts(con: duckdb.DuckDBPyConnection, day: dt.date, kind: str) -> list[FileCounts]:
    rows = con.execute(
        """select source_file, checksum, rows_read, accepted, quarantined, duplicates from ingest_ledger
           where dt = $dt and kind = $kind and status in ('ok', 'noop')
           qualify ingested_at = max(ingested_at) over ()""",
        {"dt": day, "kind": kind},
    ).fetchall()
    return [FileCounts(*row) for row in rows]


def ingest(settings: Settings, data_date: dt.date) -> dict[str, Any]:
    """Ingest night `data_date`: every date <= data_date whose landing files are new or changed.

    Returns counts for the data date and the list of dates (re)ingested. Raises IngestQualityError when a
    date's quarantined fraction is above the threshold, IngestError when the data date has no event files.
    """
    ingested_at = dt.datetime.now(dt.UTC)
    summary: dict[str, Any] = {"data_date": data_date.isoformat(), "ingested_dates": [], "noop_dates": []}
    event_files = landing_files(settings.landing_dir / "events")
    if data_date not in event_files:
        raise IngestError(f"no event files for data date {data_date} in {settings.landing_dir / 'events'}")
    item_files = landing_files(settings.landing_dir / "items")
    with warehouse.connect(settings.warehouse_path) as wh:
        for kind, by_date in (("items", item_files), ("events", event_files)):
            target = "interactions" if kind == "events" else "items"
            for day in sorted(d for d in by_date if d <= data_date):
                files = by_date[day]
                checksums = {p.name: file_sha256(p) for p in files}
                partition = settings.lake_dir / target / f"dt={day.isoformat()}" / "part-0.parquet"
                if warehouse.last_ingested(wh, day, kind) == checksums and partition.is_file():
                    counts = _previous_counts(wh, day, kind)
                    _record(wh, day, kind, counts, "noop", ingested_at)
                    summary["noop_dates"].append(f"{kind}:{day}")
                else:
                    try:
                        counts = _ingest_date(settings, kind, day, files, checksums, ingested_at)
                    except IngestQualityError:
                        failed = [FileCounts(p.name, checksums[p.name]) for p in files]
                        _record(wh, day, kind, failed, "failed", ingested_at)
                        raise
                    _record(wh, day, kind, counts, "ok", ingested_at)
                    summary["ingested_dates"].append(f"{kind}:{day}")
                if day == data_date:
                    summary[kind] = {
                        "files": len(counts),
                        "rows_read": sum(c.rows_read for c in counts),
                        "accepted": sum(c.accepted for c in counts),
                        "quarantined": sum(c.quarantined for c in counts),
                        "duplicates": sum(c.duplicates for c in counts),
                        "reasons": _merge_reasons(counts),
                    }
    log.info("ingest %s: %s", data_date, summary.get("events"))
    return summary


def _merge_reasons(counts: list[FileCounts]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for c in counts:
        for reason, n in c.reasons.items():
            merged[reason] = merged.get(reason, 0) + n
    return merged
