"""Publishing a batch: each date's quarantined rows and (unless the date failed) its lake rows.

Both go to Delta tables (pipeline.lake): the batch's dates of one kind are replaced in one commit per table, so
readers see every date before or after the batch, never part of one, on local disk and object storage alike.
Rows stream from DuckDB to the writer in Arrow batches (bounded memory); big dates are committed one by one.
"""

from __future__ import annotations

import datetime as dt
import logging

import duckdb

from pipeline import lake
from pipeline.catalog import Catalog
from pipeline.ingest.kinds import Kind
from pipeline.ingest.ledger import FileCounts, by_day
from pipeline.sql import relation

log = logging.getLogger(__name__)

STREAMED_WRITE_ROWS = 50_000      # dates with more accepted rows (on average) are committed one by one
STREAM_BATCH_ROWS = 122_880


def publish(con: duckdb.DuckDBPyConnection, kind: Kind, catalog: Catalog, counts: list[FileCounts],
            failed: dict[dt.date, str], ingested_at: dt.datetime) -> None:
    """Replace each date's quarantined rows of this kind and (unless the date failed) its lake rows.

    Big dates are streamed one by one (row order within a date is not significant: the key is dt + event_id);
    many small dates come from one query ordered by date, in one commit.
    """
    days = list(by_day(counts))
    bind = {"kind": kind.name, "ingested_at": ingested_at}
    rejected = relation(con, "ingest/quarantine", bind)
    lake.replace_dates(catalog, "quarantine", days, rejected.to_arrow_reader(STREAM_BATCH_ROWS),
                       where={"kind": kind.name})
    published = [d for d in days if d not in failed]
    accepted = sum(c.accepted for c in counts if c.day in published)
    if published and accepted >= STREAMED_WRITE_ROWS * len(published):
        for day in published:
            rows = relation(con, kind.lake_query, {**bind, "dates": [day]})
            lake.replace_dates(catalog, kind.lake_table, [day], rows.to_arrow_reader(STREAM_BATCH_ROWS))
    elif published:
        ordered = relation(con, kind.lake_query, {**bind, "dates": published}).order(kind.out_order)
        lake.replace_dates(catalog, kind.lake_table, published, ordered.to_arrow_reader(STREAM_BATCH_ROWS))
