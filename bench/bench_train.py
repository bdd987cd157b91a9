"""Training speed: `train_model` on the synthetic ring data of tests/test_train.py (300 users, 200 items), and
on a larger synthetic set. Prints seconds per epoch; the timing that used to be an assert in test_train.

Run: `.venv/bin/python bench/bench_train.py [--users 300] [--items 200] [--epochs 8]`.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from pipeline.recsys.model import ModelConfig
from pipeline.recsys.train import TrainConfig, train_model


def ring_data(n_users: int, n_items: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Users walk a ring of items (i -> i+1 or i+2): histories and their next items."""
    rng = np.random.default_rng(seed)
    histories, targets = [], []
    for _ in range(n_users):
        start, length = rng.integers(1, n_items + 1), rng.integers(5, 15)
        steps = rng.choice([1, 2], size=length - 1, p=[0.8, 0.2])
        seq = (start - 1 + np.concatenate([[0], np.cumsum(steps)])) % n_items + 1
        histories.append(seq[:-1])
        targets.append(seq[-1])
    return histories, np.array(targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[300, 20_000])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    print(f"{'users':>8} {'items':>6} {'epochs':>6} {'total s':>8} {'s/epoch':>8} {'valid hr@10':>11}")
    for n_users in args.users:
        histories, targets = ring_data(n_users, args.items)
        config = ModelConfig(n_items=args.items, max_len=16, d_model=32, item_repr="id")
        started = time.perf_counter()
        _, metrics, _ = train_model(config, TrainConfig(max_epochs=args.epochs, patience=args.epochs, lr=3e-3,
                                                        seed=1, device="cpu"), histories, histories, targets)
        total = time.perf_counter() - started
        print(f"{n_users:>8} {args.items:>6} {int(metrics['epochs']):>6} {total:>8.1f} "
              f"{metrics['seconds_per_epoch']:>8.2f} {metrics['valid_hr@10']:>11.3f}")


if __name__ == "__main__":
    main()
