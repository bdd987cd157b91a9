"""The lake's tables (interactions, items, quarantine, recommendations) as Delta Lake tables, partitioned by
data date, at `lake_uri` (a local folder or `s3://bucket/prefix`; pipeline.storage has the credentials).

Why a table format: an object store has no atomic rename, so "write a temporary file, rename it over the old
one" cannot replace a date there. A Delta table replaces a date (or several) in one commit to its transaction
log (`replace_dates`: an overwrite with a `dt in (...)` predicate); a reader takes a snapshot (`dataset`) and
sees every date either before or after a commit, never half of one, on local disk and on S3 alike. Old
versions stay readable (`history`) until `vacuum` removes the files no version within the retention needs.
bench/bench_storage.py measures what this costs against plain Parquet files.

delta-rs (`deltalake`, no JVM) writes; readers get a pyarrow dataset of the snapshot, which DuckDB scans
with filter pushdown (`register`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pipeline import storage
from pipeline.catalog import Catalog

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.dataset as pads

log = logging.getLogger(__name__)

PARTITIONS = {"interactions": ["dt"], "items": ["dt"], "quarantine": ["dt", "kind"], "recommendations": ["dt"]}
COMPRESSION = "ZSTD"
# Column statistics in the transaction log only for the partition column: min/max of user ids or raw text
# would keep an erased user's id in the log after their rows are gone (pipeline.erasure); the Parquet footers
# keep their own statistics, and those files are rewritten by an erasure.
TABLE_CONFIGURATION = {"delta.dataSkippingStatsColumns": "dt"}


def _predicate(days: Iterable[dt.date], where: dict[str, str] | None) -> str:
    """`dt in ('D1', ...)` [and col = 'value' ...]: dates and code-chosen values only (no user input)."""
    listed = ", ".join(f"'{day.isoformat()}'" for day in sorted(set(days)))
    extra = "".join(f" and {column} = '{value}'" for column, value in (where or {}).items())
    return f"dt in ({listed}){extra}"


def table(catalog: Catalog, name: str) -> Any:
    """The Delta table at its latest version, or None when it has never been written."""
    from deltalake import DeltaTable

    uri = catalog.lake_table(name)
    options = storage.delta_options(uri)
    if not DeltaTable.is_deltatable(str(uri), storage_options=options):
        return None
    return DeltaTable(str(uri), storage_options=options)


def replace_dates(catalog: Catalog, name: str, days: Iterable[dt.date], data: pa.Table | pa.RecordBatchReader,
                  where: dict[str, str] | None = None) -> int:
    """Replace the rows of `days` (and of `where`'s partition values) with `data`, in one commit; a date
    without rows in `data` ends empty. Returns the table's new version."""
    from deltalake import WriterProperties, write_deltalake

    days = list(days)
    if not days:
        return -1
    uri = catalog.lake_table(name)
    write_deltalake(str(uri), data, mode="overwrite", predicate=_predicate(days, where),
                    partition_by=PARTITIONS[name], schema_mode="merge", configuration=TABLE_CONFIGURATION,
                    writer_properties=WriterProperties(compression=COMPRESSION),
                    storage_options=storage.delta_options(uri))
    version = table(catalog, name).version()
    log.info("lake %s: replaced %d date(s) %s..%s (version %d)", name, len(days), min(days), max(days), version)
    return version


def delete_dates(catalog: Catalog, name: str, days: Iterable[dt.date], where: dict[str, str] | None = None) -> None:
    """Remove the rows of `days` (and of `where`) in one commit; nothing to do on a table never written."""
    days = list(days)
    found = table(catalog, name)
    if found is not None and days:
        found.delete(_predicate(days, where))


def dates(catalog: Catalog, name: str, where: dict[str, str] | None = None) -> set[dt.date]:
    """The dates that hold rows (of `where`'s partition values) in the latest version."""
    found = table(catalog, name)
    if found is None:
        return set()
    wanted = (where or {}).items()
    return {dt.date.fromisoformat(str(p["dt"])) for p in found.partitions()
            if all(str(p.get(k)) == v for k, v in wanted)}


def dataset(catalog: Catalog, name: str) -> pads.Dataset | None:
    """A snapshot of the table (the latest version when called) as a pyarrow dataset, or None."""
    found = table(catalog, name)
    return None if found is None else found.to_pyarrow_dataset()


def read(catalog: Catalog, name: str, day: dt.date | None = None, columns: list[str] | None = None) -> pa.Table | None:
    """The table (or one date of it) as Arrow, or None when the table has never been written."""
    import pyarrow.dataset as pads

    snapshot = dataset(catalog, name)
    if snapshot is None:
        return None
    return snapshot.to_table(columns=columns, filter=None if day is None else pads.field("dt") == day)


def count(catalog: Catalog, name: str, day: dt.date) -> int:
    """Rows of one date (0 when absent)."""
    import pyarrow.dataset as pads

    snapshot = dataset(catalog, name)
    return 0 if snapshot is None else snapshot.count_rows(filter=pads.field("dt") == day)


def register(con: Any, catalog: Catalog, name: str, view: str, empty_schema: pa.Schema | None = None) -> bool:
    """Expose a snapshot of the table to a DuckDB connection as `view`; a table never written is registered as
    an empty table of `empty_schema` when given. Returns whether the table exists."""
    snapshot = dataset(catalog, name)
    if snapshot is not None:
        con.register(view, snapshot)
        return True
    if empty_schema is not None:
        con.register(view, empty_schema.empty_table())
    return False


def history(catalog: Catalog, name: str) -> list[dict[str, Any]]:
    """The table's commits, newest first (operation, version, timestamp, parameters)."""
    found = table(catalog, name)
    return [] if found is None else found.history()


def drop_rows(catalog: Catalog, name: str, doomed: Any, columns: list[str], lock: Any = None) -> int:
    """Rewrite, one commit per affected partition, every partition of the table without the rows for which
    `doomed(table)` (a boolean mask over `columns`) is true, each under `lock(day)` when given (a context
    manager); returns the rows dropped. Vacuum afterwards to remove the old files."""
    import contextlib

    import pyarrow.compute as pc

    snapshot = dataset(catalog, name)
    if snapshot is None:
        return 0
    keys = PARTITIONS[name]
    probe = snapshot.to_table(columns=[*keys, *columns])
    mask = doomed(probe)
    hits = probe.filter(mask).select(keys).group_by(keys).aggregate([([], "count_all")]).to_pylist()
    for hit in hits:
        day = hit["dt"]
        where = {k: str(hit[k]) for k in keys if k != "dt"} or None
        with lock(day) if lock else contextlib.nullcontext():
            rows = read(catalog, name, day)
            if where:
                rows = rows.filter(pc.equal(rows[keys[1]], where[keys[1]]))
            replace_dates(catalog, name, [day], rows.filter(pc.invert(doomed(rows))), where=where)
    return sum(hit["count_all"] for hit in hits)


def vacuum(catalog: Catalog, name: str, retention_hours: int) -> int:
    """Delete the files that no version within `retention_hours` needs (replaced dates, aborted writes);
    returns how many. With 0, only the latest version stays readable."""
    found = table(catalog, name)
    if found is None:
        return 0
    removed = found.vacuum(retention_hours=retention_hours, enforce_retention_duration=False, dry_run=False,
                           full=True)  # full: also files no commit ever referenced (a killed writer's)
    if removed:
        log.info("lake %s: vacuum removed %d files older than %d h", name, len(removed), retention_hours)
    return len(removed)
