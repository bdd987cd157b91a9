"""Validation: every row of a batch's files through the SQL of sql/ingest/ into the DuckDB table `staged`,
then per-file counts that must reconcile, and the dates over the quarantine threshold.

Every format is reduced to the same text fields and validated by one query per kind (`staged_events.sql`,
`staged_items.sql`), so the rules live in one place; settings reach the SQL as bound parameters only.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import lake
from pipeline.catalog import Catalog
from pipeline.config import IngestSettings
from pipeline.erasure.identity import Screen
from pipeline.ingest.discovery import open_landing
from pipeline.ingest.errors import IngestError, IngestFormatError
from pipeline.ingest.kinds import EVENTS, Kind, SourceFile
from pipeline.ingest.ledger import FileCounts, by_day, top_reasons
from pipeline.ingest.reading import RAW_LINES_SCHEMA, csv_header, parquet_batches, source_schema, text_batches
from pipeline.sql import relation

TS_MIN = dt.datetime(1995, 1, 1, tzinfo=dt.UTC)


def scratch_connection(tmp_dir: Path, cfg: IngestSettings) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that spills to tmp_dir (DuckDB creates it when needed), so memory stays bounded."""
    tmp_dir.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("set TimeZone = 'UTC'")
    con.execute("set enable_progress_bar = false")
    con.execute("set memory_limit = $limit", {"limit": f"{cfg.ingest_memory_mb}MB"})
    con.execute("set temp_directory = $dir", {"dir": str(tmp_dir)})
    if cfg.ingest_threads:
        con.execute("set threads = $n", {"n": cfg.ingest_threads})
    return con


def _csv_patterns(delimiter: str) -> tuple[str, str]:
    """RE2 patterns: a whole well-quoted record, and one field followed by its delimiter."""
    delim = f"\\x{{{ord(delimiter):x}}}"
    one = f'"(?:[^"]|"")*"|[^{delim}"]*'
    return f"(?:{one})(?:{delim}(?:{one}))*", f"({one}){delim}"


def sql_params(cfg: IngestSettings, kind: Kind, forgotten: Screen | None = None) -> dict[str, Any]:
    """The parameters of the validation queries (each query binds the ones it uses); `forgotten` holds the
    tombstones of erased users (pipeline.erasure), whose rows staged_events marks as forgotten."""
    screen = forgotten or Screen("", frozenset())
    mapping = kind.columns(cfg)
    mapped = [f for f in kind.fields if f in mapping]
    record_pattern, field_pattern = _csv_patterns(cfg.csv_delimiter)
    return {
        "paths": ['$."' + mapping[f].replace('"', '\\"') + '"' for f in mapped],
        **{f"{f}_idx": (mapped.index(f) + 1 if f in mapping else None) for f in kind.fields},
        "delimiter": cfg.csv_delimiter,
        "record_pattern": record_pattern,
        "field_pattern": field_pattern,
        "max_line_bytes": cfg.max_line_bytes,
        "max_raw_chars": cfg.max_raw_chars,
        "max_field_chars": cfg.max_field_chars,
        "ts_format": cfg.timestamp_format,
        "ts_min": TS_MIN,
        "days_before": cfg.timestamp_days_before,
        "days_after": cfg.timestamp_days_after,
        "allowed_event_types": list(cfg.allowed_event_types),
        "default_event_type": cfg.default_event_type,
        "screen_users": bool(screen),
        "forgotten_users": sorted(screen.hashes),
        "erasure_key": screen.key,
    }


def _file_layout(src: SourceFile, kind: Kind, cfg: IngestSettings) -> dict[str, Any]:
    """One row of `ingest_files`: where the mapped fields are in a CSV header; required ones absent."""
    mapping = kind.columns(cfg)
    layout: dict[str, Any] = {"file_no": src.file_no, "source_file": src.path.name, "dt": src.day,
                              "missing_columns": None, "n_columns": None,
                              **{f"{f}_pos": None for f in kind.fields}}
    names: list[str] | None = None
    if src.fmt == "csv":
        names = csv_header(src.path, cfg.csv_delimiter, cfg.max_line_bytes)
        if names is not None:
            layout["n_columns"] = len(names)
            first = {name: i + 1 for i, name in reversed(list(enumerate(names)))}
            layout.update({f"{f}_pos": first.get(mapping[f]) for f in kind.fields if f in mapping})
    elif src.fmt == "parquet":
        try:
            with open_landing(src.path) as fh:
                names = pq.ParquetFile(fh).schema_arrow.names
        except (OSError, pa.ArrowException) as err:
            raise IngestFormatError(f"{src.path}: not a readable Parquet file: {err}") from err
    if names is not None:
        missing = [mapping[f] for f in kind.required if mapping[f] not in names]
        layout["missing_columns"] = ", ".join(missing) or None
    return layout


def files_table(files: list[SourceFile], kind: Kind, cfg: IngestSettings) -> pa.Table:
    """The table `ingest_files`: one row per landing file of the batch (see _file_layout)."""
    schema = pa.schema([("file_no", pa.int32()), ("source_file", pa.string()), ("dt", pa.date32()),
                        ("missing_columns", pa.string()), ("n_columns", pa.int32()),
                        *[(f"{f}_pos", pa.int32()) for f in kind.fields]])
    return pa.Table.from_pylist([_file_layout(f, kind, cfg) for f in files], schema=schema)


