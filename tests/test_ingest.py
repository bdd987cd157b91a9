"""Ingest: formats, validation reasons, reconciliation, thresholds, idempotent partitions, late files."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import lake_query

from pipeline import lake as lake_tables
from pipeline.catalog import Catalog
from pipeline.config import Settings, load_settings
from pipeline.ingest import (
    IngestError,
    IngestFormatError,
    IngestQualityError,
    ingest,
)
from pipeline.ingest.reading import iter_raw_lines
from pipeline.sql import SQL_DIR

DAY = dt.date(2026, 11, 21)


def make_settings(root: Path, **overrides: Any) -> Settings:
    return load_settings(env={}, home=root, **overrides)


def event(user: str = "u1", item: str = "i1", kind: str = "view", ts: str = "2026-11-21T10:00:00Z",
          value: Any = None) -> str:
    return json.dumps({"user_id": user, "item_id": item, "event_type": kind, "value": value, "timestamp": ts})


def land(settings: Settings, name: str, content: bytes | str, kind: str = "events") -> Path:
    path = settings.paths.landing_dir / kind / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def lake(settings: Settings, query: str, **params: Any) -> list[tuple]:
    """Run a query over the lake: {interactions}, {quarantine} and {items} stand for snapshots of its tables."""
    return lake_query(settings, query, params)


def ledger(settings: Settings) -> list[dict[str, Any]]:
    with duckdb.connect(str(settings.paths.warehouse_path), read_only=True) as con:
        cur = con.execute("select * from ingest_ledger order by ingested_at, dt, kind, source_file")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


# ---------------------------------------------------------------------------------------------- reading lines


def reference_lines(data: bytes) -> list[tuple[int, bytes]]:
    """(line_no, content) of non-blank lines, splitting at \\n only (the documented rule: a \\r before it belongs
    to the terminator, a lone \\r does not end a line; a line holding only \\r is blank)."""
    return [(i + 1, line.rstrip(b"\r")) for i, line in enumerate(data.split(b"\n")) if line not in (b"", b"\r")]


def reference_csv_records(data: bytes) -> list[tuple[int, bytes]]:
    """(first line_no, content) of non-blank RFC 4180 records: a \\n ends a record only outside double quotes."""
    records, start, quotes, line, first = [], 0, 0, 1, 1
    for i, byte in enumerate(data):
        quotes += byte == ord('"')
        if byte == ord("\n"):
            if quotes % 2 == 0:
                records.append((first, data[start:i]))
                start, quotes, first = i + 1, 0, line + 1
            line += 1
    records.append((first, data[start:]))
    return [(n, r.rstrip(b"\r\n")) for n, r in records if r not in (b"", b"\r")]


@pytest.mark.parametrize("block_bytes", [1, 2, 3, 7, 64, 1 << 20])
def test_raw_lines_follow_every_line_ending_across_block_boundaries(tmp_path: Path, block_bytes: int) -> None:
    data = b"a\r\nbb\n\nccc\rd\r\r\n\n\ree\r\nlast"
    path = tmp_path / "x.jsonl"
    path.write_bytes(data)

    rows = [(n, raw.rstrip(b"\r\n")) for batch in iter_raw_lines(path, block_bytes=block_bytes)
            for n, raw in zip(batch.column("line_no").to_pylist(), batch.column("raw").to_pylist(), strict=True)]

    assert rows == reference_lines(data)


@pytest.mark.parametrize("block_bytes", [1, 2, 3, 5, 64, 1 << 20])
def test_csv_records_end_only_at_a_line_feed_outside_quotes_across_block_boundaries(tmp_path: Path,
                                                                                    block_bytes: int) -> None:
    data = b'a,"x\r\ny"\r\nb,"""q""\n\nz",c\n\nc,d\re\n"open\n\n'
    path = tmp_path / "x.csv"
    path.write_bytes(data)

    rows = [(n, raw.rstrip(b"\r\n")) for batch in iter_raw_lines(path, block_bytes=block_bytes, quoted=True)
            for n, raw in zip(batch.column("line_no").to_pylist(), batch.column("raw").to_pylist(), strict=True)]

    assert rows == reference_csv_records(data) == [
        (1, b'a,"x\r\ny"'), (3, b'b,"""q""\n\nz",c'), (7, b"c,d\re"), (8, b'"open')]


