"""Erasure (the right to be forgotten), end to end on the tiny demo with real DuckDB, MLflow and torch: after a
night, `forget` a user with events, then run the next night; nothing under the home holds the id any more but
its keyed hash, a redelivered landing file does not bring the user back, the next model starts from scratch."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
import stat
from pathlib import Path

import duckdb
import mlflow
import pyarrow.parquet as pq
import pytest
from conftest import SMALL_START, lake_query, write_small_demo

from pipeline.catalog import Catalog
from pipeline.config import load_settings
from pipeline.erasure import tombstones
from pipeline.tools.cli import main

NIGHT = SMALL_START + dt.timedelta(days=9)
NEXT = NIGHT + dt.timedelta(days=1)
# Demo ids are "u" + 5 digits (demo_data: f"u{u:05d}"), so no other id, item id ("i" + 5 digits), hash (hex) or
# number contains this one. u00002 has events, a quarantined row (2026-10-04) and is a sample of the report.
USER = "u00002"
REDELIVERED = SMALL_START + dt.timedelta(days=3)


def holders(home: Path, needle: str) -> list[str]:
    """Where under the home (the source's landing folder aside) the id is: raw bytes of any file (text, SQLite,
    uncompressed Parquet pages and statistics, the DuckDB file with its free blocks), every decoded value of every
    Parquet file (compressed pages), every text column of every DuckDB table."""
    found = []
    for path in sorted(p for p in home.rglob("*") if p.is_file()):
        rel = path.relative_to(home)
        if rel.parts[0] == "landing":
            continue
        if needle.encode() in path.read_bytes():
            found.append(f"{rel} (bytes)")
        if path.suffix == ".parquet" and not path.name.startswith("."):
            values = json.dumps(pq.ParquetFile(path).read().to_pylist(), default=str)
            if needle in values:
                found.append(f"{rel} (values)")
        if path.suffix == ".duckdb":
            found += [f"{rel} ({table}.{column})" for table, column in duckdb_columns_holding(path, needle)]
    return found


def duckdb_columns_holding(path: Path, needle: str) -> list[tuple[str, str]]:
    with duckdb.connect(str(path), read_only=True) as con:
        columns = con.execute(
            """select c.table_name, c.column_name from information_schema.columns as c
               join information_schema.tables as t using (table_schema, table_name)
               where t.table_type = 'BASE TABLE' and c.data_type = 'VARCHAR'""").fetchall()
        return [(t, c) for t, c in columns
                if con.execute(f'select count(*) from "{t}" where strpos("{c}", $n) > 0', {"n": needle}).fetchone()[0]]


def warehouse_rows(home: Path, query: str, **params: object) -> list[tuple]:
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(query, params).fetchall()


@pytest.fixture(scope="module")
def erased(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A night, `forget --user USER`, the user's landing file redelivered, the next night."""
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("erasure-home")
    mp.setenv("NIGHTLY_RECS_HOME", str(home))
    write_small_demo(home / "landing", days=12)
    assert main(["night", "--date", NIGHT.isoformat(), "--max-epochs", "2"]) == 0
    before = holders(home, USER)
    stamp = dt.datetime.now(dt.UTC)
    assert main(["forget", "--user", USER, "--requester", "dpo@example.com", "--reason", "ticket 42"]) == 0
    after_forget = holders(home, USER)
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        free_blocks = con.execute("select free_blocks from pragma_database_size()").fetchone()[0]
    landing = Catalog.of(load_settings()).landing_file("events", REDELIVERED)
    shutil.copy(landing, landing.with_name(f"{REDELIVERED.isoformat()}-redelivered.jsonl"))
    assert main(["night", "--date", NEXT.isoformat(), "--max-epochs", "2"]) == 0
    yield {"home": home, "before": before, "after_forget": after_forget, "free_blocks": free_blocks,
           "stamp": stamp, "landing": landing, "settings": load_settings()}
    mp.undo()


def test_the_search_finds_the_user_before_the_erasure(erased: dict) -> None:
    found = erased["before"]
    for expected in (r"lake/interactions/dt=2026-10-04/part-[-\w.]+\.parquet \(values\)",
                     r"lake/quarantine/dt=2026-10-04/kind=events/part-[-\w.]+\.parquet \(values\)",
                     r"lake/features/dt=2026-10-10/user_sequences\.parquet \(values\)",
                     r"lake/recommendations/dt=2026-10-10/part-[-\w.]+\.parquet \(values\)",
                     r"warehouse\.duckdb \(recommendations\.user_id\)", r"reports/2026-10-10\.json \(bytes\)"):
        assert any(re.fullmatch(expected, f) for f in found), f"{expected} not in {found}"
    assert any(f.startswith("mlflow/artifacts/") and "report" in f for f in found), found


