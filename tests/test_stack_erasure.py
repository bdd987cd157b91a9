"""Erasure on the service stack (issue 18 with issue 12's storage): after `forget`, no object of the lake on the
S3 endpoint holds the user (raw bytes or any decoded Parquet string value, in every version the table keeps),
the PostgreSQL warehouse has no row of theirs, and its tombstone holds only the keyed hash."""

from __future__ import annotations

import datetime as dt
import io
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SMALL_START, write_small_demo

from pipeline import warehouse
from pipeline.tools.cli import main
from pipeline.tools.stack import BUCKET, Stack

NIGHT = SMALL_START + dt.timedelta(days=9)


def string_values(data: bytes) -> set[str]:
    table = pq.read_table(io.BytesIO(data))
    out: set[str] = set()
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            out.update(v for v in column.to_pylist() if v is not None)
    return out


@pytest.mark.stack
def test_forget_on_the_stack_leaves_no_trace_in_the_bucket_or_postgresql(
    tmp_path: Path, stack: Stack, postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = uuid.uuid4().hex[:8]
    prefix = f"erasure-{run}"
    write_small_demo(tmp_path / "landing", days=12)
    settings = {"NIGHTLY_RECS_HOME": str(tmp_path / "home"), "NIGHTLY_RECS_LANDING_DIR": str(tmp_path / "landing"),
                "NIGHTLY_RECS_WAREHOUSE_URI": postgres_database, "NIGHTLY_RECS_MLFLOW_URI": stack.mlflow_uri,
                "NIGHTLY_RECS_MODEL_NAME": f"nightly-recs-{run}", "NIGHTLY_RECS_LAKE_URI": f"s3://{BUCKET}/{prefix}",
                **{k: v for k, v in stack.settings().items() if k.startswith("AWS_")}}
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    assert main(["night", "--date", NIGHT.isoformat(), "--max-epochs", "2"]) == 0
    with warehouse.connect(postgres_database) as wh:
        [(user,)] = wh.execute("select min(user_id) from recommendations where source = 'model'").fetchall()
    s3 = stack.s3_client()

    def objects() -> dict[str, bytes]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/")
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        return {k: s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}

    before = objects()
    assert any(user in string_values(v) for k, v in before.items() if k.endswith(".parquet"))

    assert main(["forget", "--user", user, "--requester", "test"]) == 0

    after = objects()
    assert [k for k, v in after.items() if user.encode() in v] == []
    assert [k for k, v in after.items() if k.endswith(".parquet") and user in string_values(v)] == []
    assert any(k.endswith(".parquet") for k in after), "the other users' rows stay"
    with warehouse.connect(postgres_database) as wh:
        assert wh.execute("select count(*) from recommendations where user_id = $u", {"u": user}).fetchone() == (0,)
        [(user_hash, erased_at)] = wh.execute("select user_hash, erased_at from tombstones").fetchall()
    assert erased_at is not None and user not in user_hash