def test_an_over_long_line_is_cut_and_later_lines_keep_their_numbers(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"short\n" + b"x" * 5000 + b"\r\nafter\n")

    rows = [(n, len(raw)) for batch in iter_raw_lines(path, block_bytes=1024, max_line_bytes=1500)
            for n, raw in zip(batch.column("line_no").to_pylist(), batch.column("raw").to_pylist(), strict=True)]

    assert rows == [(1, 6), (2, 1501), (3, 6)]


# ---------------------------------------------------------------------------------------------- validation


def test_every_bad_jsonl_row_is_quarantined_with_its_reason_and_line(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, quarantine_threshold=1.0, max_field_chars=20)
    lines = [
        event(),                                               # 1 ok
        event(user=""),                                        # 2 missing_user_id
        json.dumps({"user_id": "u1", "timestamp": "2026-11-21T10:00:00Z", "event_type": "view"}),  # 3
        "{broken",                                             # 4 broken_json
        "",                                                    # 5 blank: not a row
        event(ts="yesterday"),                                 # 6 unparsable_timestamp
        event(ts="1994-12-31T23:59:59Z"),                      # 7 timestamp_out_of_window (too early)
        event(ts="2026-11-23T00:00:00Z"),                      # 8 timestamp_out_of_window (after D + 1 day)
        event(ts="2026-11-22T23:59:59Z"),                      # 9 ok: late events up to D + 1 day
        event(kind="hover"),                                   # 10 unknown_event_type
        event(value="abc"),                                    # 11 non_numeric_value
        event(user="u" * 21),                                  # 12 field_too_long
        "[1, 2]",                                              # 13 not_a_json_object
        event(),                                               # 14 duplicate of line 1
        event(user="u2", value=4.5, kind=" Rating "),          # 15 ok (type normalised)
    ]
    raw_nul = event(user="a_b").replace("a_b", "a\x00b")  # a NUL byte, not the JSON escape \u0000
    data = "\n".join(lines).encode() + b"\n\xff\xfe\n" + raw_nul.encode() + b"\n"  # 16, 17
    land(settings, f"{DAY}.jsonl", data)

    summary = ingest(settings, DAY)["events"]

    assert summary | {"reasons": None} == {"files": 1, "status": "ok", "rows_read": 16, "accepted": 3,
                                           "quarantined": 12, "duplicates": 1, "forgotten": 0, "unknown_items": 3,
                                           "reasons": None}
    assert lake(settings, "select line_no, reason from {quarantine} order by line_no") == [
        (2, "missing_user_id"), (3, "missing_item_id"), (4, "broken_json"), (6, "unparsable_timestamp"),
        (7, "timestamp_out_of_window"), (8, "timestamp_out_of_window"), (10, "unknown_event_type"),
        (11, "non_numeric_value"), (12, "field_too_long"), (13, "not_a_json_object"), (16, "invalid_utf8"),
        (17, "nul_byte")]
    assert lake(settings, "select line_no, event_type, value from {interactions} order by line_no") == [
        (1, "view", None), (9, "view", None), (15, "rating", 4.5)]
    (raw,) = lake(settings, "select raw from {quarantine} where line_no = 4")[0]
    assert raw == "{broken"


