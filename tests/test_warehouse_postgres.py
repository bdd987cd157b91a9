"""The warehouse in PostgreSQL (a real server started by the tests): the ingest ledger keeps its promises there,
a consumer reading during a publish is never blocked and never sees half a night, and the schema is created
once (its DDL never queues behind a reader). Publishing's rerun and SIGKILL tests run on both backends in
tests/test_publish.py."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import psycopg
import pytest
from conftest import SMALL_START, write_small_demo
from test_publish import large_night

from pipeline import warehouse
from pipeline.catalog import Catalog
from pipeline.config import load_settings
from pipeline.ingest import ingest
from pipeline.publish import publish

NIGHT = dt.date(2026, 10, 10)
USERS = 20_000  # 200,000 rows: a publish long enough for a reader to overlap it


def catalog_for(home: Path, uri: str) -> Catalog:
    return Catalog.of(load_settings(env={}, home=home, warehouse_uri=uri))


def test_ingest_ledger_matches_duckdb_and_reruns_are_noops(tmp_path: Path, postgres_database: str) -> None:
    landing = tmp_path / "landing"
    write_small_demo(landing, days=4)
    day = SMALL_START + dt.timedelta(days=3)
    ledgers = {}
    for name, uri in (("duckdb", ""), ("postgresql", postgres_database)):
        settings = load_settings(env={}, home=tmp_path / name, landing_dir=landing, warehouse_uri=uri)
        first = ingest(settings, day)
        again = ingest(settings, day)
        assert again["events"]["status"] == "noop" and again["ingested_dates"] == []
        assert first["events"]["accepted"] == again["events"]["accepted"] > 0
        with warehouse.connect(Catalog.of(settings).warehouse) as wh:
            ledgers[name] = sorted(wh.execute(
                "select dt, kind, source_file, checksum, rows_read, accepted, quarantined, duplicates, status, "
                "top_reasons from ingest_ledger").fetchall())
            baseline = wh.query("ingest/volume_baseline", {"kind": "events", "data_date": day, "days": 7})
        assert baseline[0][0] == first["events"]["accepted"] and baseline[0][2] == 3
    assert ledgers["postgresql"] == ledgers["duckdb"]


def test_consumer_during_publish_is_never_blocked_and_never_sees_a_mix(tmp_path: Path,
                                                                       postgres_database: str) -> None:
    catalog = catalog_for(tmp_path, postgres_database)
    publish(catalog, NIGHT, large_night(USERS, 0), "test-recs", "1")
    rows = USERS * 10

    # a consumer (e.g. a BI tool) holds a snapshot transaction open on the table for the whole publish
    consumer = psycopg.connect(postgres_database)
    consumer.execute("begin isolation level repeatable read")
    assert consumer.execute("select count(*), min(model_version), max(model_version) from recommendations_latest"
                            ).fetchone() == (rows, "1", "1")
    seen: list[tuple] = []
    done = threading.Event()

    def poll() -> None:  # a second consumer reads again and again (each statement its own snapshot)
        with psycopg.connect(postgres_database, autocommit=True) as con:
            while not done.is_set():
                seen.append(con.execute("select count(*), count(distinct model_version), min(model_version) "
                                        "from recommendations where dt = %s", (NIGHT,)).fetchone())

    poller = threading.Thread(target=poll)
    poller.start()
    publisher = threading.Thread(target=publish, args=(catalog, NIGHT, large_night(USERS, 5), "test-recs", "2"))
    publisher.start()
    publisher.join(timeout=300)
    done.set()
    poller.join(timeout=60)
    try:
        assert not publisher.is_alive(), "the publish waited on the consumer's open transaction"
        # the open snapshot still sees the previous night, whole
        assert consumer.execute("select count(*), min(model_version), max(model_version) from recommendations"
                                ).fetchone() == (rows, "1", "1")
    finally:
        consumer.rollback()
        consumer.close()
    assert seen and set(seen) <= {(rows, 1, "1"), (rows, 1, "2")}, set(seen)
    with warehouse.connect(catalog.warehouse) as wh:
        assert wh.execute("select count(*), min(model_version) from recommendations_latest").fetchone() == (rows, "2")


def test_schema_is_created_once_with_indexes_for_lookups(postgres_database: str) -> None:
    with warehouse.connect(postgres_database):
        pass
    with psycopg.connect(postgres_database, autocommit=True) as con:
        indexes = {name for (name,) in con.execute("select indexname from pg_indexes where tablename = "
                                                   "'recommendations'").fetchall()}
        assert {"recommendations_dt_user", "recommendations_user_dt"} <= indexes
        # a reader holding the table: opening the warehouse again must not try DDL (it would wait for the lock)
        reader = psycopg.connect(postgres_database)
        reader.execute("select count(*) from recommendations").fetchone()
        opened: list[tuple] = []

        def reopen() -> None:
            with warehouse.connect(postgres_database) as wh:
                opened.append(wh.execute("select count(*) from recommendations").fetchone())

        opener = threading.Thread(target=reopen)
        opener.start()
        opener.join(timeout=60)
        blocked = opener.is_alive()
        reader.rollback()  # releases a waiting DDL, if any, so the thread ends
        reader.close()
        opener.join()
        assert not blocked and opened == [(0,)]


@pytest.mark.parametrize("uri", ["postgresql://u:secret@h:5432/db", "postgres://u@h/db"])
def test_postgres_locations_are_recognised_and_logged_without_password(uri: str) -> None:
    assert warehouse.is_postgres(uri)
    assert "secret" not in warehouse.describe(uri)
