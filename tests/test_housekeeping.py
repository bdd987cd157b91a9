"""Housekeeping of derived lake data: old marts go, recent ones and other tables stay."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pipeline.catalog import Catalog
from pipeline.config import load_settings
from pipeline.housekeeping import clean_features

NIGHT = dt.date(2026, 10, 20)


def test_marts_older_than_the_retention_are_removed(tmp_path: Path) -> None:
    catalog = Catalog.of(load_settings(env={}, home=tmp_path))
    days = [NIGHT - dt.timedelta(days=n) for n in range(6)]
    for day in days:
        catalog.mart(day, "user_sequences").parent.mkdir(parents=True, exist_ok=True)
        catalog.mart(day, "user_sequences").write_bytes(b"x")
    other = catalog.partition_file("interactions", days[-1])
    other.parent.mkdir(parents=True)
    other.write_bytes(b"x")

    assert clean_features(catalog, NIGHT, keep_days=3) == {"feature_dates_removed": 2}

    kept = sorted(p.name for p in catalog.features_root.iterdir())
    assert kept == [f"dt={d.isoformat()}" for d in sorted(days[:4])]
    assert other.is_file(), "lake tables are not derived data: never pruned"
    assert clean_features(catalog, NIGHT, keep_days=3) == {"feature_dates_removed": 0}
