"""The warehouse: one DuckDB file with the published tables and the ledgers.

Tables: ``ingest_ledger`` (one row per landing file per ingest), ``runs`` (one row per stage run),
``recommendations`` (one row per dt, user, rank), ``tombstones`` (one row per erased user: the keyed hash of the
id, never the id; see pipeline.erasure) and the view ``recommendations_latest`` (the newest published date that
has ended, UTC).

The queries are plain SQL with bound parameters (they run on PostgreSQL too), except `compact`, which rebuilds
the DuckDB file.
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

ERASED_MARK = "[erased]"  # what replaces an erased user's id in free text

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
    # erasure (pipeline.erasure): who was forgotten, by whom, why; erased_at is null until every copy is gone
    """create table if not exists tombstones (
        user_hash varchar not null,
        requested_at timestamptz not null,
        requester varchar not null,
        reason varchar,
        erased_at timestamptz
    )""",
    # rows of erased users that ingest dropped (ledgers created before erasure existed gain the column)
    "alter table ingest_ledger add column if not exists forgotten bigint",
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


# ---- erasure (pipeline.erasure) ------------------------------------------------------------------------------


def add_tombstones(path: Path, hashes: list[str], requester: str, reason: str, at: dt.datetime) -> int:
    """Record a pending tombstone for each hash that has none yet; returns how many were new."""
    added = 0
    with connect(path) as con:
        for user_hash in hashes:
            (known,) = con.execute("select count(*) from tombstones where user_hash = $h", {"h": user_hash}).fetchone()
            if not known:
                con.execute("insert into tombstones (user_hash, requested_at, requester, reason) "
                            "values ($h, $at, $requester, $reason)",
                            {"h": user_hash, "at": at, "requester": requester, "reason": reason})
                added += 1
    return added


def tombstones(path: Path) -> list[tuple[str, dt.datetime | None]]:
    """(user_hash, erased_at) of every tombstone; erased_at is None while its erasure is incomplete."""
    with connect(path) as con:
        return con.execute("select user_hash, erased_at from tombstones order by requested_at, user_hash").fetchall()


def mark_erased(path: Path, hashes: list[str], at: dt.datetime) -> None:
    """Every copy of these users is gone: close their tombstones (the first completion time is kept)."""
    with connect(path) as con:
        for user_hash in hashes:
            con.execute("update tombstones set erased_at = $at where user_hash = $h and erased_at is null",
                        {"h": user_hash, "at": at})


def erase_users(path: Path, user_ids: list[str]) -> int:
    """Delete the users' published rows and blank their ids in the ledger's free text (a failed stage's message
    may quote one), in one transaction; returns the rows deleted. Run `compact` after it."""
    deleted = 0
    with connect(path) as con:
        con.execute("begin transaction")
        try:
            for user_id in user_ids:
                (n,) = con.execute("select count(*) from recommendations where user_id = $u", {"u": user_id}).fetchone()
                con.execute("delete from recommendations where user_id = $u", {"u": user_id})
                con.execute("update runs set details = replace(details, $u, $mark) where strpos(details, $u) > 0",
                            {"u": user_id, "mark": ERASED_MARK})
                deleted += int(n)
            con.execute("commit")
        except Exception:
            con.execute("rollback")
            raise
    return deleted


def compact(path: Path) -> int:
    """Rebuild the DuckDB file so that deleted values do not linger in its free blocks (a checkpoint or VACUUM
    keeps them): copy every table and view into a fresh file beside it, then rename it over the old one while
    still holding the old file's lock, so no writer can slip in between. Returns the new file's size in bytes.
    On PostgreSQL the equivalent is VACUUM FULL of the tables erase_users changed."""
    from pipeline.atomic import PendingFile

    fresh = PendingFile(path)
    try:
        with connect(path) as con:
            con.execute("checkpoint")  # nothing of the old file is left in its write-ahead log
            [(name,)] = con.execute("select current_database()").fetchall()
            con.execute("attach $file as erasure_fresh", {"file": str(fresh.tmp)})
            con.execute(f'copy from database "{name}" to erasure_fresh')  # an identifier, not a value
            con.execute("checkpoint erasure_fresh")
            con.execute("detach erasure_fresh")
            fresh.commit()
    finally:
        fresh.discard()
    return path.stat().st_size
