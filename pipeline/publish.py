"""Publishing: validate the night's recommendations, then swap them in atomically.

Validation rules live in sql/checks/ (one rule per file, each returning its violating rows, user first);
any violation blocks publishing with a message that names every broken rule, how many rows break it and
an example user. Nothing is written before validation passes.

Publishing a data date D, in this order:
0. take the date's lock: one writer per date, so a backfill beside the nightly run waits instead of
   interleaving. With a PostgreSQL warehouse it is an advisory lock there (workers that share no disk see it);
   otherwise an exclusive `flock` on <home>/locks/publish-dt=D.lock. Either is released when its holder dies,
   so a killed writer never blocks the next one;
1. in one warehouse transaction (DuckDB or PostgreSQL), delete the D slice of `recommendations` and bulk-load
   the night, then commit;
2. replace date D of the lake's Delta table `recommendations` in one commit (pipeline.lake).
A crash (even SIGKILL) before the warehouse commit leaves the warehouse as it was; the database's write-ahead
log makes the commit all-or-nothing (PostgreSQL readers see the previous night or the new one, and never wait
for it); a crash between the two commits leaves the warehouse new and the lake's date old (a Delta commit is
all-or-nothing too: data files a killed writer left belong to no version and housekeeping vacuums them), and
rerunning D replaces both. The warehouse is the consumers' source of truth.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import lake, storage, warehouse
from pipeline.catalog import Catalog
from pipeline.sql import relation

log = logging.getLogger(__name__)

CHECKS = (
    "valid_values",
    "expected_users",
    "rows_per_user",
    "unique_items",
    "ranks_contiguous",
    "scores_non_increasing",
    "no_seen_items",
    "catalog_only",
    "reason_in_history",
)
CANDIDATE_COLUMNS = ("user_id", "rank", "item_id", "score", "source", "reason_item_id")
OPTIONAL_COLUMNS = {"reason_item_id": pa.string()}  # a staged table without them gets nulls
PUBLISHED_SCHEMA = pa.schema(
    [
        ("dt", pa.date32()),
        ("user_id", pa.string()),
        ("rank", pa.int32()),
        ("item_id", pa.string()),
        ("score", pa.float64()),
        ("source", pa.string()),
        ("reason_item_id", pa.string()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("generated_at", pa.timestamp("us", tz="UTC")),
    ]
)
LOCK_WAIT_S = 1800.0  # how long a publish waits for another writer of the same date

Checkpoint = Callable[[str], None]  # called with a step name; tests use it to kill the process at that step


class PublishValidationError(ValueError):
    """The recommendations broke one or more publishing rules; nothing was published."""

    def __init__(self, violations: dict[str, tuple[int, dict[str, Any]]]) -> None:
        self.violations = violations  # rule -> (violating rows, first violating row)
        parts = [f"rule {rule!r} violated by {n} rows, e.g. user {row.get('user_id')!r}: {row}"
                 for rule, (n, row) in violations.items()]
        super().__init__("recommendations not published: " + "; ".join(parts))


def validate(
    candidate: pa.Table, expected_users: list[str], seen: pa.Table, catalog_ids: list[str], top_n: int
) -> None:
    """Run every rule of sql/checks on the candidate table; raise PublishValidationError naming each broken
    rule with an example user. `seen` has (user_id, item_id); `expected_users` are the users to serve."""
    assert top_n >= 1, f"top_n must be >= 1, got {top_n}"
    candidate = with_optional_columns(candidate)
    missing = set(CANDIDATE_COLUMNS) - set(candidate.column_names)
    if missing:
        raise ValueError(f"candidate table lacks columns {sorted(missing)}; it has {candidate.column_names}")
    violations: dict[str, tuple[int, dict[str, Any]]] = {}
    con = duckdb.connect()
    try:
        con.register("candidate", candidate.select(list(CANDIDATE_COLUMNS)))
        con.register("expected_users", pa.table({"user_id": pa.array(expected_users, pa.string())}))
        con.register("seen", seen.select(["user_id", "item_id"]))
        con.register("catalog", pa.table({"item_id": pa.array(catalog_ids, pa.string())}))
        for rule in CHECKS:
            rel = relation(con, f"checks/{rule}", {"top_n": top_n})
            [(n_bad,)] = rel.aggregate("count(*)").fetchall()
            if n_bad:
                [first] = rel.limit(1).fetchall()
                violations[rule] = (int(n_bad), dict(zip(rel.columns, first, strict=True)))
    finally:
        con.close()
    if violations:
        raise PublishValidationError(violations)
    log.info("validated %d recommendations for %d users: all %d rules hold", candidate.num_rows,
             len(expected_users), len(CHECKS))


def with_optional_columns(table: pa.Table) -> pa.Table:
    """The table with every optional candidate column it lacks added as nulls (tables staged before reasons)."""
    for name, kind in OPTIONAL_COLUMNS.items():
        if name not in table.column_names:
            table = table.append_column(pa.field(name, kind), pa.nulls(table.num_rows, kind))
    return table


def night_table(
    table: pa.Table, data_date: dt.date, model_name: str, model_version: str | None, generated_at: dt.datetime
) -> pa.Table:
    """The candidate (user_id, rank, item_id, score, source) with the published table's columns added."""
    n = table.num_rows
    body = with_optional_columns(table).select(list(CANDIDATE_COLUMNS))
    columns = {
        "dt": pa.array([data_date] * n, pa.date32()),
        **{name: body[name] for name in CANDIDATE_COLUMNS},
        "model_name": pa.array([model_name] * n, pa.string()),
        "model_version": pa.array([model_version] * n, pa.string()),
        "generated_at": pa.array([generated_at] * n, pa.timestamp("us", tz="UTC")),
    }
    return pa.table(columns).cast(PUBLISHED_SCHEMA)


