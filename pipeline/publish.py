"""Publishing: validate the night's recommendations, then swap them in atomically.

Validation rules live in sql/checks/ (one rule per file); any violation blocks publishing with a message that
names the rule and an example user. Publishing writes lake/recommendations/dt=D/part-0.parquet (temp file +
rename) and replaces the D slice of the warehouse table `recommendations` inside one transaction, so readers
see either the old night or the new one, never half of it.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import warehouse
from pipeline.sql import relation

log = logging.getLogger(__name__)

CHECKS = (
    "rows_per_user",
    "unique_items",
    "ranks_contiguous",
    "scores_non_increasing",
    "no_seen_items",
    "catalog_only",
)


class PublishValidationError(ValueError):
    """The recommendations broke a publishing rule; nothing was published."""


def validate(
    candidate: pa.Table, expected_users: list[str], seen: pa.Table, catalog_ids: list[str], top_n: int
) -> None:
    """Raise PublishValidationError naming the first broken rule and an example user."""
    con = duckdb.connect()
    try:
        con.register("candidate", candidate)
        con.register("expected_users", pa.table({"user_id": pa.array(expected_users, pa.string())}))
        con.register("seen", seen.select(["user_id", "item_id"]))
        con.register("catalog", pa.table({"item_id": pa.array(sorted(catalog_ids), pa.string())}))
        for rule in CHECKS:
            rel = relation(con, f"checks/{rule}", {"top_n": top_n})
            bad = rel.fetchall()
            if bad:
                example = dict(zip(rel.columns, bad[0], strict=True))
                raise PublishValidationError(
                    f"rule {rule!r} violated ({len(bad)} rows), e.g. user {example.get('user_id')!r}: {example}"
                )
    finally:
        con.close()


def publish(
    warehouse_path: Path, lake_dir: Path, data_date: dt.date, table: pa.Table, model_name: str,
    model_version: str | None,
) -> dict[str, Any]:
    """Write the validated table for data_date to the lake and the warehouse (replacing that date only)."""
    generated_at = dt.datetime.now(dt.UTC)
    n = table.num_rows
    full = table.append_column("dt", pa.array([data_date] * n, pa.date32()))
    full = full.append_column("model_name", pa.array([model_name] * n, pa.string()))
    full = full.append_column("model_version", pa.array([model_version] * n, pa.string()))
    full = full.append_column("generated_at", pa.array([generated_at] * n, pa.timestamp("us", tz="UTC")))
    full = full.select(["dt", "user_id", "rank", "item_id", "score", "source", "model_name", "model_version",
                        "generated_at"])
    target = lake_dir / "recommendations" / f"dt={data_date.isoformat()}" / "part-0.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".part-0.{uuid.uuid4().hex}.tmp"
    pq.write_table(full, tmp, compression="zstd")
    tmp.replace(target)
    with warehouse.connect(warehouse_path) as con:
        con.register("night", full)
        con.execute("begin transaction")
        try:
            con.execute("delete from recommendations where dt = $dt", {"dt": data_date})
            con.execute("insert into recommendations select * from night")
            con.execute("commit")
        except duckdb.Error:
            con.execute("rollback")
            raise
        (rows,) = con.execute("select count(*) from recommendations where dt = $dt", {"dt": data_date}).fetchall()[0]
    log.info("published %d recommendations for %s to %s and %s", rows, data_date, target, warehouse_path)
    return {"rows": rows, "users": len(set(table.column("user_id").to_pylist())), "parquet": str(target),
            "warehouse": str(warehouse_path), "generated_at": generated_at.isoformat()}
