"""What a night cleans up once it has published: staged tables, rejected candidates, the embedding cache.

- Staged tables (`staging/dt=D/`) only wait for validation; once D is published they are dead weight. Dates
  more than `operations.staging_keep_days` before the night are removed (0: the night's own, too).
- Candidate folders (`models/dt=D/<id>/`) of trainings the gate rejected, or that were never registered (the
  training or registration failed after saving), are removed once older than `candidate_keep_days`.
  Promoted candidates stay: they are the champions' local evidence (the registry holds the models).
- The night's marts (`features/dt=D/` under the lake folder or `lake_uri`) are derived data that any rerun
  of D rebuilds; dates more than `features_keep_days` before the night are removed.
- The lake's Delta tables keep old versions (replaced dates) readable for `lake_history_days`; files that no
  version within that window needs, and files a killed writer left, are vacuumed.
- The embedding cache gets one Parquet part per night with new texts; above `embedding_cache_max_parts`
  parts it is rewritten as one part (one row per encoder and text hash, the newest), written before the old
  parts are removed, so a reader never misses a vector.

Every removal is logged; the counts go into the night's report.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

from pipeline import lake, storage
from pipeline.catalog import LAKE_TABLES, Catalog, partition_date
from pipeline.config import OperationsSettings

log = logging.getLogger(__name__)


def _dated_folders(root: Path | str, before_or_on: dt.date) -> list[Path | str]:
    """`dt=D` folders under root (a folder or a URI) with D on or before the date, oldest first."""
    found = [(d, f) for f in storage.list_folders(root) if (d := partition_date(f)) is not None
             and d <= before_or_on]
    return [f for _, f in sorted(found, key=lambda pair: pair[0])]


def clean_staging(catalog: Catalog, data_date: dt.date, keep_days: int) -> dict[str, int]:
    """Remove staged tables of dates at least keep_days before data_date; returns files and bytes removed."""
    files = size = 0
    cutoff = data_date - dt.timedelta(days=keep_days)
    for folder in storage.list_folders(catalog.staging_root):
        day = partition_date(folder)
        if day is None or day > cutoff:
            continue
        parts = storage.list_files(folder, recursive=True)
        files += len(parts)
        size += sum(storage.size_of(p) for p in parts)
        storage.delete(folder)
        log.info("housekeeping: removed staged tables %s (%d files)", folder, len(parts))
    return {"staging_files_removed": files, "staging_bytes_removed": size}


def clean_features(catalog: Catalog, data_date: dt.date, keep_days: int) -> dict[str, int]:
    """Remove the marts of dates more than keep_days before data_date (a rerun of such a date rebuilds them),
    on local disk or object storage."""
    removed = 0
    cutoff = data_date - dt.timedelta(days=keep_days + 1)
    found = [(d, f) for f in storage.list_folders(catalog.features_root)
             if (d := partition_date(f)) is not None and d <= cutoff]
    for _, folder in sorted(found):
        storage.delete(folder)
        removed += 1
        log.info("housekeeping: removed the marts of %s", folder)
    return {"feature_dates_removed": removed}


def _rejected(candidate: Path | str) -> bool:
    """A candidate the gate did not promote, or one that never reached the gate."""
    gate = storage.child(candidate, "gate.json")
    if not storage.exists(gate):
        return True
    return not json.loads(storage.read_bytes(gate)).get("promoted", False)


def clean_candidates(catalog: Catalog, data_date: dt.date, keep_days: int) -> dict[str, int]:
    """Remove rejected or unregistered candidate folders of dates more than keep_days before data_date."""
    removed = kept = 0
    cutoff = data_date - dt.timedelta(days=keep_days + 1)
    for folder in _dated_folders(catalog.candidates_root, cutoff):
        for candidate in storage.list_folders(folder):
            if _rejected(candidate):
                storage.delete(candidate)
                removed += 1
                log.info("housekeeping: removed rejected candidate %s", candidate)
            else:
                kept += 1
        if not storage.list_folders(folder) and not storage.list_files(folder):
            storage.delete(folder)
    return {"candidates_removed": removed, "promoted_candidates_kept": kept}


def compact_embedding_cache(folder: Path | str, max_parts: int) -> dict[str, int]:
    """Rewrite the cache (a local folder or a URI) as one part when it has more than max_parts parts (newest
    row per encoder and text hash); returns the parts before and after."""
    import duckdb
    import pyarrow as pa

    parts = [p for p in storage.list_files(folder, ".parquet") if storage.name_of(p).startswith("part-")]
    if len(parts) <= max_parts:
        return {"cache_parts_before": len(parts), "cache_parts_after": len(parts)}
    rows = pa.concat_tables([storage.read_table(p) for p in parts], promote_options="default")
    with duckdb.connect() as con:
        con.register("parts", rows)
        table = con.sql(
            """select * from parts
               qualify row_number() over (partition by encoder, text_sha256 order by created_at desc) = 1
               order by encoder, text_sha256""",
        ).to_arrow_table()
    storage.write_table(table, Catalog.new_cache_part(folder))
    for part in parts:
        storage.delete(part)
    log.info("housekeeping: compacted the embedding cache %s from %d parts into one", folder, len(parts))
    return {"cache_parts_before": len(parts), "cache_parts_after": 1}


def vacuum_lake(catalog: Catalog, keep_days: int) -> dict[str, int]:
    """Vacuum every lake table: versions older than keep_days stop being readable, their files go."""
    removed = sum(lake.vacuum(catalog, table, keep_days * 24) for table in LAKE_TABLES)
    return {"lake_files_vacuumed": removed}


def run_housekeeping(ops: OperationsSettings, catalog: Catalog, data_date: dt.date) -> dict[str, Any]:
    """All of the night's cleaning, after it published; returns the counts for the ledger and the report."""
    counts: dict[str, Any] = {}
    counts.update(clean_staging(catalog, data_date, ops.staging_keep_days))
    counts.update(clean_candidates(catalog, data_date, ops.candidate_keep_days))
    counts.update(clean_features(catalog, data_date, ops.features_keep_days))
    counts.update(vacuum_lake(catalog, ops.lake_history_days))
    counts.update(compact_embedding_cache(catalog.embedding_cache, ops.embedding_cache_max_parts))
    log.info("housekeeping for %s: %s", data_date, counts)
    return counts
