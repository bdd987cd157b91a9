"""What a night costs on the multi-worker deployment against `dag.test` in one process, on the demo.

Both run the same DAG on the same demo source, date and conf (training capped at --epochs epochs, so the
figure is about orchestration and storage, not about training length):

- `dag.test`: the embedded default (DuckDB file, local lake, SQLite MLflow), every task in this process;
- Celery: the local stack (PostgreSQL, the S3 endpoint, the MLflow server) and Airflow with the CeleryExecutor,
  Redis and two workers that share no disk (pipeline.tools.celery_stack), the night triggered over the REST API
  and timed from the trigger to the run's success (the services' start-up is printed apart).

Prints the wall seconds of both, the overhead, and the slowest tasks on Celery. Figures are wall-clock on the
machine that runs it (the project's reference: 2 shared cores). Run: `make bench-celery`.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.dag_support import closed_day  # noqa: E402
from pipeline.tools.demo_data import DemoConfig, generate  # noqa: E402

DAG_ID = "nightly_recommendations"


def _seconds(ti: dict) -> float:
    start, end = ti.get("start_date"), ti.get("end_date")
    if not start or not end:
        return 0.0
    return (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=20, help="demo days (default 20)")
    parser.add_argument("--users", type=int, default=1500, help="demo users (default 1500)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs in both runs (default 3)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    base = Path(tempfile.mkdtemp(prefix="nightly-recs-stack-bench-"))
    base.chmod(0o755)  # PostgreSQL runs as `postgres` when we are root and must reach base/stack
    night = closed_day(dt.datetime.now(dt.UTC)) - dt.timedelta(days=1)
    demo = DemoConfig(n_users=args.users, n_items=args.users // 2, days=args.days,
                      start_date=night - dt.timedelta(days=args.days - 1))
    generate(base / "landing", demo)
    conf = {"data_date": night.isoformat(), "max_epochs": args.epochs, "force_promote": True}
    os.environ.update({"NIGHTLY_RECS_HOME": str(base / "dag-test"), "NIGHTLY_RECS_LANDING_DIR": str(base / "landing"),
                       "NIGHTLY_RECS_TASK_RETRIES": "0"})
    try:
        from pipeline.config import load_settings
        from pipeline.tools.airflow_local import run_dag

        t0 = time.perf_counter()
        state = run_dag(load_settings(), night, conf)
        dag_test_s = time.perf_counter() - t0
        celery_s, startup_s, tasks, celery_state = _celery_night(base, night, conf)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(f"\nA night of the demo ({args.users} users, {args.days} days, {args.epochs} epochs), {night}:")
    print(f"{'run':<40} {'state':>8} {'wall s':>8}")
    print(f"{'dag.test (one process, embedded)':<40} {state:>8} {dag_test_s:>8.1f}")
    print(f"{'Celery, 2 workers, stack (trigger->done)':<40} {celery_state:>8} {celery_s:>8.1f}")
    print(f"overhead: {celery_s - dag_test_s:+.1f} s ({celery_s / dag_test_s - 1:+.0%}); services' start-up "
          f"{startup_s:.1f} s (not included)")
    print("slowest tasks on Celery: " + ", ".join(f"{t} {s:.1f} s" for t, s in tasks[:6]))
    return 0


def _celery_night(base: Path, night: dt.date, conf: dict) -> tuple[float, float, list[tuple[str, float]], str]:
    from pipeline.tools.airflow_api import Api
    from pipeline.tools.celery_stack import start_celery_airflow
    from pipeline.tools.stack import BUCKET, start_stack, stop_stack

    for name in [k for k in os.environ if k.startswith("NIGHTLY_RECS_")]:
        del os.environ[name]
    t0 = time.perf_counter()
    stack = start_stack(base / "stack")
    try:
        env = {"NIGHTLY_RECS_LANDING_DIR": str(base / "landing"), "NIGHTLY_RECS_LAKE_URI": f"s3://{BUCKET}/bench",
               "NIGHTLY_RECS_TASK_RETRIES": "0", "AIRFLOW__CORE__PARALLELISM": "2"}
        airflow = start_celery_airflow(stack, base / "deployment", env)
        try:
            api = Api(airflow.url)
            api.login(airflow.control.password_file)
            api.wait_for(f"/api/v2/dags/{DAG_ID}", timeout_s=180)
            startup_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            run_id = api.trigger(DAG_ID, conf)
            run = api.wait_run(DAG_ID, run_id, 3600, airflow)
            celery_s = time.perf_counter() - t1
            durations = {task: _seconds(ti) for task, ti in api.task_instances(DAG_ID, run_id).items()}
        finally:
            airflow.stop()
    finally:
        stop_stack(base / "stack")
    return celery_s, startup_s, sorted(durations.items(), key=lambda kv: -kv[1]), str(run["state"])


if __name__ == "__main__":
    sys.exit(main())
