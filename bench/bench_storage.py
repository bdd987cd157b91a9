"""Storage benchmark: publishing into PostgreSQL, and one lake partition on the local S3 endpoint vs local disk.

Starts the local stack (`pipeline.tools.stack`: PostgreSQL, moto's S3 endpoint, MLflow server) in a temporary
folder, then prints:

- publish: `warehouse.replace_date` of a night of --rows recommendation rows (default 10,000,000) in one
  transaction, into PostgreSQL (COPY of Arrow-written CSV) and into the DuckDB file, as rows/s;
- lake: writing and reading back one date of --partition-rows interaction rows (default 1,000,000) as a plain
  Parquet file (today's local lake: temporary file + rename) and as a Delta Lake table partition (atomic
  overwrite of the date through the transaction log, no rename), on local disk and on the S3 endpoint.

The figures are wall-clock seconds on whatever machine runs it (the project's reference: 2 cores); moto is an
in-process Python S3 server, far slower than a real object store, so the S3 rows bound the protocol overhead
from above. Run: `make bench-storage` or `.venv/bin/python bench/bench_storage.py [--rows 1000000]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import warehouse  # noqa: E402
from pipeline.publish import PUBLISHED_SCHEMA  # noqa: E402
from pipeline.tools.stack import start_stack, stop_stack  # noqa: E402

log = logging.getLogger("bench_storage")
DAY = dt.date(2026, 10, 10)
BUCKET = "nightly-recs"


def night(rows: int) -> pa.Table:
    """A published night: rows / 10 users x 10 ranks over 50,000 items."""
    users = rows // 10
    ids = np.arange(users * 10)
    return pa.table({
        "dt": pa.array(np.full(users * 10, np.datetime64(DAY, "D"))),
        "user_id": pa.array(np.char.add("u", (ids // 10).astype(str))),
        "rank": pa.array((ids % 10 + 1).astype(np.int32)),
        "item_id": pa.array(np.char.add("i", ((ids * 7919) % 50_000).astype(str))),
        "score": pa.array(100.0 - (ids % 10)),
        "source": pa.array(np.full(users * 10, "model")),
        "reason_item_id": pa.array(np.char.add("i", ((ids * 31) % 50_000).astype(str))),
        "model_name": pa.array(np.full(users * 10, "nightly-recs")),
        "model_version": pa.array(np.full(users * 10, "7")),
        "generated_at": pa.array(np.full(users * 10, np.datetime64("2026-10-11T02:00:00", "us"))),
    }).cast(PUBLISHED_SCHEMA)


def interactions(rows: int) -> pa.Table:
    ids = np.arange(rows)
    start = np.datetime64(f"{DAY}T00:00:00", "us")
    return pa.table({
        "event_id": pa.array(np.char.add("e", ids.astype(str))),
        "user_id": pa.array(np.char.add("u", (ids % 100_000).astype(str))),
        "item_id": pa.array(np.char.add("i", ((ids * 7919) % 50_000).astype(str))),
        "event_type": pa.array(np.full(rows, "view")).dictionary_encode(),
        "value": pa.array(np.where(ids % 5 == 0, 4.0, np.nan)),
        "event_ts": pa.array(start + (ids * 86_400_000_000 // max(rows, 1)).astype("timedelta64[us]")),
        "dt": pa.array(np.full(rows, np.datetime64(DAY, "D"))),
    })


def timed(fn, *args) -> tuple[float, object]:  # noqa: ANN001
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def bench_publish(stack_uri: str, folder: Path, rows: int) -> None:
    table = night(rows)
    with psycopg.connect(stack_uri.rsplit("/", 1)[0] + "/postgres", autocommit=True) as con:
        con.execute("drop database if exists bench with (force)")
        con.execute("create database bench")
    targets = {"postgresql": stack_uri.rsplit("/", 1)[0] + "/bench", "duckdb": folder / "bench.duckdb"}
    for name, location in targets.items():
        with warehouse.connect(location) as wh:
            def load(wh: warehouse.Warehouse = wh) -> int:
                with wh.transaction():
                    return warehouse.replace_date(wh, "recommendations", "dt", DAY, table)
            load()  # warm: the timed run replaces a populated date, as a nightly rerun does
            seconds, loaded = timed(load)
        print(f"publish {name:<11} {loaded:>11,} rows in {seconds:7.1f} s = {loaded / seconds:>11,.0f} rows/s")


def bench_lake(folder: Path, s3: pafs.S3FileSystem, storage_options: dict[str, str], rows: int) -> None:
    from deltalake import DeltaTable, write_deltalake

    table = interactions(rows)
    local = pafs.LocalFileSystem()
    for where, fs, root in (("local", local, str(folder / "lake")), ("s3", s3, f"{BUCKET}/bench-lake")):
        path = f"{root}/interactions/dt={DAY}/part-0.parquet"
        if where == "local":
            Path(path).parent.mkdir(parents=True, exist_ok=True)

        def write_parquet(fs: pafs.FileSystem = fs, path: str = path) -> None:
            tmp = path + ".tmp"
            pq.write_table(table, tmp, filesystem=fs, compression="zstd")
            fs.move(tmp, path)  # a rename on disk; on S3 a copy + delete (not atomic, hence Delta below)

        seconds_w, _ = timed(write_parquet)
        seconds_r, back = timed(lambda fs=fs, path=path: pq.read_table(path, filesystem=fs))
        assert back.num_rows == rows
        print(f"lake  {where:<5} parquet  write {seconds_w:6.2f} s  read {seconds_r:6.2f} s  ({rows:,} rows)")

        uri = f"{root}/delta/interactions" if where == "local" else f"s3://{root}/delta/interactions"
        options = storage_options if where == "s3" else None

        def write_delta(uri: str = uri, options: dict[str, str] | None = options) -> None:
            write_deltalake(uri, table, mode="overwrite", predicate=f"dt = '{DAY}'", partition_by=["dt"],
                            storage_options=options)

        write_delta()  # the table exists: the timed write replaces the date, as a nightly rerun does
        seconds_w, _ = timed(write_delta)
        seconds_r, back = timed(lambda uri=uri, options=options:
                                DeltaTable(uri, storage_options=options).to_pyarrow_table(filters=[("dt", "=", DAY)]))
        assert back.num_rows == rows
        print(f"lake  {where:<5} delta    write {seconds_w:6.2f} s  read {seconds_r:6.2f} s  ({rows:,} rows)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="recommendation rows to publish")
    parser.add_argument("--partition-rows", type=int, default=1_000_000, help="interaction rows in the partition")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    folder.chmod(0o755)  # as root, PostgreSQL runs as `postgres`, which must reach folder/stack/pg
    stack = start_stack(folder / "stack")
    try:
        settings = stack.settings()
        os.environ.update(settings)
        endpoint = settings["AWS_ENDPOINT_URL"]
        s3 = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", access_key=settings["AWS_ACCESS_KEY_ID"],
                               secret_key=settings["AWS_SECRET_ACCESS_KEY"], region=settings["AWS_DEFAULT_REGION"])
        options = {"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": settings["AWS_DEFAULT_REGION"],
                   "AWS_ACCESS_KEY_ID": settings["AWS_ACCESS_KEY_ID"],
                   "AWS_SECRET_ACCESS_KEY": settings["AWS_SECRET_ACCESS_KEY"], "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
        bench_lake(folder, s3, options, args.partition_rows)
        bench_publish(settings["NIGHTLY_RECS_WAREHOUSE_URI"], folder, args.rows)
        del s3
    finally:
        stop_stack(folder / "stack")
        shutil.rmtree(folder, ignore_errors=True)
        pafs.finalize_s3()


if __name__ == "__main__":
    main()
