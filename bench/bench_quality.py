"""`make bench-quality`: the offline quality benchmark on the two shared datasets.

Runs `nightly-recs benchmark quality` (the same modules as the nightly run) on Amazon Scientific (with the
cold-item experiment) and ml-latest-small, writing JSON to bench/out/.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prepare_datasets import prepare

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
CLI = [sys.executable, "-m", "pipeline.tools.cli", "benchmark", "quality"]


def run(args: list[str]) -> None:
    print("$ nightly-recs benchmark quality " + " ".join(args), flush=True)
    subprocess.run(CLI + args, check=True, cwd=REPO)


def main() -> None:
    events, items = prepare("amazon-scientific", OUT)
    common = ["--events", str(events), "--items", str(items), "--dataset-name", "amazon-scientific",
              "--work-dir", str(OUT), "--patience", "6"]
    run(common + ["--item-repr", "all", "--json", str(OUT / "quality-amazon-scientific.json")])
    run(common + ["--item-repr", "all", "--cold-items", "0.1",
                  "--json", str(OUT / "quality-amazon-scientific-cold.json")])
    events, items = prepare("ml-latest-small", OUT)
    run(["--events", str(events), "--items", str(items), "--dataset-name", "ml-latest-small", "--work-dir", str(OUT),
         "--item-repr", "all", "--max-len", "200", "--batch-size", "64", "--lr", "2e-3", "--patience", "8",
         "--time-budget-minutes", "17",
         "--json", str(OUT / "quality-ml-latest-small.json")])


if __name__ == "__main__":
    main()
