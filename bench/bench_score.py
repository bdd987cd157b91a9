"""Batch scoring benchmark: `recommend.score_users` next to the raw `matmul + topk` of the same sizes.

Default: 100,000 users x 50,000 items on CPU, a SeqRecModel with random weights (d_model 64, max_len 50, ID
item vectors), top-10. Histories have a long-tailed length (geometric, mean --history-mean, capped at
--history-cap; the model reads the last 50); 1% of the users only have items the model does not know and get
the popularity fallback. For each chunk size the script measures, in one run:

- raw: `torch.mm(user_vectors, item_vectors.T)` + `topk` over the same users in blocks of the chunk size,
  with a reused output buffer: the physical limit of this step (no transformer, no masking, no output);
- score_users: the whole production call (id lookups, transformer user states, seen-item masking, top-k,
  popularity fallback, the output Arrow table);
- score_users*: the same with MALLOC_MMAP_THRESHOLD_=1048576 in the environment (see the footnote printed);
- +reasons: score_users with the reason of every row (occlusion over the last --reason-window history items);
- reasons cost: the extra time of reasons as a share of score_users' time, from --repeats alternating calls
  with and without reasons in one process (the fastest of each): on a shared machine two single calls in
  separate processes swing with the load of the moment, alternating calls in one process compare like with like.
  It is printed for wall time and for the process's CPU time, which on a busy machine with `--threads 1`
  counts the work alone (with more threads, it also counts threads spinning while they wait for each other).

Peak memory is the process's high-water mark during the call minus its resident size just before it
(Linux: reset with /proc/self/clear_refs), so the figures show what the call itself adds; every measurement
runs in a fresh interpreter (after a small warm-up call), so one case's freed memory cannot hide another's.
Run: `make bench-score` or `.venv/bin/python bench/bench_score.py [--users 20000]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from pipeline.recsys.bundle import ModelBundle
from pipeline.recsys.model import ModelConfig, SeqRecModel
from pipeline.recsys.score import ScoringInput, Serving, score_users

STATUS = Path("/proc/self/status")
GLIBC_RETURNS_LARGE_BLOCKS = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


def memory_mb() -> tuple[float, float]:
    """(resident, high-water mark) of this process in MiB."""
    text = STATUS.read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", text).group(1))
    hwm = int(re.search(r"VmHWM:\s+(\d+)", text).group(1))
    return rss / 1024, hwm / 1024


def measure(fn: Callable[[], object]) -> tuple[float, float]:
    """(seconds, MiB added at peak) of one call."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before, _ = memory_mb()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    _, peak = memory_mb()
    return seconds, peak - before


def make_input(
    n_users: int, n_items: int, mean: float, cap: int, seed: int
) -> tuple[ScoringInput, list[str]]:
    rng = np.random.default_rng(seed)
    item_ids = [f"item-{i:06d}" for i in range(n_items)]
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8  # Zipf-like
    popularity /= popularity.sum()
    lengths = np.minimum(rng.geometric(1.0 / mean, n_users), cap)
    flat = rng.choice(n_items, size=int(lengths.sum()), p=popularity)
    ids = np.array(item_ids, dtype=object)[flat]
    ends = np.cumsum(lengths)
    histories = [ids[e - n : e].tolist() for e, n in zip(ends, lengths, strict=True)]
    for u in range(0, n_users, 100):  # 1%: only unknown items -> popularity fallback
        histories[u] = [f"unknown-{u}"]
    counts = np.bincount(flat, minlength=n_items)
    order = np.argsort(-counts, kind="stable")
    data = ScoringInput(
        user_ids=[f"user-{u:07d}" for u in range(n_users)],
        histories=histories,
        seen=histories,
        catalog_ids=set(item_ids),
        popular=[(item_ids[i], float(counts[i])) for i in order],
    )
    return data, item_ids


def raw_matmul_topk(users: torch.Tensor, items: torch.Tensor, k: int, chunk: int) -> None:
    buffer = torch.empty(min(chunk, len(users)), len(items))
    for start in range(0, len(users), chunk):
        block = buffer[: len(users[start : start + chunk])]
        torch.mm(users[start : start + chunk], items.T, out=block)
        block.topk(k, dim=1)


