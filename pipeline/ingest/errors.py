"""What ingest raises; each message names the file, date or count at fault."""

from __future__ import annotations


class IngestError(RuntimeError):
    """Ingest could not complete (no event files for the date, counts that do not reconcile)."""


class IngestFormatError(IngestError):
    """A landing file cannot be read at all (e.g. not a Parquet file); nothing of its date is published."""


class IngestQualityError(IngestError):
    """Too many rows of a night were quarantined; nothing for that date is published downstream."""


class IngestVolumeError(IngestError):
    """The data date's accepted rows fell below the configured fraction of the trailing median of the ledger
    (or no rows were accepted at all): the source probably broke. The date is published; the night stops."""
