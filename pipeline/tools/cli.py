"""`nightly-recs`: run the night, a DAG run through Airflow, the demo source, importers and benchmarks."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline.catalog import Catalog
from pipeline.config import REPO_ROOT, Settings, load_settings

log = logging.getLogger("nightly-recs")

DEMO_MARKER = ".demo.json"


def airflow_env(settings: Settings) -> dict[str, str]:
    """Environment for an Airflow home under the state folder, with the project's DAGs and SQLite."""
    home = Catalog.of(settings).airflow_home
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "NIGHTLY_RECS_HOME": str(settings.home),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MLFLOW_TRACKING_URI": settings.paths.mlflow_uri,
    }


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.tools.demo_data import DemoConfig, generate

    events = settings.paths.landing_dir / "events"
    if args.if_empty and events.is_dir() and any(events.iterdir()):
        log.info("landing folder %s already has events; not generating demo data", events)
        return 0
    config = DemoConfig(days=args.days, seed=args.seed)
    counts = generate(settings.paths.landing_dir, config)
    marker = {"days": config.days, "seed": config.seed, "start_date": config.start_date.isoformat()}
    (settings.paths.landing_dir / DEMO_MARKER).write_text(json.dumps(marker))
    log.info("demo data in %s: %s", settings.paths.landing_dir, counts)
    return 0


def next_data_date(settings: Settings) -> dt.date:
    """The day after the last published night; on a fresh home, two days before the last landing drop."""
    from pipeline import warehouse
    from pipeline.ingest import landing_files

    with warehouse.connect(settings.paths.warehouse_path) as con:
        (last,) = con.execute("select max(dt) from recommendations").fetchall()[0]
    if last is not None:
        return last + dt.timedelta(days=1)
    dates = sorted(landing_files(settings.paths.landing_dir / "events"))
    if not dates:
        raise SystemExit(f"no landing files in {settings.paths.landing_dir / 'events'}: run `nightly-recs demo-data`")
    return dates[max(0, len(dates) - 3)]


def ensure_demo_covers(settings: Settings, day: dt.date) -> None:
    """If the landing folder is the demo source and `day` has no drop yet, let the source produce it."""
    from pipeline.tools.demo_data import DemoConfig, generate

    marker = settings.paths.landing_dir / DEMO_MARKER
    if not marker.is_file() or (settings.paths.landing_dir / "events" / f"{day.isoformat()}.jsonl").is_file():
        return
    info = json.loads(marker.read_text())
    start = dt.date.fromisoformat(info["start_date"])
    days = (day - start).days + 1
    if days <= info["days"]:
        return
    log.info("demo source: producing drops up to %s", day)
    generate(settings.paths.landing_dir, DemoConfig(days=days, seed=info["seed"], start_date=start))
    marker.write_text(json.dumps({**info, "days": days}))


def run_dag_logged(settings: Settings, data_date: dt.date, conf: dict[str, Any]) -> str:
    """Run the DAG in a child process whose (verbose) Airflow output goes to a log file; returns the state."""
    log_path = Catalog.of(settings).airflow_home / "runs" / f"{data_date.isoformat()}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"running the night of {data_date} through Airflow (log: {log_path}) ...", flush=True)
    cmd = [sys.executable, "-m", "pipeline.tools.cli", "dag-run", "--date", data_date.isoformat(), "--conf",
           json.dumps(conf), "--in-process"]
    with log_path.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ}, check=False)
    lines = log_path.read_text(errors="replace").splitlines()
    state = next((ln.split(": ", 1)[1] for ln in reversed(lines) if ln.startswith("DAG run state: ")), "failed")
    if proc.returncode != 0 or state != "success":
        print("\n".join(lines[-40:]))
    return state


def run_dag(settings: Settings, data_date: dt.date, conf: dict[str, Any] | None = None) -> str:
    """Run the nightly DAG once through Airflow (dag.test, in process); returns the run's final state."""
    os.environ.update(airflow_env(settings))
    Catalog.of(settings).airflow_home.mkdir(parents=True, exist_ok=True)
    if not (Catalog.of(settings).airflow_home / "airflow.db").is_file():
        subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True,
                       env={**os.environ}, stdout=subprocess.DEVNULL)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags" / "nightly_recommendations.py"))
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    dag = bag.get_dag("nightly_recommendations")
    logical = dt.datetime.combine(data_date + dt.timedelta(days=1), dt.time(2), tzinfo=dt.UTC)
    run = dag.test(logical_date=logical, run_conf={"data_date": data_date.isoformat(), **(conf or {})})
    return str(run.state)


