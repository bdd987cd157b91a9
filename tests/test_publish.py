"""Publishing: every validation rule blocks publishing (naming the rule and a user) and leaves the previous
night intact; reruns replace exactly their date; a publish killed with SIGKILL at any step leaves a warehouse
that opens with the previous night complete, and rerunning the killed night completes.

Run as a script (`python tests/test_publish.py <args>`), this file is the child process of the fault test.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from pipeline import lake, warehouse
from pipeline.catalog import Catalog
from pipeline.config import load_settings
from pipeline.publish import (
    CHECKS,
    PublishValidationError,
    publish,
    publish_validated,
    validate,
)

NIGHT = dt.date(2026, 10, 10)
NEXT = NIGHT + dt.timedelta(days=1)
TOP_N = 3
USERS = ["u1", "u2", "u3", "u4", "u5"]
CATALOG = [f"i{j:02d}" for j in range(1, 21)]
SEEN = {"u1": ["i01"], "u2": ["i02", "i03"], "u3": [], "u4": ["i20"], "u5": ["i05", "gone"]}


def seen_table() -> pa.Table:
    pairs = [(u, i) for u, items in SEEN.items() for i in items]
    return pa.table({"user_id": [u for u, _ in pairs], "item_id": [i for _, i in pairs]})


def valid_rows(offset: int = 0) -> list[dict]:
    """TOP_N unseen catalog items per user, scores decreasing; `offset` varies the night."""
    rows = []
    for n, user in enumerate(USERS):
        unseen = [i for i in CATALOG if i not in SEEN[user]]
        for rank in range(1, TOP_N + 1):
            item = unseen[(n + offset + rank) % len(unseen)]
            rows.append({"user_id": user, "rank": rank, "item_id": item, "score": 10.0 - rank - offset,
                         "source": "model", "reason_item_id": SEEN[user][0] if SEEN[user] else None})
    return rows


def as_table(rows: list[dict]) -> pa.Table:
    schema = pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()),
                        ("score", pa.float64()), ("source", pa.string()), ("reason_item_id", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)


def row(rows: list[dict], user: str, rank: int) -> dict:
    return next(r for r in rows if r["user_id"] == user and r["rank"] == rank)


def break_valid_values(rows: list[dict]) -> str:
    row(rows, "u2", 2)["source"] = "oracle"
    return "u2"


def break_expected_users(rows: list[dict]) -> str:
    rows[:] = [r for r in rows if r["user_id"] != "u3"]
    return "u3"


def break_rows_per_user(rows: list[dict]) -> str:
    rows.remove(row(rows, "u2", 3))
    return "u2"


def break_unique_items(rows: list[dict]) -> str:
    first, second = row(rows, "u4", 1), row(rows, "u4", 2)
    second["item_id"], second["score"] = first["item_id"], first["score"]
    return "u4"


def break_ranks_contiguous(rows: list[dict]) -> str:
    row(rows, "u5", 3)["rank"] = 4
    return "u5"


def break_scores_non_increasing(rows: list[dict]) -> str:
    row(rows, "u1", 3)["score"] = 100.0
    return "u1"


def break_no_seen_items(rows: list[dict]) -> str:
    row(rows, "u2", 3)["item_id"] = "i02"
    return "u2"


def break_catalog_only(rows: list[dict]) -> str:
    row(rows, "u3", 2)["item_id"] = "ghost"
    return "u3"


def break_reason_in_history(rows: list[dict]) -> str:
    row(rows, "u2", 1)["reason_item_id"] = "i19"  # u2 never saw i19
    return "u2"


BREAKERS = {
    "valid_values": break_valid_values,
    "expected_users": break_expected_users,
    "rows_per_user": break_rows_per_user,
    "unique_items": break_unique_items,
    "ranks_contiguous": break_ranks_contiguous,
    "scores_non_increasing": break_scores_non_increasing,
    "no_seen_items": break_no_seen_items,
    "catalog_only": break_catalog_only,
    "reason_in_history": break_reason_in_history,
}


def night_rows(path: Path, day: dt.date) -> list[tuple]:
    with warehouse.connect(path) as con:
        return con.execute(
            "select user_id, rank, item_id, score, source, model_version from recommendations where dt = $d "
            "order by user_id, rank", {"d": day}).fetchall()


def as_tuples(table: pa.Table, version: str) -> list[tuple]:
    rows = sorted(table.to_pylist(), key=lambda r: (r["user_id"], r["rank"]))
    return [(r["user_id"], r["rank"], r["item_id"], r["score"], r["source"], version) for r in rows]


def at(home: Path, warehouse_uri: str = "") -> Catalog:
    """The catalog of a home; warehouse_uri "" is the home's DuckDB file, else a PostgreSQL database."""
    return Catalog.of(load_settings(env={}, home=home, warehouse_uri=warehouse_uri))


