"""Real Airflow: api-server, scheduler (LocalExecutor, SQLite), dag-processor and triggerer on loopback.

Started with the same code as `make airflow` (pipeline.tools.airflow_local), in a temporary AIRFLOW_HOME and
NIGHTLY_RECS_HOME, on a free port. The nightly DAG is triggered through REST API v2 with a conf, the way the
UI's trigger form does it, and polled until it succeeds; then a one-day `airflow backfill create`; the example
consumer must have summarised what was published. Everything is stopped by process group at the end.

Settings name a `gpu` pool and queue: `airflow_local` creates the pool, and embed/train must run in it.
Landing drops end the day before the last closed day, so the scheduler's own run for the closed day (created
as soon as the unpaused DAG is parsed, catchup=False) fails at ingest, and nothing downstream of it runs.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import duckdb
import pytest
from conftest import SMALL_DEMO

from pipeline.tools.airflow_api import Api

pytestmark = pytest.mark.slow
DAG_ID = "nightly_recommendations"
DEMO_DAYS = 6
RUN_TIMEOUT_S = 420


@dataclass
class Airflow:
    api: Api
    services: object
    settings: object
    days: list[dt.date]


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Airflow]:
    from pipeline.config import load_settings
    from pipeline.dag_support import closed_day
    from pipeline.tools import airflow_local
    from pipeline.tools.demo_data import DemoConfig, generate

    root = tmp_path_factory.mktemp("services")
    home = root / "home"
    last = closed_day(dt.datetime.now(dt.UTC)) - dt.timedelta(days=1)
    days = [last - dt.timedelta(days=d) for d in reversed(range(DEMO_DAYS))]
    generate(home / "landing", DemoConfig(**{**SMALL_DEMO, "days": DEMO_DAYS}, start_date=days[0]))
    # the services get a clean environment: none of this pytest process's in-process Airflow settings
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "NIGHTLY_RECS_"))}
    # LocalExecutor runs every queue, so the gpu queue needs no worker here
    env.update({"NIGHTLY_RECS_HOME": str(home), "NIGHTLY_RECS_TASK_RETRIES": "0",
                "NIGHTLY_RECS_GPU_POOL": "gpu", "NIGHTLY_RECS_GPU_QUEUE": "gpu",
                "AIRFLOW__CORE__PARALLELISM": "2"})
    settings = load_settings(env=env)
    services = airflow_local.start(settings, airflow_local.free_port(), env)
    try:
        services.wait_healthy(timeout_s=240)
        api = Api(services.url)
        api.login(services.password_file)
        api.wait_for(f"/api/v2/dags/{DAG_ID}", timeout_s=120)
        yield Airflow(api, services, settings, days)
    finally:
        services.stop()
    leftover = subprocess.run(["pgrep", "-g", str(services.pgid)], capture_output=True, text=True).stdout
    assert leftover.strip() == "", f"processes left in group {services.pgid}: {leftover}"


def _published(settings, day: dt.date) -> list[tuple]:
    with duckdb.connect(str(settings.paths.warehouse_path), read_only=True) as con:
        return con.execute("select user_id, rank, model_version from recommendations where dt = $d "
                           "order by user_id, rank", {"d": day}).fetchall()


def test_bad_conf_is_rejected_with_400(airflow: Airflow) -> None:
    path = f"/api/v2/dags/{DAG_ID}/dagRuns"
    for conf in ({"top_n": 0}, {"retrain": "yes"}, {"data_date": "24/11/2026"}):
        status, body = airflow.api.call("POST", path, {"logical_date": None, "conf": conf})
        assert status == 400, (conf, status, body)
        assert next(iter(conf)) in json.dumps(body), body


def test_rest_triggered_run_with_conf_trains_and_publishes(airflow: Airflow) -> None:
    day = airflow.days[-1]
    conf = {"data_date": day.isoformat(), "top_n": 5, "max_epochs": 3, "force_promote": True}
    body = {"logical_date": None, "conf": conf}
    status, run = airflow.api.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", body)
    assert status == 200, run
    assert run["conf"] == conf

    final = airflow.api.wait_run(DAG_ID, run["dag_run_id"], RUN_TIMEOUT_S, airflow.services)

    tis = airflow.api.task_instances(DAG_ID, run["dag_run_id"])
    states = {task_id: ti["state"] for task_id, ti in tis.items()}
    assert final["state"] == "success", states
    assert set(states.values()) == {"success"}, states
    routing = {task_id: (ti["pool"], ti["queue"]) for task_id, ti in tis.items()}
    assert routing.pop("embed") == routing.pop("train") == ("gpu", "gpu"), "GPU tasks not routed"
    assert set(routing.values()) == {("default_pool", "default")}
    rows = _published(airflow.settings, day)
    users = {user for user, _, _ in rows}
    assert users and len(rows) == 5 * len(users)
    assert {version for _, _, version in rows} == {"1"}
    from mlflow import MlflowClient

    uri = airflow.settings.paths.mlflow_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    tags = client.get_model_version(airflow.settings.serving.model_name, "1").tags
    assert tags["gate.forced"] == "true", "force_promote from the conf was not applied and recorded"
    assert tags["dag_run_id"] == run["dag_run_id"]


def test_scheduled_run_for_the_closed_day_without_data_fails_at_ingest(airflow: Airflow) -> None:
    scheduled = [r for r in airflow.api.runs(DAG_ID) if r["run_type"] == "scheduled"]
    assert scheduled, "the scheduler created no run for the last closed day"
    run = airflow.api.wait_run(DAG_ID, scheduled[0]["dag_run_id"], 120, airflow.services)
    assert run["state"] == "failed"
    states = airflow.api.task_states(DAG_ID, run["dag_run_id"])
    assert states["ingest"] == "failed"
    assert {states[t] for t in ("recommend", "publish", "report")} == {"upstream_failed"}, states


def _cli_retrying_sqlite_locks(cmd: list[str], env: dict[str, str], attempts: int = 4) -> subprocess.CompletedProcess:
    """An Airflow CLI command, run again when SQLite said `database is locked`: the four services write to the
    same SQLite file, and under load the CLI's write can lose (a transient error; Airflow rolls the partial
    backfill back). Any other failure is returned at once."""
    for attempt in range(1, attempts + 1):
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        if out.returncode == 0 or "database is locked" not in out.stderr or attempt == attempts:
            return out
        time.sleep(5.0 * attempt)
    raise AssertionError("unreachable")


def test_backfill_create_runs_a_day_with_its_conf(airflow: Airflow) -> None:
    day = airflow.days[-2]
    # a backfill selects runs by logical date = data_interval_start = D 02:00 for data date D
    logical = f"{day.isoformat()}T02:00:00+00:00"
    cmd = ["airflow", "backfill", "create", "--dag-id", DAG_ID, "--from-date", logical, "--to-date", logical,
           "--max-active-runs", "1", "--dag-run-conf", json.dumps({"retrain": False, "top_n": 3})]
    out = _cli_retrying_sqlite_locks(cmd, airflow.services.env)
    assert out.returncode == 0, out.stderr[-3000:]

    deadline = time.monotonic() + 60
    while not (runs := [r for r in airflow.api.runs(DAG_ID) if r["run_type"] == "backfill"]):
        assert time.monotonic() < deadline, "backfill create made no run"
        time.sleep(1.0)
    assert len(runs) == 1
    final = airflow.api.wait_run(DAG_ID, runs[0]["dag_run_id"], RUN_TIMEOUT_S, airflow.services)
    assert final["state"] == "success", airflow.api.task_states(DAG_ID, runs[0]["dag_run_id"])
    rows = _published(airflow.settings, day)
    assert rows and {rank for _, rank, _ in rows} == {1, 2, 3}


def test_consumer_dag_summarised_each_published_date(airflow: Airflow) -> None:
    expected = {airflow.days[-1].isoformat(), airflow.days[-2].isoformat()}
    folder = airflow.settings.home / "consumer"
    deadline = time.monotonic() + 180
    while True:
        found = {p.name.removeprefix("daily_summary_").removesuffix(".json") for p in folder.glob("*.json")}
        if expected <= found or time.monotonic() > deadline:
            break
        time.sleep(2.0)
    runs = airflow.api.runs("recommendations_consumer")
    assert expected <= found, (found, runs)
    assert all(r["run_type"] == "asset_triggered" for r in runs), runs
    summary = json.loads((folder / f"daily_summary_{airflow.days[-1].isoformat()}.json").read_text())
    assert summary["rows"] == len(_published(airflow.settings, airflow.days[-1]))
    assert summary["model_version"] == "1" and summary["degraded"] is False
