"""Importers: public dataset layouts -> daily landing drops + catalog, replayed through the real ingest."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import pytest
from conftest import lake_query, shared_dataset

from pipeline.config import Settings, load_settings
from pipeline.ingest import ingest
from pipeline.sql import SQL_DIR
from pipeline.tools.importers import ImportFormatError, import_dataset


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def replay(root: Path, fmt: str, source: Path, items: Path | None = None) -> tuple[Settings, dict]:
    """Import a dataset into a fresh home and ingest every date up to the last one."""
    settings = load_settings(env={}, home=root)
    counts = import_dataset(fmt, source, settings.paths.landing_dir, items=items)
    last = max(dt.date.fromisoformat(p.name[:10]) for p in (settings.paths.landing_dir / "events").iterdir())
    ingest(settings, last)
    return settings, counts


def lake_totals(settings: Settings) -> dict[str, int]:
    with duckdb.connect(str(settings.paths.warehouse_path), read_only=True) as con:
        read, accepted, quarantined, duplicates = con.execute(
            "select sum(rows_read), sum(accepted), sum(quarantined), sum(duplicates) from ingest_ledger "
            "where kind = 'events' and status = 'ok'").fetchall()[0]
    [(events, distinct)] = lake_query(settings, "select count(*), count(distinct event_id) from {interactions}")
    return {"read": read, "accepted": accepted, "quarantined": quarantined, "duplicates": duplicates,
            "events": events, "distinct": distinct}


def catalog(settings: Settings) -> list[tuple]:
    return lake_query(settings, "select item_id, title, genres, tags from {items} order by item_id")


# ---------------------------------------------------------------------------------------------- replays


@pytest.mark.shared_data
def test_ml_latest_small_replays_every_rating_and_movie(tmp_path: Path) -> None:
    source = shared_dataset("ml-latest-small")

    settings, counts = replay(tmp_path, "movielens", source)

    assert counts == {"events": 100_836, "days": 4_110, "items": 9_742}
    assert lake_totals(settings) == {"read": 100_836, "accepted": 100_836, "quarantined": 0, "duplicates": 0,
                                     "events": 100_836, "distinct": 100_836}
    items = catalog(settings)
    assert len(items) == 9_742 and all(title for _, title, _, _ in items)
    assert sum(bool(genres) for _, _, genres, _ in items) == 9_742 - 34  # 34 movies: "(no genres listed)"
    toy_story = next(row for row in items if row[0] == "1")
    assert toy_story[1:3] == ("Toy Story (1995)", ["Adventure", "Animation", "Children", "Comedy", "Fantasy"])
    assert "pixar" in toy_story[3]


@pytest.mark.shared_data
def test_amazon_scientific_replays_every_interaction_and_item_text(tmp_path: Path) -> None:
    source = shared_dataset("amazon-scientific")

    settings, counts = replay(tmp_path, "unisrec", source)

    assert counts["events"] == 59_427 and counts["items"] == 4_385
    totals = lake_totals(settings)
    assert (totals["accepted"], totals["quarantined"], totals["duplicates"]) == (59_427, 0, 0)
    items = catalog(settings)
    assert len(items) == 4_385 and all(title for _, title, _, _ in items)


@pytest.mark.shared_data
def test_unisrec_atomic_files_rebuild_the_same_sequences(tmp_path: Path) -> None:
    source = shared_dataset("amazon-scientific")
    atomic = tmp_path / "atomic"
    atomic.mkdir()
    for path in source.iterdir():
        if not path.name.endswith("full_sequences.tsv"):
            (atomic / path.name).symlink_to(path)

    import_dataset("unisrec", source, tmp_path / "full")
    import_dataset("unisrec", atomic, tmp_path / "rebuilt")

    for sub in ("events", "items"):
        full = sorted((tmp_path / "full" / sub).iterdir())
        rebuilt = sorted((tmp_path / "rebuilt" / sub).iterdir())
        assert [p.name for p in full] == [p.name for p in rebuilt]
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(full, rebuilt, strict=True))


# ---------------------------------------------------------------------------------------------- layouts


def test_ml100k_layout_reads_latin1_titles_and_genre_flags(tmp_path: Path) -> None:
    source = tmp_path / "ml-100k"
    source.mkdir()
    (source / "u.data").write_text("1\t10\t4\t881250949\n2\t20\t3\t881250950\n1\t20\t5\t891717742\n")
    flags = ["0"] * 19
    flags[1] = flags[8] = "1"  # Action, Drama
    (source / "u.item").write_bytes(
        "10|Café (1995)|01-Jan-1995||http://x|".encode("latin-1") + "|".join(flags).encode() + b"\n"
        + b"20|Plain (1996)|01-Jan-1996||http://y|" + "|".join(["1"] + ["0"] * 18).encode() + b"\n")

    counts = import_dataset("movielens", source, tmp_path / "landing")

    assert counts == {"events": 3, "days": 2, "items": 2}
    first = read_jsonl(tmp_path / "landing" / "events" / "1997-12-04.jsonl")
    assert first[0] == {"user_id": "1", "item_id": "10", "event_type": "rating", "value": 4.0,
                        "timestamp": "1997-12-04T15:55:49Z"}
    items = read_jsonl(tmp_path / "landing" / "items" / "1997-12-04.jsonl")
    assert [(i["item_id"], i["title"], i["genres"]) for i in items] == [
        ("10", "Café (1995)", ["Action", "Drama"]), ("20", "Plain (1996)", [])]


def test_ml1m_layout_reads_double_colon_files(tmp_path: Path) -> None:
    source = tmp_path / "ml-1m"
    source.mkdir()
    (source / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n")
    (source / "movies.dat").write_bytes("1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
                                        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
                                        "5::Père (1990)::Comedy\n".encode("latin-1"))

    counts = import_dataset("movielens", source, tmp_path / "landing")

    assert counts == {"events": 2, "days": 1, "items": 3}
    items = {i["item_id"]: i for i in read_jsonl(tmp_path / "landing" / "items" / "2000-12-31.jsonl")}
    assert items["661"]["genres"] == ["Animation", "Children's", "Musical"]
    assert items["5"]["title"] == "Père (1990)"


def test_events_format_keeps_epoch_times_and_orders_positions(tmp_path: Path) -> None:
    (tmp_path / "epoch.csv").write_text("user_id,item_id,timestamp\na,x,1700000000\nb,y,1700090000\n")
    (tmp_path / "positions.csv").write_text("user_id,item_id,timestamp\na,x,1\na,y,0\nb,x,0\n")
    (tmp_path / "items.tsv").write_text("item_id\ttext\nx\tThe  x item\twith a tab\ny\tY\n")

    import_dataset("events", tmp_path / "epoch.csv", tmp_path / "epoch", items=tmp_path / "items.tsv")
    import_dataset("events", tmp_path / "positions.csv", tmp_path / "pos", items=tmp_path / "items.tsv")

    assert sorted(p.name for p in (tmp_path / "epoch" / "events").iterdir()) == ["2023-11-14.jsonl",
                                                                                  "2023-11-15.jsonl"]
    events = read_jsonl(tmp_path / "pos" / "events" / "2020-01-01.jsonl")
    assert [(e["user_id"], e["item_id"], e["timestamp"]) for e in events] == [
        ("a", "y", "2020-01-01T00:00:00Z"), ("b", "x", "2020-01-01T00:00:00Z"), ("a", "x", "2020-01-01T00:01:00Z")]
    items = read_jsonl(tmp_path / "pos" / "items" / "2020-01-01.jsonl")
    assert [(i["item_id"], i["title"]) for i in items] == [("x", "The x item with a tab"), ("y", "Y")]


def test_importing_twice_writes_identical_files(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("user_id,item_id,timestamp\na,x,1700000000\na,y,1700000000\n")
    (tmp_path / "i.tsv").write_text("x\tX\ny\tY\n")
    import_dataset("events", tmp_path / "e.csv", tmp_path / "l", items=tmp_path / "i.tsv")
    before = {p: p.read_bytes() for p in (tmp_path / "l").rglob("*.jsonl")}

    import_dataset("events", tmp_path / "e.csv", tmp_path / "l", items=tmp_path / "i.tsv")

    assert {p: p.read_bytes() for p in (tmp_path / "l").rglob("*") if p.is_file()} == before


def test_bad_inputs_raise_import_format_errors(tmp_path: Path) -> None:
    with pytest.raises(ImportFormatError, match="no MovieLens ratings file"):
        import_dataset("movielens", tmp_path, tmp_path / "l")
    with pytest.raises(ImportFormatError, match="needs --items"):
        import_dataset("events", tmp_path, tmp_path / "l")
    with pytest.raises(ImportFormatError, match="unknown import format"):
        import_dataset("lastfm", tmp_path, tmp_path / "l")
    (tmp_path / "e.csv").write_text("user_id,item_id,timestamp\na,x,not a time\n")
    (tmp_path / "i.tsv").write_text("x\tX\n")
    with pytest.raises(ImportFormatError, match="1 events have no user, item or readable timestamp"):
        import_dataset("events", tmp_path / "e.csv", tmp_path / "l", items=tmp_path / "i.tsv")


@pytest.mark.parametrize("path", sorted((SQL_DIR / "importers").glob("*.sql")), ids=lambda p: p.stem)
def test_every_importer_query_has_a_header(path: Path) -> None:
    text = path.read_text()
    assert text.startswith(f"-- {path.stem}:"), path
    assert "-- grain:" in text and "parameters:" in text, path
    assert text.rstrip().endswith("select * from final"), path
