"""The local service stack (pipeline/tools/stack.py) with real services: PostgreSQL 15, moto's S3 server and an
MLflow tracking server, on loopback. The session fixture `stack` (conftest.py) starts it once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import stack_folder

from pipeline.tools import stack as local_stack
from pipeline.tools.cli import main
from pipeline.tools.stack import BUCKET, Stack, StackError, start_stack, stop_stack

pytestmark = pytest.mark.stack


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((local_stack.HOST, port), timeout=1):
            return True
    except OSError:
        return False


def _query(stack: Stack, database: str, query: str) -> tuple[Any, ...] | None:
    import psycopg

    with psycopg.connect(stack.postgres_uri(database)) as con:
        return con.execute(query).fetchone()


@pytest.fixture
def against_stack(stack: Stack) -> Iterator[Stack]:
    """MLflow's client pointed at the stack's tracking server, and back afterwards."""
    import mlflow

    mlflow.set_tracking_uri(stack.mlflow_uri)
    mlflow.set_registry_uri(stack.mlflow_uri)
    try:
        yield stack
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)  # type: ignore[arg-type]


def test_missing_postgres_binaries_fail_naming_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_stack, "PG_BIN", tmp_path / "no-postgres")
    with pytest.raises(StackError, match=r"no-postgres/initdb is missing"):
        start_stack(tmp_path / "stack")
    assert not (tmp_path / "stack" / local_stack.STATE_FILE).exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_a_folder_postgres_cannot_reach_fails_naming_it(tmp_path: Path) -> None:
    blocked = tmp_path / "private"
    (blocked / "stack").mkdir(parents=True)
    blocked.chmod(0o700)
    with pytest.raises(StackError, match=r"`postgres` user cannot write .*private/stack/pg.*chmod o\+x"):
        start_stack(blocked / "stack")
    assert not (blocked / "stack" / local_stack.STATE_FILE).exists()


def test_a_service_that_dies_while_starting_fails_naming_its_log_and_stops_the_rest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = stack_folder()
    monkeypatch.setattr(local_stack, "_mlflow_command", lambda stack: [sys.executable, "-c", "print('boom'); exit(3)"])
    try:
        with pytest.raises(StackError, match=r"mlflow exited with 3 while starting; .*/mlflow\.log ends with:\nboom"):
            start_stack(folder)
        assert not (folder / local_stack.STATE_FILE).exists() and not (folder / "pg").exists()
        assert "database system is shut down" in (folder / "logs" / "postgres.log").read_text()
    finally:
        stop_stack(folder)
        shutil.rmtree(folder, ignore_errors=True)


def test_settings_and_env_file(stack: Stack) -> None:
    settings = stack.settings()
    assert settings["NIGHTLY_RECS_WAREHOUSE_URI"] == f"postgresql://postgres@127.0.0.1:{stack.postgres_port}/warehouse"
    assert settings["NIGHTLY_RECS_MLFLOW_URI"] == f"http://127.0.0.1:{stack.mlflow_port}"
    assert settings["NIGHTLY_RECS_LAKE_URI"] == "s3://nightly-recs/lake"
    assert settings["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{stack.s3_port}"
    assert settings["AWS_ALLOW_HTTP"] == "true"
    text = (stack.folder / local_stack.ENV_FILE).read_text()
    assert f"export NIGHTLY_RECS_MLFLOW_URI=http://127.0.0.1:{stack.mlflow_port}\n" in text
    assert f"# export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN={stack.airflow_db_uri}\n" in text


def test_postgres_answers_as_the_warehouse_uri(stack: Stack) -> None:
    import psycopg

    with psycopg.connect(stack.settings()["NIGHTLY_RECS_WAREHOUSE_URI"]) as con:
        assert con.execute("select current_database(), 6 * 7").fetchone() == ("warehouse", 42)
    assert _query(stack, "airflow", "select current_database()") == ("airflow",)


def test_an_object_put_through_boto3_comes_back(stack: Stack) -> None:
    s3 = stack.s3_client()
    s3.put_object(Bucket=BUCKET, Key="lake/probe/hello.txt", Body=b"hello, lake")
    assert s3.get_object(Bucket=BUCKET, Key="lake/probe/hello.txt")["Body"].read() == b"hello, lake"


def _doubler() -> Any:
    import mlflow

    class Doubler(mlflow.pyfunc.PythonModel):
        def predict(self, model_input: list[float]) -> list[float]:
            return [2 * x for x in model_input]

    return Doubler()


def test_mlflow_artifacts_land_in_the_bucket_and_a_registered_model_loads(against_stack: Stack,
                                                                           tmp_path: Path) -> None:
    import mlflow

    notes = tmp_path / "notes.txt"
    notes.write_text("trained on the stack\n")
    mlflow.set_experiment("stack-test")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(notes))
        info = mlflow.pyfunc.log_model(name="model", python_model=_doubler(), pip_requirements=["mlflow"],
                                       registered_model_name="stack-doubler")
    keys = [o["Key"] for o in against_stack.s3_client().list_objects_v2(Bucket=BUCKET, Prefix="mlflow/")["Contents"]]
    assert any(key.endswith(f"/{run.info.run_id}/artifacts/notes.txt") for key in keys), keys
    assert any(key.endswith(f"/{info.model_id}/artifacts/MLmodel") for key in keys), keys
    loaded = mlflow.pyfunc.load_model(f"models:/stack-doubler/{info.registered_model_version}")
    assert loaded.predict([1.0, 2.5]) == [2.0, 5.0]


def test_starting_twice_returns_the_running_stack(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    assert start_stack(stack.folder) == stack
    assert main(["stack", "up", "--no-airflow", "--folder", str(stack.folder)]) == 0
    assert f"source {stack.folder / local_stack.ENV_FILE}" in capsys.readouterr().out
    assert main(["stack", "env", "--folder", str(stack.folder)]) == 0
    assert capsys.readouterr().out == stack.env_text()


def test_cli_env_without_a_running_stack_fails(tmp_path: Path) -> None:
    assert main(["stack", "env", "--folder", str(tmp_path)]) == 1


def test_stale_state_is_cleaned_then_stop_leaves_nothing_listening_and_a_new_start_works() -> None:
    """On a stack of its own: other tests share the session's stack."""
    folder = stack_folder()
    try:
        _stale_state_then_stop_and_restart(start_stack(folder))
    finally:
        stop_stack(folder)
        shutil.rmtree(folder, ignore_errors=True)


def _stale_state_then_stop_and_restart(stack: Stack) -> None:
    moto_pid = json.loads((stack.folder / local_stack.STATE_FILE).read_text())["processes"]["moto"][0]
    os.killpg(moto_pid, signal.SIGKILL)  # a service dies
    assert local_stack.running_stack(stack.folder) is None
    fresh = start_stack(stack.folder)  # stops what is left of the old stack, starts a new one
    old_ports = {stack.postgres_port, stack.s3_port, stack.mlflow_port}
    new_ports = {fresh.postgres_port, fresh.s3_port, fresh.mlflow_port}
    assert not any(_listening(port) for port in old_ports - new_ports)

    stop_stack(fresh.folder)
    assert not any(_listening(port) for port in (fresh.postgres_port, fresh.s3_port, fresh.mlflow_port))
    assert not (fresh.folder / local_stack.STATE_FILE).exists()
    again = start_stack(fresh.folder)
    assert _query(again, "warehouse", "select 1") == (1,)
    assert local_stack.running_stack(again.folder) == again
