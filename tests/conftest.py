"""Shared fixtures. Airflow's environment is set before anything imports airflow."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pipeline.tools.stack import Stack

REPO = Path(__file__).resolve().parent.parent
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="nightly-recs-airflow-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MLFLOW_ENABLE_TELEMETRY": "false",
        "DO_NOT_TRACK": "1",
        # tasks fail fast in tests: Airflow retries are exercised by configuration, not by waiting
        "NIGHTLY_RECS_TASK_RETRIES": "0",
        # whole-night tests train 2 epochs, which beat most-popular but not item-transition on the small demo;
        # tests/test_gate_night.py checks the default rule (the strongest of all baselines)
        "NIGHTLY_RECS_GATE_BASELINES": "most_popular",
        # dag.test() in Airflow 3.3 cannot finish a successful run of a DAG with a deadline alert (see
        # airflow_local.run_dag); tests/test_alerts.py checks the alert's wiring with the setting on
        "NIGHTLY_RECS_PUBLISH_DEADLINE_MINUTES": "0",
    }
)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A fresh Airflow metadata DB (SQLite) for the session."""
    from airflow.utils import db

    db.initdb()
    return _AIRFLOW_HOME


def stack_folder() -> Path:
    """A new temporary folder for a stack. Not under pytest's tmp_path: as root, PostgreSQL runs as `postgres`,
    which must reach folder/pg, and pytest's base folder is private to root."""
    folder = Path(tempfile.mkdtemp(prefix="nightly-recs-stack-"))
    folder.chmod(0o755)
    return folder


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The local service stack (PostgreSQL, moto, MLflow server), started once in a temporary folder. Without the
    PostgreSQL binaries this fails, naming them: CI has them."""
    from pipeline.tools.stack import start_stack, stop_stack

    folder = stack_folder()
    try:
        yield start_stack(folder)
    finally:
        stop_stack(folder)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server(stack: Stack) -> str:
    """The stack's PostgreSQL server, as a URI without a database."""
    return stack.postgres_uri("postgres").rsplit("/", 1)[0]


@pytest.fixture
def postgres_database(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL server (dropped afterwards)."""
    import uuid

    import psycopg

    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as con:
        con.execute(f"create database {name}")
    yield f"{postgres_server}/{name}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as con:
        con.execute(f"drop database if exists {name} with (force)")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty NIGHTLY_RECS_HOME for one test."""
    root = tmp_path / "home"
    root.mkdir()
    monkeypatch.setenv("NIGHTLY_RECS_HOME", str(root))
    yield root


SMALL_DEMO = {"n_users": 300, "n_items": 200, "n_topics": 6, "days": 12, "seed": 11}
SMALL_START = dt.date(2026, 10, 1)


def write_small_demo(landing: Path, days: int | None = None) -> dict[str, int]:
    from pipeline.tools.demo_data import DemoConfig, generate

    config = DemoConfig(**{**SMALL_DEMO, "days": days or SMALL_DEMO["days"]}, start_date=SMALL_START)
    return generate(landing, config)


def shared_dataset(name: str) -> Path:
    """A folder of ../shared/datasets, or skip the test with the reason."""
    path = SHARED_DATASETS / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent (the shared datasets live beside the repository, not in it)")
    return path


def lake_query(settings: Any, query: str, params: dict[str, Any] | None = None) -> list[tuple]:
    """Run a query over snapshots of the lake's tables: {interactions}, {items}, {quarantine} and
    {recommendations} stand for them (an empty result for a table never written)."""
    import duckdb

    from pipeline import lake
    from pipeline.catalog import Catalog

    catalog = Catalog.of(settings)
    with duckdb.connect() as con:
        con.execute("set TimeZone = 'UTC'")
        names = {}
        for table in ("interactions", "items", "quarantine", "recommendations"):
            names[table] = f"lake_{table}"
            if not lake.register(con, catalog, table, names[table]):
                con.execute(f"create table lake_{table} (dt date)")
        return con.execute(query.format(**names), params or {}).fetchall()
