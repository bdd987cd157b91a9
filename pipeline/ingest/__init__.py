"""Ingest: landing files -> validated, deduplicated, date-partitioned Parquet; bad rows -> quarantine.

A landing file belongs to the data date its name starts with (``events/2026-11-21.jsonl``,
``events/2026-11-21-late.csv``; the naming rule, the order of a date's files and the names never read are in
``discovery``). Ingesting night D (re)ingests every date <= D whose files are new or changed since the ledger last
saw them, so late files land in their own date and a first run loads history.

Formats: JSONL (strict JSON, one object per line ending at \\n), CSV (RFC 4180: a header record; quoted fields may
span lines), each optionally .gz, and Parquet, chosen by the file suffix or else by
the ``events_format`` / ``items_format`` setting; ``event_columns`` / ``item_columns`` map pipeline fields to
source columns. Every format is reduced to the same text fields and validated by one SQL file per kind
(``sql/ingest/staged_events.sql``, ``staged_items.sql``), so the rules live in one place.

Every row read ends up accepted, dropped as a duplicate (events: same deterministic ``event_id`` on the same
date; items: superseded by a later row), quarantined with a reason, or dropped unkept as a row of an erased user
(``forgotten``; see ``pipeline.erasure``); the ledger records the counts per file and they always reconcile.
Each partition file is written under a temporary name beside it and renamed into place, so a crash never leaves
half a partition. A date whose quarantined fraction is above the threshold is
not published (events and catalog drops each have their threshold); a data date whose accepted rows fall below the
ledger's trailing baseline fails the night (``housekeeping.volume_problem``).

Modules, in the order a batch flows through them: ``discovery`` (landing files, formats, checksums, batches
of dates), ``reading`` (raw lines, CSV headers, Parquet columns as Arrow), ``validation`` (the DuckDB steps
of sql/ingest/, per-file counts, the quarantine threshold), ``partitions`` (the lake and quarantine files),
``ledger`` (what was ingested, unchanged-date no-ops), ``housekeeping`` (stale temporary files, vanished landing
dates, the volume check), ``run`` (the entry); ``kinds`` and ``errors`` are shared by all.
"""

from pipeline.ingest.discovery import landing_files
from pipeline.ingest.errors import IngestError, IngestFormatError, IngestQualityError, IngestVolumeError
from pipeline.ingest.run import ingest, ingest_night

__all__ = ["IngestError", "IngestFormatError", "IngestQualityError", "IngestVolumeError", "ingest", "ingest_night",
           "landing_files"]