def test_forget_records_an_audited_tombstone_with_a_keyed_hash(erased: dict) -> None:
    catalog = Catalog.of(erased["settings"])
    key_file = catalog.erasure_key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    expected = hashlib.sha256((key_file.read_text().strip() + USER).encode()).hexdigest()
    [(user_hash, requested_at, requester, reason, erased_at)] = warehouse_rows(
        erased["home"], "select user_hash, requested_at, requester, reason, erased_at from tombstones")
    assert (user_hash, requester, reason) == (expected, "dpo@example.com", "ticket 42")
    assert erased["stamp"] <= requested_at <= erased_at
    assert user_hash != hashlib.sha256(USER.encode()).hexdigest(), "keyed, not a plain hash of the id"


def test_nothing_under_the_home_holds_the_id_but_its_tombstone(erased: dict) -> None:
    assert erased["after_forget"] == [], "forget left the id behind"
    assert erased["free_blocks"] == 0, "the rebuilt warehouse keeps no free blocks with deleted values"
    assert holders(erased["home"], USER) == [], "the next night brought the id back"


def test_a_redelivered_landing_file_does_not_bring_the_user_back(erased: dict) -> None:
    lines = erased["landing"].read_text().splitlines()
    theirs = sum(USER in line for line in lines)
    assert theirs > 1
    rows = warehouse_rows(erased["home"], """
        select source_file, rows_read, accepted, quarantined, duplicates, forgotten from ingest_ledger
        where kind = 'events' and dt = $d and status = 'ok'
        qualify ingested_at = max(ingested_at) over () order by source_file""", d=REDELIVERED)
    assert [r[0] for r in rows] == [f"{REDELIVERED}-redelivered.jsonl", f"{REDELIVERED}.jsonl"]
    for _, rows_read, accepted, quarantined, duplicates, forgotten in rows:
        assert rows_read == len(lines) and forgotten == theirs
        assert rows_read == accepted + quarantined + duplicates + forgotten
    assert lake_query(erased["settings"], "select count(*) from {interactions} where user_id = $u",
                      {"u": USER}) == [(0,)]


def test_the_published_nights_have_no_rows_for_the_user(erased: dict) -> None:
    published = dict(warehouse_rows(erased["home"], "select dt, count(distinct user_id) from recommendations "
                                                    "group by dt"))
    assert published[NIGHT] > 0 and published[NEXT] > 0
    assert warehouse_rows(erased["home"], "select count(*) from recommendations where user_id = $u",
                          u=USER) == [(0,)]
    summary = json.loads(Catalog.of(erased["settings"]).report(NEXT, ".json").read_text())
    assert summary["ingest"]["events"]["forgotten"] > 0
    assert USER not in {s["user_id"] for s in summary["samples"]} and summary["samples"]


def test_the_first_model_after_the_erasure_is_trained_from_scratch(erased: dict) -> None:
    mlflow.set_tracking_uri(erased["settings"].paths.mlflow_uri)
    client = mlflow.MlflowClient()
    name = erased["settings"].serving.model_name
    first, second = (client.get_model_version(name, v) for v in ("1", "2"))
    tags = client.get_run(second.run_id).data.tags
    assert tags["warm_start_from"] == "none"
    assert tags["erasure_retrain"] == "true" and tags["erasure_tombstones"] == "1"
    before = client.get_run(first.run_id).data.tags
    assert (before["erasure_tombstones"], before["erasure_retrain"]) == ("0", "false")
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
    assert "saw an erased user" in second.tags["gate.reason"]


# ------------------------------------------------------------------------------------------------ unit level

DAY = dt.date(2026, 11, 21)
GONE = "gone-7"


def event(user: str, item: str = "i1", ts: str = "2026-11-21T10:00:00Z") -> str:
    return json.dumps({"user_id": user, "item_id": item, "event_type": "view", "value": None, "timestamp": ts})


