"""The warehouse: the published tables and the ledgers, in a DuckDB file (the default) or in PostgreSQL.

`warehouse_uri` picks the backend: empty means the DuckDB file at `warehouse_path`; a `postgresql://` URI means
that database. Both hold the same schema:

- ``ingest_ledger`` (one row per landing file per ingest), ``runs`` (one row per stage run),
- ``recommendations`` (one row per dt, user, rank) and the view ``recommendations_latest`` (the newest
  published date that has ended, UTC); in PostgreSQL with indexes for the consumers' lookups (by user, by date);
- ``tombstones`` (one row per erased user: the keyed hash of the id, never the id; see pipeline.erasure).

Code talks to either through `Warehouse`: `execute` runs a query written with DuckDB-style named parameters
(``$name``, translated for psycopg), `query` runs sql/<name>.sql, `append` bulk-loads an Arrow table (DuckDB:
Arrow scan; PostgreSQL: COPY of CSV written by Arrow, never row inserts) and `transaction` makes a block
all-or-nothing. Queries kept here and in sql/ingest are portable (no QUALIFY, no DuckDB-only types).

PostgreSQL readers never block a publish and never see half of one: a publish is one transaction (MVCC), and
the schema DDL, which takes exclusive locks, runs only when the recorded schema version differs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.sql import bind, load_query, used_params

if TYPE_CHECKING:  # pyarrow, duckdb and psycopg are imported where used: DAG parsing imports this module
    import pyarrow as pa

log = logging.getLogger(__name__)

TABLES = [
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
        score double precision not null,
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
]
# the newest date that has ended (UTC): a date published ahead of time (allow_future_dates) never pins it
LATEST_VIEW = """create or replace view recommendations_latest as
    select * from recommendations
    where dt = (select max(dt) from recommendations where dt < {today})"""
DUCKDB_SCHEMA = [*TABLES, LATEST_VIEW.format(today="current_date")]
POSTGRES_SCHEMA = [
    *TABLES,
    LATEST_VIEW.format(today="cast(now() at time zone 'UTC' as date)"),
    "create index if not exists recommendations_dt_user on recommendations (dt, user_id)",
    "create index if not exists recommendations_user_dt on recommendations (user_id, dt)",
    "create index if not exists runs_dt_stage on runs (dt, stage)",
    "create index if not exists ingest_ledger_kind_dt on ingest_ledger (kind, dt)",
    "create table if not exists warehouse_schema (version varchar not null)",
]
SCHEMA_VERSION = hashlib.sha256("\n".join(POSTGRES_SCHEMA).encode()).hexdigest()[:16]
COPY_BATCH_ROWS = 200_000  # rows per CSV chunk streamed into COPY (bounds memory on large nights)
_PARAM = re.compile(r"\$([A-Za-z_]\w*)")


def is_postgres(location: Path | str) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


def describe(location: Path | str) -> str:
    """The location for logs and results, without a password."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", str(location))


