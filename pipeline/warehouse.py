"""The warehouse: one DuckDB file with the published tables and the ledgers.

Tables: ``ingest_ledger`` (one row per landing file per ingest), ``runs`` (one row per stage run),
``recommendations`` (one row per dt, user, rank) and the view ``recommendations_latest`` (the newest published
date that has ended, UTC).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb

log = logging.getLogger(__name__)

SCHEMA = [
    """create table if not exists ingest_ledger (
        dt date not null,
        kind varchar not null,
        source_file varchar not null,
        checksum varchar not null,
        rows_read bigint not null,
        accepted bigint not null,
        quarantined bigint not null,
        duplicates bigint not null,
        status varchar not null,
        top_reasons varchar,
        ingested_at timestamptz not null,
        unknown_items bigint
    )""",
    """create table if not exists runs (
        dt date not null,
        stage varchar not null,
        status varchar not null,
        run_id varchar,
        started_at timestamptz not null,
        finished_at timestamptz not null,
        details varchar
    )""",
    """create table if not exists recommendations (
        dt date not null,
        user_id varchar not null,
        rank integer not null,
        item_id varchar not null,
        score double not null,
        source varchar not null,
        reason_item_id varchar,
        model_name varchar,
        model_version varchar,
        generated_at timestamptz not null
    )""",
    # warehouses created before reasons existed gain the column (null for their earlier nights)
    "alter table recommendations add column if not exists reason_item_id varchar",
    # the newest date that has ended: a date published ahead of time (allow_future_dates) never pins it
    """create or replace view recommendations_latest as
        select * from recommendations
        where dt = (select max(dt) from recommendations where dt < current_date)""",
]


def _open(path: Path, read_only: bool, lock_wait_s: float) -> duckdb.DuckDBPyConnection:
    """Open the DuckDB file, waiting (with backoff) while another process holds its write lock."""
    deadline, delay = time.monotonic() + lock_wait_s, 0.2
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as err:
            if "lock" not in str(err).lower() or time.monotonic() > deadline:
                raise
            log.info("warehouse %s is locked by another process; retrying in %.1f s", path, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


@contextlib.contextmanager
def connect(path: Path, read_only: bool = False, lock_wait_s: float = 120.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse, creating its schema on first use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = _open(path, read_only, lock_wait_s)
    try:
        con.execute("set TimeZone = 'UTC'")
        if not read_only:
            for ddl in SCHEMA:
                con.execute(ddl)
        yield con
    finally:
        con.close()


def record_run(
    path: Path,
    day: dt.date,
    stage: str,
    status: str,
    started_at: dt.datetime,
    details: dict[str, Any],
    run_id: str | None = None,
) -> None:
    """Append one stage run to the `runs` ledger."""
    with connect(path) as con:
        con.execute(
            "insert into runs values ($dt, $stage, $status, $run_id, $started, $finished, $details)",
            {
                "dt": day,
                "stage": stage,
                "status": status,
                "run_id": run_id,
                "started": started_at,
                "finished": dt.datetime.now(dt.UTC),
                "details": json.dumps(details, default=str, sort_keys=True),
            },
        )


def night_results(path: Path, day: dt.date) -> dict[str, Any]:
    """The latest recorded result of every stage for a date: its details, plus status for failures."""
    with connect(path) as con:
        rows = con.execute(
            """select stage, status, details from runs where dt = $dt
               qualify row_number() over (partition by stage order by finished_at desc) = 1""",
            {"dt": day},
        ).fetchall()
    out: dict[str, Any] = {}
    for stage, status, details in rows:
        parsed = json.loads(details) if details else {}
        out[stage] = parsed if status == "ok" else {"status": status, **parsed}
    return out


def latest_published(path: Path) -> dt.date | None:
    """The date `recommendations_latest` shows (the newest published date that has ended), or None."""
    with connect(path) as con:
        (day,) = con.execute("select max(dt) from recommendations_latest").fetchall()[0]
    return day
