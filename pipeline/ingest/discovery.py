"""Landing files: which data date each belongs to, its format, its checksum, and how dates are batched."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

DATE_PREFIX = re.compile(r"^(\d{4}-\d{2}-\d{2})")
SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv",
                  ".parquet": "parquet", ".pq": "parquet"}
BATCH_INPUT_BYTES = 1 << 30       # consecutive dates are ingested together up to this much input

DateFiles = tuple[dt.date, list[Path]]


def landing_files(folder: Path) -> dict[dt.date, list[Path]]:
    """Landing files grouped by the data date their names start with (others are ignored, with a warning)."""
    by_date: dict[dt.date, list[Path]] = {}
    if not folder.is_dir():
        return by_date
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        match = DATE_PREFIX.match(path.name)
        if not match:
            log.warning("ignoring landing file without a YYYY-MM-DD prefix: %s", path)
            continue
        try:
            day = dt.date.fromisoformat(match.group(1))
        except ValueError:
            log.warning("ignoring landing file with an invalid date prefix: %s", path)
            continue
        by_date.setdefault(day, []).append(path)
    return by_date


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_format(path: Path, default: str) -> str:
    """jsonl | csv | parquet: from a known suffix, else the configured default."""
    return SUFFIX_FORMATS.get(path.suffix.lower(), default)


def input_batches(pending: list[DateFiles]) -> Iterator[list[DateFiles]]:
    """Consecutive dates grouped until their files reach BATCH_INPUT_BYTES (a date is never split)."""
    batch: list[DateFiles] = []
    size = 0
    for day, files in pending:
        batch.append((day, files))
        size += sum(p.stat().st_size for p in files)
        if size >= BATCH_INPUT_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
