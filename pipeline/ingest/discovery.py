"""Landing files: the naming rule, which data date each file belongs to, its format, its checksum, the order of
a date's files, and how dates are batched.

The naming rule: ``<YYYY-MM-DD><tag>.<format>[.gz]``. The date is the data date; the tag is optional (``-fix``,
``.2``, ``-shop-a``); the format suffix is ``.jsonl .ndjson .json .csv .parquet .pq`` (any other suffix is read in
the configured default format); ``.gz`` means gzip-compressed JSONL or CSV. A date's files are read in the order
of their tags (no tag first, then digit runs compared as numbers, then the whole name): ``D.jsonl``,
``D-fix.jsonl``, ``D.2.jsonl``, ``D.10.jsonl``. For the catalog a later file wins, so a correction named with a
later tag replaces the rows it repeats; for events the first occurrence of a duplicate is kept.

Never read, each with a log line: hidden files (``.D.jsonl``), editor backups (``D.jsonl~``, ``#D.jsonl#``),
temporary and partial uploads (``.tmp .temp .swp .swo .part .partial .filepart .crdownload .download .bak .orig``
anywhere in the suffixes), other compressions (``.zip .bz2 .xz .zst .7z .tar .tgz .lz4``), gzip-compressed
Parquet, names without a date prefix, and symbolic links: a link is never followed (files are opened with
O_NOFOLLOW, so one swapped in after discovery fails the read instead).
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import logging
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pipeline.ingest.errors import IngestFormatError

log = logging.getLogger(__name__)

DATE_PREFIX = re.compile(r"^(\d{4}-\d{2}-\d{2})")
SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv",
                  ".parquet": "parquet", ".pq": "parquet"}
GZIP_SUFFIX = ".gz"
TEMPORARY_SUFFIXES = {".tmp", ".temp", ".swp", ".swo", ".part", ".partial", ".filepart", ".crdownload",
                      ".download", ".bak", ".orig"}
UNSUPPORTED_COMPRESSION = {".zip", ".bz2", ".xz", ".zst", ".7z", ".tar", ".tgz", ".lz4"}
BATCH_INPUT_BYTES = 1 << 30       # consecutive dates are ingested together up to this much input

DateFiles = tuple[dt.date, list[Path]]


def landing_files(folder: Path) -> dict[dt.date, list[Path]]:
    """Landing files grouped by the data date their names start with, each date's files in read order (see the
    module docstring); files the naming rule excludes are skipped with a log line."""
    by_date: dict[dt.date, list[Path]] = {}
    if not folder.is_dir():
        return by_date
    for path in sorted(folder.iterdir()):
        why = ignored_because(path)
        if why is not None:
            log.warning("ignoring landing file %s: %s", path, why)
            continue
        by_date.setdefault(dt.date.fromisoformat(path.name[:10]), []).append(path)
    for files in by_date.values():
        files.sort(key=read_order)
    return by_date


def ignored_because(path: Path) -> str | None:
    """Why the naming rule excludes a landing file, or None for a file to read."""
    name = path.name
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return "removed while the folder was listed"
    suffixes = [s.lower() for s in path.suffixes]
    if stat.S_ISLNK(mode):
        return "a symbolic link (links are never followed)"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    if name.startswith("."):
        return "a hidden file"
    if name.endswith("~") or name.startswith(("#", "~$")):
        return "an editor backup"
    if TEMPORARY_SUFFIXES & set(suffixes):
        return "a temporary or partial file"
    if suffixes and suffixes[-1] in UNSUPPORTED_COMPRESSION:
        return f"compressed as {suffixes[-1]} (only .gz is supported)"
    if is_gzip(path) and SUFFIX_FORMATS.get(Path(name[:-len(GZIP_SUFFIX)]).suffix.lower()) == "parquet":
        return "gzip-compressed Parquet (Parquet compresses itself; land the .parquet file)"
    match = DATE_PREFIX.match(name)
    if not match:
        return "no YYYY-MM-DD prefix"
    try:
        dt.date.fromisoformat(match.group(1))
    except ValueError:
        return f"an invalid date prefix {match.group(1)!r}"
    return None


def read_order(path: Path) -> tuple[list[tuple[int, int, str]], str]:
    """The sort key of a date's files: the tag between the date and the format suffix (no tag first, digit
    runs compared as numbers), then the whole name."""
    name = path.name[:-len(GZIP_SUFFIX)] if is_gzip(path) else path.name
    stem = Path(name).stem if Path(name).suffix.lower() in SUFFIX_FORMATS else name
    tag = stem[10:]
    key = [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", tag) if part]
    return key, path.name


def is_gzip(path: Path) -> bool:
    return path.suffix.lower() == GZIP_SUFFIX


def file_format(path: Path, default: str) -> str:
    """jsonl | csv | parquet: from a known suffix (before a .gz), else the configured default."""
    name = path.name[:-len(GZIP_SUFFIX)] if is_gzip(path) else path.name
    return SUFFIX_FORMATS.get(Path(name).suffix.lower(), default)


def open_landing(path: Path, decompress: bool = True) -> IO[bytes]:
    """Open a landing file for reading without following a symbolic link (decompressing .gz files unless told
    not to). Raises IngestFormatError for a link or an unreadable file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as err:
        raise IngestFormatError(f"{path}: cannot be opened (symbolic links are never followed): {err}") from err
    raw = os.fdopen(fd, "rb")
    if decompress and is_gzip(path):
        unpacked = gzip.GzipFile(fileobj=raw, mode="rb")
        unpacked.myfileobj = raw  # closed with it (GzipFile closes only the files it opened itself)
        return unpacked  # type: ignore[return-value]
    return raw


def file_sha256(path: Path) -> str:
    """The checksum of the file's bytes as landed (compressed files are not decompressed)."""
    digest = hashlib.sha256()
    with open_landing(path, decompress=False) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
