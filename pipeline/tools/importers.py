"""Importers: public datasets -> daily landing drops, so they replay through the nightly path unchanged.

`import_dataset(fmt, path, landing, items=None)` writes
  landing/events/YYYY-MM-DD.jsonl   one file per day of event timestamps (UTC), in time order; the default
                                    column names: user_id, item_id, event_type, value, timestamp (ISO-8601)
  landing/items/<first day>.jsonl   the catalog: item_id, title, description, genres, tags, brand, categories
Files of the same names are replaced (atomically); others in landing are left alone.

Formats:
  movielens  a MovieLens folder: ml-latest(-small) / ml-25m (ratings.csv, movies.csv, tags.csv), ML-100K
             (u.data, u.item, u.genre; Latin-1) or ML-1M / 10M (ratings.dat, movies.dat, tags.dat with '::';
             Latin-1). Ratings become event_type 'rating' with value = stars.
  events     a CSV `user_id,item_id,timestamp` (ISO-8601, Unix s or ms, or per-user positions) plus `items`,
             a TSV `item_id<TAB>text` (the quality benchmark's input format). Events are 'view's.
  unisrec    a UniSRec / RecBole folder: *.full_sequences.tsv, or the atomic *.train/valid/test.inter files
             (with *.item2index / *.user2index to recover the original ids), plus *.text. Sequences carry no
             time: each user's items get synthetic timestamps one minute apart from SYNTHETIC_START, so the
             chronological order is kept. Events are 'view's.
All heavy lifting is DuckDB SQL (sql/importers/*.sql); files are written by streaming Arrow batches.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import duckdb
import numpy as np
import pyarrow as pa

from pipeline.atomic import PendingFile, atomic_open
from pipeline.catalog import landing_path
from pipeline.sql import relation

log = logging.getLogger(__name__)

SYNTHETIC_START = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
EPOCH_S_MIN = 788_918_400  # 1995-01-01 in Unix seconds: smaller numbers are positions, not times
ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
                 "Sci-Fi", "Thriller", "War", "Western"]
FORMATS = ("movielens", "events", "unisrec")


class ImportFormatError(ValueError):
    """The dataset is not in the layout the chosen format expects (the message says what is missing)."""


def import_dataset(fmt: str, path: Path, landing: Path, items: Path | None = None) -> dict[str, int]:
    """Convert a public dataset into daily landing drops plus a catalog; returns what was written."""
    if fmt not in FORMATS:
        raise ImportFormatError(f"unknown import format {fmt!r}; expected one of {FORMATS}")
    path = Path(path)
    if not path.exists():
        raise ImportFormatError(f"{path} does not exist")
    with _connection() as con:
        if fmt == "movielens":
            _movielens(con, path)
        elif fmt == "events":
            _events(con, path, items)
        else:
            _unisrec(con, path)
        counts = _write_landing(con, Path(landing))
    log.info("imported %s (%s) into %s: %s", path, fmt, landing, counts)
    return counts


@contextmanager
def _connection() -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect()
    try:
        con.execute("set TimeZone = 'UTC'")
        con.execute("set enable_progress_bar = false")
        yield con
    finally:
        con.close()


def _movielens(con: duckdb.DuckDBPyConnection, folder: Path) -> None:
    """Views import_events and import_items from one of the MovieLens layouts."""
    folder = folder if folder.is_dir() else folder.parent
    if (folder / "ratings.csv").is_file():  # ml-latest(-small), ml-20m, ml-25m
        csv = {"delim": ",", "header": True, "quote": '"', "encoding": "utf-8"}
        _ratings_view(con, folder / "ratings.csv", csv)
        _tags_view(con, folder / "tags.csv", csv)
        _movies_view(con, folder / "movies.csv", csv)
    elif (folder / "u.data").is_file():  # ML-100K
        _ratings_view(con, folder / "u.data", {"delim": "\t", "header": False, "encoding": "utf-8"})
        _view(con, "import_items", "import_items_movielens_100k",
              {"path": _need(folder / "u.item"), "genre_names": _ml100k_genres(folder / "u.genre")})
    elif (folder / "ratings.dat").is_file():  # ML-1M, ML-10M
        dat = {"delim": "::", "header": False, "quote": "", "encoding": "latin-1"}
        _ratings_view(con, folder / "ratings.dat", dat)
        _tags_view(con, folder / "tags.dat", dat)
        _movies_view(con, folder / "movies.dat", dat)
    else:
        raise ImportFormatError(f"{folder}: no MovieLens ratings file (ratings.csv, u.data or ratings.dat)")


def _ratings_view(con: duckdb.DuckDBPyConnection, path: Path, dialect: dict[str, Any]) -> None:
    _view(con, "import_events", "import_events_movielens", {"path": str(path), **dialect})


def _movies_view(con: duckdb.DuckDBPyConnection, path: Path, dialect: dict[str, Any]) -> None:
    _view(con, "import_items", "import_items_movielens", {"path": _need(path), **dialect})


def _tags_view(con: duckdb.DuckDBPyConnection, path: Path, dialect: dict[str, Any]) -> None:
    if path.is_file():
        _view(con, "item_tags", "item_tags_movielens", {"path": str(path), **dialect})
    else:
        _view(con, "item_tags", "item_tags_none", {})


def _ml100k_genres(path: Path) -> list[str]:
    """Genre names in flag order from u.genre ('name|index' lines), or the published ML-100K list."""
    if not path.is_file():
        return ML100K_GENRES
    pairs = [line.rsplit("|", 1) for line in path.read_text(encoding="latin-1").splitlines() if "|" in line]
    names = [name for name, _ in sorted(pairs, key=lambda p: int(p[1]))]
    if len(names) != len(ML100K_GENRES):
        raise ImportFormatError(f"{path}: expected {len(ML100K_GENRES)} genres, found {len(names)}")
    return names


def _events(con: duckdb.DuckDBPyConnection, path: Path, items: Path | None) -> None:
    if items is None:
        raise ImportFormatError("the 'events' format needs --items ITEMS.tsv (item_id<TAB>text)")
    _view(con, "import_events", "import_events_csv",
          {"path": str(path), "synthetic_start": SYNTHETIC_START, "epoch_s_min": EPOCH_S_MIN})
    _view(con, "import_items", "import_items_text", {"path": _need(Path(items))})


def _unisrec(con: duckdb.DuckDBPyConnection, folder: Path) -> None:
    folder = folder if folder.is_dir() else folder.parent
    sequences = sorted(folder.glob("*.full_sequences.tsv"))
    if sequences:
        _view(con, "positions", "positions_unisrec", {"path": str(sequences[0])})
    else:
        con.register("positions", _atomic_positions(folder))
    _view(con, "import_events", "import_events_synthetic", {"synthetic_start": SYNTHETIC_START})
    texts = sorted(folder.glob("*.text"))
    if not texts:
        raise ImportFormatError(f"{folder}: no *.text catalog (item_id<TAB>text)")
    _view(con, "import_items", "import_items_text", {"path": str(texts[0])})


def _atomic_positions(folder: Path) -> pa.Table:
    """(user_id, item_id, position) rebuilt from RecBole's leave-one-out *.{train,valid,test}.inter files.

    Every position but the first is the target of exactly one row; a row's history is the (at most max_len)
    items before its target. The sequence is the longest untruncated history + its target, extended by
    following truncated windows (history == the last max_len items so far -> next item).
    """
    rows: dict[str, list[tuple[tuple[str, ...], str]]] = {}
    for split in ("train", "valid", "test"):
        files = sorted(folder.glob(f"*.{split}.inter"))
        if not files:
            raise ImportFormatError(f"{folder}: no *.full_sequences.tsv and no *.{split}.inter")
        with files[0].open(encoding="utf-8") as fh:
            next(fh, None)  # header: user_id:token  item_id_list:token_seq  item_id:token
            for line in fh:
                user, history, target = line.rstrip("\n").split("\t")
                rows.setdefault(user, []).append((tuple(history.split()), target))
    users, items = _index_map(folder, "user2index"), _index_map(folder, "item2index")
    out: dict[str, list[Any]] = {"user_id": [], "item_id": [], "position": []}
    for user, user_rows in rows.items():
        sequence = _rebuild_sequence(user, user_rows)
        out["user_id"] += [users.get(user, user)] * len(sequence)
        out["item_id"] += [items.get(item, item) for item in sequence]
        out["position"] += list(range(len(sequence)))
    return pa.table(out)


def _rebuild_sequence(user: str, rows: list[tuple[tuple[str, ...], str]]) -> list[str]:
    max_len = max(len(history) for history, _ in rows)
    prefixes = [history + (target,) for history, target in rows if len(history) < max_len]
    sequence = list(max(prefixes, key=len)) if prefixes else list(rows[0][0] + (rows[0][1],))
    following = {history: target for history, target in rows if len(history) == max_len}
    while len(sequence) < len(rows) + 1 and tuple(sequence[-max_len:]) in following:
        sequence.append(following[tuple(sequence[-max_len:])])
    if len(sequence) != len(rows) + 1:
        raise ImportFormatError(f"user {user}: cannot rebuild the sequence from the .inter files "
                                f"({len(rows)} rows, rebuilt {len(sequence)}); use *.full_sequences.tsv")
    return sequence


def _index_map(folder: Path, suffix: str) -> dict[str, str]:
    """{index: original id} from a *.user2index / *.item2index file (original<TAB>index), or {}."""
    files = sorted(folder.glob(f"*.{suffix}"))
    if not files:
        return {}
    pairs = (line.rstrip("\n").split("\t") for line in files[0].open(encoding="utf-8") if "\t" in line)
    return {index: original for original, index in pairs}


def _view(con: duckdb.DuckDBPyConnection, view: str, query: str, params: dict[str, Any]) -> None:
    relation(con, f"importers/{query}", params).create_view(view, replace=True)


def _need(path: Path) -> str:
    if not path.is_file():
        raise ImportFormatError(f"{path} is missing")
    return str(path)


# ---------------------------------------------------------------------------------------------- writing


def _write_landing(con: duckdb.DuckDBPyConnection, landing: Path) -> dict[str, int]:
    """Stream the events into one JSONL file per day and the catalog into one file dated the first day."""
    ((missing,),) = relation(con, "importers/incomplete_events").fetchall()
    if missing:
        raise ImportFormatError(f"{missing} events have no user, item or readable timestamp")
    days = events = 0
    first_day: dt.date | None = None
    writer = _DailyWriter(landing)
    try:
        for batch in relation(con, "importers/landing_events").to_arrow_reader(200_000):
            events += batch.num_rows
            first_day = first_day or batch.column("day")[0].as_py()
            days += writer.write(batch)
    except BaseException:
        writer.discard()
        raise
    writer.close()
    if first_day is None:
        raise ImportFormatError("the dataset has no events")
    catalog = landing_path(landing, "items", first_day)
    items = 0
    with atomic_open(catalog) as fh:
        for batch in relation(con, "importers/landing_items").to_arrow_reader(200_000):
            items += batch.num_rows
            _write_lines(fh, batch.column("line"))
    return {"events": events, "days": days, "items": items}


class _DailyWriter:
    """Writes (day, line) batches ordered by day into the landing events/YYYY-MM-DD.jsonl, one open file at a time; each
    file appears (replacing an older one) only once complete."""

    def __init__(self, landing: Path) -> None:
        self.landing = landing
        self.day: dt.date | None = None
        self._file: PendingFile | None = None
        self._fh: IO[bytes] | None = None

    def write(self, batch: pa.RecordBatch) -> int:
        """Append a batch; returns how many new day files it started."""
        days = batch.column("day").cast(pa.int32()).to_numpy()
        cuts = np.concatenate(([0], np.flatnonzero(np.diff(days)) + 1, [len(days)]))
        started = 0
        for start, stop in zip(cuts[:-1], cuts[1:], strict=True):
            day = dt.date(1970, 1, 1) + dt.timedelta(days=int(days[start]))
            if day != self.day:
                if self.day is not None and day < self.day:
                    raise ImportFormatError(f"events are not ordered by day ({day} after {self.day})")
                self._start(day)
                started += 1
            assert self._fh is not None
            _write_lines(self._fh, batch.column("line").slice(start, stop - start))
        return started

    def _start(self, day: dt.date) -> None:
        self.close()
        self.day = day
        self._file = PendingFile(landing_path(self.landing, "events", day))
        self._fh = self._file.tmp.open("wb")

    def close(self) -> None:
        """Finish the current day's file (rename it into place)."""
        if self._fh is not None and self._file is not None:
            self._fh.close()
            self._file.commit()
        self._fh = self._file = None

    def discard(self) -> None:
        """Drop the current, unfinished day's file."""
        if self._fh is not None and self._file is not None:
            self._fh.close()
            self._file.discard()
        self._fh = self._file = None


def _write_lines(fh: IO[bytes], lines: pa.Array) -> None:
    """Write the bytes of a string array (each element already ends in a newline) without per-row Python."""
    if not len(lines):
        return
    lines = lines.cast(pa.large_string())
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)[lines.offset: lines.offset + len(lines) + 1]
    fh.write(memoryview(lines.buffers()[2])[offsets[0]: offsets[-1]])