def run_case(args: argparse.Namespace) -> dict[str, float]:
    """One measurement in this (fresh) process: build the inputs, warm up, time one call."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = ModelConfig(n_items=args.items, max_len=50, d_model=64, item_repr="id")
    bundle = ModelBundle(SeqRecModel(config).eval(), [])
    data, bundle.item_ids = make_input(args.users, args.items, args.history_mean, args.history_cap, args.seed)
    with torch.inference_mode():
        items = bundle.model.item_representations()[1:].contiguous()  # (N, D)
    user_vectors = torch.randn(args.users, config.d_model)
    lengths = np.array([len(h) for h in data.histories])
    warm = ScoringInput(data.user_ids[:64], data.histories[:64], data.seen[:64], data.catalog_ids,
                        data.popular[:100])
    if args.case == "ratio":
        return reasons_ratio(args, bundle, data, warm)
    if args.case == "raw":
        raw_matmul_topk(user_vectors[:64], items, args.k, 64)
        seconds, peak = measure(lambda: raw_matmul_topk(user_vectors, items, args.k, args.chunk))
        rows = args.users * args.k
    else:
        serving = Serving(reason_window=args.reason_window) if args.case == "explain" else Serving()
        score_users(bundle, warm, args.k, 64, "cpu", serving)
        out: dict[str, pa.Table] = {}
        seconds, peak = measure(
            lambda: out.setdefault("t", score_users(bundle, data, args.k, args.chunk, "cpu", serving)))
        rows = out["t"].num_rows
    return {"seconds": seconds, "peak_mb": peak, "rows": rows, "rss_mb": memory_mb()[0],
            "threads": torch.get_num_threads(), "mean_len": float(lengths.mean()),
            "median_len": float(np.median(lengths)), "p90_len": float(np.percentile(lengths, 90)),
            "at_max_len": float(np.mean(lengths >= config.max_len))}


def reasons_ratio(args: argparse.Namespace, bundle: ModelBundle, data: ScoringInput, warm: ScoringInput
                  ) -> dict[str, float]:
    """The fastest of --repeats alternating score_users calls without and with reasons: wall and process CPU
    seconds (CPU time counts the work of this process only, not the time it waited for a core)."""
    servings = {"plain": Serving(), "reasons": Serving(reason_window=args.reason_window)}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in servings}
    for serving in servings.values():
        score_users(bundle, warm, args.k, 64, "cpu", serving)  # warm-up
    for _ in range(args.repeats):
        for name, serving in servings.items():
            wall, cpu = time.perf_counter(), time.process_time()
            score_users(bundle, data, args.k, args.chunk, "cpu", serving)
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {**{name: min(w for w, _ in t) for name, t in times.items()},
            **{f"{name}_cpu": min(c for _, c in t) for name, t in times.items()}}


def child(
    args: argparse.Namespace, case: str, chunk: int, env: dict[str, str] | None = None
) -> dict[str, float]:
    """Run one case in a fresh interpreter, so its peak memory is its own."""
    forwarded = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                 if k not in ("case", "chunk", "chunks")]
    cmd = [sys.executable, __file__, *forwarded, f"--case={case}", f"--chunk={chunk}"]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, **(env or {})})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--chunks", default="512,4096", help="chunk sizes (users per block), comma separated")
    parser.add_argument("--history-mean", type=float, default=10.0)
    parser.add_argument("--history-cap", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reason-window", type=int, default=5, help="history items occluded per reason")
    parser.add_argument("--repeats", type=int, default=3, help="alternating calls for the cost of reasons")
    parser.add_argument("--case", choices=("raw", "score", "explain", "ratio"), help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.case:
        print(json.dumps(run_case(args)))
        return

    print(f"scoring benchmark: {args.users:,} users x {args.items:,} items, d_model 64, max_len 50, "
          f"top-{args.k}, torch {torch.__version__}, device cpu, load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    header = (f"{'chunk':>6} {'step':<12} {'seconds':>8} {'users/s':>9} {'peak MiB':>9} {'buffer MiB':>10} "
              f"{'vs raw':>7}")
    for chunk in (int(c) for c in args.chunks.split(",")):
        raw = child(args, "raw", chunk)
        score = child(args, "score", chunk)
        trimmed = child(args, "score", chunk, GLIBC_RETURNS_LARGE_BLOCKS)
        explained = child(args, "explain", chunk)
        alternating = child(args, "ratio", chunk)
        if header:
            print(f"history length: mean {score['mean_len']:.1f}, median {score['median_len']:.0f}, "
                  f"p90 {score['p90_len']:.0f}, {score['at_max_len']:.1%} at >= max_len; "
                  f"{score['threads']} torch threads")
            print(header)
            header = ""
        buffer_mb = chunk * args.items * 4 / 2**20
        for name, r in (("raw mm+topk", raw), ("score_users", score), ("score_users*", trimmed),
                        ("+reasons", explained)):
            ratio = f"{raw['seconds'] / r['seconds']:>7.0%}" if r is not raw else f"{'':>7}"
            print(f"{chunk:>6} {name:<12} {r['seconds']:>8.1f} {args.users / r['seconds']:>9,.0f} "
                  f"{r['peak_mb']:>9.0f} {buffer_mb:>10.0f} {ratio}")
        plain, reasons = alternating["plain"], alternating["reasons"]
        plain_cpu, reasons_cpu = alternating["plain_cpu"], alternating["reasons_cpu"]
        print(f"{chunk:>6} reasons (window {args.reason_window}) cost {reasons - plain:+.1f} s = "
              f"{(reasons - plain) / plain:+.0%} of score_users' time (target <= +50%; fastest of {args.repeats} "
              f"alternating calls in one process: {plain:.1f} s without, {reasons:.1f} s with); CPU time "
              f"{(reasons_cpu - plain_cpu) / plain_cpu:+.0%} ({plain_cpu:.1f} s without, {reasons_cpu:.1f} s with)")
        expected = args.users * args.k
        assert score["rows"] == expected, f"score_users returned {score['rows']} rows, expected {expected}"
    print(f"* the same call with MALLOC_MMAP_THRESHOLD_=1048576: glibc then returns freed blocks above 1 MiB "
          f"to the OS,\n  so the peak shows the working set rather than heap the allocator keeps after the "
          f"transformer's batches.\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
