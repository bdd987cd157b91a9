"""The ingest entry: which dates of each kind to (re)ingest, one DuckDB pass per batch of dates, the ledger."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import lake, warehouse
from pipeline.catalog import Catalog
from pipeline.config import IngestSettings, Settings, VolumeCheck
from pipeline.erasure import tombstones
from pipeline.erasure.identity import Screen, screen
from pipeline.ingest.discovery import DateFiles, file_format, file_sha256, input_batches, is_gzip, landing_files
from pipeline.ingest.errors import IngestError, IngestQualityError, IngestVolumeError
from pipeline.ingest.housekeeping import clean_stale_temp, handle_vanished, volume_problem
from pipeline.ingest.kinds import EVENTS, ITEMS, Kind, SourceFile
from pipeline.ingest.ledger import FileCounts, ledger_state, record, summarise, unchanged
from pipeline.ingest.partitions import publish
from pipeline.ingest.validation import file_counts, files_table, known_items, over_threshold, scratch_connection, stage
from pipeline.sql import relation
from pipeline.warehouse import Warehouse

log = logging.getLogger(__name__)

MAX_LISTED_FAILURES = 5


@dataclass
class BatchResult:
    counts: list[FileCounts]
    failed_days: dict[dt.date, str]  # day -> why it was not published


def ingest(settings: Settings, data_date: dt.date) -> dict[str, Any]:
    """Ingest night `data_date` with the ingest settings, at the catalog's locations (see ingest_night)."""
    return ingest_night(settings.ingest, Catalog.of(settings), data_date)


def ingest_night(cfg: IngestSettings, catalog: Catalog, data_date: dt.date) -> dict[str, Any]:
    """Ingest night `data_date`: every date <= data_date whose landing files are new or changed.

    Returns the data date's counts per kind and the dates (re)ingested. Unchanged earlier dates are skipped;
    an unchanged data date is recorded in the ledger as a no-op. Temporary files left by a killed ingest are
    removed first; a date whose landing files all vanished is flagged or retracted (housekeeping). Raises
    IngestQualityError when a date's quarantined fraction is above its kind's threshold (after publishing the
    other dates), IngestFormatError when a file cannot be read, IngestError when the data date has no event
    files, IngestVolumeError when the data date's accepted rows fall below the trailing baseline (volume_check
    = fail; with warn it is logged and listed in the summary's `warnings`).
    """
    ingested_at = dt.datetime.now(dt.UTC)
    clean_stale_temp(catalog, cfg.stale_temp_minutes)
    event_files = landing_files(catalog.landing_dir("events"))
    if data_date not in event_files:
        raise IngestError(f"no event files for data date {data_date} in {catalog.landing_dir('events')}")
    sources = {ITEMS: landing_files(catalog.landing_dir("items")), EVENTS: event_files}
    summary: dict[str, Any] = {"data_date": data_date.isoformat(), "ingested_dates": [], "noop_dates": [],
                               "vanished_dates": [], "warnings": []}
    failures: list[str] = []
    forgotten = screen(catalog.erasure_key, [h for h, _ in tombstones.tombstones(catalog.warehouse)])
    with warehouse.connect(catalog.warehouse) as wh:
        night = _Night(cfg, catalog, data_date, wh, ledger_state(wh), ingested_at, summary, forgotten)
        for kind, by_date in sources.items():
            failures += night.ingest_kind(kind, by_date)
        if failures:
            more = len(failures) - MAX_LISTED_FAILURES
            listed = "; ".join(failures[:MAX_LISTED_FAILURES]) + (f"; and {more} more dates" if more > 0 else "")
            raise IngestQualityError(listed)
        problems = [p for kind in sources if (p := volume_problem(wh, cfg, kind, data_date))]
    if problems and cfg.volume_check == VolumeCheck.FAIL:
        raise IngestVolumeError("; ".join(problems))
    for problem in problems:
        log.warning("ingest %s: %s", data_date, problem)
    summary["warnings"] += problems
    log.info("ingest %s: %s", data_date, summary.get("events"))
    return summary


