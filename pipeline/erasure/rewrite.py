"""Rewriting every copy the pipeline made of a user's data without them, file by file and atomically (each file
is written under a temporary name beside it and renamed over it, so a crash leaves the old or the new file).

* Parquet (lake partitions, quarantine, marts, staged tables): rows whose `user_id` is one of the ids, and
  quarantine rows whose `raw` text contains one (a broken line may name the user anywhere), are dropped; the
  file is rewritten only if it had such rows (its page statistics, which hold min/max ids, are rebuilt). A
  published partition is rewritten under its date's publish lock, so a concurrent publish cannot put it back.
* Reports (JSON, Markdown, HTML; the copies attached to MLflow runs too) are re-rendered without the user's
  sample rows.
* Any other file of a text folder (candidate folders, MLflow artifacts, Airflow logs) that still holds an id has
  it replaced by `[erased]` (JSON through its string values, so the file stays valid JSON); a non-text file that
  holds the bytes of an id is reported, not changed (model weights and plots hold no user ids, and a short id
  can occur in binary data by chance).

An id is matched where it stands as a whole token (not preceded or followed by a letter or digit), so erasing
"u1" leaves "u10" alone; `user_id` columns are matched exactly.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import lake, storage
from pipeline.catalog import Catalog
from pipeline.config import Settings
from pipeline.erasure.tombstones import ERASED_MARK

log = logging.getLogger(__name__)

USER_COLUMN = "user_id"  # matched exactly
RAW_COLUMN = "raw"       # quarantine's original text: matched as a whole token anywhere in it
LOCK_WAIT_S = 1800.0     # how long a rewrite of a published partition waits for a publish of its date
TEXT_SUFFIXES = frozenset({".json", ".md", ".html", ".htm", ".csv", ".txt", ".log", ".yaml", ".yml", ""})
TOKEN_EDGE = "0-9A-Za-z"  # characters that may not touch a matched id


def token_regex(user_id: str) -> str:
    """An RE2/Python pattern that finds the id as a whole token (the characters around it are captured)."""
    return f"(^|[^{TOKEN_EDGE}]){re.escape(user_id)}([^{TOKEN_EDGE}]|$)"


def redact_text(text: str, user_ids: list[str]) -> str:
    """The text with every whole-token occurrence of the ids replaced by the erased mark."""
    for user_id in user_ids:
        pattern = f"(?<![{TOKEN_EDGE}]){re.escape(user_id)}(?![{TOKEN_EDGE}])"
        text = re.sub(pattern, ERASED_MARK, text)
    return text


def _redact_json(value: Any, user_ids: list[str]) -> Any:
    if isinstance(value, str):
        return redact_text(value, user_ids)
    if isinstance(value, list):
        return [_redact_json(v, user_ids) for v in value]
    if isinstance(value, dict):
        return {redact_text(k, user_ids): _redact_json(v, user_ids) for k, v in value.items()}
    return value


def _doomed(table: pa.Table, user_ids: list[str]) -> pa.ChunkedArray | None:
    """A boolean mask of the rows that belong to the users (None when the table has no such column)."""
    masks = []
    if USER_COLUMN in table.column_names:
        masks.append(pc.is_in(table[USER_COLUMN], value_set=pa.array(user_ids, pa.string())))
    if RAW_COLUMN in table.column_names:
        masks += [pc.match_substring_regex(table[RAW_COLUMN], token_regex(user_id)) for user_id in user_ids]
    if not masks:
        return None
    doomed = masks[0]
    for mask in masks[1:]:
        doomed = pc.or_(doomed, mask)
    return pc.fill_null(doomed, False)


def drop_user_rows(path: Path | str, user_ids: list[str]) -> int:
    """Rewrite one Parquet file (local or on object storage) without the users' rows; returns how many rows
    were dropped (0: untouched)."""
    names = storage.parquet_metadata(path).schema.to_arrow_schema().names
    columns = [c for c in (USER_COLUMN, RAW_COLUMN) if c in names]
    if not columns:
        return 0
    probe = _doomed(storage.read_table(path, columns=columns), user_ids)
    dropped = int(pc.sum(probe).as_py() or 0) if probe is not None else 0
    if not dropped:
        return 0
    table = storage.read_table(path)
    storage.write_table(table.filter(pc.invert(_doomed(table, user_ids))), path)
    return dropped


def erase_lake_tables(catalog: Catalog, user_ids: list[str]) -> dict[str, int]:
    """Drop the users' rows from the lake's Delta tables (each affected date rewritten in one commit; published
    dates under their publish lock), then vacuum every older version, so no snapshot keeps them. The tables'
    logs hold no column statistics beyond `dt` (pipeline.lake), so no id remains there either."""
    from pipeline.publish import publish_lock

    def doomed(table: pa.Table) -> pa.ChunkedArray:
        return _doomed(table, user_ids)

    dropped: dict[str, int] = {}
    for name, column in (("interactions", USER_COLUMN), ("quarantine", RAW_COLUMN),
                         ("recommendations", USER_COLUMN)):
        lock = (lambda day: publish_lock(catalog, day, LOCK_WAIT_S)) if name == "recommendations" else None
        n = lake.drop_rows(catalog, name, doomed, [column], lock=lock)
        lake.vacuum(catalog, name, retention_hours=0)
        if n:
            dropped[name] = n
            log.info("erasure: %d rows dropped from the lake table %s", n, name)
    return dropped


def erase_parquet(catalog: Catalog, user_ids: list[str]) -> dict[str, int]:
    """Drop the users' rows from the lake's tables and every other Parquet file (marts, caches, staging); rows
    dropped per dataset."""
    dropped = erase_lake_tables(catalog, user_ids)
    for path in catalog.parquet_files():
        n = drop_user_rows(path, user_ids)
        if n:
            dataset = _dataset(catalog, path)
            dropped[dataset] = dropped.get(dataset, 0) + n
            log.info("erasure: %d rows dropped from %s", n, path)
    return dropped


def _dataset(catalog: Catalog, path: Path | str) -> str:
    """The dataset a file belongs to: the lake's folder below the lake (local or `lake_uri`), or staging."""
    for root, prefix in ((catalog.lake, ""), (catalog.lake_root, ""), (catalog.staging_root, "staging")):
        base = str(root).rstrip("/") + "/"
        if str(path).startswith(base):
            return prefix or str(path)[len(base):].split("/", 1)[0]
    return str(path).rsplit("/", 1)[0]


