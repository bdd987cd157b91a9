"""Features: run the layered SQL in sql/ over the lake and write each mart as Parquet for the night.

Layers: staging (only place that reads the lake) -> intermediate -> marts. Every mart is checked for its
grain (unique keys, no null keys, at least one row) before it is written; a failed check stops the night.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from pipeline.config import Settings
from pipeline.sql import check_grain, create_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Model:
    """One SQL model: the table it creates from sql/<path>.sql and its grain."""

    path: str
    keys: tuple[str, ...] = ()
    not_null: tuple[str, ...] = ()
    allow_empty: bool = False

    @property
    def table(self) -> str:
        return self.path.rsplit("/", 1)[-1]


# In dependency order. Marts (with keys) are checked and written to the lake.
MODELS = (
    Model("staging/stg_lake_interactions"),
    Model("staging/stg_lake_items"),
    Model("intermediate/int_user_events"),
    Model("marts/item_catalog", keys=("item_id",), not_null=("title",)),
    Model("marts/user_sequences", keys=("user_id",), not_null=("item_ids", "last_event_ts")),
    Model("marts/split_leave_one_out", keys=("user_id",), not_null=("train_items", "valid_item", "test_item")),
    Model("marts/split_temporal", keys=("user_id",), not_null=("history_items", "target_item"), allow_empty=True),
    Model("marts/item_popularity", keys=("item_id",), not_null=("events_all",)),
    Model("marts/user_activity", keys=("user_id",), not_null=("n_events", "is_active")),
    Model("marts/user_seen_items", keys=("user_id", "item_id")),
)
MARTS = tuple(m for m in MODELS if m.path.startswith("marts/"))


def features_dir(lake_dir: Path, data_date: dt.date) -> Path:
    return lake_dir / "features" / f"dt={data_date.isoformat()}"


def mart_path(lake_dir: Path, data_date: dt.date, mart: str) -> Path:
    return features_dir(lake_dir, data_date) / f"{mart}.parquet"


def build_features(
    con: duckdb.DuckDBPyConnection, lake_dir: Path, data_date: dt.date, max_history: int, active_days: int
) -> dict[str, int]:
    """Create every model as a table on `con` and check the marts' grain; returns row counts per model."""
    params: dict[str, Any] = {
        "interactions_glob": str(lake_dir / "interactions" / "*" / "*.parquet"),
        "items_glob": str(lake_dir / "items" / "*" / "*.parquet"),
        "run_date": data_date,
        "split_date": data_date,
        "max_history": max_history,
        "active_days": active_days,
    }
    counts: dict[str, int] = {}
    for model in MODELS:
        counts[model.table] = create_table(con, model.table, model.path, params)
        if model.keys and not (model.allow_empty and counts[model.table] == 0):
            check_grain(con, model.table, list(model.keys), list(model.not_null))
    return counts


def run_features(settings: Settings, data_date: dt.date) -> dict[str, Any]:
    """Build the night's marts and write them to lake/features/dt=D/<mart>.parquet (atomic per file)."""
    con = duckdb.connect()
    try:
        con.execute("set TimeZone = 'UTC'")
        max_history = max(200, settings.max_len + 2)
        counts = build_features(con, settings.lake_dir, data_date, max_history, settings.active_days)
        out = features_dir(settings.lake_dir, data_date)
        out.mkdir(parents=True, exist_ok=True)
        for mart in MARTS:
            target = out / f"{mart.table}.parquet"
            tmp = out / f".{mart.table}.{uuid.uuid4().hex}.tmp"
            con.table(mart.table).write_parquet(str(tmp), compression="zstd")
            tmp.replace(target)
    finally:
        con.close()
    log.info("features for %s: %s", data_date, counts)
    return {"features_dir": str(out), "counts": {m.table: counts[m.table] for m in MARTS}}