def stage(con: duckdb.DuckDBPyConnection, kind: Kind, files: list[SourceFile], cfg: IngestSettings,
          hashers: dict[int, Any], forgotten: Screen | None = None) -> dict[int, int]:
    """Validate every row of the batch's files into the table `staged` (rows of erased users marked forgotten,
    nothing of them kept); returns rows read per file_no."""
    params = sql_params(cfg, kind, forgotten)
    rows_read = dict.fromkeys((f.file_no for f in files), 0)
    staged_exists = False
    for fmt in ("jsonl", "csv", "parquet"):
        group = [f for f in files if f.fmt == fmt]
        if not group:
            continue
        source = _register_source(con, kind, fmt, group, cfg, rows_read, hashers)
        for name, view in _field_steps(kind, fmt):
            relation(con, name, params).create_view(view, replace=True)
        validated = relation(con, kind.staged_query, params)
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
            con.unregister(source)
    return rows_read


def _register_source(con: duckdb.DuckDBPyConnection, kind: Kind, fmt: str, group: list[SourceFile],
                     cfg: IngestSettings, rows_read: dict[int, int], hashers: dict[int, Any]) -> str:
    """Register the files of one format as a streamed Arrow view; returns its name."""
    if fmt == "parquet":
        batches = parquet_batches(group, kind, kind.columns(cfg), cfg.timestamp_format, rows_read)
        con.register("source_rows", pa.RecordBatchReader.from_batches(source_schema(kind), batches))
        return "source_rows"
    lines = text_batches(group, cfg.max_line_bytes, rows_read, hashers)
    con.register("raw_lines", pa.RecordBatchReader.from_batches(RAW_LINES_SCHEMA, lines))
    return "raw_lines"


def _field_steps(kind: Kind, fmt: str) -> list[tuple[str, str]]:
    """(query, view) in order: from the registered source to the kind's fields view."""
    decoded = [] if fmt == "parquet" else [("ingest/ingest_lines", "ingest_lines")]
    parsed = {"csv": [("ingest/csv_records", "csv_records")], "jsonl": [("ingest/json_lines", "json_lines")]}
    return [*decoded, *parsed.get(fmt, []), (kind.fields_query(fmt), kind.fields_view)]


def known_items(con: duckdb.DuckDBPyConnection, catalog: Catalog, kind: Kind) -> None:
    """Table `known_items` (item_id, first_dt) from the lake catalog; empty for items or without a catalog."""
    if kind is EVENTS and lake.register(con, catalog, "items", "lake_items"):
        relation(con, "ingest/known_items").create("known_items")
    else:
        con.execute("create table known_items (item_id varchar, first_dt date)")


def file_counts(con: duckdb.DuckDBPyConnection, kind: Kind, files: list[SourceFile],
                rows_read: dict[int, int], checksums: dict[Path, str]) -> list[FileCounts]:
    """Per-file counts of the batch; fails loudly if they do not reconcile with the rows read."""
    reasons: dict[int, dict[str, int]] = {}
    for file_no, reason, n in relation(con, "ingest/quarantine_reasons").fetchall():
        reasons.setdefault(file_no, {})[reason] = n
    staged = {row[0]: row[1:] for row in relation(con, "ingest/file_counts",
                                                  {"count_unknown_items": kind is EVENTS}).fetchall()}
    result = []
    for src in files:
        rows, accepted, quarantined, duplicates, forgotten, unknown = staged[src.file_no]
        counts = FileCounts(src.path.name, checksums[src.path], rows_read[src.file_no], accepted, quarantined,
                            duplicates, unknown, forgotten, reasons.get(src.file_no, {}), src.day)
        if rows != counts.rows_read or not counts.reconciles():
            raise IngestError(f"{src.path}: counts do not reconcile ({rows} rows staged): {counts}")
        result.append(counts)
    return result


def over_threshold(kind: Kind, counts: list[FileCounts], cfg: IngestSettings,
                   catalog: Catalog) -> dict[dt.date, str]:
    """Dates whose quarantined fraction of rows is above the kind's threshold (`quarantine_threshold` for
    events, `item_quarantine_threshold` for catalog drops), with a message naming the worst file, its top
    reasons and the date's quarantine file."""
    threshold = cfg.quarantine_threshold if kind is EVENTS else cfg.item_quarantine_threshold
    failed: dict[dt.date, str] = {}
    for day, of_day in by_day(counts).items():
        total, bad = sum(c.rows_read for c in of_day), sum(c.quarantined for c in of_day)
        if total and bad / total > threshold:
            worst = max(of_day, key=lambda c: (c.quarantined / max(c.rows_read, 1), c.quarantined))
            failed[day] = (
                f"{day}: {bad} of {total} {kind.row} rows quarantined ({bad / total:.1%}), above the threshold "
                f"{threshold:.1%}; worst file {worst.source_file}: {top_reasons(worst.reasons)}. "
                f"Nothing for {day} is published; see the quarantine table {catalog.lake_table('quarantine')} "
                f"(dt = {day}, kind = {kind.name})"
            )
    return failed
