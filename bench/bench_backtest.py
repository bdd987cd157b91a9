"""`make bench-backtest`: a short backtest on public data with real timestamps, printing the table.

Imports ml-latest-small (../shared/datasets) with `nightly-recs import movielens` into a fresh state home under
bench/out/, then runs `nightly-recs backtest` over a few nights of its busiest stretch and writes the JSON and
the HTML page beside it. Skips with a message when ../shared is absent.

Why not the last 30 days: ml-latest-small has 1.5 active users per day on average (at most 7), and its last 30
days hold 1 to 3 a day, so next-day metrics there rest on a handful of users. February-March 2007 is the
busiest 30-day stretch of the whole dataset by users active per day (75 user-days; `--from`/`--to` change it).

The settings (as environment variables, so every variant inherits them): all users with a history get lists
(`active_days` 3650: on this sparse dataset almost every next-day user returns after more than 30 days, and a
user without a list is a miss for every method alike); the first night trains up to 100 epochs (3 steps an
epoch for ~320 users: the default 30 does not reach the item-transition baseline); the rest as configured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
DATASET = REPO.parent / "shared" / "datasets" / "ml-latest-small"
SETTINGS = {"NIGHTLY_RECS_ACTIVE_DAYS": "3650", "NIGHTLY_RECS_MAX_EPOCHS": "100",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_ENABLE_TELEMETRY": "false"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="start", default="2007-02-14")
    parser.add_argument("--to", dest="end", default="2007-02-17")
    parser.add_argument("--converged-every", default="4")
    parser.add_argument("--converged-epochs", default="150")
    parser.add_argument("--name", default="backtest-ml-latest-small")
    args = parser.parse_args()
    if not DATASET.is_dir():
        print(f"bench-backtest skipped: {DATASET} is absent (the shared datasets live beside the repository)")
        return 0
    home = OUT / args.name
    shutil.rmtree(home, ignore_errors=True)
    env = {**os.environ, **SETTINGS, "NIGHTLY_RECS_HOME": str(home)}
    cli = [sys.executable, "-m", "pipeline.tools.cli"]
    subprocess.run([*cli, "import", "movielens", str(DATASET)], check=True, cwd=REPO, env=env)
    command = ["backtest", "--from", args.start, "--to", args.end, "--converged-every", args.converged_every,
               "--converged-epochs", args.converged_epochs, "--json", str(OUT / f"{args.name}.json"),
               "--html", str(OUT / f"{args.name}.html")]
    print("$ " + " ".join(f"{k}={v}" for k, v in SETTINGS.items() if k.startswith("NIGHTLY"))
          + " nightly-recs " + " ".join(command), flush=True)
    return subprocess.run([*cli, *command], cwd=REPO, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
