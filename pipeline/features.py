"""Features: run the layered SQL in sql/ over the lake and write each mart as Parquet for the night.

Layers: staging (only place that reads the lake) -> intermediate -> marts. Every mart is checked for its
grain (unique keys, no null keys, at least one row) before it is written; a failed check stops the night.
The item text that gets embedded is built in SQL (item_catalog.text) from the configurable text template.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from pipeline import lake, storage
from pipeline.catalog import Catalog
from pipeline.config import DEFAULT_TEXT_TEMPLATE, TEMPLATE_FIELDS, Settings
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


# In dependency order. Every model with keys is checked; marts are also written to the lake.
# The temporal split may be empty (no history before the split date yet, or nobody active on it).
MODELS = (
    Model("staging/stg_lake_interactions"),
    Model("staging/stg_lake_items"),
    Model("intermediate/int_user_events", keys=("event_id",), not_null=("user_id", "item_id", "position")),
    Model("marts/item_catalog", keys=("item_id",), not_null=("title", "text")),
    Model("marts/user_sequences", keys=("user_id",), not_null=("item_ids", "last_event_ts")),
    Model("marts/split_leave_one_out", keys=("user_id",),
          not_null=("train_items", "valid_item", "test_item")),
    Model("marts/split_temporal", keys=("user_id",),
          not_null=("history_items", "seen_items", "target_item", "target_items"), allow_empty=True),
    Model("marts/split_temporal_train", keys=("user_id",), not_null=("item_ids",), allow_empty=True),
    Model("marts/item_popularity", keys=("item_id",), not_null=("events_all", "events_7d", "events_30d")),
    Model("marts/user_activity", keys=("user_id",), not_null=("n_events", "is_active")),
    Model("marts/user_seen_items", keys=("user_id", "item_id")),
)
MARTS = tuple(m for m in MODELS if m.path.startswith("marts/"))


def template_parts(template: str) -> list[str]:
    """Split a text template like "{title}. {genres}" into literals and placeholders for item_catalog.sql.

    Only bare placeholders of TEMPLATE_FIELDS are allowed (no format specs, no literal braces), so the SQL
    rendering and Python's str.format agree.
    """
    parts: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"text_template {template!r}: {err}") from err
    for literal, field, spec, conversion in parsed:
        if "{" in literal or "}" in literal:
            raise ValueError(f"text_template {template!r}: literal braces are not supported")
        if literal:
            parts.append(literal)
        if field is None:
            continue
        if field not in TEMPLATE_FIELDS or spec or conversion:
            raise ValueError(f"text_template {template!r}: unsupported placeholder {{{field}}}; "
                             f"use one of {list(TEMPLATE_FIELDS)}")
        parts.append("{" + field + "}")
    if not any(p.startswith("{") for p in parts):
        raise ValueError(f"text_template {template!r} uses no item field")
    return parts


def build_features(
    con: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    data_date: dt.date,
    max_history: int,
    active_days: int,
    text_template: str = DEFAULT_TEXT_TEMPLATE,
    split_date: dt.date | None = None,
) -> dict[str, int]:
    """Create every model as a table on `con` and check its grain; returns row counts per model.

    The temporal split trains on events before `split_date` (default: the data date), evaluates on its events.
    Raises GrainCheckError (naming the table and column) when a model breaks its grain.
    """
    params: dict[str, Any] = {
        "run_date": data_date,
        "split_date": split_date or data_date,
        "max_history": max_history,
        "active_days": active_days,
        "text_template_parts": template_parts(text_template),
    }
    for table in ("interactions", "items"):
        if not lake.register(con, catalog, table, f"lake_{table}"):
            raise FileNotFoundError(f"the lake has no {table} table at {catalog.lake_table(table)}: ingest first")
    counts: dict[str, int] = {}
    for model in MODELS:
        counts[model.table] = create_table(con, model.table, model.path, params)
        if model.keys and not (model.allow_empty and counts[model.table] == 0):
            check_grain(con, model.table, list(model.keys), list(model.not_null))
    return counts


def run_features(settings: Settings, data_date: dt.date) -> dict[str, Any]:
    """Build the night's marts and write them to features/dt=D/<mart>.parquet under the lake (the local folder
    or `lake_uri`), atomic per file.

    Each mart goes DuckDB -> Arrow -> pipeline.storage's writer: one writer for local disk and object storage.
    A mart is held in memory as Arrow while it is written, which is bounded by the largest mart of a night;
    DuckDB itself stays under `features_memory_mb`."""
    # a database file in the task's scratch folder rather than memory: the staging and intermediate tables of a
    # large history are evicted to it under the memory limit instead of failing the night
    work = Path(tempfile.mkdtemp(prefix="features-"))
    con = duckdb.connect(str(work / "features.duckdb"))
    try:
        con.execute("set TimeZone = 'UTC'")
        con.execute("set memory_limit = $limit", {"limit": f"{settings.ingest.features_memory_mb}MB"})
        con.execute("set temp_directory = $dir", {"dir": str(work / "spill")})
        con.execute("set preserve_insertion_order = false")  # the marts order themselves; lets DuckDB spill
        max_history = max(200, settings.model.max_len + 2)
        catalog = Catalog.of(settings)
        counts = build_features(con, catalog, data_date, max_history, settings.serving.active_days,
                                settings.model.text_template)
        out = catalog.features_dir(data_date)
        for mart in MARTS:
            storage.write_table(con.table(mart.table).to_arrow_table(), catalog.mart(data_date, mart.table))
    finally:
        con.close()
        shutil.rmtree(work, ignore_errors=True)
    log.info("features for %s: %s", data_date, counts)
    return {"features_dir": str(out), "counts": {m.table: counts[m.table] for m in MARTS}}
