"""Ingest under hostile input and faults (issue 14, ingest side): one regression test per promise, each with real
DuckDB on small files. Formats (strict JSON, JSONL lines, RFC 4180 CSV, BOMs), timestamps, ids, the event key, the
item quarantine threshold, landing names, symlinks, .gz, vanished files, volume and freshness, stale temporary
files, case-insensitive event types and glob characters in the home."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import lake as lake_tables
from pipeline.catalog import Catalog
from pipeline.config import ConfigError, Settings, load_settings
from pipeline.ingest import IngestFormatError, IngestQualityError, IngestVolumeError, ingest, ingest_night
from pipeline.ingest.discovery import landing_files, open_landing

DAY = dt.date(2026, 11, 21)
TS = "2026-11-21T10:00:00Z"


def make_settings(root: Path, **overrides: Any) -> Settings:
    return load_settings(env={}, home=root, **overrides)


def event(user: Any = "u1", item: Any = "i1", kind: str = "view", ts: str = TS, value: Any = None) -> str:
    return json.dumps({"user_id": user, "item_id": item, "event_type": kind, "value": value, "timestamp": ts})


def land(settings: Settings, name: str, content: bytes | str, kind: str = "events") -> Path:
    path = settings.paths.landing_dir / kind / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def lake(settings: Settings, table: str, query: str) -> list[tuple]:
    """`query` over a snapshot of one lake table (`t`); no rows when the table was never written."""
    with duckdb.connect() as con:
        con.execute("set TimeZone = 'UTC'")
        if not lake_tables.register(con, Catalog.of(settings), table, "t"):
            return []
        return con.execute(query).fetchall()


def reasons(settings: Settings) -> list[tuple]:
    return lake(settings, "quarantine", "select kind, line_no, reason from t order by kind, source_file, line_no")


def ledger(settings: Settings, kind: str = "events") -> list[tuple]:
    with duckdb.connect(str(settings.paths.warehouse_path), read_only=True) as con:
        return con.execute("select dt, source_file, status, rows_read, accepted from ingest_ledger where kind = $k "
                           "order by ingested_at, dt, source_file", {"k": kind}).fetchall()


# ---------------------------------------------------------------------------------------------- item 2: formats


def test_jsonl_is_strict_json_a_trailing_comma_or_a_nan_literal_is_broken(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, quarantine_threshold=1.0)
    land(settings, f"{DAY}.jsonl", "\n".join([
        event(),                                                       # 1 ok
        event(user="u2")[:-1] + ",}",                                  # 2 trailing comma in the object
        event(user="u3").replace('"value": null', '"value": [1, 2,]'),  # 3 trailing comma in an array
        event(user="u4").replace('"value": null', '"value": NaN'),     # 4 NaN literal
        event(user="u5").replace('"value": null', '"value": Infinity'),  # 5 Infinity literal
        event(user="u6, }", item="NaN,]"),                            # 6 ok: only inside strings
    ]) + "\n")

    summary = ingest(settings, DAY)["events"]

    assert (summary["rows_read"], summary["accepted"]) == (6, 2)
    assert reasons(settings) == [("events", n, "broken_json") for n in (2, 3, 4, 5)]


def test_a_jsonl_row_ends_at_a_line_feed_only(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, quarantine_threshold=1.0)
    land(settings, f"{DAY}.jsonl", (event(user="a\u2028b") + "\n"        # 1 ok: U+2028 is text, not a break
                                    + event(user="c\u0085d") + "\r\n"    # 2 one row: U+0085 is a control char
                                    + event(user="e") + "\r" + event(user="f") + "\n"  # 3 one row: lone CR
                                    + event(user="g") + "\n").encode())  # 4 ok

    summary = ingest(settings, DAY)["events"]

    assert (summary["rows_read"], summary["accepted"]) == (4, 2)
    assert reasons(settings) == [("events", 2, "control_character_in_id"), ("events", 3, "broken_json")]
    assert lake(settings, "interactions", "select user_id, line_no from t order by line_no") == [
        ("a\u2028b", 1), ("g", 4)]


def test_a_csv_record_whose_quoted_field_spans_lines_is_one_row(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, quarantine_threshold=1.0)
    land(settings, f"{DAY}.jsonl", event(item="a") + "\n")
    land(settings, f"{DAY}.csv", 'item_id,title,description\r\n'
                                 'a,"Line one\r\nline two, with ""quotes""",plain\r\n'   # 2-3: one record
                                 'b,B,"spans\n\nthree lines"\n'                          # 4-6: one record
                                 'c,C,x\n', kind="items")                                # 7

    ingest(settings, DAY)

    assert lake(settings, "items", "select item_id, title, description from t order by item_id") == [
        ("a", 'Line one\r\nline two, with "quotes"', "plain"), ("b", "B", "spans\n\nthree lines"), ("c", "C", "x")]
    assert ledger(settings, "items")[0][3:] == (3, 3)


