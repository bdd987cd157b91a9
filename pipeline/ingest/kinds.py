"""What is ingested (events, the item catalog) and the landing files of one batch."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import DEFAULT_EVENT_COLUMNS, DEFAULT_ITEM_COLUMNS, IngestSettings


@dataclass(frozen=True)
class Kind:
    """What is ingested: events (-> lake/interactions) or the item catalog (-> lake/items).

    Its queries live in sql/ingest/: `<row>_fields_<format>` reduce a format to text fields (the view
    `<row>_fields`), `staged_<name>` validates them, `duplicate_<name>` finds the rows dropped as duplicates
    and `<lake_table>` is the lake's rows."""

    name: str                          # ledger kind, landing folder and quarantine file name
    lake_table: str                    # lake table of the accepted rows
    fields: tuple[str, ...]            # pipeline fields read from the source
    required: tuple[str, ...]          # fields a CSV header / Parquet schema must have
    list_fields: tuple[str, ...] = ()  # fields holding lists (item attributes)
    out_order: str = "dt"              # a stable order of the lake rows (column names of the lake query)

    @property
    def row(self) -> str:
        return self.name.removesuffix("s")  # event | item

    @property
    def fields_view(self) -> str:
        return f"{self.row}_fields"  # what staged_events.sql / staged_items.sql read

    def fields_query(self, fmt: str) -> str:
        return f"ingest/{self.row}_fields_{fmt}"

    @property
    def staged_query(self) -> str:
        return f"ingest/staged_{self.name}"

    @property
    def duplicates_query(self) -> str:
        return f"ingest/duplicate_{self.name}"

    @property
    def lake_query(self) -> str:
        return f"ingest/{self.lake_table}"

    def columns(self, cfg: IngestSettings) -> dict[str, str]:
        """Pipeline field -> source column name."""
        return dict(cfg.event_columns if self is EVENTS else cfg.item_columns)

    def default_format(self, cfg: IngestSettings) -> str:
        """The format of landing files whose suffix does not say."""
        return cfg.events_format if self is EVENTS else cfg.items_format


EVENTS = Kind("events", "interactions", tuple(DEFAULT_EVENT_COLUMNS), ("user_id", "item_id", "timestamp"),
              out_order="dt, source_file, line_no")
ITEMS = Kind("items", "items", tuple(DEFAULT_ITEM_COLUMNS), ("item_id",), ("genres", "categories", "tags"),
             out_order="dt, item_id")


@dataclass(frozen=True)
class SourceFile:
    file_no: int   # position in the batch (the order of files of a date = discovery.read_order)
    path: Path
    day: dt.date   # data date, from the file name
    fmt: str       # jsonl | csv | parquet
    gzip: bool = False  # a .gz file (JSONL or CSV), decompressed while read
