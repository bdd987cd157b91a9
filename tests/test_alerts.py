"""Airflow operations (issue 14, item 7): deterministic errors fail at once without retries, transient ones
are left to Airflow's retries; failed tasks, degraded nights and missed deadlines notify (log + a webhook,
here a loopback HTTP receiver started by the test); the nightly DAG wires the callbacks, the deadline alert
and the writer pool."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import json
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline import dag_support
from pipeline.config import ConfigError
from pipeline.notify import notify

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback HTTP server that records every JSON body POSTed to it; the webhook setting points at it."""
    received: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    monkeypatch.setenv("NIGHTLY_RECS_ALERT_WEBHOOK_URL", url)
    try:
        yield url, received
    finally:
        server.shutdown()
        server.server_close()


def test_notify_posts_json_to_the_webhook(receiver: tuple[str, list[dict]]) -> None:
    url, received = receiver
    assert notify("degraded", "night of 2026-10-10 degraded", {"data_date": "2026-10-10"}, url)
    assert received == [{"event": "degraded", "summary": "night of 2026-10-10 degraded",
                         "details": {"data_date": "2026-10-10"}}]


def test_an_unreachable_webhook_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert not notify("task_failed", "boom", {}, f"http://127.0.0.1:{port}/hook")
    assert "could not be delivered" in caplog.text


def test_webhook_setting_must_be_an_http_url(tmp_path: Path) -> None:
    from pipeline.config import load_settings

    with pytest.raises(ConfigError, match="alert_webhook_url"):
        load_settings(env={"NIGHTLY_RECS_HOME": str(tmp_path), "NIGHTLY_RECS_ALERT_WEBHOOK_URL": "file:///etc"})


def deterministic_errors() -> list[Exception]:
    from pipeline.ingest import IngestFormatError, IngestQualityError
    from pipeline.publish import PublishValidationError
    from pipeline.sql import GrainCheckError
    from pipeline.stages import DataDateError

    return [IngestFormatError("bad file"), IngestQualityError("too many rows quarantined"),
            GrainCheckError("item_catalog.item_id not unique"),
            PublishValidationError({"rows_per_user": (1, {"user_id": "u1"})}), ConfigError("top_n"),
            DataDateError("future")]


def test_deterministic_errors_fail_without_retry_and_transient_ones_are_retried() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    for err in deterministic_errors():
        def stage(error: Exception = err) -> dict:
            raise error

        with pytest.raises(AirflowFailException, match=type(err).__name__):
            dag_support.call_stage(stage)
    for transient in (ConnectionError("tracking server down"), TimeoutError("lock"), MemoryError("oom")):
        def flaky(error: Exception = transient) -> dict:
            raise error

        with pytest.raises(type(transient)):
            dag_support.call_stage(flaky)
    assert dag_support.call_stage(lambda x: {"x": x}, 1) == {"x": 1}


TEST_DAG = '''
import datetime as dt
import pendulum
from airflow.sdk import dag, task
from pipeline.dag_support import call_stage, notify_task_failed


def publish_stage():
    from pipeline.publish import PublishValidationError
    raise PublishValidationError({{"rows_per_user": (3, {{"user_id": "u1"}})}})


@dag(dag_id="{dag_id}", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
     default_args={{"retries": 3, "retry_delay": dt.timedelta(seconds=1),
                   "on_failure_callback": notify_task_failed}})
def deterministic():
    @task
    def publish():
        return call_stage(publish_stage)

    publish()


deterministic()
'''


def test_a_deterministic_error_fails_the_task_on_its_first_try_and_notifies(
    airflow_db: Path, tmp_path: Path, receiver: tuple[str, list[dict]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through Airflow (dag.test): a task with 3 retries that raises PublishValidationError fails at once
    (one try, state failed, not up_for_retry), and its on_failure_callback posts to the webhook."""
    from airflow.dag_processing.dagbag import DagBag

    _, received = receiver
    bundle = {"name": "nightly-recs-alerts-test", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
              "kwargs": {"path": str(tmp_path), "refresh_interval": 0}}
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps([bundle]))  # dag.test syncs it
    dag_file = tmp_path / "deterministic_dag.py"
    dag_file.write_text(textwrap.dedent(TEST_DAG.format(dag_id="nightly_recs_deterministic_test")))
    bag = DagBag(dag_folder=str(dag_file))
    assert not bag.import_errors, bag.import_errors
    run = bag.dags["nightly_recs_deterministic_test"].test()
    assert str(run.state) == "failed"
    [ti] = [ti for ti in run.get_task_instances() if ti.task_id == "publish"]
    assert (str(ti.state), ti.try_number) == ("failed", 1), "a deterministic error must not be retried"
    failures = [r for r in received if r["event"] == "task_failed"]
    assert failures and failures[0]["details"]["task_id"] == "publish"
    assert "PublishValidationError" in failures[0]["details"]["error"]


def test_degraded_and_deadline_notifications_reach_the_webhook(receiver: tuple[str, list[dict]]) -> None:
    from types import SimpleNamespace

    _, received = receiver
    context = {"dag_run": SimpleNamespace(dag_id="nightly_recommendations", run_id="scheduled__x"),
               "ti": SimpleNamespace(task_id="select_model", dag_id="nightly_recommendations")}
    dag_support.notify_degraded(context, {"version": "3", "degraded": True}, dt.date(2026, 10, 10))
    asyncio.run(dag_support.notify_deadline_missed(context={"dag_run": context["dag_run"]}))
    events = [(r["event"], r["details"].get("data_date"), r["details"].get("run_id")) for r in received]
    assert events == [("degraded", "2026-10-10", "scheduled__x"), ("deadline_missed", None, "scheduled__x")]
    assert "version 3" in received[0]["summary"]


def test_the_nightly_dag_wires_callbacks_deadline_and_writer_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("NIGHTLY_RECS_WRITER_POOL", "nightly_recs_writer")
    monkeypatch.setenv("NIGHTLY_RECS_PUBLISH_DEADLINE_MINUTES", "300")
    bag = DagBag(dag_folder=str(REPO / "dags" / "nightly_recommendations.py"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["nightly_recommendations"]
    for task in dag.tasks:
        callbacks = task.on_failure_callback if isinstance(task.on_failure_callback, list) else [
            task.on_failure_callback]
        assert dag_support.notify_task_failed in callbacks, task.task_id
    assert dag.get_task("publish").pool == "nightly_recs_writer"
    [deadline] = dag.deadline if isinstance(dag.deadline, list) else [dag.deadline]
    assert deadline.interval == dt.timedelta(minutes=300)
    assert deadline.callback.path == "pipeline.dag_support.notify_deadline_missed"
    assert type(deadline.reference).__name__ == "DagRunQueuedAtDeadline"
