"""Small helpers for the DAG's task bodies. Standard library only at import time (the DAG parses it)."""

from __future__ import annotations

import datetime as dt
from typing import Any


def data_date_from_context(context: Any) -> dt.date:
    """The data date of a run: the `data_date` param if given, else the day of data_interval_start.

    With CronDataIntervalTimetable("0 2 * * *"), the run at 02:00 on D+1 has the interval [D 02:00, D+1 02:00),
    so the day of its start is D, the day that just closed.
    """
    override = (context.get("params") or {}).get("data_date")
    if override:
        return dt.date.fromisoformat(str(override))
    start = context.get("data_interval_start") or context["logical_date"]
    return dt.date(start.year, start.month, start.day)


def skip_unless_retrain(day: dt.date, params: dict[str, Any]) -> tuple[dt.date, dict[str, Any]]:
    """Skip the training task (and so registration) when the run was triggered with retrain=false."""
    if not params.get("retrain", True):
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException("retrain=false: serving the current champion")
    return day, params


def attach_asset_extra(context: Any, asset: Any, result: dict[str, Any]) -> dict[str, Any]:
    """Attach the published counts to the asset event, so consumers see what arrived."""
    context["outlet_events"][asset].extra = {k: v for k, v in result.items() if isinstance(v, str | int | float)}
    return result