def land(settings: object, name: str, lines: list[str]) -> Path:
    path = Catalog.of(settings).landing_dir("events") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def tombstone(settings: object, *users: str) -> None:
    """Record closed tombstones for the users, as a finished `forget` leaves them."""
    from pipeline.erasure.identity import create_key, user_hash

    catalog = Catalog.of(settings)
    key = create_key(catalog.erasure_key)
    hashes = [user_hash(key, u) for u in users]
    now = dt.datetime.now(dt.UTC)
    tombstones.add_tombstones(catalog.warehouse, hashes, "tester", "unit test", now)
    tombstones.mark_erased(catalog.warehouse, hashes, now)


@pytest.fixture
def small_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home whose tiny landing files may quarantine a large share of their rows."""
    monkeypatch.setenv("NIGHTLY_RECS_QUARANTINE_THRESHOLD", "0.5")
    return home


@pytest.fixture
def gone_home(small_home: Path) -> object:
    """A home whose landing files name an erased user in every way a row can: accepted, duplicated, invalid,
    unparsable (JSONL and CSV), next to other users (one whose id only starts with the erased one)."""
    settings = load_settings()
    land(settings, f"{DAY}.jsonl", [
        event("u1"), event(f" {GONE} "), event(GONE), event(GONE, ts="not-a-date"),
        '{"user_id": "' + GONE + '", "item_id": ', event("u2", ts="not-a-date"), event("u1"), event(GONE + "7"),
    ])
    land(settings, f"{DAY}-b.csv", ["user_id,item_id,event_type,value,timestamp",
                                    f"{GONE},i2,view,,2026-11-21T11:00:00Z", f"{GONE};i9;bad",
                                    "u3,i3,view,,2026-11-21T11:00:00Z"])
    tombstone(settings, GONE)
    return settings


def test_ingest_drops_an_erased_users_rows_and_counts_them_forgotten(gone_home: object) -> None:
    from pipeline.stages import stage_ingest

    summary = stage_ingest(gone_home, DAY)["events"]
    assert summary["rows_read"] == 11
    assert (summary["accepted"], summary["quarantined"], summary["duplicates"], summary["forgotten"]) == (3, 1, 1, 6)
    assert summary["rows_read"] == summary["accepted"] + summary["quarantined"] + summary["duplicates"] + \
        summary["forgotten"]
    ledger = warehouse_rows(gone_home.home, "select source_file, rows_read, accepted, quarantined, duplicates, "
                                            "forgotten from ingest_ledger order by source_file")
    assert [(r[0], r[5]) for r in ledger] == [(f"{DAY}-b.csv", 2), (f"{DAY}.jsonl", 4)]
    assert all(r[1] == r[2] + r[3] + r[4] + r[5] for r in ledger)
    users = {u for (u,) in lake_query(gone_home, "select user_id from {interactions}")}
    raw = [r for (r,) in lake_query(gone_home, "select raw from {quarantine}")]
    assert users == {"u1", "u3", GONE + "7"}
    assert len(raw) == 1 and GONE not in raw[0], "the raw text of a forgotten row is never kept"


def test_ingest_refuses_tombstones_without_their_key(gone_home: object) -> None:
    from pipeline.erasure.identity import ErasureKeyError
    from pipeline.ingest import ingest

    Catalog.of(gone_home).erasure_key.unlink()
    with pytest.raises(ErasureKeyError, match="erasure key .* is missing"):
        ingest(gone_home, DAY)


def test_an_interrupted_forget_blocks_the_night_until_a_rerun_completes_it(
    small_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pipeline.erasure.lineage import ErasurePendingError
    from pipeline.stages import stage_ingest

    settings = load_settings()
    land(settings, f"{DAY}.jsonl", [event("u1"), event(GONE), event(GONE, ts="not-a-date")])
    stage_ingest(settings, DAY)
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{GONE}\n\n")

    def crash(path: Path) -> int:
        raise OSError("injected: disk full while rebuilding the warehouse")

    with monkeypatch.context() as patched, pytest.raises(OSError, match="injected"):
        patched.setattr("pipeline.erasure.tombstones.compact", crash)
        main(["forget", "--file", str(ids), "--reason", "r"])
    home = small_home
    [(erased_at,)] = warehouse_rows(home, "select erased_at from tombstones")
    assert erased_at is None, "the tombstone stays pending until every step is done"
    with pytest.raises(ErasurePendingError, match="rerun `nightly-recs forget`"):
        stage_ingest(settings, DAY)
    assert holders(home, GONE) == [], "the files already rewritten are whole, without the user"

    assert main(["forget", "--user", GONE, "--reason", "r"]) == 0
    assert main(["forget", "--user", GONE, "--reason", "again"]) == 0, "idempotent"
    [(count, closed, reason)] = warehouse_rows(home, "select count(*), count(erased_at), min(reason) from tombstones")
    assert (count, closed, reason) == (1, 1, "r")
    assert stage_ingest(settings, DAY)["events"]["status"] == "noop"


def test_compact_leaves_no_deleted_value_in_the_warehouse_file(tmp_path: Path) -> None:
    from pipeline import warehouse

    path = tmp_path / "wh.duckdb"
    with warehouse.connect(path) as con:
        con.execute("""insert into recommendations (dt, user_id, rank, item_id, score, source, generated_at)
                       select date '2026-11-20', 'user-' || lpad(cast(i % 500 as varchar), 4, '0'), i,
                              'item-' || i, 1.0, 'model', now()
                       from range(20000) as t(i)""")
        con.execute("insert into runs values (date '2026-11-20', 'publish', 'failed', null, now(), now(), "
                    "'{\"error\": \"rule violated, e.g. user ''user-0042''\"}')")
    assert b"user-0042" in path.read_bytes()
    assert tombstones.erase_users(path, ["user-0042"]) == 40
    tombstones.compact(path)
    assert b"user-0042" not in path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wh.duckdb"]
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("select free_blocks from pragma_database_size()").fetchone()[0] == 0
        assert con.execute("select count(*) from recommendations_latest").fetchone()[0] == 20000 - 40
        assert "[erased]" in con.execute("select details from runs").fetchone()[0]


def test_text_files_are_redacted_by_whole_token_and_json_stays_valid(home: Path) -> None:
    from pipeline.erasure.rewrite import redact_files, redact_text

    assert redact_text(f"{GONE} {GONE}7 x{GONE} [{GONE}]", [GONE]) == f"[erased] {GONE}7 x{GONE} [[erased]]"
    catalog = Catalog.of(load_settings())
    gate = catalog.candidates_dir(DAY) / "c1" / "gate.json"
    gate.parent.mkdir(parents=True)
    gate.write_text(json.dumps({"reason": f"rule broken, e.g. user '{GONE}'", "n": 7}))
    log_file = catalog.airflow_home / "logs" / "attempt=1.log"
    log_file.parent.mkdir(parents=True)
    log_file.write_text(f"scored {GONE}7\nerror for {GONE}\n")
    weights = catalog.candidates_dir(DAY) / "c1" / "model.pt"
    weights.write_bytes(b"\x00" + GONE.encode() + b"\x01")
    assert redact_files(catalog, [GONE]) == {"files_redacted": 2, "binary_files_flagged": 1}
    assert json.loads(gate.read_text()) == {"reason": "rule broken, e.g. user '[erased]'", "n": 7}
    assert log_file.read_text() == f"scored {GONE}7\nerror for [erased]\n"
    assert weights.read_bytes() == b"\x00" + GONE.encode() + b"\x01", "binary files are flagged, not changed"


def test_the_forget_users_dag_erases_through_the_same_stage(airflow_db: Path, small_home: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions.param import ParamsDict, ParamValidationError

    from pipeline.stages import stage_ingest

    settings = load_settings()
    land(settings, f"{DAY}.jsonl", [event("u1"), event(GONE), event(GONE, ts="not-a-date")])
    stage_ingest(settings, DAY)
    bag = DagBag(dag_folder=str(Path(__file__).resolve().parent.parent / "dags" / "forget_users.py"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["forget_users"]
    [task] = dag.tasks
    assert task.execution_timeout is not None and task.retry_exponential_backoff
    params = ParamsDict(dag.params)
    with pytest.raises(ParamValidationError, match="user_ids"):
        params.validate()  # no ids: the trigger form refuses the run

    run = dag.test(run_conf={"user_ids": [GONE], "reason": "ticket 7"})
    assert str(run.state) == "success"
    [(requester, reason, erased_at)] = warehouse_rows(small_home, "select requester, reason, erased_at from tombstones")
    assert (requester, reason) == ("dag_test", "ticket 7") and erased_at is not None
    assert holders(small_home, GONE) == []