@pytest.fixture(params=["duckdb", "postgresql"])
def warehouse_uri(request: pytest.FixtureRequest) -> str:
    """Each warehouse backend: "" (the DuckDB file) or a fresh PostgreSQL database on the test server."""
    return "" if request.param == "duckdb" else request.getfixturevalue("postgres_database")


def lake_night(home: Path, day: dt.date) -> pa.Table | None:
    """The lake's recommendations of a date (None when the table was never written)."""
    return lake.read(at(home), "recommendations", day)


def publish_checked(tmp_path: Path, day: dt.date, table: pa.Table, version: str, warehouse_uri: str = "") -> dict:
    return publish_validated(at(tmp_path, warehouse_uri), day, table, USERS, seen_table(),
                             CATALOG, TOP_N, "test-recs", version)


def test_every_rule_has_a_breaking_case() -> None:
    assert set(BREAKERS) == set(CHECKS)


def test_valid_night_passes_every_rule() -> None:
    validate(as_table(valid_rows()), USERS, seen_table(), CATALOG, TOP_N)


@pytest.mark.parametrize("rule", CHECKS)
def test_broken_rule_blocks_publishing_and_keeps_previous_night(tmp_path: Path, rule: str) -> None:
    before = publish_checked(tmp_path, NIGHT, as_table(valid_rows()), "1")
    rows = valid_rows(offset=1)
    user = BREAKERS[rule](rows)
    message = rf"rule '{rule}' violated .* e\.g\. user '{user}'"
    with pytest.raises(PublishValidationError, match=message) as err:
        publish_checked(tmp_path, NEXT, as_table(rows), "2")
    assert set(err.value.violations) == {rule}, "each case breaks exactly one rule"
    assert night_rows(at(tmp_path).warehouse, NIGHT) == as_tuples(as_table(valid_rows()), "1")
    assert night_rows(at(tmp_path).warehouse, NEXT) == []
    assert lake.dates(at(tmp_path), "recommendations") == {NIGHT}
    assert lake_night(tmp_path, NIGHT).num_rows == len(USERS) * TOP_N
    assert before["lake_version"] == lake.table(at(tmp_path), "recommendations").version()


def test_user_with_fewer_eligible_items_may_have_fewer_rows() -> None:
    small_catalog = CATALOG[:4]  # u2 has seen i02 and i03: only 2 left
    rows = [r for r in valid_rows() if r["user_id"] != "u2"]
    for r in rows:
        r["item_id"] = [i for i in small_catalog if i not in SEEN[r["user_id"]]][r["rank"] - 1]
    rows += [{"user_id": "u2", "rank": n, "item_id": i, "score": 1.0 / n, "source": "popular"}
             for n, i in enumerate(["i01", "i04"], start=1)]
    validate(as_table(rows), USERS, seen_table(), small_catalog, TOP_N)