def _text_files(root: Path | str, suffix: str = "") -> list[Path | str]:
    """The files below a folder or URI prefix (hidden names and local symbolic links skipped)."""
    return [f for f in storage.list_files(root, suffix, recursive=True)
            if not (isinstance(f, Path) and f.is_symlink())]


def _holds(location: Path | str, needles: list[bytes]) -> bool:
    data = storage.read_bytes(location)
    return any(needle in data for needle in needles)


def rewrite_reports(settings: Settings, user_ids: list[str]) -> int:
    """Re-render every report that shows one of the users (reports/ and MLflow's copies); returns how many."""
    from pipeline.report import rewrite_without_users

    catalog = Catalog.of(settings)
    needles = [u.encode("utf-8") for u in user_ids]
    rewritten = 0
    for root in (catalog.reports_dir, catalog.mlflow_artifacts):
        for location in _text_files(root, ".json"):
            if _holds(location, needles) and rewrite_without_users(settings, location, set(user_ids)):
                rewritten += 1
                log.info("erasure: report %s re-rendered without the erased users", location)
    return rewritten


def redact_files(catalog: Catalog, user_ids: list[str]) -> dict[str, int]:
    """Replace the ids in every text file of the catalog's text folders that still holds one (see the module's
    docstring); returns the counts of files redacted and of non-text files that hold an id's bytes."""
    needles = [u.encode("utf-8") for u in user_ids]
    counts = {"files_redacted": 0, "binary_files_flagged": 0}
    for root in catalog.text_roots():
        for location in _text_files(root):
            if not _holds(location, needles):
                continue
            suffix = Path(storage.name_of(location)).suffix.lower()
            if suffix not in TEXT_SUFFIXES:
                counts["binary_files_flagged"] += 1
                log.warning("erasure: %s is not a text file but holds the bytes of an erased id; check it", location)
                continue
            text = storage.read_bytes(location).decode("utf-8", errors="surrogateescape")
            redacted = _redacted(text, suffix == ".json", user_ids)
            if redacted != text:
                storage.write_bytes(location, redacted.encode("utf-8", errors="surrogateescape"))
                counts["files_redacted"] += 1
    return counts


def _redacted(text: str, is_json: bool, user_ids: list[str]) -> str:
    """A JSON document redacted through its strings (so it stays valid), any other text as text."""
    if is_json:
        try:
            return json.dumps(_redact_json(json.loads(text), user_ids), indent=2)
        except ValueError:
            pass  # not one JSON document (JSON lines, a truncated file): redact it as text
    return redact_text(text, user_ids)
