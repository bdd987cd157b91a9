"""Features: the layered SQL over a small hand-made lake (real DuckDB): grain, tie-break, splits, windows."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import lake as lake_tables
from pipeline.catalog import Catalog
from pipeline.config import DEFAULT_TEXT_TEMPLATE, load_settings
from pipeline.features import MARTS, MODELS, build_features, run_features, template_parts
from pipeline.sql import GrainCheckError, check_grain

RUN_DATE = dt.date(2026, 3, 10)
UTC = dt.UTC

# (user, item, event time UTC, data date of the partition, source file, line)
EVENTS = [
    # u1: i2 and i3 share a timestamp; the source wrote i2 first (line 1), so i2 comes first.
    ("u1", "i1", "2026-03-01 10:00", "2026-03-01", "a.jsonl", 1),
    ("u1", "i3", "2026-03-05 10:00", "2026-03-05", "a.jsonl", 2),
    ("u1", "i2", "2026-03-05 10:00", "2026-03-05", "a.jsonl", 1),
    ("u1", "i4", "2026-03-09 12:00", "2026-03-09", "a.jsonl", 1),
    ("u1", "i5", "2026-03-10 08:00", "2026-03-10", "a.jsonl", 1),
    # 23:30 on 03-09 in New York is 04:30 on 03-10 UTC: a day-of-D event whatever the session time zone
    ("u1", "i1", "2026-03-10 04:30", "2026-03-10", "a.jsonl", 2),
    # u2: equal timestamps in two files of one day: file order wins (a before b), whatever the line numbers
    ("u2", "i2", "2026-02-08 09:00", "2026-02-08", "a.jsonl", 1),
    ("u2", "i4", "2026-02-09 09:00", "2026-02-09", "b.jsonl", 1),
    ("u2", "i1", "2026-02-09 09:00", "2026-02-09", "a.jsonl", 7),
    ("u2", "i3", "2026-03-10 11:00", "2026-03-10", "a.jsonl", 3),
    # u3: only two events, none on the run date; a late arrival shares its timestamp with an earlier one
    ("u3", "i4", "2026-03-03 10:00", "2026-03-03", "a.jsonl", 1),
    ("u3", "i2", "2026-03-03 10:00", "2026-03-04", "a.jsonl", 1),
    # after the run date: never visible on RUN_DATE
    ("u1", "i9", "2026-03-11 10:00", "2026-03-11", "a.jsonl", 1),
]

# (item, data date, title, description, brand, genres, categories, tags)
ITEMS = [
    ("i1", "2026-03-01", "Old title", "", "", [], [], []),
    ("i1", "2026-03-08", "Microscope", "A lab microscope.", "Zeiss", [], ["Lab", "Optics"], ["x100"]),
    ("i2", "2026-03-01", "Beaker", "", "", [], ["Glass"], []),
    ("i3", "2026-03-01", "Pipette", "Ten  microlitres", "Eppendorf", ["tools"], [], ["liquid", "small"]),
    ("i4", "2026-03-01", "Gloves", "", "", [], [], []),
    ("i5", "2026-03-01", "Goggles.", "Safety first. . Really", "3M", ["safety"], [], []),
]


def item_text(row: dict, template: str) -> str:
    """Reference implementation of the SQL-built item text: the template filled from the fields, empty parts
    dropped."""
    fields = {
        "title": row.get("title") or "",
        "description": row.get("description") or "",
        "brand": row.get("brand") or "",
        "genres": ", ".join(row.get("genres") or []),
        "categories": ", ".join(row.get("categories") or []),
        "tags": ", ".join(row.get("tags") or []),
    }
    rendered = template.format(**fields)
    return ". ".join(part.strip() for part in rendered.split(". ") if part.strip(" .")).strip()


_TS = pa.timestamp("us", tz="UTC")
EVENT_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("user_id", pa.string()), ("item_id", pa.string()),
    ("event_type", pa.string()),
    ("value", pa.float64()), ("event_ts", _TS), ("dt", pa.date32()), ("source_file", pa.string()),
    ("line_no", pa.int64()), ("ingested_at", _TS),
])
ITEM_SCHEMA = pa.schema([
    ("item_id", pa.string()), ("title", pa.string()), ("description", pa.string()), ("brand", pa.string()),
    ("genres", pa.list_(pa.string())), ("categories", pa.list_(pa.string())), ("tags", pa.list_(pa.string())),
    ("updated_at", _TS), ("dt", pa.date32()), ("source_file", pa.string()), ("ingested_at", _TS),
])


def _ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def write_lake(lake_dir: Path, events: list[tuple[Any, ...]], items: list[tuple[Any, ...]]) -> None:
    """The lake's Delta tables as ingest writes them, one commit per date, rows in reverse order."""
    by_dt: dict[str, list[dict[str, Any]]] = {}
    for user, item, ts, day, source, line in events:
        by_dt.setdefault(day, []).append({
            "event_id": f"{day}/{source}/{line}", "user_id": user, "item_id": item, "event_type": "view",
            "value": None, "event_ts": _ts(ts), "dt": dt.date.fromisoformat(day), "source_file": source,
            "line_no": line, "ingested_at": _ts(day + " 23:00"),
        })
    for day, rows in by_dt.items():
        _write(lake_dir, "interactions", day, list(reversed(rows)), EVENT_SCHEMA)
    items_by_dt: dict[str, list[dict[str, Any]]] = {}
    for item, day, title, description, brand, genres, categories, tags in items:
        items_by_dt.setdefault(day, []).append({
            "item_id": item, "title": title, "description": description, "brand": brand, "genres": genres,
            "categories": categories, "tags": tags, "updated_at": _ts(day + " 01:00"),
            "dt": dt.date.fromisoformat(day), "source_file": "items.jsonl",
            "ingested_at": _ts(day + " 23:00"),
        })
    for day, rows in items_by_dt.items():
        _write(lake_dir, "items", day, rows, ITEM_SCHEMA)