def test_csv_events_use_the_column_mapping_quoting_and_epoch_milliseconds(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, quarantine_threshold=1.0, timestamp_format="epoch_ms",
                             event_columns={"user_id": "uid", "item_id": "sku", "timestamp": "ts",
                                            "value": "qty"}, default_event_type="purchase")
    land(settings, f"{DAY}.csv", "\ufeffsku,uid,ts,qty\n"
         'i1,u1,1763719200000,2\n'                 # 2 ok
         '"i,2","u ""2""",1763719200000,\n'        # 3 ok: quoted delimiter and quote
         'i3,u3,1763719200000\n'                   # 4 wrong_column_count
         'i4,"u4"x,1763719200000,1\n'              # 5 broken_quoting (text after the closing quote)
         'i5,u5,1763719200000,1,extra\n'           # 6 wrong_column_count
         'i6,u6,1763719200,1\r\n'                  # 7 timestamp_out_of_window (seconds read as ms: 1970)
         '\n'
         'i8,u8,1763719200000,x\n')                # 9 non_numeric_value

    summary = ingest(settings, DAY)["events"]

    assert (summary["rows_read"], summary["accepted"], summary["quarantined"]) == (7, 2, 5)
    assert lake(settings, "select line_no, reason from {quarantine} order by line_no") == [
        (4, "wrong_column_count"), (5, "broken_quoting"), (6, "wrong_column_count"),
        (7, "timestamp_out_of_window"), (9, "non_numeric_value")]
    assert lake(settings, "select user_id, item_id, event_type, value, event_ts from {interactions} "
                          "order by line_no") == [
        ("u1", "i1", "purchase", 2.0, dt.datetime(2025, 11, 21, 10, tzinfo=dt.UTC)),
        ('u "2"', "i,2", "purchase", None, dt.datetime(2025, 11, 21, 10, tzinfo=dt.UTC)),
    ]


def test_a_csv_header_without_a_mapped_column_quarantines_its_rows_and_fails_the_night(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    land(settings, f"{DAY}.csv", "user_id;item_id;timestamp\nu1;i1;2026-11-21T10:00:00Z\n")

    with pytest.raises(IngestQualityError, match=rf"{DAY}\.csv: missing_columns \(1\)"):
        ingest(settings, DAY)

    assert [(r["status"], r["rows_read"], r["quarantined"]) for r in ledger(settings)] == [("failed", 1, 1)]


def test_parquet_events_read_native_types_and_missing_optional_columns(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, default_event_type="view", quarantine_threshold=0.5)
    path = settings.paths.landing_dir / "events" / f"{DAY}-shop.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({
        "user_id": pa.array([1, 2, None], pa.int64()),
        "item_id": ["a", "b", "c"],
        "timestamp": pa.array([dt.datetime(2026, 11, 21, 9), dt.datetime(2026, 11, 21, 10),
                               dt.datetime(2026, 11, 21, 11)], pa.timestamp("ms")),
    }), path)

    summary = ingest(settings, DAY)["events"]

    assert (summary["rows_read"], summary["accepted"], summary["reasons"]) == (3, 2, {"missing_user_id": 1})
    assert lake(settings, "select user_id, event_type, event_ts, line_no from {interactions} order by line_no") == [
        ("1", "view", dt.datetime(2026, 11, 21, 9, tzinfo=dt.UTC), 1),
        ("2", "view", dt.datetime(2026, 11, 21, 10, tzinfo=dt.UTC), 2)]


def test_the_same_event_has_the_same_id_in_every_format(tmp_path: Path) -> None:
    ids = []
    rows = [("u1", "i1", "view", None, "2026-11-21T10:00:00Z"), ("u2", "i2", "rating", 4.0, "2026-11-21T11:00:00Z")]
    for fmt in ("jsonl", "csv", "parquet"):
        settings = make_settings(tmp_path / fmt)
        path = settings.paths.landing_dir / "events" / f"{DAY}.{fmt}"
        path.parent.mkdir(parents=True)
        table = pa.table({name: [r[i] for r in rows] for i, name in
                          enumerate(["user_id", "item_id", "event_type", "value", "timestamp"])})
        if fmt == "jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
        elif fmt == "csv":
            path.write_text("user_id,item_id,event_type,value,timestamp\n"
                            + "".join(",".join("" if v is None else str(v) for v in r) + "\n" for r in rows))
        else:
            pq.write_table(table, path)
        ingest(settings, DAY)
        ids.append(lake(settings, "select event_id from {interactions} order by user_id"))
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) == 2
    assert all(re.fullmatch(r"[0-9A-F]{32}", i) for (i,) in ids[0])


def test_files_of_one_date_in_different_formats_are_deduplicated_together(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, events_format="csv")
    land(settings, f"{DAY}-a.jsonl", "\ufeff" + event() + "\n" + event(user="u2") + "\n")
    land(settings, f"{DAY}-b.log", "user_id,item_id,event_type,value,timestamp\n"
                                   "u1,i1,view,,2026-11-21T10:00:00Z\nu3,i1,view,,2026-11-21T10:00:00Z\n")

    summary = ingest(settings, DAY)["events"]

    assert (summary["rows_read"], summary["accepted"], summary["duplicates"]) == (4, 3, 1)
    assert lake(settings, "select user_id, source_file, line_no from {interactions} order by all") == [
        ("u1", f"{DAY}-a.jsonl", 1), ("u2", f"{DAY}-a.jsonl", 2), ("u3", f"{DAY}-b.log", 3)]


