"""What ingest raises; each message names the file, date or count at fault."""

from __future__ import annotations


class IngestError(RuntimeError):
    """Ingest could not complete (no event files for the date, counts that do not reconcile)."""


class IngestFormatError(IngestError):
    """A landing file cannot be read at all (e.g. not a Parquet file); nothing of its date is published."""


class IngestQualityError(IngestError):
    """Too many rows of a night were quarantined; nothing for that date is published downstream."""