def _write(lake_dir: Path, table: str, day: str, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    catalog = Catalog.of(load_settings(env={}, home=lake_dir.parent))
    lake_tables.replace_dates(catalog, table, [dt.date.fromisoformat(day)], pa.Table.from_pylist(rows, schema=schema))


def _build(
    lake: Path, max_history: int = 200, **kwargs: Any
) -> tuple[duckdb.DuckDBPyConnection, dict[str, int]]:
    con = duckdb.connect()
    con.execute("set TimeZone = 'America/New_York'")  # dates must still be UTC days
    catalog = Catalog.of(load_settings(env={}, home=lake.parent))
    counts = build_features(con, catalog, RUN_DATE, max_history=max_history, active_days=7, **kwargs)
    return con, counts


def _rows(con: duckdb.DuckDBPyConnection, table: str, key: str = "user_id") -> dict[str, dict[str, Any]]:
    rel = con.table(table)
    return {row[key]: row for row in rel.to_arrow_table().to_pylist()}


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    root = tmp_path / "lake"
    write_lake(root, EVENTS, ITEMS)
    return root


@pytest.fixture
def built(lake: Path) -> duckdb.DuckDBPyConnection:
    con, _ = _build(lake)
    return con


@pytest.mark.parametrize("mart", MARTS, ids=lambda m: m.table)
def test_every_mart_has_its_grain(built: duckdb.DuckDBPyConnection, mart: Any) -> None:
    keys = ", ".join(mart.keys)
    rows, distinct = built.execute(f"select count(*), count(distinct ({keys})) from {mart.table}").fetchone()
    assert rows > 0, f"{mart.table} is empty"
    assert rows == distinct, f"{mart.table} is not unique on {mart.keys}"
    for col in mart.keys + mart.not_null:
        (nulls,) = built.execute(f"select count(*) from {mart.table} where {col} is null").fetchone()
        assert nulls == 0, f"{mart.table}.{col} has nulls"
    check_grain(built, mart.table, list(mart.keys), list(mart.not_null))


def test_every_sql_model_has_a_header(lake: Path) -> None:
    root = Path(__file__).resolve().parent.parent / "sql"
    for model in MODELS:
        text = (root / f"{model.path}.sql").read_text()
        assert text.startswith(f"-- {model.table}:"), model.path
        assert "-- grain:" in text and "parameters:" in text, model.path


def test_tie_break_follows_file_order_and_is_stable(lake: Path) -> None:
    first, _ = _build(lake)
    again, _ = _build(lake)
    seqs = _rows(first, "user_sequences")
    assert seqs["u1"]["item_ids"] == ["i1", "i2", "i3", "i4", "i1", "i5"]
    assert seqs["u2"]["item_ids"] == ["i2", "i1", "i4", "i3"]  # same second: a.jsonl before b.jsonl
    assert seqs["u3"]["item_ids"] == ["i4", "i2"]  # same second: the earlier data date first
    assert _rows(again, "user_sequences") == seqs


def test_future_events_are_invisible(built: duckdb.DuckDBPyConnection) -> None:
    (n,) = built.execute("select count(*) from int_user_events where item_id = 'i9'").fetchone()
    assert n == 0


def test_user_sequences_keep_the_last_items(lake: Path) -> None:
    con, _ = _build(lake, max_history=3)
    seqs = _rows(con, "user_sequences")
    assert seqs["u1"]["item_ids"] == ["i4", "i1", "i5"]
    assert seqs["u1"]["n_events"] == 6
    assert _rows(con, "split_temporal")["u1"]["history_items"] == ["i2", "i3", "i4"]
    assert _rows(con, "split_temporal")["u1"]["seen_items"] == ["i1", "i2", "i3", "i4"]  # never cut
    assert _rows(con, "split_temporal_train")["u1"]["item_ids"] == ["i2", "i3", "i4"]


def test_leave_one_out_split(built: duckdb.DuckDBPyConnection) -> None:
    loo = _rows(built, "split_leave_one_out")
    assert set(loo) == {"u1", "u2"}  # u3 has only two events
    assert loo["u1"]["train_items"] == ["i1", "i2", "i3", "i4"]
    assert (loo["u1"]["valid_item"], loo["u1"]["test_item"]) == ("i1", "i5")
    u2 = loo["u2"]
    assert (u2["train_items"], u2["valid_item"], u2["test_item"]) == (["i2", "i1"], "i4", "i3")


def test_temporal_split_trains_before_and_evaluates_on_the_split_date(
    built: duckdb.DuckDBPyConnection,
) -> None:
    evaluation = _rows(built, "split_temporal")
    assert set(evaluation) == {"u1", "u2"}  # u3 has nothing on the split date
    assert evaluation["u1"]["history_items"] == ["i1", "i2", "i3", "i4"]
    # i1 (04:30 UTC) was seen before the split date: removed from the ranking, so not a target; i5 (08:00) is
    assert evaluation["u1"]["target_item"] == "i5"
    assert evaluation["u1"]["target_items"] == ["i5"]
    assert evaluation["u1"]["seen_items"] == ["i1", "i2", "i3", "i4"]
    u2 = evaluation["u2"]
    assert (u2["history_items"], u2["target_items"]) == (["i2", "i1", "i4"], ["i3"])
    train = _rows(built, "split_temporal_train")
    assert {u: r["item_ids"] for u, r in train.items()} == {
        "u1": ["i1", "i2", "i3", "i4"], "u2": ["i2", "i1", "i4"], "u3": ["i4", "i2"]}


def test_temporal_split_date_is_a_parameter(lake: Path) -> None:
    con, counts = _build(lake, split_date=dt.date(2026, 3, 5))
    evaluation = _rows(con, "split_temporal")
    assert set(evaluation) == {"u1"}
    assert (evaluation["u1"]["history_items"], evaluation["u1"]["target_items"]) == (["i1"], ["i2", "i3"])
    assert counts["split_temporal_train"] == 3  # everyone has events before 03-05


def test_popularity_windows(built: duckdb.DuckDBPyConnection) -> None:
    pop = _rows(built, "item_popularity", key="item_id")
    counts = {i: (r["events_all"], r["events_7d"], r["events_30d"]) for i, r in pop.items()}
    # 7 days = 03-04..03-10, 30 days = 02-09..03-10 (UTC days, inclusive)
    assert counts == {
        "i1": (3, 1, 3),   # 03-01, 03-10 (u1), 02-09 (u2: first day in the 30-day window)
        "i2": (3, 1, 2),   # 03-05, 02-08 (outside 30 days), 03-03 (outside 7 days)
        "i3": (2, 2, 2),
        "i4": (3, 1, 3),   # 03-09, 02-09, 03-03
        "i5": (1, 1, 1),
    }
    assert (pop["i1"]["users_all"], pop["i1"]["users_7d"]) == (2, 1)


def test_user_activity(built: duckdb.DuckDBPyConnection) -> None:
    act = _rows(built, "user_activity")
    # active = an event in the 7 days 03-04..03-10; u3's last event is on 03-03
    assert {u: r["is_active"] for u, r in act.items()} == {"u1": True, "u2": True, "u3": False}
    assert (act["u1"]["n_events"], act["u1"]["n_active_days"]) == (6, 4)
    assert (act["u2"]["n_events"], act["u2"]["n_active_days"]) == (4, 3)


def test_item_catalog_is_the_latest_version_with_its_text(built: duckdb.DuckDBPyConnection) -> None:
    catalog = _rows(built, "item_catalog", key="item_id")
    assert set(catalog) == {"i1", "i2", "i3", "i4", "i5"}
    assert catalog["i1"]["title"] == "Microscope"
    assert catalog["i1"]["first_seen_dt"] == dt.date(2026, 3, 1)
    assert catalog["i1"]["text"] == "Microscope. Lab, Optics. Zeiss. x100. A lab microscope."
    assert catalog["i4"]["text"] == "Gloves"
    for row in catalog.values():  # the SQL renderer agrees with the Python one used so far
        assert row["text"] == item_text(row, DEFAULT_TEXT_TEMPLATE), row["item_id"]


def test_text_template_is_configurable(lake: Path) -> None:
    con, _ = _build(lake, text_template="{brand}: {title} [{tags}]")
    catalog = _rows(con, "item_catalog", key="item_id")
    assert catalog["i1"]["text"] == "Zeiss: Microscope [x100]"
    assert catalog["i3"]["text"] == "Eppendorf: Pipette [liquid, small]"


@pytest.mark.parametrize(("template", "message"), [
    ("{title} {price}", "unsupported placeholder {price}"),
    ("{title:>10}", "unsupported placeholder {title}"),
    ("{{title}}", "literal braces"),
    ("no fields", "uses no item field"),
    ("{title", "text_template"),
])
def test_bad_text_templates_fail_loudly(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        template_parts(template)


def test_check_grain_names_the_table_and_column() -> None:
    con = duckdb.connect()
    con.execute("create table dup as select * from (values ('a', 1), ('a', 2)) as t(user_id, n)")
    con.execute("create table nullkey as select * from (values ('a', 1), (null, 2)) as t(user_id, n)")
    con.execute("create table nullcol as select * from (values ('a', 1), ('b', null)) as t(user_id, n)")
    con.execute("create table empty (user_id varchar)")
    with pytest.raises(GrainCheckError, match=r"dup: key \['user_id'\] not unique"):
        check_grain(con, "dup", ["user_id"])
    with pytest.raises(GrainCheckError, match="nullkey: column 'user_id' has 1 null"):
        check_grain(con, "nullkey", ["user_id"])
    with pytest.raises(GrainCheckError, match="nullcol: column 'n' has 1 null"):
        check_grain(con, "nullcol", ["user_id"], ["n"])
    with pytest.raises(GrainCheckError, match="empty: no rows"):
        check_grain(con, "empty", ["user_id"])


def test_build_features_fails_loudly_on_a_grain_violation(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    write_lake(lake, [*EVENTS, (None, "i1", "2026-03-02 10:00", "2026-03-02", "a.jsonl", 1)], ITEMS)
    with pytest.raises(GrainCheckError, match="int_user_events: column 'user_id'"):
        _build(lake)


def test_build_features_fails_on_an_empty_catalog(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    write_lake(lake, EVENTS, [("i1", "2026-03-20", "Later", "", "", [], [], [])])  # after the run date
    with pytest.raises(GrainCheckError, match="item_catalog: no rows"):
        _build(lake)


def test_run_features_writes_every_mart_and_reruns_identically(tmp_path: Path) -> None:
    settings = load_settings(env={}, home=tmp_path / "home")
    write_lake(settings.paths.lake_dir, EVENTS, ITEMS)
    result = run_features(settings, RUN_DATE)
    out = Path(result["features_dir"])
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{m.table}.parquet" for m in MARTS)
    first = {m.table: pq.read_table(out / f"{m.table}.parquet") for m in MARTS}
    assert run_features(settings, RUN_DATE)["counts"] == result["counts"]
    for table, data in first.items():
        assert pq.read_table(out / f"{table}.parquet").equals(data), table