def test_rerun_replaces_only_its_date_and_latest_view_follows(tmp_path: Path, warehouse_uri: str) -> None:
    publish_checked(tmp_path, NIGHT, as_table(valid_rows()), "1", warehouse_uri)
    publish_checked(tmp_path, NEXT, as_table(valid_rows(offset=1)), "2", warehouse_uri)
    result = publish_checked(tmp_path, NEXT, as_table(valid_rows(offset=2)), "3", warehouse_uri)
    wh = at(tmp_path, warehouse_uri).warehouse
    assert night_rows(wh, NIGHT) == as_tuples(as_table(valid_rows()), "1")
    assert night_rows(wh, NEXT) == as_tuples(as_table(valid_rows(offset=2)), "3")
    with warehouse.connect(wh) as con:
        latest = con.execute("select distinct dt, model_version from recommendations_latest").fetchall()
        (per_key,) = con.execute("select max(n) from (select count(*) as n from recommendations "
                                 "group by dt, user_id, rank) as per_key").fetchall()[0]
    assert latest == [(NEXT, "3")] and per_key == 1
    published = lake_night(tmp_path, NEXT)
    assert published.num_rows == len(USERS) * TOP_N and set(published.column("model_version").to_pylist()) == {"3"}
    assert lake.dates(at(tmp_path), "recommendations") == {NIGHT, NEXT}
    assert lake.read(at(tmp_path), "recommendations").num_rows == 2 * len(USERS) * TOP_N
    assert result["lake_version"] == 2  # one commit per publish: versions 0, 1, 2


# ---- fault injection: SIGKILL in the middle of publishing --------------------------------------------------


def large_night(n_users: int, offset: int) -> pa.Table:
    """n_users x 10 rows, valid for an empty seen table and catalog item-0000..item-0999."""
    users = np.repeat(np.char.add("user-", np.arange(n_users).astype(str)), 10)
    ranks = np.tile(np.arange(1, 11, dtype=np.int32), n_users)
    items = np.char.add("item-", np.char.zfill(((np.arange(n_users * 10) + offset) % 1000).astype(str), 4))
    return pa.table({"user_id": users, "rank": ranks, "item_id": items,
                     "score": (100.0 - ranks).astype(np.float64), "source": np.full(n_users * 10, "model")})


def child_main(home: str, day: str, marker: str, kill_step: str, n_users: int, warehouse_uri: str) -> None:
    """Publish a large night and stall at kill_step (after writing the marker) until the parent kills us."""

    def checkpoint(step: str) -> None:
        if step == kill_step:
            Path(marker).write_text(step)
            time.sleep(600)

    publish(at(Path(home), warehouse_uri), dt.date.fromisoformat(day), large_night(n_users, 7), "test-recs", "child",
            checkpoint=checkpoint)


LARGE_USERS = 60_000