class Warehouse:
    """One open warehouse connection; see the module docstring. Subclasses: DuckDB and PostgreSQL."""

    dialect = ""

    def execute(self, query: str, params: dict[str, Any] | None = None) -> Any:
        """Run a query with `$name` parameters; returns a cursor (fetchall/fetchone)."""
        raise NotImplementedError

    def append(self, table: str, data: pa.Table) -> None:
        """Bulk-load an Arrow table into `table` (columns matched by name)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        raise NotImplementedError
        yield  # pragma: no cover

    def query(self, name: str, params: dict[str, Any] | None = None) -> list[tuple]:
        """The rows of sql/<name>.sql with its bound parameters."""
        return self.execute(load_query(name), bind(name, params)).fetchall()

    def arrow(self, query: str, params: dict[str, Any] | None = None) -> pa.Table:
        """A (small) query result as an Arrow table."""
        import pyarrow as pa

        cursor = self.execute(query, params)
        names = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
        return pa.table({name: [r[i] for r in rows] for i, name in enumerate(names)})


class DuckDBWarehouse(Warehouse):
    dialect = "duckdb"

    def __init__(self, con: Any) -> None:
        self.con = con

    def execute(self, query: str, params: dict[str, Any] | None = None) -> Any:
        return self.con.execute(query, used_params(query, params) or None)

    def arrow(self, query: str, params: dict[str, Any] | None = None) -> pa.Table:
        return self.con.sql(query, params=used_params(query, params) or None).to_arrow_table()

    def append(self, table: str, data: pa.Table) -> None:
        view = f"_append_{table}"
        self.con.register(view, data)
        try:
            self.con.execute(f'insert into "{table}" by name select * from "{view}"')
        finally:
            self.con.unregister(view)

    def register(self, name: str, data: Any) -> None:
        """Expose an Arrow table to queries under `name` (DuckDB only; tests and local tools)."""
        self.con.register(name, data)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.con.execute("begin transaction")
        try:
            yield
        except BaseException:
            self.con.execute("rollback")
            raise
        self.con.execute("commit")


class PostgresWarehouse(Warehouse):
    dialect = "postgresql"

    def __init__(self, con: Any) -> None:
        self.con = con  # psycopg connection in autocommit mode; transaction() groups statements

    def execute(self, query: str, params: dict[str, Any] | None = None) -> Any:
        used = used_params(query, params)
        if not used:  # psycopg substitutes (and so unescapes %%) only when given parameters
            return self.con.execute(query)
        return self.con.execute(_PARAM.sub(lambda m: f"%({m.group(1)})s", query.replace("%", "%%")), used)

    def append(self, table: str, data: pa.Table) -> None:
        import pyarrow.csv as pacsv

        columns = ", ".join(f'"{name}"' for name in data.column_names)
        options = pacsv.WriteOptions(include_header=False, quoting_style="all_valid")  # null = unquoted empty
        with self.con.cursor().copy(f'copy "{table}" ({columns}) from stdin (format csv)') as copy:
            for start in range(0, data.num_rows, COPY_BATCH_ROWS):
                buffer = io.BytesIO()
                pacsv.write_csv(data.slice(start, COPY_BATCH_ROWS), buffer, options)
                copy.write(buffer.getbuffer())

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self.con.transaction():
            yield


def _open_duckdb(path: Path, read_only: bool, lock_wait_s: float) -> Any:
    """Open the DuckDB file, waiting (with backoff) while another process holds its write lock."""
    import duckdb

    path.parent.mkdir(parents=True, exist_ok=True)
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


def _migrate_postgres(wh: PostgresWarehouse) -> None:
    """Create or upgrade the schema when its recorded version differs (DDL takes exclusive locks that would
    queue behind a consumer's open transaction, so a current schema is never touched)."""
    [(exists,)] = wh.execute("select to_regclass('warehouse_schema') is not null").fetchall()
    if exists and wh.execute("select version from warehouse_schema").fetchall() == [(SCHEMA_VERSION,)]:
        return
    with wh.transaction():
        wh.execute("select pg_advisory_xact_lock(hashtext('nightly-recs warehouse schema'))")
        for ddl in POSTGRES_SCHEMA:
            wh.execute(ddl)
        wh.execute("delete from warehouse_schema")
        wh.execute("insert into warehouse_schema values ($version)", {"version": SCHEMA_VERSION})
    log.info("warehouse schema %s created or upgraded", SCHEMA_VERSION)


@contextlib.contextmanager
def connect(location: Path | str, read_only: bool = False, lock_wait_s: float = 120.0) -> Iterator[Warehouse]:
    """Open the warehouse (a DuckDB file, or a PostgreSQL URI), creating its schema on first use."""
    if is_postgres(location):
        import psycopg

        with psycopg.connect(str(location), autocommit=True, options="-c timezone=UTC") as con:
            wh = PostgresWarehouse(con)
            if not read_only:
                _migrate_postgres(wh)
            yield wh
        return
    con = _open_duckdb(Path(location), read_only, lock_wait_s)
    try:
        con.execute("set TimeZone = 'UTC'")
        if not read_only:
            for ddl in DUCKDB_SCHEMA:
                con.execute(ddl)
        yield DuckDBWarehouse(con)
    finally:
        con.close()


@contextlib.contextmanager
def advisory_lock(location: str, name: str, wait_s: float, error: type[Exception]) -> Iterator[None]:
    """Hold a PostgreSQL session advisory lock named `name` (on a connection of its own, so it is released when
    the holder exits or dies); wait up to wait_s, polling with backoff, then raise `error`."""
    import psycopg

    deadline, delay = time.monotonic() + wait_s, 0.05
    with psycopg.connect(location, autocommit=True) as con:
        while not con.execute("select pg_try_advisory_lock(hashtext(%s))", (name,)).fetchone()[0]:
            if time.monotonic() >= deadline:
                raise error(f"{name}: another writer holds the lock in {describe(location)} (waited {wait_s:.0f} s)")
            log.info("%s is in progress elsewhere; waiting", name)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        try:
            yield
        finally:
            con.execute("select pg_advisory_unlock(hashtext(%s))", (name,))


def replace_date(wh: Warehouse, table: str, column: str, day: dt.date, data: pa.Table) -> int:
    """Delete the date's rows of `table` and load `data` in the caller's transaction; returns the date's rows
    afterwards (checked against the rows loaded)."""
    wh.execute(f'delete from "{table}" where "{column}" = $day', {"day": day})
    wh.append(table, data)
    [(rows,)] = wh.execute(f'select count(*) from "{table}" where "{column}" = $day', {"day": day}).fetchall()
    if rows != data.num_rows:
        raise RuntimeError(f"{table} for {day}: {rows} rows after loading, expected {data.num_rows}")
    return int(rows)


def record_run(
    location: Path | str,
    day: dt.date,
    stage: str,
    status: str,
    started_at: dt.datetime,
    details: dict[str, Any],
    run_id: str | None = None,
) -> None:
    """Append one stage run to the `runs` ledger."""
    with connect(location) as wh:
        wh.execute(
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


def night_results(location: Path | str, day: dt.date) -> dict[str, Any]:
    """The latest recorded result of every stage for a date: its details, plus status for failures."""
    with connect(location) as wh:
        rows = wh.execute(
            """select stage, status, details from (
                   select stage, status, details,
                          row_number() over (partition by stage order by finished_at desc) as newest
                   from runs where dt = $dt) as ranked
               where newest = 1""",
            {"dt": day},
        ).fetchall()
    out: dict[str, Any] = {}
    for stage, status, details in rows:
        parsed = json.loads(details) if details else {}
        out[stage] = parsed if status == "ok" else {"status": status, **parsed}
    return out


def published_night(location: Path | str, day: dt.date) -> pa.Table:
    """The recommendations published for a date (empty when none), as Arrow, for reports to query locally."""
    with connect(location, read_only=True) as wh:
        return wh.arrow("select dt, user_id, rank, item_id, score, source, reason_item_id from recommendations "
                        "where dt = $dt order by user_id, rank", {"dt": day})


def latest_published(location: Path | str) -> dt.date | None:
    """The date `recommendations_latest` shows (the newest published date that has ended), or None."""
    with connect(location) as wh:
        (day,) = wh.execute("select max(dt) from recommendations_latest").fetchall()[0]
    return day