def print_summary(settings: Settings, data_date: dt.date) -> None:
    """What a person wants to see after a night: volumes, quality vs popularity, model, output, samples."""
    path = Catalog.of(settings).report(data_date, ".json")
    if not path.is_file():
        print(f"no report for {data_date} at {path}")
        return
    r = json.loads(path.read_text())
    ev = (r.get("ingest") or {}).get("events") or {}
    model = r.get("select_model") or {}
    reg = r.get("register") or {}
    metrics = r.get("metrics") or {}
    out = [f"\n=== nightly-recs: night of {data_date} ==="]
    if model.get("degraded"):
        out.append("!!! DEGRADED: training failed; served the previous champion !!!")
    out.append(f"rows read {ev.get('rows_read', 0)}: ingested {ev.get('accepted', 0)}, quarantined "
               f"{ev.get('quarantined', 0)}, deduplicated {ev.get('duplicates', 0)}")
    if metrics:
        m, p = metrics["model"], metrics["most_popular"]
        out.append(f"model NDCG@10 {m['ndcg@10']:.4f} HR@10 {m['hr@10']:.4f}  |  most-popular NDCG@10 "
                   f"{p['ndcg@10']:.4f} HR@10 {p['hr@10']:.4f}  (x{m['ndcg@10'] / max(p['ndcg@10'], 1e-9):.2f})")
    if reg:
        out.append(f"MLflow: {settings.serving.model_name} version {reg.get('version')} -> "
                   f"{'champion' if reg.get('promoted') else 'challenger (not promoted)'}: {reg.get('reason')}")
    out.append(f"serving model version {model.get('version')} (alias champion)")
    pub = r.get("publish") or {}
    out.append(f"published {pub.get('rows')} rows for {pub.get('users')} users -> table `recommendations` in "
               f"{pub.get('warehouse')} and {pub.get('parquet')}")
    out.append(f"report: {Catalog.of(settings).report(data_date, '.md')}")
    user = None
    for s in r.get("samples", []):
        if s["user_id"] != user:
            user = s["user_id"]
            out.append(f"  user {user}:")
        out.append(f"    {s['rank']}. {s['title']} ({s['item_id']})")
    print("\n".join(out))


def _parse_date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a YYYY-MM-DD date: {value!r}") from err


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nightly-recs", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo-data", help="write the demo source's landing files")
    demo.add_argument("--days", type=int, default=60)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--if-empty", action="store_true", help="do nothing if landing/events has files")

    night = sub.add_parser("night", help="run the whole night without Airflow")
    night.add_argument("--date", type=_parse_date, required=True)
    night.add_argument("--top-n", type=int)
    night.add_argument("--no-retrain", action="store_true")
    night.add_argument("--max-epochs", type=int)
    night.add_argument("--force-promote", action="store_true")

    dag_run = sub.add_parser("dag-run", help="run the nightly DAG through Airflow (dag.test) and summarise")
    dag_run.add_argument("--date", default="next", help="YYYY-MM-DD, or 'next' (after the last published night)")
    dag_run.add_argument("--conf", default="{}", help="JSON params, e.g. '{\"top_n\": 20}'")
    dag_run.add_argument("--in-process", action="store_true", help="run here, with Airflow's full output")

    summary = sub.add_parser("summary", help="print the summary of a night")
    summary.add_argument("--date", type=_parse_date, required=True)

    imp = sub.add_parser("import", help="convert a public dataset into daily landing drops")
    imp.add_argument("format", choices=["movielens", "events", "unisrec"])
    imp.add_argument("path", type=Path)
    imp.add_argument("--items", type=Path, help="items file for the 'events' format")
    imp.add_argument("--landing", type=Path, help="landing folder (default: the settings' landing_dir)")

    bench = sub.add_parser("benchmark", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    quality = bench_sub.add_parser("quality", help="offline quality: model vs baselines, full ranking")
    from pipeline.tools import quality_benchmark

    quality_benchmark.add_arguments(quality)
    sub.add_parser("airflow-standalone", help="start Airflow (UI, scheduler) on 127.0.0.1 with the project's DAGs")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "benchmark":
        from pipeline.tools import quality_benchmark

        return quality_benchmark.run(args)
    settings = load_settings()
    if args.command == "demo-data":
        return _demo(args, settings)
    if args.command == "night":
        from pipeline.stages import run_night

        run_night(settings, args.date, args.top_n, not args.no_retrain, args.max_epochs, args.force_promote)
        print_summary(settings, args.date)
        return 0
    if args.command == "dag-run":
        day = next_data_date(settings) if args.date == "next" else _parse_date(args.date)
        ensure_demo_covers(settings, day)
        if args.in_process:
            state = run_dag(settings, day, json.loads(args.conf))
            print(f"DAG run state: {state}")
            return 0 if state == "success" else 1
        state = run_dag_logged(settings, day, json.loads(args.conf))
        print_summary(settings, day)
        print(f"DAG run state: {state}")
        return 0 if state == "success" else 1
    if args.command == "summary":
        print_summary(settings, args.date)
        return 0
    if args.command == "import":
        from pipeline.tools.importers import import_dataset

        landing = args.landing or settings.paths.landing_dir
        counts = import_dataset(args.format, args.path, landing, items=args.items)
        log.info("imported %s into %s: %s", args.path, landing, counts)
        return 0
    if args.command == "airflow-standalone":
        from pipeline.tools.airflow_local import standalone

        return standalone(settings)
    return 2


if __name__ == "__main__":
    sys.exit(main())
