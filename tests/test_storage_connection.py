"""Object storage credentials: an Airflow connection supplies them to every DAG task (the stack's real moto
endpoint, a real Airflow connection from the environment), and the lake's tables are read and written there."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline import lake, storage
from pipeline.catalog import Catalog
from pipeline.config import load_settings
from pipeline.dag_support import call_stage
from pipeline.tools.stack import BUCKET, Stack

DAY = dt.date(2026, 10, 10)
AWS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
       "AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP")


@pytest.mark.stack
def test_a_dag_task_takes_the_object_stores_credentials_from_an_airflow_connection(
    tmp_path: Path, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = stack.settings()
    for name in AWS:  # absent during the test, and whatever the connection exported is removed afterwards
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    connection = {"conn_type": "aws", "login": settings["AWS_ACCESS_KEY_ID"],
                  "password": settings["AWS_SECRET_ACCESS_KEY"],
                  "extra": {"endpoint_url": settings["AWS_ENDPOINT_URL"], "region_name": "us-east-1"}}
    monkeypatch.setenv("AIRFLOW_CONN_LAKE_S3", json.dumps(connection))
    monkeypatch.setenv("NIGHTLY_RECS_HOME", str(tmp_path))
    monkeypatch.setenv("NIGHTLY_RECS_LAKE_URI", f"s3://{BUCKET}/conn-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("NIGHTLY_RECS_AWS_CONN_ID", "lake_s3")
    storage._s3.cache_clear()
    rows = pa.table({"dt": pa.array([DAY], pa.date32()), "event_id": ["e1"]})

    def stage() -> dict:
        catalog = Catalog.of(load_settings())
        return {"version": lake.replace_dates(catalog, "interactions", [DAY], rows),
                "read": lake.read(catalog, "interactions").column("event_id").to_pylist()}

    assert call_stage(stage) == {"version": 0, "read": ["e1"]}
    keys = [o["Key"] for o in stack.s3_client().list_objects_v2(
        Bucket=BUCKET, Prefix=load_settings().paths.lake_uri.split(f"{BUCKET}/")[1])["Contents"]]
    assert any(k.endswith("_delta_log/00000000000000000000.json") for k in keys)
