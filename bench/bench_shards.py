"""Mapped scoring: wall time of one night's scoring with 1, 2 and 4 shards scored at once.

Each shard runs in a process of its own, as a mapped `recommend` task would on its worker: it builds the same
synthetic input as `bench/bench_score.py` (seeded: every shard sees the same users), takes its shard with
`pipeline.shards.take` and times `score_users` on it, with max(1, cores // shards) torch threads. The shards
start together; a shard count's wall time is the slowest shard's scoring time (input building excluded, as a
real task reads the night's marts). Checks that the shards' rows add up to the unsharded row count.
Default 100,000 users x 50,000 items (the issue's size); `--users/--items` shrink it.
Run: `make bench-shards` or `.venv/bin/python bench/bench_shards.py [--users 20000 --items 10000]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def shard_main(args: argparse.Namespace) -> None:
    import torch
    from bench_score import make_input

    from pipeline import shards
    from pipeline.recsys.bundle import ModelBundle
    from pipeline.recsys.model import ModelConfig, SeqRecModel
    from pipeline.recsys.score import Serving, score_users

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    bundle = ModelBundle(SeqRecModel(ModelConfig(n_items=args.items, max_len=50, d_model=64, item_repr="id")).eval(),
                         [])
    data, bundle.item_ids = make_input(args.users, args.items, 8.0, 500, args.seed)
    part = shards.take(data, args.shard, args.of)
    start = time.perf_counter()
    table = score_users(bundle, part, 10, 512, "cpu", Serving())
    print(json.dumps({"seconds": time.perf_counter() - start, "rows": table.num_rows, "users": len(part.user_ids)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--shards", default="1,2,4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--of", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.shard is not None:
        shard_main(args)
        return
    cores = os.cpu_count() or 1
    print(f"scoring {args.users:,} users x {args.items:,} items, top-10, {cores} cores; shards score at once")
    print(f"{'shards':>6} {'threads each':>13} {'wall s (slowest shard)':>23} {'rows':>10}")
    for of in (int(n) for n in args.shards.split(",")):
        threads = max(1, cores // of)
        procs = [subprocess.Popen([sys.executable, __file__, "--users", str(args.users), "--items", str(args.items),
                                   "--seed", str(args.seed), "--shard", str(i), "--of", str(of), "--threads",
                                   str(threads)], stdout=subprocess.PIPE, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": str(threads)})
                 for i in range(of)]
        results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        assert all(p.returncode == 0 for p in procs), "a shard failed"
        rows = sum(r["rows"] for r in results)
        assert rows == args.users * 10, f"{rows} rows, expected {args.users * 10}"
        print(f"{of:>6} {threads:>13} {max(r['seconds'] for r in results):>23.1f} {rows:>10,}", flush=True)


if __name__ == "__main__":
    main()
