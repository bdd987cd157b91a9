"""`nightly-recs`: run one stage or the whole night for a date, a DAG run through Airflow, the demo source,
importers and benchmarks.

`rollback --to-version N --reason R` points `champion` at version N (tags rollback.by/at/reason/from_version on
it) and republishes the latest published date with it.

`forget --user U [--user U2] [--file F] [--requester R] [--reason TEXT]` erases users everywhere (see the README's
"Erasure" section): a tombstone per user, then every copy rewritten without them; rerun it to finish one that
failed.

Each stage command (`ingest`, `features`, `embed`, `train`, `register`, `select`, `recommend`, `publish`,
`report`) runs that stage of `pipeline.stages` for `--date D` and prints its result as JSON. A stage that needs
an earlier stage's output (the candidate folder, the staged table) takes it from that stage's latest ledger
entry for the date, or from a flag.

`backtest --from D1 --to D2 [--json OUT] [--html OUT]` replays the nights D1..D2 over the landing source in
new state homes, one per variant (warm start, from scratch with the same budget, from scratch to convergence),
and scores each night's published top-N and the baselines' against the next day's events
(pipeline.tools.backtest).

`tune --date D --budget-minutes M [--trials N] [--max-epochs E]` searches the model's configuration on D's split
within M minutes (pipeline.tuning): the best configuration is stored in MLflow and tried by the next night's gate.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline import storage
from pipeline.catalog import Catalog
from pipeline.config import Settings, load_settings

log = logging.getLogger("nightly-recs")

STAGE_COMMANDS = ("ingest", "features", "embed", "train", "register", "select", "recommend", "publish",
                  "housekeeping", "report", "tune")


def _parse_date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a YYYY-MM-DD date: {value!r}") from err


def _earlier(settings: Settings, day: dt.date, stage: str, command: str) -> dict[str, Any]:
    """The latest successful result of an earlier stage for the date, from the ledger."""
    from pipeline import warehouse

    result = warehouse.night_results(Catalog.of(settings).warehouse, day).get(stage)
    if not result or result.get("status") == "failed":
        raise SystemExit(f"no successful `{stage}` for {day} in the ledger: run `nightly-recs {command} --date "
                         f"{day}` first")
    return result


def run_stage(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Run one stage command for args.date and return its result dict."""
    from pipeline import stages

    day: dt.date = args.date
    simple: dict[str, Callable[[Settings, dt.date], dict[str, Any]]] = {
        "ingest": stages.stage_ingest, "features": stages.stage_features, "embed": stages.stage_embed,
        "housekeeping": stages.stage_housekeeping, "report": stages.stage_report,
    }
    if args.command in simple:
        return simple[args.command](settings, day)
    if args.command == "train":
        return stages.stage_train(settings, day, args.max_epochs)
    if args.command == "tune":
        return stages.stage_tune(settings, day, args.budget_minutes, args.trials, args.max_epochs)
    if args.command == "register":
        train = {} if args.candidate else _earlier(settings, day, "train", "train")
        return stages.stage_register(settings, day, str(args.candidate or train["candidate_dir"]), args.force_promote,
                                     operator="cli", train_run_id=train.get("run_id", ""))
    if args.command == "select":
        return stages.stage_select_model(settings, day, not args.no_retrain)
    if args.command == "recommend":
        return stages.stage_recommend(settings, day, args.top_n)
    staged = _earlier(settings, day, "recommend", "recommend")
    return stages.stage_publish(settings, day, args.staged or staged["staged"], staged["top_n"],
                                staged["model_version"])


def print_summary(settings: Settings, data_date: dt.date) -> None:
    """What a person wants to see after a night: volumes, quality vs baselines, model, output, samples."""
    catalog = Catalog.of(settings)
    path = catalog.report(data_date, ".json")
    if not storage.exists(path):
        print(f"no report for {data_date} at {path}")
        return
    r = json.loads(storage.read_bytes(path))
    ev = (r.get("ingest") or {}).get("events") or {}
    model = r.get("select_model") or {}
    reg = r.get("register") or {}
    metrics = r.get("metrics") or {}
    out = [f"\n=== nightly-recs: night of {data_date} ==="]
    if model.get("degraded"):
        out.append("!!! DEGRADED: training failed; served the previous champion !!!")
    forgotten = f", forgotten (erased users) {ev['forgotten']}" if ev.get("forgotten") else ""
    out.append(f"rows read {ev.get('rows_read', 0)}: ingested {ev.get('accepted', 0)}, quarantined "
               f"{ev.get('quarantined', 0)}, deduplicated {ev.get('duplicates', 0)}{forgotten}")
    if metrics:
        m = metrics["model"]
        baselines = [name for name in metrics if name != "model" and not name.startswith("loo_")]
        best = max(baselines, key=lambda name: metrics[name]["ndcg@10"])
        b = metrics[best]
        split = (r.get("train") or {}).get("gate_split", "leave_one_out")
        out.append(f"model NDCG@10 {m['ndcg@10']:.4f} HR@10 {m['hr@10']:.4f}  |  best baseline ({best}) NDCG@10 "
                   f"{b['ndcg@10']:.4f} HR@10 {b['hr@10']:.4f}  (x{m['ndcg@10'] / max(b['ndcg@10'], 1e-9):.2f}, "
                   f"{split} split)")
    if reg:
        out.append(f"MLflow: {settings.serving.model_name} version {reg.get('version')} -> "
                   f"{'champion' if reg.get('promoted') else 'challenger (not promoted)'}: {reg.get('reason')}")
    out.append(f"serving model version {model.get('version')} (alias champion)")
    pub = r.get("publish") or {}
    out.append(f"published {pub.get('rows')} rows for {pub.get('users')} users -> table `recommendations` in "
               f"{pub.get('warehouse')} and {pub.get('lake_table')} (version {pub.get('lake_version')})")
    out.append(f"report: {catalog.report(data_date, '.md')}")
    user = None
    for s in r.get("samples", []):
        if s["user_id"] != user:
            user = s["user_id"]
            out.append(f"  user {user}:")
        out.append(f"    {s['rank']}. {s['title']} ({s['item_id']})")
    print("\n".join(out))