@pytest.mark.parametrize("kill_step", ["locked", "rows_inserted", "committed"])
def test_sigkill_mid_publish_keeps_previous_night_and_rerun_completes(tmp_path: Path, kill_step: str,
                                                                     warehouse_uri: str) -> None:
    catalog = at(tmp_path, warehouse_uri)
    wh = catalog.warehouse
    previous = large_night(LARGE_USERS, 0)
    publish(catalog, NIGHT, previous, "test-recs", "parent")
    old_next = large_night(LARGE_USERS // 2, 3)  # an earlier run of D+1, which the child replaces
    publish(catalog, NEXT, old_next, "test-recs", "old")
    marker = tmp_path / "marker"
    child = subprocess.Popen([sys.executable, __file__, str(tmp_path), NEXT.isoformat(), str(marker),
                              kill_step, str(LARGE_USERS), warehouse_uri])
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, f"child exited with {child.returncode} before reaching {kill_step}"
            assert time.monotonic() < deadline, f"child did not reach {kill_step} in 120 s"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL

    with warehouse.connect(wh) as con:  # opens (replays the WAL), night D complete and unchanged
        counts = dict(con.execute("select dt, count(*) from recommendations group by dt").fetchall())
        next_versions = con.execute("select distinct model_version from recommendations where dt = $d",
                                    {"d": NEXT}).fetchall()
        night = sorted(con.execute("select user_id, rank, item_id from recommendations where dt = $d and "
                                   "model_version = 'parent'", {"d": NIGHT}).fetchall())
    assert counts.get(NIGHT) == previous.num_rows
    assert night == sorted(zip(*(previous[c].to_pylist() for c in ("user_id", "rank", "item_id")), strict=True))
    if kill_step == "committed":  # the commit happened: D+1 is entirely the child's
        assert (counts[NEXT], next_versions) == (previous.num_rows, [("child",)])
    else:  # killed before the commit: D+1 is entirely the earlier run's
        assert (counts[NEXT], next_versions) == (old_next.num_rows, [("old",)])
    lake_previous = lake_night(tmp_path, NIGHT)
    assert sorted(lake_previous.column("item_id").to_pylist()) == sorted(previous.column("item_id").to_pylist())
    lake_next = lake_night(tmp_path, NEXT)  # the lake commit comes after the warehouse commit
    lake_versions = set(lake_next.column("model_version").to_pylist())
    assert (lake_next.num_rows, lake_versions) == (old_next.num_rows, {"old"})

    rerun = publish(catalog, NEXT, large_night(LARGE_USERS, 7), "test-recs", "rerun")
    assert rerun["rows"] == previous.num_rows
    with warehouse.connect(wh) as con:
        assert dict(con.execute("select dt, count(*) from recommendations group by dt").fetchall()) == {
            NIGHT: previous.num_rows, NEXT: previous.num_rows}
        assert con.execute("select distinct model_version from recommendations where dt = $d",
                           {"d": NEXT}).fetchall() == [("rerun",)]
    assert set(lake_night(tmp_path, NEXT).column("model_version").to_pylist()) == {"rerun"}
    lake.vacuum(catalog, "recommendations", retention_hours=0)  # what a killed writer left is unreferenced
    live = {uri.removeprefix("file://") for uri in lake.table(catalog, "recommendations").file_uris()}
    on_disk = {str(p) for p in Path(catalog.lake_table("recommendations")).rglob("*.parquet")
               if "_delta_log" not in p.parts}
    assert on_disk == live


if __name__ == "__main__":
    child_main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6])


def test_reason_on_a_popular_fallback_row_is_refused() -> None:
    rows = valid_rows()
    row(rows, "u1", 1)["source"] = "popular"  # u1's reason i01 is in its history, but popular rows have none
    with pytest.raises(PublishValidationError, match=r"rule 'reason_in_history' violated by 1 rows, e.g. user 'u1'"):
        validate(as_table(rows), USERS, seen_table(), CATALOG, TOP_N)


def test_table_staged_without_reasons_publishes_with_null_reasons(tmp_path: Path) -> None:
    table = as_table(valid_rows()).drop_columns(["reason_item_id"])
    publish_checked(tmp_path, NIGHT, table, "1")
    with warehouse.connect(at(tmp_path).warehouse) as con:
        assert con.execute("select count(*) from recommendations where reason_item_id is not null").fetchone() == (0,)


def test_warehouse_without_the_reason_column_is_migrated(tmp_path: Path) -> None:
    path = at(tmp_path).warehouse
    path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(path)) as con:  # the table as it was before reasons
        con.execute("""create table recommendations (dt date not null, user_id varchar not null,
                       rank integer not null, item_id varchar not null, score double not null,
                       source varchar not null, model_name varchar, model_version varchar,
                       generated_at timestamptz not null)""")
        con.execute("insert into recommendations values ('2026-10-09', 'u1', 1, 'i02', 1.0, 'model', 'm', '1', "
                    "now())")
    publish_checked(tmp_path, NIGHT, as_table(valid_rows()), "2")
    with warehouse.connect(path) as con:
        reasons = dict(con.execute("select user_id, reason_item_id from recommendations_latest where rank = 1"
                                   ).fetchall())
        [(old,)] = con.execute("select reason_item_id from recommendations where dt = '2026-10-09'").fetchall()
    assert reasons == {"u1": "i01", "u2": "i02", "u3": None, "u4": "i20", "u5": "i05"}
    assert old is None
