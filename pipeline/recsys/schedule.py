"""The learning-rate schedule of training: linear warm-up, cosine decay to a floor, optionally bound to the
time budget (TrainConfig.budget_schedule)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.recsys.distributed import Shard

log = logging.getLogger(__name__)


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class Schedule:
    """The learning-rate factor per step: linear warm-up, then cosine decay to min_ratio at `total` steps.

    With a time budget the horizon is bound to it: after every epoch, `fit_budget` sets the horizon to the
    epochs the budget allows at the pace so far (never beyond `planned`, the max_epochs horizon), so that the
    decay ends when training does rather than being cut off near the peak rate (max_epochs 200 with a budget
    that stops at epoch 35). A budget that does not bind leaves the schedule as planned."""

    warmup: int
    planned: int
    min_ratio: float
    step: int = 0
    total: int = 0

    def __post_init__(self) -> None:
        self.total = self.total or self.planned

    def __iter__(self) -> Schedule:
        return self

    def __next__(self) -> float:
        self.step += 1
        return lr_factor(self.step - 1, self.warmup, self.total, self.min_ratio)

    def fit_budget(self, epochs_allowed: int, steps_per_epoch: int) -> None:
        horizon = min(self.planned, max(self.warmup + steps_per_epoch, epochs_allowed * steps_per_epoch))
        if horizon != self.total:
            log.info("learning-rate schedule bound to the time budget: cosine over %d epochs (max_epochs %d)",
                     horizon // steps_per_epoch, self.planned // steps_per_epoch)
            self.total = horizon


def epochs_allowed(budget_s: float, elapsed_s: float, epochs_done: int, shard: Shard | None) -> int:
    """How many epochs fit in the budget at the pace so far (validation included); every DDP rank gets the
    same figure (the mean of their estimates)."""
    pace = elapsed_s / max(1, epochs_done)
    allowed = float(epochs_done + int(max(0.0, budget_s - elapsed_s) / max(pace, 1e-6)))
    if shard is not None:
        allowed = shard.sum(allowed) / shard.world
    return max(1, int(allowed))
