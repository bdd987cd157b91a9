"""Housekeeping of derived lake data: old marts go, recent ones and other tables stay."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa

from pipeline import lake
from pipeline.catalog import Catalog
from pipeline.config import load_settings
from pipeline.housekeeping import clean_features, vacuum_lake

NIGHT = dt.date(2026, 10, 20)


def test_marts_older_than_the_retention_are_removed(tmp_path: Path) -> None:
    catalog = Catalog.of(load_settings(env={}, home=tmp_path))
    days = [NIGHT - dt.timedelta(days=n) for n in range(6)]
    for day in days:
        catalog.mart(day, "user_sequences").parent.mkdir(parents=True, exist_ok=True)
        catalog.mart(day, "user_sequences").write_bytes(b"x")
    lake.replace_dates(catalog, "interactions", [days[-1]], pa.table({"dt": pa.array([days[-1]], pa.date32()),
                                                                      "event_id": ["e1"]}))

    assert clean_features(catalog, NIGHT, keep_days=3) == {"feature_dates_removed": 2}

    kept = sorted(p.name for p in catalog.features_root.iterdir())
    assert kept == [f"dt={d.isoformat()}" for d in sorted(days[:4])]
    assert lake.dates(catalog, "interactions") == {days[-1]}, "lake tables are not derived data: never pruned"
    assert clean_features(catalog, NIGHT, keep_days=3) == {"feature_dates_removed": 0}


def test_vacuum_keeps_versions_within_the_history_window(tmp_path: Path) -> None:
    catalog = Catalog.of(load_settings(env={}, home=tmp_path))

    def night(version: str) -> pa.Table:
        return pa.table({"dt": pa.array([NIGHT], pa.date32()), "event_id": [version]})

    lake.replace_dates(catalog, "interactions", [NIGHT], night("a"))
    lake.replace_dates(catalog, "interactions", [NIGHT], night("b"))  # a rerun: version 0's file is replaced
    assert vacuum_lake(catalog, keep_days=7) == {"lake_files_vacuumed": 0}
    from deltalake import DeltaTable

    old = DeltaTable(str(catalog.lake_table("interactions")), version=0)
    assert old.to_pyarrow_table().column("event_id").to_pylist() == ["a"], "within the window: still readable"
    assert vacuum_lake(catalog, keep_days=0) == {"lake_files_vacuumed": 1}
    assert lake.read(catalog, "interactions").column("event_id").to_pylist() == ["b"]
