"""Helpers for the DAG files' task bodies.

Standard library only at import time: the DAG processor imports this module every time it parses `dags/`, so
Airflow, DuckDB and friends are imported inside the functions."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_path

log = logging.getLogger(__name__)

# The nightly run starts at 02:00 UTC: the data day closes at midnight and late events get two hours of grace.
RUN_HOUR_UTC = 2
SCHEDULE_CRON = f"0 {RUN_HOUR_UTC} * * *"
# Tuning runs weekly, Sundays 06:00 UTC: four hours after the night's run started, so its features exist.
TUNE_CRON = "0 6 * * 0"

# Asset names are the stable contract with consumers (their DAGs schedule on the name); the URIs say where
# the data lives under this deployment's NIGHTLY_RECS_HOME.
ASSET_NAMES = {
    "interactions": "nightly_recs_interactions",
    "item_embeddings": "nightly_recs_item_embeddings",
    "model": "nightly_recs_model",
    "recommendations": "nightly_recs_recommendations",
}


def nightly_assets(settings: Any) -> dict[str, Any]:
    """The nightly DAG's assets, keyed like ASSET_NAMES: one definition for the producer and the consumer."""
    from airflow.sdk import Asset

    # Logical URIs: the asset keeps its identity when the lake moves (another home, object storage); where
    # the data physically is travels in each event's `extra` (e.g. the Parquet partition).
    return {key: Asset(name=ASSET_NAMES[key], uri=f"nightly-recs://{settings.serving.model_name}/{key}")
            for key in ASSET_NAMES}


def closed_day(at: dt.datetime) -> dt.date:
    """The last data day whose nightly run time (D+1 at RUN_HOUR_UTC) is at or before `at` (UTC)."""
    shifted = at.astimezone(dt.UTC) - dt.timedelta(hours=RUN_HOUR_UTC)
    return shifted.date() - dt.timedelta(days=1)


def data_date_from_context(context: Any) -> dt.date:
    """The data date of a run: the `data_date` param if given, else the day of data_interval_start.

    With CronDataIntervalTimetable("0 2 * * *"), the run at 02:00 on D+1 has the interval
    [D 02:00, D+1 02:00), so the day of its start is D, the day that just closed. A run triggered with no
    logical date (REST API `"logical_date": null`) has no data interval: it processes the last day closed at
    its `run_after`.
    """
    override = (context.get("params") or {}).get("data_date")
    if override:
        return dt.date.fromisoformat(str(override))
    start = context.get("data_interval_start")
    if start is not None:
        return dt.date(start.year, start.month, start.day)
    return closed_day(context["dag_run"].run_after)


def tune_date_from_context(context: Any) -> dt.date:
    """The data date a tuning run searches on: the `data_date` param if given, else the last day closed at the
    run's logical date (TUNE_CRON is a trigger timetable: its logical date is the run's own time)."""
    override = (context.get("params") or {}).get("data_date")
    if override:
        return dt.date.fromisoformat(str(override))
    return closed_day(context.get("logical_date") or context["dag_run"].run_after)


def skip_unless_retrain(day: dt.date, params: dict[str, Any]) -> tuple[dt.date, dict[str, Any]]:
    """Skip the training task (and so registration) when the run was triggered with retrain=false."""
    if not params.get("retrain", True):
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException("retrain=false: serving the current champion")
    return day, params


def require_upstream_result(context: Any, task_id: str) -> dict[str, Any]:
    """The XCom result of an upstream task of this run; skip this task when it has none.

    For tasks with trigger_rule all_done (they must run when training fails): they must still not run when the
    night's data never arrived (ingest failed, so embed is upstream_failed and pushed nothing).
    """
    result = context["ti"].xcom_pull(task_ids=task_id)
    if result is None:
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException(f"upstream task {task_id!r} did not succeed in this run: nothing to serve")
    return result


def fail_without_retry(err: Exception) -> Exception:
    """Wrap a deterministic failure (bad data, not a flaky machine) so that the task fails without retries."""
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(f"{type(err).__name__}: {err}")


# Failures that a retry cannot fix (bad data, bad settings, a model or table that breaks a rule): the task fails
# at once. Matched by class name through the MRO, so this module imports none of the heavy modules defining them.
DETERMINISTIC_ERRORS = frozenset({"IngestFormatError", "IngestQualityError", "IngestVolumeError", "GrainCheckError",
                                  "PublishValidationError", "ConfigError", "DataDateError", "ErasureKeyError",
                                  "ShardPartsError"})


