"""pipeline.storage's file operations give the same answers on a local folder and on the stack's S3 endpoint:
Parquet written atomically and read back, existence, listings of the same kind as the root, deletes; and the
embedding cache and the marts' housekeeping, which are built on them, work on both."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline import storage
from pipeline.catalog import Catalog, partition_date
from pipeline.config import load_settings
from pipeline.tools.stack import BUCKET

NIGHT = dt.date(2026, 10, 20)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.stack)])
def root(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path | str:
    """An empty location: a local folder, or a fresh prefix in the stack's bucket (AWS_* from the stack)."""
    if request.param == "local":
        return tmp_path / "root"
    stack = request.getfixturevalue("stack")
    for name, value in stack.settings().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    return f"s3://{BUCKET}/storage-{uuid.uuid4().hex[:8]}"


def small(n: int) -> pa.Table:
    return pa.table({"user_id": [f"u{i}" for i in range(n)], "n": list(range(n))})


def test_a_parquet_file_is_written_read_and_replaced(root: Path | str) -> None:
    location = storage.child(storage.child(root, "dt=2026-10-20"), "mart.parquet")
    assert not storage.exists(location) and not storage.exists(root)

    storage.write_table(small(3), location)
    assert storage.exists(location) and storage.exists(root), "the file and the folders above it"
    assert storage.read_table(location).equals(small(3))
    assert storage.read_table(location, columns=["n"]).column_names == ["n"]
    assert storage.parquet_metadata(location).num_rows == 3

    storage.write_table(small(5), location)
    assert storage.read_table(location).equals(small(5))
    assert storage.list_files(root, recursive=True) == [location], "no temporary file is left beside it"


def test_a_failed_write_leaves_the_previous_file(root: Path | str) -> None:
    location = storage.child(root, "mart.parquet")
    storage.write_table(small(2), location)
    with pytest.raises((TypeError, AttributeError)):
        storage.write_table("not a table", location)  # type: ignore[arg-type]
    assert storage.read_table(location).equals(small(2))
    assert storage.list_files(root) == [location]


def test_listings_have_the_kind_of_their_root_and_skip_hidden_files(root: Path | str) -> None:
    for day in ("dt=2026-10-19", "dt=2026-10-20"):
        storage.write_table(small(1), storage.child(storage.child(root, day), "a.parquet"))
    storage.write_table(small(1), storage.child(root, "part-1.parquet"))
    storage.write_table(small(1), storage.child(root, ".part-2.parquet.tmp"))
    storage.write_table(small(1), storage.child(root, "notes.json"))

    files = storage.list_files(root, ".parquet")
    assert [storage.name_of(f) for f in files] == ["part-1.parquet"]
    assert all(type(f) is type(root) for f in files)
    assert len(storage.list_files(root, ".parquet", recursive=True)) == 3
    folders = storage.list_folders(root)
    assert [partition_date(f) for f in folders] == [dt.date(2026, 10, 19), NIGHT]
    assert all(type(f) is type(root) for f in folders)
    absent = storage.child(root, "absent")
    assert storage.list_files(absent) == storage.list_folders(absent) == []


def test_delete_removes_a_file_or_a_whole_folder(root: Path | str) -> None:
    folder = storage.child(root, "dt=2026-10-20")
    for name in ("a.parquet", "b.parquet"):
        storage.write_table(small(1), storage.child(folder, name))
    kept = storage.child(root, "kept.parquet")
    storage.write_table(small(1), kept)

    storage.delete(storage.child(folder, "a.parquet"))
    assert [storage.name_of(f) for f in storage.list_files(folder)] == ["b.parquet"]
    storage.delete(folder)
    assert not storage.exists(folder) and storage.list_folders(root) == []
    assert storage.list_files(root) == [kept]
    storage.delete(folder)  # absent: nothing to do


def test_the_embedding_cache_works_and_compacts_on_either_storage(root: Path | str) -> None:
    from pipeline.embed import _write_cache_part, load_cache
    from pipeline.housekeeping import compact_embedding_cache

    for start in (0, 2):
        rows = [(f"hash-{i}", f"item-{i}") for i in range(start, start + 3)]
        _write_cache_part(root, "enc", rows, np.arange(start, start + 3, dtype=np.float32).repeat(2).reshape(3, 2))
    before = load_cache(root, "enc")
    assert sorted(before) == [f"hash-{i}" for i in range(5)]
    assert load_cache(root, "other-encoder") == {}
    assert compact_embedding_cache(root, max_parts=1) == {"cache_parts_before": 2, "cache_parts_after": 1}
    after = load_cache(root, "enc", ["hash-1", "hash-4"])
    assert sorted(after) == ["hash-1", "hash-4"] and np.array_equal(after["hash-4"], before["hash-4"])
    assert storage.parquet_metadata(storage.list_files(root, ".parquet")[0]).num_rows == 5, "one row per text"


def catalog_at(root: Path | str, home: Path) -> Catalog:
    """A home whose lake is `root` when it is a URI (lake_uri), else the home's own lake folder."""
    env = {"NIGHTLY_RECS_LAKE_URI": root} if isinstance(root, str) else {}
    return Catalog.of(load_settings(env=env, home=home))


def test_marts_follow_the_lake_uri_and_old_dates_are_pruned(root: Path | str, tmp_path: Path) -> None:
    from pipeline.housekeeping import clean_features

    catalog = catalog_at(root, tmp_path / "home")
    days = [NIGHT - dt.timedelta(days=n) for n in range(4)]
    for day in days:
        storage.write_table(small(1), catalog.mart(day, "user_sequences"))
    if isinstance(root, str):
        assert str(catalog.mart(NIGHT, "user_sequences")).startswith(f"{root}/features/dt=")
        assert str(catalog.embedding_cache) == f"{root}/item_embeddings"
        assert not (tmp_path / "home" / "lake" / "features").exists()
    assert clean_features(catalog, NIGHT, keep_days=1) == {"feature_dates_removed": 2}
    assert [partition_date(f) for f in storage.list_folders(catalog.features_root)] == sorted(days[:2])


def test_an_erasure_rewrites_the_marts_where_they_live(root: Path | str, tmp_path: Path) -> None:
    from pipeline.erasure.rewrite import erase_parquet

    catalog = catalog_at(root, tmp_path / "home")
    mart = catalog.mart(NIGHT, "user_sequences")
    storage.write_table(small(3), mart)
    assert mart in catalog.parquet_files()
    assert erase_parquet(catalog, ["u1"]) == {"features": 1}
    assert storage.read_table(mart).column("user_id").to_pylist() == ["u0", "u2"]
