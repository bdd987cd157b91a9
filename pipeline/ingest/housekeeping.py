"""What ingest tidies and checks around the batches: temporary files left by a killed ingest, landing files
that vanished for a date already ingested, and the volume/freshness check against the ledger's trailing
baseline."""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path

from pipeline import lake
from pipeline.catalog import Catalog
from pipeline.config import IngestSettings
from pipeline.ingest.kinds import EVENTS, Kind
from pipeline.ingest.ledger import FileCounts, record
from pipeline.warehouse import Warehouse

log = logging.getLogger(__name__)

SCRATCH_NAME = re.compile(r"^(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{32}$")
MIN_BASELINE_DATES = 3   # fewer earlier dates in the window: only the "no rows at all" check applies
SETTLED = ("source_missing", "retracted")  # a vanished date already flagged or retracted


def clean_stale_temp(catalog: Catalog, stale_minutes: int) -> list[Path]:
    """Remove what a killed ingest left: scratch folders of processes no longer running on this host (or, from
    another host, untouched for `stale_minutes`). Data files a killed writer left in a lake table belong to no
    commit, so no reader sees them; housekeeping's vacuum removes them. Returns what was removed."""
    removed: list[Path] = []
    cutoff = time.time() - stale_minutes * 60
    root = catalog.scratch_root
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if _abandoned_scratch(folder, cutoff):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    for path in removed:
        log.warning("removed a temporary file left by an interrupted run: %s", path)
    return removed


def _abandoned_scratch(folder: Path, cutoff: float) -> bool:
    match = SCRATCH_NAME.match(folder.name)
    if match and match["host"] == socket.gethostname():
        return not _running(int(match["pid"]))
    return folder.lstat().st_mtime < cutoff


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def handle_vanished(wh: Warehouse, cfg: IngestSettings, catalog: Catalog, kind: Kind,
                    gone: dict[dt.date, list[FileCounts]], at: dt.datetime) -> list[str]:
    """Dates ingested before whose landing files have all vanished: flagged in the ledger (`source_missing`, the
    partition stays) or, with `retract_removed_landing`, retracted (partition and quarantine file removed,
    `retracted`). Each date is handled once; returns `kind:date` labels."""
    status = {(k, d): s for k, d, s in wh.query("ingest/ledger_status")}
    labels = []
    for day, counts in sorted(gone.items()):
        if status.get((kind.name, day)) in SETTLED:
            continue
        if cfg.retract_removed_landing:
            lake.delete_dates(catalog, kind.lake_table, [day])
            lake.delete_dates(catalog, "quarantine", [day], where={"kind": kind.name})
            outcome = "retracted"
        else:
            outcome = "source_missing"
        log.warning("%s files of %s vanished from %s (%s): %s", kind.name, day, catalog.landing_dir(kind.name),
                    ", ".join(c.source_file for c in counts), outcome)
        record(wh, kind.name, [(c, outcome) for c in counts], at)
        labels.append(f"{kind.name}:{day}")
    return labels


def volume_problem(wh: Warehouse, cfg: IngestSettings, kind: Kind,
                   data_date: dt.date) -> str | None:
    """Why the data date's accepted rows look broken against the ledger's trailing baseline, or None: no rows
    accepted at all (freshness), or fewer than the kind's ratio x the median of the earlier dates (volume)."""
    ratio = cfg.events_min_volume_ratio if kind is EVENTS else cfg.items_min_volume_ratio
    if ratio <= 0:
        return None
    params = {"kind": kind.name, "data_date": data_date, "days": cfg.volume_baseline_days}
    ((accepted, median, dates),) = wh.query("ingest/volume_baseline", params)
    setting = f"{kind.name}_min_volume_ratio"
    if accepted == 0:
        return f"{data_date}: no {kind.row} rows accepted (freshness check; set {setting} = 0 to disable)"
    if dates >= MIN_BASELINE_DATES and median and accepted < ratio * median:
        return (f"{data_date}: {accepted} {kind.row} rows accepted, below {ratio:.0%} of the median {median:g} of "
                f"the {dates} dates before it (volume check; {setting}, volume_baseline_days)")
    return None
