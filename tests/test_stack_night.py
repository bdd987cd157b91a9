"""A whole night against the local service stack (the lake's tables on the S3 endpoint, a real PostgreSQL
warehouse, an MLflow server with its artifacts in the bucket): it publishes what the embedded default publishes
for the same data and seed, the lake's Delta tables, the night's marts and embeddings and the model's artifacts
are objects in the bucket (nothing of them on the home's lake folder), and rerunning the date changes nothing."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest
from conftest import SMALL_START, write_small_demo

from pipeline import lake, warehouse
from pipeline.catalog import Catalog
from pipeline.config import load_settings
from pipeline.tools.cli import main
from pipeline.tools.stack import BUCKET, Stack

NIGHT = SMALL_START + dt.timedelta(days=9)
COLUMNS = "user_id, rank, item_id, score, source, reason_item_id, model_version"


def published(location: Path | str) -> list[tuple]:
    with warehouse.connect(location) as wh:
        return sorted(wh.execute(f"select {COLUMNS} from recommendations where dt = $d", {"d": NIGHT}).fetchall())


def objects(stack: Stack, prefix: str) -> list[str]:
    pages = stack.s3_client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def run_night(monkeypatch: pytest.MonkeyPatch, home: Path, landing: Path, **settings: str) -> Catalog:
    monkeypatch.setenv("NIGHTLY_RECS_HOME", str(home))
    monkeypatch.setenv("NIGHTLY_RECS_LANDING_DIR", str(landing))
    for name, value in settings.items():
        monkeypatch.setenv(f"NIGHTLY_RECS_{name.upper()}", value)
    assert main(["night", "--date", NIGHT.isoformat(), "--max-epochs", "2"]) == 0
    return Catalog.of(load_settings())


@pytest.mark.stack
def test_a_night_on_the_stack_publishes_what_the_embedded_default_does(
    tmp_path: Path, stack: Stack, postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    landing = tmp_path / "landing"
    write_small_demo(landing, days=12)
    embedded = run_night(monkeypatch, tmp_path / "embedded", landing)
    expected = published(embedded.warehouse)
    assert expected

    run = uuid.uuid4().hex[:8]  # the bucket and the server are shared by the session's tests
    model_name, prefix = f"nightly-recs-{run}", f"lake-{run}"
    on_stack = {"warehouse_uri": postgres_database, "mlflow_uri": stack.mlflow_uri, "model_name": model_name,
                "lake_uri": f"s3://{BUCKET}/{prefix}"}
    for name, value in stack.settings().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    catalog = run_night(monkeypatch, tmp_path / "stack", landing, **on_stack)
    rows = published(catalog.warehouse)
    assert [r[:3] + r[4:] for r in rows] == [r[:3] + r[4:] for r in expected]
    assert [r[3] for r in rows] == pytest.approx([r[3] for r in expected], rel=1e-5, abs=1e-6)
    assert not (tmp_path / "stack" / "mlflow").exists(), "nothing of MLflow is kept on the home with a server"
    lake_keys = objects(stack, f"{prefix}/")
    for table in ("interactions", "items", "quarantine", "recommendations"):
        assert f"{prefix}/{table}/_delta_log/00000000000000000000.json" in lake_keys, table
        assert any(k.startswith(f"{prefix}/{table}/dt=") and k.endswith(".parquet") for k in lake_keys), table
    assert not (tmp_path / "stack" / "lake" / "interactions").exists(), "the lake's tables are on S3 only"
    for mart in ("item_catalog", "user_sequences", "split_leave_one_out", "user_activity", "item_embeddings"):
        assert f"{prefix}/features/dt={NIGHT.isoformat()}/{mart}.parquet" in lake_keys, mart
    assert any(k.startswith(f"{prefix}/item_embeddings/part-") and k.endswith(".parquet") for k in lake_keys)
    for derived in ("features", "item_embeddings"):
        assert not (tmp_path / "stack" / "lake" / derived).exists(), f"{derived}: on S3 only"
    staged = warehouse.night_results(catalog.warehouse, NIGHT)["recommend"]["staged"]
    assert staged.startswith(f"s3://{BUCKET}/{prefix}/staging/dt={NIGHT.isoformat()}/"), staged
    assert not (tmp_path / "stack" / "staging").exists(), "staged tables go to S3 (housekeeping removed them)"
    on_s3 = lake.read(catalog, "recommendations", NIGHT, ["user_id", "rank", "item_id"])
    assert sorted(map(tuple, (r.values() for r in on_s3.to_pylist()))) == [r[:3] for r in rows]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow_uri, registry_uri=stack.mlflow_uri)
    champion = client.get_model_version_by_alias(model_name, "champion")
    assert champion.version == "1"
    keys = objects(stack, "mlflow/")
    run_files = [k for k in keys if f"/{champion.run_id}/" in k]
    model_files = [k for k in keys if k.endswith("MLmodel")]
    assert run_files and model_files, keys[:20]
    sources = [d.dataset.source for d in client.get_run(champion.run_id).inputs.dataset_inputs]
    assert any(f"s3://{BUCKET}/{prefix}/features/dt=" in source for source in sources), sources

    again = run_night(monkeypatch, tmp_path / "stack", landing, **on_stack)  # a rerun of the same date
    rerun = published(again.warehouse)
    assert len(rerun) == len(rows) and {r[-1] for r in rerun} <= {"1", "2"}
    with warehouse.connect(again.warehouse) as wh:
        [(statuses,)] = wh.execute("select count(*) from ingest_ledger where dt = $d and kind = 'events' "
                                   "and status = 'noop'", {"d": NIGHT}).fetchall()
        [(per_key,)] = wh.execute("select max(n) from (select count(*) as n from recommendations "
                                  "group by dt, user_id, rank) as keys").fetchall()
    assert statuses >= 1 and per_key == 1
    assert [h["operation"] for h in lake.history(again, "recommendations")] == ["WRITE", "WRITE"]
