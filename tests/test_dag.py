"""DAG hygiene in the style of Airflow's own DAG tests, plus parameter validation."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "duckdb", "mlflow", "pyarrow", "pandas", "sklearn")


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
    assert "nightly_recommendations" in result["dags"]
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

    assert load_settings(env={}).task_retries >= 1
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