def publish(
    catalog: Catalog,
    data_date: dt.date,
    table: pa.Table,
    model_name: str,
    model_version: str | None,
    generated_at: dt.datetime | None = None,
    checkpoint: Checkpoint | None = None,
    lock_wait_s: float = LOCK_WAIT_S,
) -> dict[str, Any]:
    """Write a validated table for data_date to the lake and the warehouse, replacing that date only.

    Call validate() first (publish_validated does both). `checkpoint(step)` is called after each step
    ("locked", "rows_inserted" inside the open transaction, "committed", "lake_committed"). Waits at most
    lock_wait_s for another writer of the same date (PublishLockedError after that).
    """
    step = checkpoint or (lambda _name: None)
    generated_at = generated_at or dt.datetime.now(dt.UTC)
    night = night_table(table, data_date, model_name, model_version, generated_at)
    warehouse_path = catalog.warehouse
    with publish_lock(catalog, data_date, lock_wait_s):
        step("locked")
        rows = _replace_slice(warehouse_path, data_date, night, step)
        step("committed")
        version = lake.replace_dates(catalog, "recommendations", [data_date], night)
        step("lake_committed")
    users = pc.count_distinct(night["user_id"]).as_py()
    lake_table = str(catalog.lake_table("recommendations"))
    log.info("published %d recommendations for %d users on %s to %s (version %d) and %s", rows, users, data_date,
             lake_table, version, warehouse.describe(warehouse_path))
    return {"rows": rows, "users": users, "lake_table": lake_table, "lake_version": version,
            "warehouse": warehouse.describe(warehouse_path), "generated_at": generated_at.isoformat()}


class PublishLockedError(RuntimeError):
    """Another writer held the date's publish lock for longer than the wait allowed."""


def publish_lock(catalog: Catalog, data_date: dt.date, wait_s: float) -> contextlib.AbstractContextManager[None]:
    """One writer per date: a PostgreSQL advisory lock when the warehouse is PostgreSQL (workers that share no
    disk see the same lock), else a flock on the home's lock file."""
    if warehouse.is_postgres(catalog.warehouse):
        return warehouse.advisory_lock(catalog.warehouse, f"publish {data_date.isoformat()}", wait_s,
                                       PublishLockedError)
    return date_lock(catalog.publish_lock(data_date), data_date, wait_s)


@contextlib.contextmanager
def date_lock(path: Path, data_date: dt.date, wait_s: float) -> Iterator[None]:
    """Hold an exclusive flock on `path` (one writer per date); wait up to wait_s, polling with backoff."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline, delay = time.monotonic() + wait_s, 0.05
    with path.open("a+") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise PublishLockedError(f"recommendations for {data_date}: another publish holds {path} "
                                             f"(waited {wait_s:.0f} s)") from None
                log.info("a publish of %s is in progress; waiting for %s", data_date, path)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _replace_slice(location: Path | str, data_date: dt.date, night: pa.Table, step: Checkpoint) -> int:
    """Delete the date's rows and load the night in one transaction; returns the date's row count."""
    with warehouse.connect(location) as wh, wh.transaction():
        rows = warehouse.replace_date(wh, "recommendations", "dt", data_date, night)
        step("rows_inserted")
    return rows


def validation_inputs(catalog: Catalog, data_date: dt.date) -> tuple[list[str], pa.Table, list[str]]:
    """What the publishing rules check against, each mart read once: the users to serve (active users with a
    history, as scoring selects them), their seen items (user_id, item_id) and the item ids that may be
    recommended (the catalog without items marked removed)."""
    activity = storage.read_table(catalog.mart(data_date, "user_activity"), columns=["user_id", "is_active"])
    active = set(activity.filter(activity["is_active"]).column("user_id").to_pylist())
    users = [u for u in storage.read_table(catalog.mart(data_date, "user_sequences"), columns=["user_id"])
             .column("user_id").to_pylist() if u in active]
    seen = storage.read_table(catalog.mart(data_date, "user_seen_items"), columns=["user_id", "item_id"])
    return users, seen, recommendable_items(catalog, data_date)


def recommendable_items(catalog: Catalog, data_date: dt.date) -> list[str]:
    """The item_catalog's item ids without items marked removed (sql/marts/item_catalog.sql is_removed)."""
    items = storage.read_table(catalog.mart(data_date, "item_catalog"), columns=["item_id", "is_removed"])
    return sorted(items.filter(pc.invert(items["is_removed"])).column("item_id").to_pylist())


def publish_validated(
    catalog: Catalog,
    data_date: dt.date,
    table: pa.Table,
    expected_users: list[str],
    seen: pa.Table,
    catalog_ids: list[str],
    top_n: int,
    model_name: str,
    model_version: str | None,
    checkpoint: Checkpoint | None = None,
) -> dict[str, Any]:
    """validate() then publish(): a table that breaks a rule publishes nothing."""
    validate(table, expected_users, seen, catalog_ids, top_n)
    return publish(catalog, data_date, table, model_name, model_version,
                   checkpoint=checkpoint)
