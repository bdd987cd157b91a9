"""The nightly DAG on a multi-worker deployment: CeleryExecutor with Redis, Airflow's metadata in PostgreSQL,
two Celery workers that share no disk (each its own Airflow home, pipeline home and scratch folder), the lake
on the S3 endpoint, the warehouse in PostgreSQL and the MLflow server (pipeline.tools.celery_stack).

A night is triggered over the REST API; the GPU tasks (embed, train) must run on the worker that serves the GPU
queue and the others on the other worker (the task instances' hostnames), no worker keeps a file outside its
scratch folder's parent, and what it publishes equals a single-machine run of the same data and seed."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import uuid
from pathlib import Path

import pytest
from conftest import SMALL_DEMO, stack_folder

from pipeline import warehouse
from pipeline.config import load_settings
from pipeline.dag_support import closed_day
from pipeline.stages import run_night
from pipeline.tools.airflow_api import Api
from pipeline.tools.demo_data import DemoConfig, generate
from pipeline.tools.stack import BUCKET, Stack

DAG_ID = "nightly_recommendations"
DAYS = 8
RUN_TIMEOUT_S = 600
COLUMNS = "user_id, rank, item_id, score, source, reason_item_id"


def published(location: str | Path, day: dt.date) -> list[tuple]:
    with warehouse.connect(location) as wh:
        return sorted(wh.execute(f"select {COLUMNS} from recommendations where dt = $d", {"d": day}).fetchall())


@pytest.mark.stack
@pytest.mark.slow
def test_a_night_on_celery_workers_runs_each_task_where_it_belongs_and_matches_one_machine(
    stack: Stack, postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.tools.celery_stack import start_celery_airflow

    base = stack_folder()
    # landing ends the day before the last closed day: the scheduler's own run for the closed day fails at ingest
    night = closed_day(dt.datetime.now(dt.UTC)) - dt.timedelta(days=1)
    generate(base / "landing", DemoConfig(**{**SMALL_DEMO, "days": DAYS}, start_date=night - dt.timedelta(DAYS - 1)))
    prefix = f"celery-{uuid.uuid4().hex[:8]}"
    env = {"NIGHTLY_RECS_LANDING_DIR": str(base / "landing"), "NIGHTLY_RECS_LAKE_URI": f"s3://{BUCKET}/{prefix}",
           "NIGHTLY_RECS_WAREHOUSE_URI": postgres_database, "NIGHTLY_RECS_MODEL_NAME": f"nightly-recs-{prefix}",
           "NIGHTLY_RECS_TASK_RETRIES": "0", "AIRFLOW__CORE__PARALLELISM": "2"}
    for name in [k for k in os.environ if k.startswith(("AIRFLOW", "NIGHTLY_RECS_"))]:
        monkeypatch.delenv(name)  # the deployment gets only its own settings
    airflow = start_celery_airflow(stack, base / "deployment", env)
    try:
        api = Api(airflow.url)
        api.login(airflow.control.password_file)
        api.wait_for(f"/api/v2/dags/{DAG_ID}", timeout_s=120)
        conf = {"data_date": night.isoformat(), "max_epochs": 2, "force_promote": True}
        status, run = api.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})
        assert status == 200, run
        finished = api.wait_run(DAG_ID, run["dag_run_id"], RUN_TIMEOUT_S, airflow)
        instances = api.task_instances(DAG_ID, run["dag_run_id"])
        assert finished["state"] == "success", {t: ti["state"] for t, ti in instances.items()}
    finally:
        airflow.stop()
    hosts = {task: ti["hostname"] for task, ti in instances.items()}
    assert hosts["embed"] == hosts["train"] == "worker-2", hosts
    assert {hosts[t] for t in ("ingest", "features", "register", "recommend", "publish")} == {"worker-1"}, hosts
    for worker in airflow.workers:  # nothing left in any worker's scratch folder, nothing of the lake on disk
        scratch = airflow.worker_folder(worker) / "scratch"
        assert [p for p in scratch.rglob("*") if p.is_file()] == [], worker
        assert not (airflow.worker_folder(worker) / "home" / "lake").exists(), worker
        assert not (airflow.worker_folder(worker) / "home" / "models").exists(), worker
    on_celery = published(postgres_database, night)

    # the same night on one machine, embedded default (DuckDB, local lake, SQLite MLflow)
    monkeypatch.setenv("NIGHTLY_RECS_HOME", str(base / "one-machine"))
    monkeypatch.setenv("NIGHTLY_RECS_LANDING_DIR", str(base / "landing"))
    settings = load_settings()
    run_night(settings, night, max_epochs=2, force_promote=True)
    expected = published(settings.paths.warehouse_path, night)
    assert on_celery and [r[:3] + r[4:] for r in on_celery] == [r[:3] + r[4:] for r in expected]
    assert [r[3] for r in on_celery] == pytest.approx([r[3] for r in expected], rel=1e-4, abs=1e-5)
    shutil.rmtree(base, ignore_errors=True)
