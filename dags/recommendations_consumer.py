"""recommendations_consumer: an example consumer that runs whenever fresh recommendations are published.

It waits for the table the Airflow way: scheduled on the `nightly_recs_recommendations` asset, it runs after
each successful `publish` (no sensor, no clock). Each asset event says which date arrived, where its Parquet
partition is and which model served it (`degraded` is true when training failed and the champion served), so
the consumer never guesses "latest". This one writes `$NIGHTLY_RECS_HOME/consumer/daily_summary_<date>.json`.

A DAG in another repository schedules on the same asset: `Asset(name="nightly_recs_recommendations",
uri="nightly-recs://nightly-recs/recommendations")`; name and URI must both match the producer's.
"""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.sdk import dag, get_current_context, task

from pipeline.catalog import Catalog
from pipeline.config import load_settings
from pipeline.dag_support import nightly_assets

SETTINGS = load_settings()


@dag(
    dag_id="recommendations_consumer",
    schedule=[nightly_assets(SETTINGS)["recommendations"]],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={
        "owner": "nightly-recs",
        "retries": SETTINGS.airflow.task_retries,
        "retry_delay": dt.timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "execution_timeout": dt.timedelta(minutes=10),
    },
    tags=["recommendations", "nightly-recs", "example"],
    doc_md=__doc__,
)
def recommendations_consumer() -> None:
    @task
    def summarise_published_dates() -> list[dict]:
        """One summary file per date in the triggering asset events (a backfill can deliver several)."""
        from pipeline.dag_support import events_extras, write_daily_summary

        extras = events_extras(get_current_context()["triggering_asset_events"])
        return [write_daily_summary(extra, Catalog.of(SETTINGS).consumer_summary_dir()) for extra in extras]

    summarise_published_dates()


recommendations_consumer()
