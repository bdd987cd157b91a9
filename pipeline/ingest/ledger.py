"""The ingest ledger: per-file counts of every ingest, what the last successful one saw (so unchanged dates
are skipped, or recorded as a no-op), and the summary the stage returns."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.ingest.discovery import file_sha256
from pipeline.warehouse import Warehouse

TOP_REASONS = 3


@dataclass
class FileCounts:
    """How the rows of one landing file ended; they always reconcile with the rows read (forgotten: rows of an
    erased user, dropped unkept; see pipeline.erasure)."""

    source_file: str
    checksum: str
    rows_read: int = 0
    accepted: int = 0
    quarantined: int = 0
    duplicates: int = 0
    unknown_items: int = 0
    forgotten: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    day: dt.date | None = None

    def reconciles(self) -> bool:
        return self.rows_read == self.accepted + self.quarantined + self.duplicates + self.forgotten


def by_day(counts: list[FileCounts]) -> dict[dt.date, list[FileCounts]]:
    grouped: dict[dt.date, list[FileCounts]] = {}
    for c in counts:
        if c.day is not None:
            grouped.setdefault(c.day, []).append(c)
    return grouped


def top_reasons(reasons: dict[str, int]) -> str:
    top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REASONS]
    return ", ".join(f"{reason} ({n})" for reason, n in top)


def ledger_state(wh: Warehouse) -> dict[tuple[str, dt.date], list[FileCounts]]:
    """The per-file counts of the latest successful (ok or noop) ingest of every (kind, date)."""
    state: dict[tuple[str, dt.date], list[FileCounts]] = {}
    for kind, day, *values in wh.query("ingest/ledger_latest"):
        state.setdefault((kind, day), []).append(FileCounts(*values, day=day))
    return state


def unchanged(files: list[Path], previous: list[FileCounts] | None, in_lake: bool,
              checksums: dict[Path, str]) -> bool:
    """Whether a date's files are exactly those of its last successful ingest (and the lake holds its rows,
    `in_lake`, unless it accepted none). Records the checksums it computes."""
    if not previous or not (in_lake or sum(c.accepted for c in previous) == 0):
        return False
    before = {c.source_file: c.checksum for c in previous}
    if set(before) != {p.name for p in files}:
        return False
    for path in files:
        checksums[path] = file_sha256(path)
    return all(before[p.name] == checksums[p] for p in files)


def record(wh: Warehouse, kind: str, rows: list[tuple[FileCounts, str]], at: dt.datetime) -> None:
    """Append one ledger row per (file counts, status) in a single insert."""
    if not rows:
        return
    table = pa.Table.from_pylist([
        {"dt": c.day, "kind": kind, "source_file": c.source_file, "checksum": c.checksum,
         "rows_read": c.rows_read, "accepted": c.accepted, "quarantined": c.quarantined,
         "duplicates": c.duplicates, "unknown_items": c.unknown_items, "forgotten": c.forgotten, "status": status,
         "top_reasons": top_reasons(c.reasons) or None, "ingested_at": at}
        for c, status in rows
    ])
    wh.append("ingest_ledger", table)


def summarise(counts: list[FileCounts], status: str) -> dict[str, Any]:
    """One kind's counts of a date, summed over its files, as the stage reports them."""
    merged: dict[str, int] = {}
    for c in counts:
        for reason, n in c.reasons.items():
            merged[reason] = merged.get(reason, 0) + n
    return {
        "files": len(counts), "status": status,
        "rows_read": sum(c.rows_read for c in counts), "accepted": sum(c.accepted for c in counts),
        "quarantined": sum(c.quarantined for c in counts), "duplicates": sum(c.duplicates for c in counts),
        "forgotten": sum(c.forgotten for c in counts), "unknown_items": sum(c.unknown_items for c in counts),
        "reasons": merged,
    }
