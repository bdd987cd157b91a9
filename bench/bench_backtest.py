"""`make bench-backtest`: a short backtest on public data with real timestamps, printing the table.

Imports ml-latest-small (../shared/datasets) with `nightly-recs import movielens` into a fresh state home under
bench/out/, then runs `nightly-recs backtest` over a few nights of its busiest stretch, one process per variant
(each with one torch thread: on 2 shared cores that is faster than one process with two threads, see
`make bench-ddp`), merges their results and writes the JSON and the HTML page. Skips with a message when
../shared is absent.

Why not the last 30 days: ml-latest-small has 1.5 active users per day on average (at most 7), and its last 30
days hold 1 to 3 a day, so next-day metrics there rest on a handful of users. February-March 2007 is the
busiest 30-day stretch of the whole dataset by users active per day (75 user-days; `--from`/`--to` change it).

The settings (as environment variables, so every variant inherits them):
- `active_days` 3650: every user with a history gets lists. On this sparse dataset most next-day users return
  after more than 30 days, and a user without a list is a miss for every method alike.
- `max_epochs` 100 for a night from scratch (3 steps an epoch for ~320 users; early stopping ends it sooner).
- `gate_baselines` most_popular: with the default gate (the strongest of the three) no first model is ever
  promoted here, so every night fails and nothing is published. ML-small never has 10 users active on a day,
  the gate falls back to leave-one-out, and item-transition wins there (2007-02-14: model 0.0490 against
  item-transition 0.0571 at the best of 33 epochs). The backtest still scores every baseline.
- `events_min_volume_ratio` 0: a MovieLens day holds 1 to 300 ratings, so ingest's volume check (20% of the
  trailing median) fails nights such as 2007-02-16 (1 rating).
The rest is as configured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
DATASET = REPO.parent / "shared" / "datasets" / "ml-latest-small"
SETTINGS = {"NIGHTLY_RECS_ACTIVE_DAYS": "3650", "NIGHTLY_RECS_MAX_EPOCHS": "100",
            "NIGHTLY_RECS_GATE_BASELINES": "most_popular", "NIGHTLY_RECS_EVENTS_MIN_VOLUME_RATIO": "0"}
VARIANTS = ("warm_start", "scratch_same_budget", "scratch_converged")


def merge(parts: list[dict], top_n: int) -> dict:
    """One result from the per-variant results (pipeline.tools.backtest.run_backtest's shape)."""
    from pipeline.tools.backtest_summary import summarise

    result = {**parts[0], "variants": {name: v for part in parts for name, v in part["variants"].items()}}
    result["summary"] = summarise(result, top_n)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="start", default="2007-02-14")
    parser.add_argument("--to", dest="end", default="2007-02-17")
    parser.add_argument("--converged-every", default="4")
    parser.add_argument("--converged-epochs", default="150")
    parser.add_argument("--name", default="backtest-ml-latest-small")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated (warm_incremental too), each in a process of its own")
    args = parser.parse_args()
    if not DATASET.is_dir():
        print(f"bench-backtest skipped: {DATASET} is absent (the shared datasets live beside the repository)")
        return 0
    home = OUT / args.name
    shutil.rmtree(home, ignore_errors=True)
    env = {**os.environ, **SETTINGS, "NIGHTLY_RECS_HOME": str(home), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_ENABLE_TELEMETRY": "false"}
    cli = [sys.executable, "-m", "pipeline.tools.cli"]
    subprocess.run([*cli, "import", "movielens", str(DATASET)], check=True, cwd=REPO, env=env)
    command = ["backtest", "--from", args.start, "--to", args.end, "--converged-every", args.converged_every,
               "--converged-epochs", args.converged_epochs]
    print("$ " + " ".join(f"{k}={v}" for k, v in SETTINGS.items()) + " nightly-recs " + " ".join(command)
          + " --variants <one each, in parallel>", flush=True)
    variants = tuple(args.variants.split(","))
    runs = []
    for variant in variants:
        part = ["--variants", variant, "--json", str(home / f"{variant}.json"), "--out-dir", str(home / "backtest")]
        with (home / f"{variant}.log").open("w") as log:
            runs.append(subprocess.Popen([*cli, *command, *part], cwd=REPO, env=env, stdout=log, stderr=log))
    failed = [variant for variant, run in zip(variants, runs, strict=True) if run.wait() != 0]
    parts = [json.loads((home / f"{v}.json").read_text()) for v in variants if (home / f"{v}.json").is_file()]
    if not parts:
        print(f"bench-backtest: no variant finished; see {home}/*.log")
        return 1
    from pipeline.tools.backtest_report import write_backtest_html
    from pipeline.tools.backtest_summary import format_table

    result = merge(parts, parts[0]["top_n"])
    (OUT / f"{args.name}.json").write_text(json.dumps(result, indent=2, default=str))
    write_backtest_html(result, OUT / f"{args.name}.html")
    print(format_table(result))
    print(f"\nJSON {OUT / f'{args.name}.json'}, HTML {OUT / f'{args.name}.html'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
