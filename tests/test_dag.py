"""DAG hygiene in the style of Airflow's own DAG tests, plus parameter validation."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.catalog import Catalog

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "duckdb", "mlflow", "pyarrow", "pandas", "sklearn", "optuna")


def _parse_in_subprocess(extra: str = "") -> dict:
    """Parse the DAG folder in a fresh interpreter, with sockets and SQLite connections forbidden."""
    code = textwrap.dedent(
        f"""
        import json, socket, sqlite3, sys
        def forbid(*a, **k):
            raise AssertionError("DAG parsing opened a connection")
        socket.socket.connect = forbid
        socket.create_connection = forbid
        sqlite3.connect = forbid
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag(dag_folder={str(REPO / "dags")!r})
        heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
        {extra}
        print(json.dumps({{"errors": {{k: str(v) for k, v in bag.import_errors.items()}},
                          "dags": sorted(bag.dag_ids), "heavy": heavy}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_dag_folder_imports_without_errors_connections_or_heavy_libraries() -> None:
    result = _parse_in_subprocess()
    assert result["errors"] == {}
    assert result["dags"] == ["forget_users", "nightly_recommendations", "recommendations_consumer", "tune_weekly"]
    assert result["heavy"] == [], f"parsing imported heavy libraries: {result['heavy']}"


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors
    return bag.dags["nightly_recommendations"]


def test_every_task_has_retries_and_a_timeout(dag, monkeypatch: pytest.MonkeyPatch) -> None:
    for task in dag.tasks:
        assert task.execution_timeout is not None, task.task_id
    # retries come from settings (0 in tests); the production default is 2 with exponential backoff
    from pipeline.config import load_settings

    assert load_settings(env={}).airflow.task_retries >= 1
    for task in dag.tasks:
        assert task.retry_exponential_backoff, task.task_id


def test_schedule_processes_the_closed_day(dag) -> None:
    import pendulum
    from airflow.sdk import CronDataIntervalTimetable
    from airflow.timetables.interval import CronDataIntervalTimetable as CoreTimetable

    from pipeline.dag_support import data_date_from_context

    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert dag.timetable.expression == "0 2 * * *" and str(dag.timetable.timezone) == "UTC"
    core = CoreTimetable(dag.timetable.expression, timezone="UTC")
    interval = core.infer_manual_data_interval(run_after=pendulum.datetime(2026, 11, 22, 2, tz="UTC"))
    assert interval.start == pendulum.datetime(2026, 11, 21, 2, tz="UTC")
    ctx = {"params": {"data_date": None}, "data_interval_start": interval.start}
    assert str(data_date_from_context(ctx)) == "2026-11-21"
    assert str(data_date_from_context({"params": {"data_date": "2026-01-05"}})) == "2026-01-05"
    assert dag.max_active_runs == 1 and dag.catchup is False


@pytest.mark.parametrize(
    "conf, message",
    [
        ({"top_n": 0}, "top_n"),
        ({"top_n": 5000}, "top_n"),
        ({"retrain": "yes"}, "retrain"),
        ({"data_date": "21/11/2026"}, "data_date"),
    ],
)
def test_params_are_validated(dag, conf: dict, message: str) -> None:
    from airflow.sdk.definitions.param import ParamsDict, ParamValidationError

    params = ParamsDict(dag.params)
    with pytest.raises(ParamValidationError, match=message):
        for key, value in conf.items():
            params[key] = value
        params.validate()


def test_run_without_logical_date_processes_the_last_closed_day() -> None:
    import datetime as dt

    from pipeline.dag_support import closed_day, data_date_from_context

    def at(hour: int, minute: int = 0) -> dt.datetime:
        return dt.datetime(2026, 11, 24, hour, minute, tzinfo=dt.UTC)

    assert closed_day(at(2)) == dt.date(2026, 11, 23)
    assert closed_day(at(1, 59)) == dt.date(2026, 11, 22), "before 02:00 the previous day is not closed yet"
    ctx = {"params": {"data_date": None}, "data_interval_start": None,
           "dag_run": SimpleNamespace(run_after=at(9))}
    assert data_date_from_context(ctx) == dt.date(2026, 11, 23)


def test_params_have_titles_and_descriptions_for_the_trigger_form(dag) -> None:
    assert set(dag.params) == {"top_n", "retrain", "max_epochs", "force_promote", "data_date", "diversity"}
    for name in dag.params:
        param = dag.params.get_param(name)
        assert param.description and param.schema.get("title"), name
    top_n = dag.params.get_param("top_n").schema
    assert (top_n["minimum"], top_n["maximum"]) == (1, 1000)
    diversity = dag.params.get_param("diversity")
    assert (diversity.value, diversity.schema["minimum"], diversity.schema["maximum"]) == (0.0, 0, 1)
    assert dag.doc_md and "degraded" in dag.doc_md.lower()
    assert {"recommendations", "nightly-recs"} <= set(dag.tags)


def test_assets_are_produced_by_the_right_tasks(dag) -> None:
    from pipeline.dag_support import ASSET_NAMES

    outlets = {task.task_id: sorted(a.name for a in task.outlets) for task in dag.tasks if task.outlets}
    assert outlets == {
        "ingest": [ASSET_NAMES["interactions"]],
        "embed": [ASSET_NAMES["item_embeddings"]],
        "register": [ASSET_NAMES["model"]],
        "publish": [ASSET_NAMES["recommendations"]],
    }


def test_degraded_mode_wiring(dag) -> None:
    select = dag.get_task("select_model")
    assert select.trigger_rule == "all_done", "select_model must run when training failed"
    assert {"register", "embed"} <= select.upstream_task_ids, "…but only after tonight's data was embedded"
    assert dag.get_task("recommend").trigger_rule == "all_success"
    assert {"select_model", "embed", "plan_scoring"} <= dag.get_task("recommend").upstream_task_ids
    assert dag.get_task("publish").upstream_task_ids == {"recommend", "select_model"}


def test_scoring_is_mapped_over_the_planned_shards(dag) -> None:
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    recommend = dag.get_task("recommend")
    assert isinstance(recommend, MappedOperator), "recommend fans out over plan_scoring's shards"
    assert dag.get_task("plan_scoring").upstream_task_ids == {"select_model"}
    assert dag.get_task("publish").upstream_task_ids == {"recommend", "select_model"}  # every part, one publish


def test_consumer_dag_is_scheduled_on_the_recommendations_asset() -> None:
    from airflow.dag_processing.dagbag import DagBag

    from pipeline.dag_support import ASSET_NAMES

    bag = DagBag(dag_folder=str(REPO / "dags" / "recommendations_consumer.py"))
    consumer = bag.dags["recommendations_consumer"]
    assets = [a.name for a in consumer.timetable.asset_condition.objects]
    assert assets == [ASSET_NAMES["recommendations"]]
    for task in consumer.tasks:
        assert task.execution_timeout is not None and task.retry_exponential_backoff, task.task_id


def test_gpu_pool_and_queue_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("NIGHTLY_RECS_GPU_POOL", "gpu")
    monkeypatch.setenv("NIGHTLY_RECS_GPU_QUEUE", "gpu_workers")
    monkeypatch.setenv("NIGHTLY_RECS_TASK_RETRIES", "3")
    dag = DagBag(dag_folder=str(REPO / "dags" / "nightly_recommendations.py")).dags["nightly_recommendations"]
    routed = {t.task_id: (t.pool, t.queue) for t in dag.tasks}
    assert routed.pop("embed") == ("gpu", "gpu_workers")
    assert routed.pop("train") == ("gpu", "gpu_workers")
    assert set(routed.values()) == {("default_pool", "default")}
    assert {t.retries for t in dag.tasks} == {3}


def test_daily_summary_of_a_published_partition(tmp_path: Path) -> None:
    import pyarrow as pa

    from pipeline import lake
    from pipeline.catalog import Catalog
    from pipeline.config import load_settings
    from pipeline.dag_support import events_extras, write_daily_summary

    catalog, day = Catalog.of(load_settings(env={}, home=tmp_path)), dt.date(2026, 11, 23)

    def night(users: list[str]) -> pa.Table:
        return pa.table({"dt": pa.array([day] * 4, pa.date32()), "user_id": users, "rank": [1, 2, 1, 2],
                         "item_id": ["a", "b", "a", "c"], "source": ["model", "model", "popular", "popular"]})

    version = lake.replace_dates(catalog, "recommendations", [day], night(["u1", "u1", "u2", "u2"]))
    lake.replace_dates(catalog, "recommendations", [day], night(["u3"] * 4))  # a later rerun of the date
    extra = {"data_date": day.isoformat(), "lake_table": str(catalog.lake_table("recommendations")),
             "lake_version": version, "model_version": "4", "degraded": True}
    event = SimpleNamespace(extra=extra, timestamp=1)
    (extra,) = events_extras({"recommendations": [event]})

    summary = write_daily_summary(extra, tmp_path / "consumer")

    assert (summary["rows"], summary["users"], summary["distinct_items"]) == (4, 2, 3)
    assert summary["popular_fallback_share"] == 0.5
    assert summary["top_items"][0] == {"item_id": "a", "users": 2}
    assert summary["degraded"] is True and Path(summary["path"]).name == "daily_summary_2026-11-23.json"
    with pytest.raises(ValueError, match="data_date"):
        write_daily_summary({"rows": 1}, tmp_path)


def test_airflow_services_environment(tmp_path: Path) -> None:
    from pipeline.config import load_settings
    from pipeline.tools import airflow_local

    settings = load_settings(env={"NIGHTLY_RECS_HOME": str(tmp_path)})
    base = {"PATH": "/usr/bin", "AIRFLOW__CORE__PARALLELISM": "1"}
    env = airflow_local.services_env(settings, 8123, base=base)

    assert env["AIRFLOW_HOME"] == str(tmp_path / "airflow")
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(REPO / "dags")
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent), "the venv's airflow must come first"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1" and env["AIRFLOW__API__PORT"] == "8123"
    assert env["AIRFLOW__API__BASE_URL"] == "http://127.0.0.1:8123"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__PARALLELISM"] == "1", "a parallelism chosen by the caller wins"
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"
    assert len(env["AIRFLOW__API_AUTH__JWT_SECRET"].encode()) >= 64
    assert airflow_local.jwt_secret(Catalog.of(settings).airflow_home) == env["AIRFLOW__API_AUTH__JWT_SECRET"], "kept"
    assert (Catalog.of(settings).airflow_home / "jwt_secret").stat().st_mode & 0o077 == 0


def test_asset_events_say_which_model_and_whether_it_serves() -> None:
    from pipeline.dag_support import model_summary, publish_summary

    registered = {"version": "7", "promoted": False, "forced": False, "run_id": "abc", "previous_champion": "6",
                  "reason": "challenger ndcg@10 0.1000 below champion 0.2000 x (1 - 0.01) = 0.1980",
                  "candidate_dir": "/somewhere"}
    extra = model_summary(registered)
    assert extra["model_version"] == "7" and extra["promoted"] is False and "below champion" in extra["reason"]
    assert "candidate_dir" not in extra
    table = {"rows": 10, "lake_table": "/lake/recommendations", "lake_version": 3}
    published = publish_summary(table, {"version": "6", "degraded": True},
                                dt.date(2026, 11, 23))
    assert published["model_version"] == "6" and published["degraded"] is True