def test_a_parquet_column_that_cannot_be_text_is_a_format_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    path = settings.paths.landing_dir / "events" / f"{DAY}.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"user_id": [{"a": 1}], "item_id": ["i"], "timestamp": ["2026-11-21T10:00:00Z"],
                             "event_type": ["view"]}), path)

    with pytest.raises(IngestFormatError, match=rf"{DAY}\.parquet: could not be read"):
        ingest(settings, DAY)


def test_unreadable_parquet_raises_a_format_error_and_is_recorded_failed(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    land(settings, f"{DAY}.parquet", b"not parquet at all")

    with pytest.raises(IngestFormatError, match="not a readable Parquet file"):
        ingest(settings, DAY)

    assert [r["status"] for r in ledger(settings)] == ["failed"]


def test_a_night_without_event_files_is_an_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    land(settings, "2026-11-20.jsonl", event(ts="2026-11-20T10:00:00Z"))

    with pytest.raises(IngestError, match="no event files for data date 2026-11-21"):
        ingest(settings, DAY)


# ---------------------------------------------------------------------------------------------- catalog


def test_catalog_files_in_every_format_become_item_versions(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, item_quarantine_threshold=0.5)  # one missing_text row of 5
    land(settings, f"{DAY}.jsonl", event(item="a") + "\n" + event(item="zzz") + "\n")
    land(settings, "2026-11-20-a.jsonl", "\n".join([
        json.dumps({"item_id": "a", "title": "Old A", "genres": ["Drama"]}),
        json.dumps({"item_id": "a", "title": "A", "genres": ["Drama", " Comedy "], "tags": "x|y",
                    "brand": "B", "categories": []}),
        json.dumps({"item_id": "n", "title": "", "description": ""}),
    ]), kind="items")
    land(settings, "2026-11-20-b.csv", 'item_id,title,genres\nb,"B, the film",Action|Drama\n', kind="items")
    pq.write_table(pa.table({"item_id": ["c"], "title": ["C"], "tags": [["t1", "t2"]]}),
                   settings.paths.landing_dir / "items" / "2026-11-20-c.parquet")

    summary = ingest(settings, DAY)

    assert lake(settings, "select item_id, title, genres, tags, brand from {items} order by item_id") == [
        ("a", "A", ["Drama", "Comedy"], ["x", "y"], "B"), ("b", "B, the film", ["Action", "Drama"], [], ""),
        ("c", "C", [], ["t1", "t2"], "")]
    assert lake(settings, "select kind, line_no, reason from {quarantine}") == [("items", 3, "missing_text")]
    assert summary["events"]["unknown_items"] == 1  # zzz: logs outrun catalogs; the event is kept
    assert [(r["kind"], r["duplicates"], r["unknown_items"]) for r in ledger(settings)] == [
        ("items", 1, 0), ("items", 0, 0), ("items", 0, 0), ("events", 0, 1)]


# ---------------------------------------------------------------------------------------------- nights


def test_too_many_bad_rows_fail_the_night_naming_the_file_and_reasons(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, quarantine_threshold=0.2)
    land(settings, "2026-11-20.jsonl", event(ts="2026-11-20T10:00:00Z"))
    land(settings, f"{DAY}-a.jsonl", "\n".join([event()] * 4))
    land(settings, f"{DAY}-b.jsonl", "\n".join(["{bad", "{bad", event(kind="hover"), event(user="u9")]))

    with pytest.raises(IngestQualityError, match=rf"{DAY}: 3 of 8 event rows quarantined .*worst file "
                                                 rf"{DAY}-b\.jsonl: broken_json \(2\), unknown_event_type \(1\)"):
        ingest(settings, DAY)

    assert lake_tables.dates(Catalog.of(settings), "interactions") == {dt.date(2026, 11, 20)}
    assert lake(settings, "select count(*) from {quarantine}") == [(3,)]
    rows = {(r["dt"], r["source_file"]): r for r in ledger(settings)}
    assert rows[(DAY, f"{DAY}-b.jsonl")]["status"] == "failed"
    assert rows[(DAY, f"{DAY}-a.jsonl")]["duplicates"] == 3
    assert all(r["rows_read"] == r["accepted"] + r["quarantined"] + r["duplicates"] for r in rows.values())


def test_reingesting_identical_files_is_a_noop_and_changes_replace_exactly_that_date(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    land(settings, "2026-11-20.jsonl", event(ts="2026-11-20T10:00:00Z"))
    land(settings, f"{DAY}.jsonl", event() + "\n" + event(user="u2"))
    first = ingest(settings, DAY)
    ids = lake(settings, "select dt, event_id from {interactions} order by all")

    again = ingest(settings, DAY)

    assert again["noop_dates"] == [f"events:{DAY}"] and again["ingested_dates"] == []
    assert again["events"] | {"status": "ok", "reasons": {}} == first["events"] | {"reasons": {}}
    assert lake(settings, "select dt, event_id from {interactions} order by all") == ids
    assert [r["status"] for r in ledger(settings) if r["dt"] == DAY] == ["ok", "noop"]

    land(settings, f"{DAY}.jsonl", event(user="u3"))
    changed = ingest(settings, DAY)

    assert changed["ingested_dates"] == [f"events:{DAY}"]
    assert lake(settings, "select dt, user_id from {interactions} order by all") == [
        (dt.date(2026, 11, 20), "u1"), (DAY, "u3")]


def test_a_late_file_lands_in_its_own_date(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    land(settings, "2026-11-20.jsonl", event(ts="2026-11-20T10:00:00Z"))
    land(settings, f"{DAY}.jsonl", event())
    ingest(settings, DAY)
    land(settings, "2026-11-20-late.jsonl", event(user="late", ts="2026-11-20T23:00:00Z"))
    land(settings, "2026-11-22.jsonl", event(ts="2026-11-22T10:00:00Z"))

    summary = ingest(settings, dt.date(2026, 11, 22))

    assert summary["ingested_dates"] == ["events:2026-11-20", "events:2026-11-22"]
    assert lake(settings, "select dt, user_id, source_file from {interactions} where dt = '2026-11-20' "
                          "order by all") == [(dt.date(2026, 11, 20), "late", "2026-11-20-late.jsonl"),
                                               (dt.date(2026, 11, 20), "u1", "2026-11-20.jsonl")]


def test_the_lake_holds_only_committed_files_of_the_dates_written(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, quarantine_threshold=0.5)
    land(settings, f"{DAY}.jsonl", event() + "\n{bad\n")
    ingest(settings, DAY)
    ingest(settings, DAY)  # a no-op: nothing new is committed
    land(settings, f"{DAY}.jsonl", event(user="u2") + "\n{bad\n")
    ingest(settings, DAY)  # replaces the date: one new version per table

    catalog = Catalog.of(settings)
    assert lake_tables.dates(catalog, "interactions") == {DAY}
    assert lake_tables.dates(catalog, "quarantine", where={"kind": "events"}) == {DAY}
    assert [op["operation"] for op in lake_tables.history(catalog, "interactions")] == ["WRITE", "WRITE"]
    assert lake(settings, "select user_id from {interactions}") == [("u2",)]
    removed = lake_tables.vacuum(catalog, "interactions", retention_hours=0)
    on_disk = {p for p in (settings.paths.lake_dir / "interactions").rglob("*.parquet") if "_delta_log" not in p.parts}
    live = {Path(uri.removeprefix("file://")) for uri in lake_tables.table(catalog, "interactions").file_uris()}
    assert removed == 1 and on_disk == live and len(live) == 1


@pytest.mark.parametrize("path", sorted((SQL_DIR / "ingest").glob("*.sql")), ids=lambda p: p.stem)
def test_every_ingest_query_has_a_header(path: Path) -> None:
    text = path.read_text()
    assert text.startswith(f"-- {path.stem}:"), path
    assert "-- grain:" in text and "parameters:" in text, path
    assert text.rstrip().endswith("select * from final"), path