def is_deterministic(err: BaseException) -> bool:
    return any(cls.__name__ in DETERMINISTIC_ERRORS for cls in type(err).__mro__)


def default_args(settings: Any, timeout_minutes: int | None = None) -> dict[str, Any]:
    """The project's DAGs' default_args: retries with exponential backoff from the settings, a timeout per task
    (`task_timeout_minutes` unless given), and a notification (log + alert webhook) when a task fails for good."""
    return {
        "owner": "nightly-recs",
        "retries": settings.airflow.task_retries,
        "retry_delay": dt.timedelta(seconds=settings.airflow.retry_delay_seconds),
        "retry_exponential_backoff": True,
        "max_retry_delay": dt.timedelta(hours=1),
        "execution_timeout": dt.timedelta(minutes=timeout_minutes or settings.airflow.task_timeout_minutes),
        "on_failure_callback": notify_task_failed,
    }


def call_stage(stage: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run a stage function; a deterministic error fails the task without retries (AirflowFailException),
    anything else (a lock wait, a full disk, a lost connection) is left to Airflow's retries. The object store's
    Airflow connection (setting `aws_conn_id`), if any, is exported first."""
    from pipeline.config import load_settings
    from pipeline.storage import use_airflow_connection

    try:
        use_airflow_connection(load_settings().paths.aws_conn_id)
        return stage(*args, **kwargs)
    except Exception as err:
        if is_deterministic(err):
            raise fail_without_retry(err) from err
        raise


def _webhook_url() -> str:
    from pipeline.config import load_settings

    return load_settings().airflow.alert_webhook_url


def _run_details(context: Any) -> dict[str, Any]:
    ti, dag_run = context.get("ti"), context.get("dag_run")
    return {"dag_id": getattr(dag_run, "dag_id", None) or getattr(ti, "dag_id", None),
            "run_id": getattr(dag_run, "run_id", None) or context.get("run_id"),
            "task_id": getattr(ti, "task_id", None)}


def notify_task_failed(context: Any) -> None:
    """on_failure_callback: a task failed for good (after its retries, or at once for deterministic errors)."""
    from pipeline.notify import notify

    err = context.get("exception")
    details = {**_run_details(context), "error": f"{type(err).__name__}: {err}" if err else None}
    notify("task_failed", f"nightly-recs task {details['task_id']} failed", details, _webhook_url())


def notify_degraded(context: Any, chosen: dict[str, Any], data_date: dt.date) -> None:
    """A night that serves the previous champion because tonight's model never reached a gate decision."""
    from pipeline.notify import notify

    details = {**_run_details(context), "data_date": data_date.isoformat(), "serving_version": chosen.get("version")}
    notify("degraded", f"nightly-recs {data_date}: DEGRADED, serving champion version {chosen.get('version')}",
           details, _webhook_url())


async def notify_deadline_missed(context: Any = None, **kwargs: Any) -> None:
    """Deadline alert callback (runs in the triggerer): the night has not finished by its deadline."""
    import asyncio

    from pipeline.notify import notify

    details = {**_run_details(context or {}), **kwargs}
    await asyncio.to_thread(notify, "deadline_missed", "nightly-recs: the night's recommendations are not "
                            "published by the deadline", details, _webhook_url())


def audit_force_promote(context: Any) -> bool:
    """The run's force_promote param; when set, log who asked (the MLflow version also records the run id)."""
    forced = bool(context["params"]["force_promote"])
    if forced:
        dag_run = context["dag_run"]
        log.warning("force_promote=true requested by %r in run %s: tonight's model is promoted even if it "
                    "loses the gate", getattr(dag_run, "triggering_user_name", None), dag_run.run_id)
    return forced


def requester_of(context: Any) -> str:
    """Who asked for a forget_users run: its `requester` param, else the user who triggered it."""
    named = (context["params"].get("requester") or "").strip()
    return named or getattr(context["dag_run"], "triggering_user_name", None) or "airflow"


def model_summary(registered: dict[str, Any]) -> dict[str, Any]:
    """What the model asset event tells consumers: the version registered tonight, whether the gate promoted it
    to champion (the event fires either way: a new version exists) and the gate's reason."""
    return {"model_version": registered.get("version"), "promoted": bool(registered.get("promoted")),
            "forced": bool(registered.get("forced")), "reason": str(registered.get("reason") or "")[:1000],
            "previous_champion": registered.get("previous_champion"), "run_id": registered.get("run_id")}


def publish_summary(published: dict[str, Any], chosen: dict[str, Any], data_date: dt.date) -> dict[str, Any]:
    """What the recommendations asset event tells consumers: the date, where its rows are, which model."""
    scalars = {k: v for k, v in published.items() if isinstance(v, str | int | float | bool)}
    return {**scalars, "data_date": data_date.isoformat(), "model_version": chosen.get("version"),
            "degraded": bool(chosen.get("degraded"))}


def attach_asset_extra(context: Any, asset: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """Attach a small JSON-able dict to this task's event for `asset`, so consumers see what arrived."""
    context["outlet_events"][asset].extra = extra
    return extra


def events_extras(triggering_asset_events: Any) -> list[dict[str, Any]]:
    """The `extra` of each asset event that triggered a consumer run, oldest first (there may be several)."""
    events = [event for per_asset in triggering_asset_events.values() for event in per_asset]
    return [dict(event.extra or {}) for event in sorted(events, key=lambda e: e.timestamp)]


def write_daily_summary(extra: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Example consumer of the recommendations asset: summarise one published date into
    `out_dir/daily_summary_<date>.json` (rows, users, distinct items, popular-fallback share, top items).

    Reads the date from the lake's Delta table at the version named in the event (the commit that published
    it: a later rerun of the date does not change what this run reads), not the warehouse, so a consumer never
    holds a lock on the DuckDB file the next night writes.
    """
    import duckdb
    import pyarrow.dataset as pads
    from deltalake import DeltaTable

    from pipeline import storage

    if not {"data_date", "lake_table", "lake_version"} <= set(extra):
        raise ValueError(f"asset event extra lacks data_date/lake_table/lake_version: {sorted(extra)}")
    data_date = dt.date.fromisoformat(extra["data_date"])
    table = DeltaTable(extra["lake_table"], version=int(extra["lake_version"]),
                       storage_options=storage.delta_options(extra["lake_table"]))
    night = table.to_pyarrow_dataset().to_table(filter=pads.field("dt") == data_date)
    con = duckdb.connect()
    try:
        con.register("night", night)
        rows, users, items, popular = con.execute(
            """select count(*), count(distinct user_id), count(distinct item_id),
                      count(*) filter (where source = 'popular')
               from night""").fetchall()[0]
        top = con.execute(
            """select item_id, count(*) as users from night
               group by item_id order by users desc, item_id limit 5""").fetchall()
    finally:
        con.close()
    summary = {
        "data_date": data_date.isoformat(),
        "rows": rows,
        "users": users,
        "distinct_items": items,
        "popular_fallback_share": round(popular / rows, 4) if rows else 0.0,
        "top_items": [{"item_id": item, "users": n} for item, n in top],
        "model_version": extra.get("model_version"),
        "degraded": bool(extra.get("degraded")),
        "source": f"{extra['lake_table']}@v{extra['lake_version']}",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"daily_summary_{data_date.isoformat()}.json"
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    log.info("daily summary for %s: %d rows, %d users -> %s", data_date, rows, users, target)
    return {**summary, "path": str(target)}


WORKER_NAME_ENV = "NIGHTLY_RECS_WORKER_NAME"


def worker_hostname() -> str:
    """Airflow's `[core] hostname_callable` for workers that share one machine (the local Celery stack): the
    worker's name from NIGHTLY_RECS_WORKER_NAME, so task instances tell which worker ran them; else the host's
    fully qualified name, as Airflow's default."""
    import os
    import socket

    return os.environ.get(WORKER_NAME_ENV) or socket.getfqdn()


def gpu_executor_config(settings: Any) -> dict[str, Any]:
    """Task arguments for the GPU tasks (embed, train) under the KubernetesExecutor: a `pod_override` that runs
    the task's `base` container in `gpu_image` (the project built on a CUDA torch) with `gpu_count` GPUs
    requested and limited, on nodes matching `gpu_node_selector`, tolerating the usual GPU taint. Empty when
    `gpu_image` is not set (the Kubernetes models are imported only then: DAG parsing stays light)."""
    cfg = settings.airflow
    if not cfg.gpu_image:
        return {}
    from kubernetes.client import models as k8s

    gpus = {"nvidia.com/gpu": str(cfg.gpu_count)}
    container = k8s.V1Container(name="base", image=cfg.gpu_image,
                                resources=k8s.V1ResourceRequirements(requests=gpus, limits=gpus))
    spec = k8s.V1PodSpec(containers=[container], node_selector=dict(cfg.gpu_node_selector) or None,
                         tolerations=[k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")])
    return {"executor_config": {"pod_override": k8s.V1Pod(spec=spec)}}