def _add_stage_commands(sub: Any) -> None:
    helps = {
        "ingest": "landing files -> validated lake partitions (quarantine, ledger)",
        "features": "lake -> the night's feature marts (DuckDB SQL in sql/)",
        "embed": "item texts -> embeddings (only new or changed texts are encoded)",
        "train": "train a candidate model and evaluate it against the baselines",
        "register": "log the candidate to MLflow and run the champion/challenger gate",
        "select": "which model serves tonight (degraded if tonight's training failed)",
        "recommend": "score every active user with the champion; stage the table",
        "publish": "validate the staged table and publish it atomically",
        "housekeeping": "remove staged tables and old rejected candidates; compact the embedding cache",
        "report": "write the nightly report (Markdown, JSON and HTML)",
        "tune": "search the model's configuration within a budget (Optuna); the best waits for the next gate",
    }
    for name in STAGE_COMMANDS:
        p = sub.add_parser(name, help=helps[name])
        p.add_argument("--date", type=_parse_date, required=True, help="the data date, YYYY-MM-DD")
        if name == "train":
            p.add_argument("--max-epochs", type=int)
        if name == "tune":
            p.add_argument("--budget-minutes", type=float, required=True, help="wall-clock budget of the study")
            p.add_argument("--trials", type=int, help="stop after this many trials (default: the budget decides)")
            p.add_argument("--max-epochs", type=int, help="epoch cap of one trial (default: tune_max_epochs)")
        if name == "register":
            p.add_argument("--candidate", type=Path, help="candidate folder (default: the date's last training)")
            p.add_argument("--force-promote", action="store_true")
        if name == "select":
            p.add_argument("--no-retrain", action="store_true", help="tonight was not meant to train")
        if name == "recommend":
            p.add_argument("--top-n", type=int)
        if name == "publish":
            p.add_argument("--staged", help="staged table (default: the date's last recommend)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nightly-recs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_stage_commands(sub)

    night = sub.add_parser("night", help="run every stage of a date in order, without Airflow")
    night.add_argument("--date", type=_parse_date, required=True)
    night.add_argument("--top-n", type=int)
    night.add_argument("--no-retrain", action="store_true")
    night.add_argument("--max-epochs", type=int)
    night.add_argument("--force-promote", action="store_true")

    demo = sub.add_parser("demo-data", help="write the demo source's landing files")
    demo.add_argument("--days", type=int, default=60)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--if-empty", action="store_true", help="do nothing if landing/events has files")

    dag_run = sub.add_parser("dag-run", help="run the nightly DAG through Airflow (dag.test) and summarise")
    dag_run.add_argument("--date", default="next", help="YYYY-MM-DD, or 'next' (after the last published night)")
    dag_run.add_argument("--conf", default="{}", help="JSON params, e.g. '{\"top_n\": 20}'")
    dag_run.add_argument("--in-process", action="store_true", help="run here, with Airflow's full output")

    rollback = sub.add_parser("rollback", help="point champion at an earlier version and republish the latest "
                                               "published date with it (audited on the version)")
    rollback.add_argument("--to-version", required=True, help="the model version to serve, e.g. 3")
    rollback.add_argument("--reason", required=True, help="why (recorded on the version)")
    rollback.add_argument("--operator", help="who asks (default: the login name)")
    rollback.add_argument("--top-n", type=int)

    forget = sub.add_parser("forget", help="erase users everywhere: record a tombstone per user (hashed id, "
                                           "requester, reason), then rewrite every copy without them")
    forget.add_argument("--user", action="append", default=[], help="a user id (repeatable)")
    forget.add_argument("--file", type=Path, action="append", default=[], help="a file with one user id a line")
    forget.add_argument("--requester", help="who asks (default: the login name)")
    forget.add_argument("--reason", default="", help="why (recorded on each tombstone), e.g. a ticket number")

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
    backtest = sub.add_parser("backtest", help="replay real nights over the landing source and score each night's "
                              "published top-N (and the baselines') against the next day's events, per variant")
    from pipeline.tools import backtest as backtest_tool

    backtest_tool.add_arguments(backtest)
    sub.add_parser("airflow-standalone", help="start Airflow (UI, scheduler) on 127.0.0.1 with the project's DAGs")

    stack = sub.add_parser("stack", help="the local service stack on 127.0.0.1: PostgreSQL, S3 (moto), MLflow "
                           "server, and Airflow with Celery workers")
    stack.add_argument("action", choices=["up", "down", "env"], help="start it, stop it, or print its settings")
    stack.add_argument("--folder", type=Path, default=Path("var-stack"), help="its state, data and logs")
    stack.add_argument("--no-airflow", action="store_true",
                       help="`up` without Airflow (CeleryExecutor, Redis, two workers sharing no disk)")
    return parser


def _dag_run(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.tools import airflow_local
    from pipeline.tools.demo_source import ensure_demo_covers

    day = airflow_local.next_data_date(settings) if args.date == "next" else _parse_date(args.date)
    ensure_demo_covers(Catalog.of(settings), day)
    if args.in_process:
        state = airflow_local.run_dag(settings, day, json.loads(args.conf))
        print(f"DAG run state: {state}")
        return 0 if state == "success" else 1
    state = airflow_local.run_dag_logged(settings, day, json.loads(args.conf))
    print_summary(settings, day)
    print(f"DAG run state: {state}")
    return 0 if state == "success" else 1


def _stack(action: str, folder: Path, with_airflow: bool) -> int:
    from pipeline.tools import celery_stack, stack

    deployment = folder.resolve() / "airflow"
    if action == "down":
        celery_stack.stop_recorded(deployment)
        stack.stop_stack(folder)
        return 0
    try:
        running = stack.start_stack(folder) if action == "up" else stack.running_stack(folder)
        if action == "up" and running is not None and with_airflow:
            celery_stack.stop_recorded(deployment)  # one deployment per stack: a new one against the new stack
            landing = {"NIGHTLY_RECS_LANDING_DIR": str(Catalog.of(load_settings()).landing)}
            airflow = celery_stack.start_celery_airflow(running, deployment, landing)
            print(f"Airflow (CeleryExecutor, workers {', '.join(airflow.workers)}): {airflow.url}  user admin, "
                  f"password in {airflow.control.password_file}; reads the landing folder {landing}")
    except stack.StackError as err:
        log.error("%s", err)
        return 1
    if running is None:
        log.error("no stack is running in %s: start it with `nightly-recs stack up --folder %s`", folder, folder)
        return 1
    print(running.env_text(), end="")
    if action == "up":
        print(f"\nLoad these settings with:  source {running.folder / stack.ENV_FILE}")
    return 0


def _forget(settings: Settings, args: argparse.Namespace) -> int:
    import getpass

    from pipeline.erasure.identity import read_ids
    from pipeline.stages import run_forget

    ids = [*args.user, *(u for path in args.file for u in read_ids(path))]
    if not ids:
        raise SystemExit("forget: name at least one user with --user or --file")
    result = run_forget(settings, ids, args.requester or getpass.getuser(), args.reason)
    print(json.dumps(result, indent=2, default=str))
    return 0


def _backtest(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.tools import backtest

    return backtest.run_command(settings, args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "benchmark":
        from pipeline.tools import quality_benchmark

        return quality_benchmark.run(args)
    if args.command == "stack":
        return _stack(args.action, args.folder, not args.no_airflow)
    settings = load_settings()
    if args.command in STAGE_COMMANDS:
        print(json.dumps(run_stage(settings, args), indent=2, default=str))
        return 0
    if args.command == "night":
        from pipeline.stages import run_night

        run_night(settings, args.date, args.top_n, not args.no_retrain, args.max_epochs, args.force_promote)
        print_summary(settings, args.date)
        return 0
    handlers: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
        "dag-run": _dag_run, "forget": _forget, "backtest": _backtest}
    if args.command in handlers:
        return handlers[args.command](settings, args)
    if args.command == "rollback":
        import getpass

        from pipeline.stages import run_rollback

        result = run_rollback(settings, args.to_version, args.operator or getpass.getuser(), args.reason,
                              args.top_n)
        print(json.dumps(result, indent=2, default=str))
        return 0
    if args.command == "summary":
        print_summary(settings, args.date)
        return 0
    if args.command == "demo-data":
        from pipeline.tools.demo_source import write_demo_source

        counts = write_demo_source(Catalog.of(settings), args.days, args.seed, args.if_empty)
        log.info("demo source in %s: %s", Catalog.of(settings).landing, counts or "unchanged")
        return 0
    if args.command == "import":
        from pipeline.tools.importers import import_dataset

        landing = args.landing or Catalog.of(settings).landing
        counts = import_dataset(args.format, args.path, landing, items=args.items)
        log.info("imported %s into %s: %s", args.path, landing, counts)
        return 0
    if args.command == "airflow-standalone":
        from pipeline.tools.airflow_local import standalone

        return standalone(settings)
    return 2


if __name__ == "__main__":
    sys.exit(main())
