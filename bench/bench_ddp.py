"""Data-parallel training throughput: `train_model` with 1 and with 2 processes (DDP, gloo on the CPU) on the
same synthetic ring data and the same cores. Prints training sequences per second (over the epochs' training
time, rank 0's clock: validation and worker start-up excluded) and the wall time of each call (included).
A run with P processes gives each max(1, T // P) threads (T = torch's threads here); one process is also run
with one thread, to tell what data parallelism gains from what fewer threads per process gain on busy cores.

Run: `.venv/bin/python bench/bench_ddp.py [--users 10000] [--items 2000] [--epochs 2] [--processes 1 2]`.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from bench_train import ring_data

from pipeline.recsys.model import ModelConfig
from pipeline.recsys.train import TrainConfig, train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    histories, targets = ring_data(args.users, args.items)
    config = ModelConfig(n_items=args.items, max_len=50, d_model=64, item_repr="id")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; {args.users} users, {args.items} items, batch {args.batch_size}, "
          f"{args.epochs} epochs")
    print(f"{'processes':>9} {'threads':>7} {'sequences/s':>11} {'s/epoch':>8} {'wall s':>7} {'valid ndcg@10':>13}")
    threads, baseline = torch.get_num_threads(), None
    runs = [(p, threads) for p in args.processes] + ([(1, 1)] if threads > 1 and 1 in args.processes else [])
    for processes, run_threads in runs:
        torch.set_num_threads(run_threads)
        cfg = TrainConfig(max_epochs=args.epochs, patience=args.epochs, eval_every=args.epochs, lr=3e-3, seed=1,
                          batch_size=args.batch_size, device="cpu", valid_max_users=2_000, processes=processes)
        started = time.perf_counter()
        _, metrics, history = train_model(config, cfg, histories, histories, targets)
        wall = time.perf_counter() - started
        torch.set_num_threads(threads)
        per_epoch = sum(h["seconds"] for h in history) / len(history)
        rate = len(histories) / per_epoch  # one training sequence per user (windows_per_user=1)
        baseline = baseline or rate
        speedup = "" if rate == baseline else f"   x{rate / baseline:.2f}"
        print(f"{processes:>9} {max(1, run_threads // processes):>7} {rate:>11,.0f} {per_epoch:>8.2f} {wall:>7.1f} "
              f"{metrics['valid_ndcg@10']:>13.4f}{speedup}")


if __name__ == "__main__":
    main()