@dataclass
class _Night:
    """One night's ingest: its settings, locations, ledger connection and the summary it fills."""

    cfg: IngestSettings
    catalog: Catalog
    data_date: dt.date
    wh: Warehouse
    previous: dict[tuple[str, dt.date], list[FileCounts]]  # the ledger's last successful ingest of each date
    ingested_at: dt.datetime
    summary: dict[str, Any]
    forgotten: Screen  # erased users, whose rows are dropped unkept (pipeline.erasure)

    def ingest_kind(self, kind: Kind, by_date: dict[dt.date, list[Path]]) -> list[str]:
        """Ingest the changed dates of one kind, record them in the ledger; returns quality failure messages."""
        checksums: dict[Path, str] = {}
        pending: list[DateFiles] = []
        gone = {day: counts for (name, day), counts in self.previous.items()
                if name == kind.name and day <= self.data_date and day not in by_date}
        self.summary["vanished_dates"] += handle_vanished(self.wh, self.cfg, self.catalog, kind, gone,
                                                          self.ingested_at)
        in_lake = lake.dates(self.catalog, kind.lake_table)
        for day in sorted(d for d in by_date if d <= self.data_date):
            before = self.previous.get((kind.name, day))
            if not unchanged(by_date[day], before, day in in_lake, checksums):
                pending.append((day, by_date[day]))
            elif day == self.data_date and before:
                record(self.wh, kind.name, [(c, "noop") for c in before], self.ingested_at)
                self.summary["noop_dates"].append(f"{kind.name}:{day}")
                self.summary[kind.name] = summarise(before, "noop")
        failures: list[str] = []
        for batch in input_batches(pending):
            failures += self._ingest_and_record(kind, batch, checksums)
        return failures

    def _ingest_and_record(self, kind: Kind, batch: list[DateFiles], checksums: dict[Path, str]) -> list[str]:
        try:
            result = _ingest_batch(self.cfg, self.catalog, kind, batch, checksums, self.ingested_at, self.forgotten)
        except IngestError:
            files = [(day, path) for day, paths in batch for path in paths]
            record(self.wh, kind.name,
                   [(FileCounts(p.name, checksums.get(p, ""), day=d), "failed") for d, p in files], self.ingested_at)
            raise
        status = {day: "failed" if day in result.failed_days else "ok" for day, _ in batch}
        record(self.wh, kind.name, [(c, status[c.day]) for c in result.counts if c.day is not None],
               self.ingested_at)
        self.summary["ingested_dates"] += [f"{kind.name}:{day}" for day, s in status.items() if s == "ok"]
        if self.data_date in status:
            of_day = [c for c in result.counts if c.day == self.data_date]
            self.summary[kind.name] = summarise(of_day, status[self.data_date])
        return list(result.failed_days.values())


def _ingest_batch(cfg: IngestSettings, catalog: Catalog, kind: Kind, batch: list[DateFiles],
                  checksums: dict[Path, str], ingested_at: dt.datetime, forgotten: Screen) -> BatchResult:
    """Validate, deduplicate and publish consecutive dates of one kind in one pass over their files.
    Text files are hashed while they are read; Parquet files (read by column) and .gz files (hashed as landed,
    read decompressed) are hashed beforehand."""
    files = [SourceFile(i, path, day, file_format(path, kind.default_format(cfg)), is_gzip(path))
             for i, (day, path) in enumerate((day, p) for day, paths in batch for p in paths)]
    for src in files:
        if (src.fmt == "parquet" or src.gzip) and src.path not in checksums:
            checksums[src.path] = file_sha256(src.path)
    hashers = {f.file_no: hashlib.sha256() for f in files if f.path not in checksums}
    tmp_dir = catalog.new_scratch_dir()
    con = scratch_connection(tmp_dir, cfg)
    try:
        con.register("ingest_files", files_table(files, kind, cfg))
        rows_read = stage(con, kind, files, cfg, hashers, forgotten)
        checksums.update({f.path: hashers[f.file_no].hexdigest() for f in files if f.file_no in hashers})
        relation(con, kind.duplicates_query).create("duplicates")
        known_items(con, catalog, kind)
        counts = file_counts(con, kind, files, rows_read, checksums)
        failed = over_threshold(kind, counts, cfg, catalog)
        publish(con, kind, catalog, counts, failed, ingested_at)
        return BatchResult(counts, failed)
    finally:
        con.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)