def test_an_unclosed_csv_quote_makes_the_rest_of_the_file_one_broken_record(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, quarantine_threshold=1.0)
    land(settings, f"{DAY}.csv", f'user_id,item_id,event_type,value,timestamp\nu1,i1,view,,{TS}\n'
                                 f'u2,"i2,view,,{TS}\nu3,i3,view,,{TS}\n')

    summary = ingest(settings, DAY)["events"]

    assert (summary["rows_read"], summary["accepted"], summary["reasons"]) == (2, 1, {"broken_quoting": 1})


def test_byte_order_marks_of_concatenated_files_are_not_data(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    land(settings, f"{DAY}.jsonl", "\ufeff" + event() + "\n\ufeff" + event(user="u2") + "\n")

    assert ingest(settings, DAY)["events"]["accepted"] == 2


# ---------------------------------------------------------------------------------------------- timestamps


def test_infinite_timestamps_are_quarantined_and_never_duplicates(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, quarantine_threshold=1.0)
    land(settings, f"{DAY}.jsonl", "\n".join([event(ts="infinity"), event(ts="Infinity"), event(ts="-infinity"),
                                              event()]))

    summary = ingest(settings, DAY)["events"]

    assert (summary["accepted"], summary["duplicates"], summary["reasons"]) == (1, 0, {"infinite_timestamp": 3})


def test_the_timestamp_window_around_the_data_date_is_configurable(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, quarantine_threshold=1.0, timestamp_days_before=2, timestamp_days_after=0)
    land(settings, f"{DAY}.jsonl", "\n".join([
        event(ts="2026-11-18T23:59:59Z"),   # 1 before D - 2 days
        event(ts="2026-11-19T00:00:00Z"),   # 2 ok: start of D - 2 days
        event(ts="2026-11-21T23:59:59Z"),   # 3 ok: end of D
        event(ts="2026-11-22T00:00:00Z"),   # 4 after D + 0 days
    ]))

    ingest(settings, DAY)

    assert reasons(settings) == [("events", 1, "timestamp_out_of_window"), ("events", 4, "timestamp_out_of_window")]


# ---------------------------------------------------------------------------------------------- ids and the key


def test_ids_must_be_strings_or_numbers_without_control_characters(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, quarantine_threshold=1.0, item_quarantine_threshold=1.0)
    land(settings, f"{DAY}.jsonl", "\n".join([
        event(user={"id": 1}), event(user=[1]), event(item=True), event(user="a\x1fb"), event(item="x\ty"),
        event(user="u\u0000"), event(user=17, item=2.5),
    ]))
    land(settings, f"{DAY}.jsonl", json.dumps({"item_id": {"a": 1}, "title": "T"}) + "\n"
         + json.dumps({"item_id": "b\x1f", "title": "T"}) + "\n", kind="items")

    ingest(settings, DAY)

    assert reasons(settings) == [
        ("events", 1, "invalid_id_type"), ("events", 2, "invalid_id_type"), ("events", 3, "invalid_id_type"),
        ("events", 4, "control_character_in_id"), ("events", 5, "control_character_in_id"),
        ("events", 6, "control_character_in_id"),
        ("items", 1, "invalid_id_type"), ("items", 2, "control_character_in_id")]
    assert lake(settings, "interactions", "select user_id, item_id from t") == [("17", "2.5")]


def test_ids_with_separators_never_collide_in_the_event_key(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, quarantine_threshold=1.0)
    land(settings, f"{DAY}.jsonl", "\n".join([
        event(user="a\x1fb", item="c"), event(user="a", item="b\x1fc"),     # quarantined, not duplicates
        event(user='a", "b', item="c"), event(user="a", item='b", "c'),     # distinct events
        event(user="a,b", item="c"), event(user="a", item="b,c"),
    ]))

    summary = ingest(settings, DAY)["events"]

    assert (summary["accepted"], summary["quarantined"], summary["duplicates"]) == (4, 2, 0)
    assert lake(settings, "interactions", "select count(distinct event_id) from t") == [(4,)]


# ---------------------------------------------------------------------------------------------- item threshold


def test_an_items_csv_without_item_id_fails_the_night_like_an_event_drop(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    land(settings, f"{DAY}.jsonl", event())
    land(settings, f"{DAY}.csv", "sku,title\na,A\nb,B\n", kind="items")

    with pytest.raises(IngestQualityError, match=rf"{DAY}: 2 of 2 item rows quarantined .*{DAY}\.csv: "
                                                 r"missing_columns \(2\)"):
        ingest(settings, DAY)

    assert [r[2] for r in ledger(settings, "items")] == ["failed"]
    assert DAY not in lake_tables.dates(Catalog.of(settings), "items")


# ---------------------------------------------------------------------------------------------- item 3: landing


def test_a_dates_files_are_read_in_tag_order_so_a_correction_wins(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    land(settings, f"{DAY}.jsonl", event(item="a"))
    for name, title in [(f"{DAY}.10.jsonl", "ten"), (f"{DAY}.jsonl", "first"), (f"{DAY}-fix.jsonl", "fix"),
                        (f"{DAY}.2.jsonl", "two")]:
        land(settings, name, json.dumps({"item_id": "a", "title": title}), kind="items")

    ingest(settings, DAY)

    assert [p.name for p in landing_files(settings.paths.landing_dir / "items")[DAY]] == [
        f"{DAY}.jsonl", f"{DAY}-fix.jsonl", f"{DAY}.2.jsonl", f"{DAY}.10.jsonl"]
    assert lake(settings, "items", "select title from t") == [("ten",)]

    (settings.paths.landing_dir / "items" / f"{DAY}.10.jsonl").unlink()
    (settings.paths.landing_dir / "items" / f"{DAY}.2.jsonl").unlink()
    ingest(settings, DAY)
    assert lake(settings, "items", "select title from t") == [("fix",)]  # D-fix sorts after D


def test_temporary_backup_and_unsupported_names_are_ignored_with_a_log_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(tmp_path)
    land(settings, f"{DAY}.jsonl", event())
    junk = "{not even json\n" * 3
    ignored = [f"{DAY}.jsonl~", f"{DAY}.jsonl.filepart", f"{DAY}.jsonl.tmp", f".{DAY}.jsonl", f"{DAY}.jsonl.swp",
               f"{DAY}.jsonl.zip", f"{DAY}.parquet.gz", f"#{DAY}.jsonl#", "notes.txt"]
    for name in ignored:
        land(settings, name, junk)

    with caplog.at_level(logging.WARNING, logger="pipeline.ingest.discovery"):
        summary = ingest(settings, DAY)["events"]

    assert (summary["files"], summary["rows_read"], summary["accepted"]) == (1, 1, 1)
    logged = caplog.text
    assert all(name in logged for name in ignored), logged


def test_gzip_jsonl_and_csv_files_are_read_and_rechecked_by_their_landed_bytes(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    land(settings, f"{DAY}.jsonl.gz", gzip.compress((event() + "\n" + event(user="u2") + "\n").encode()))
    land(settings, f"{DAY}-b.csv.gz", gzip.compress(f"user_id,item_id,event_type,value,timestamp\n"
                                                    f"u3,i1,view,,{TS}\n".encode()))

    first = ingest(settings, DAY)
    again = ingest(settings, DAY)

    assert (first["events"]["rows_read"], first["events"]["accepted"]) == (3, 3)
    assert again["noop_dates"] == [f"events:{DAY}"]


def test_a_corrupt_gzip_file_is_a_format_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    land(settings, f"{DAY}.jsonl.gz", gzip.compress(event().encode())[:-12])

    with pytest.raises(IngestFormatError, match=rf"{DAY}\.jsonl\.gz"):
        ingest(settings, DAY)


def test_symbolic_links_in_the_landing_folder_are_never_read(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(tmp_path, quarantine_threshold=1.0)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:secret\n")
    land(settings, f"{DAY}.jsonl", event())
    link = settings.paths.landing_dir / "events" / f"{DAY}-link.jsonl"
    link.symlink_to(secret)

    with caplog.at_level(logging.WARNING, logger="pipeline.ingest.discovery"):
        summary = ingest(settings, DAY)["events"]

    assert (summary["files"], summary["rows_read"]) == (1, 1)
    assert "symbolic link" in caplog.text and link.name in caplog.text
    assert not any("secret" in str(row) for row in lake(settings, "quarantine", "select raw from t"))
    with pytest.raises(IngestFormatError, match="symbolic links are never followed"):
        open_landing(link)


def test_a_vanished_landing_date_is_flagged_once_and_its_partition_kept(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    earlier = DAY - dt.timedelta(days=1)
    gone = land(settings, f"{earlier}.jsonl", event(ts="2026-11-20T10:00:00Z"))
    land(settings, f"{DAY}.jsonl", event())
    ingest(settings, DAY)
    gone.unlink()

    flagged = ingest(settings, DAY)
    again = ingest(settings, DAY)

    assert flagged["vanished_dates"] == [f"events:{earlier}"] and again["vanished_dates"] == []
    assert [r[2] for r in ledger(settings) if r[0] == earlier] == ["ok", "source_missing"]
    assert lake(settings, "interactions", "select dt from t order by dt") == [(earlier,), (DAY,)]


def test_a_vanished_landing_date_is_retracted_when_configured_and_a_vanished_file_leaves_its_date(
        tmp_path: Path) -> None:
    settings = make_settings(tmp_path, retract_removed_landing=True)
    earlier = DAY - dt.timedelta(days=1)
    gone = land(settings, f"{earlier}.jsonl", event(ts="2026-11-20T10:00:00Z"))
    land(settings, f"{DAY}.jsonl", event())
    second = land(settings, f"{DAY}-b.jsonl", event(user="u2"))
    ingest(settings, DAY)
    gone.unlink()
    second.unlink()

    summary = ingest(settings, DAY)

    assert summary["vanished_dates"] == [f"events:{earlier}"]
    assert [r[2] for r in ledger(settings) if r[0] == earlier] == ["ok", "retracted"]
    assert lake(settings, "interactions", "select dt, user_id from t") == [(DAY, "u1")]


# ---------------------------------------------------------------------------------------------- item 4: volume


def _nights(settings: Settings, per_day: list[int]) -> dt.date:
    """Land and ingest consecutive dates ending at DAY with the given event counts; returns the last date."""
    first = DAY - dt.timedelta(days=len(per_day) - 1)
    for i, n in enumerate(per_day[:-1]):
        day = first + dt.timedelta(days=i)
        land(settings, f"{day}.jsonl", "\n".join(event(user=f"u{j}", ts=f"{day}T10:00:00Z") for j in range(n)))
        ingest(settings, day)
    land(settings, f"{DAY}.jsonl", "\n".join(event(user=f"u{j}") for j in range(per_day[-1])) or "\n")
    return DAY


def test_a_volume_drop_against_the_trailing_median_fails_the_night_loudly(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    _nights(settings, [10, 12, 10, 11, 1])

    with pytest.raises(IngestVolumeError, match=rf"{DAY}: 1 event rows accepted, below 20% of the median 10\.5"):
        ingest(settings, DAY)
    with pytest.raises(IngestVolumeError):  # a rerun with the same files is not green
        ingest(settings, DAY)

    warned = ingest(make_settings(tmp_path, volume_check="warn"), DAY)
    assert "volume check" in warned["warnings"][0]
    assert ingest(make_settings(tmp_path, events_min_volume_ratio=0.0), DAY)["warnings"] == []


def test_a_night_with_no_accepted_events_fails_the_freshness_check(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    _nights(settings, [3, 0])

    with pytest.raises(IngestVolumeError, match=rf"{DAY}: no event rows accepted \(freshness check"):
        ingest(settings, DAY)


def test_the_volume_check_is_configurable_per_source(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, items_min_volume_ratio=0.5)
    land(settings, f"{DAY}.jsonl", event())

    with pytest.raises(IngestVolumeError, match="no item rows accepted"):
        ingest(settings, DAY)


# ---------------------------------------------------------------------------------------------- items 5 and 11


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporary_files_of_a_killed_ingest_are_removed_at_start(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    catalog = Catalog.of(settings)
    land(settings, f"{DAY}.jsonl", event())
    dead = catalog.scratch_root / f"{socket.gethostname()}-{_dead_pid()}-{'a' * 32}"
    alive = catalog.scratch_root / f"{socket.gethostname()}-{os.getpid()}-{'b' * 32}"
    legacy = catalog.scratch_root / ("c" * 32)
    for folder in (dead, alive, legacy):
        (folder / "spill").mkdir(parents=True)
    old = time.time() - 7 * 3600
    os.utime(legacy, (old, old))

    ingest(settings, DAY)

    assert [p.exists() for p in (dead, alive, legacy)] == [False, True, False]


def test_a_data_file_left_by_a_killed_lake_write_is_never_read_and_vacuum_removes_it(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    catalog = Catalog.of(settings)
    land(settings, f"{DAY}.jsonl", event())
    ingest(settings, DAY)
    orphan = settings.paths.lake_dir / "interactions" / f"dt={DAY}" / "part-00000-killed-c000.zstd.parquet"
    pq.write_table(pa.table({"event_id": ["x"], "user_id": ["ghost"]}), orphan)  # written, never committed

    assert lake(settings, "interactions", "select user_id from t") == [("u1",)]
    assert lake_tables.vacuum(catalog, "interactions", retention_hours=0) == 1 and not orphan.exists()


def test_mixed_case_event_types_are_compared_case_insensitively_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text('allowed_event_types = ["View", "CLICK"]\nquarantine_threshold = 1.0\n')
    settings = make_settings(tmp_path)
    land(settings, f"{DAY}.jsonl", "\n".join([event(kind="VIEW"), event(user="u2", kind="click"),
                                              event(user="u3", kind="Purchase")]))
    assert ingest(settings, DAY)["events"]["accepted"] == 2

    raw = settings.ingest.model_copy(update={"allowed_event_types": ("View", " CLICK ")})  # not normalised
    land(settings, f"{DAY}.jsonl", "\n".join([event(kind="VIEW"), event(user="u2", kind="click")]))
    assert ingest_night(raw, Catalog.of(settings), DAY)["events"]["accepted"] == 2


def test_a_home_with_glob_characters_reads_exactly_its_own_lake(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"lake_dir: .*runs\[1\].* may not contain '\[' or '\]'"):
        make_settings(tmp_path / "runs[1]")  # Delta Lake cannot open such a folder: refused up front
    decoy = make_settings(tmp_path / "runs1")
    land(decoy, f"{DAY}.jsonl", event(item="q"))
    land(decoy, f"{DAY}.jsonl", json.dumps({"item_id": "q", "title": "Q"}), kind="items")
    ingest(decoy, DAY)
    settings = make_settings(tmp_path / "runs*1")
    land(settings, f"{DAY}.jsonl", event(item="a") + "\n" + event(item="zzz"))
    land(settings, f"{DAY}.jsonl", json.dumps({"item_id": "a", "title": "A"}), kind="items")

    summary = ingest(settings, DAY)["events"]

    assert summary["unknown_items"] == 1  # zzz; a is known from this home's catalog, not the other one's
    assert lake(settings, "items", "select item_id from t") == [("a",)]
