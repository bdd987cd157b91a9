"""Hyperparameter search for the night's model within a time budget: an Optuna study (TPE sampler) whose trials
train on the night's gate split and are pruned on the per-epoch validation metric.

What a trial sees is what the nightly candidate sees before the gate: the training side of the night's gate split
(recsys.data.NightData.train_split: on the temporal split, the events before the data date D), with its own
validation users (each user's last item before D). The value of a trial is its best validation NDCG@10, so the
study never looks at the gate's test targets (the items of D): a tuned configuration is judged by the gate on
targets the search never saw.

Budget: the study stops starting trials once `total - trial` seconds have passed (`Study.optimize(timeout=...)`),
and each trial stops training after `trial` seconds (TrainConfig.time_budget_s) or `max_epochs` epochs, so the
whole study ends close to `total` seconds (plus at most one epoch and one validation). A pruned trial stops at
the epoch the pruner says so (`Trial.should_prune` after `Trial.report(valid ndcg@10, epoch)`): train_model lets
the `TrialPruned` raised from its `on_epoch` callback propagate.

Overrides are flat names as the training runs' MLflow params spell them (`model.d_model`, `train.lr`, ...), and
`apply_overrides` turns them into the configs a training uses. No I/O here: pipeline.tuning stores the study.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import torch

from pipeline.recsys.data import NightData
from pipeline.recsys.model import ModelConfig
from pipeline.recsys.train import TrainConfig, train_model

log = logging.getLogger(__name__)

# The search space: name -> ("float", low, high, log) or ("choice", options). Widths and heads are chosen so that
# every width divides by every head count; max_len stays below the 200 events the marts keep per user
# (features: max(200, max_len + 2)).
SEARCH_SPACE: dict[str, tuple[Any, ...]] = {
    "train.lr": ("float", 1e-4, 1e-2, True),
    "train.weight_decay": ("float", 1e-3, 0.3, True),
    "train.batch_size": ("choice", (64, 128, 256)),
    "model.d_model": ("choice", (32, 64, 128)),
    "model.n_layers": ("choice", (1, 2, 3)),
    "model.n_heads": ("choice", (1, 2, 4)),
    "model.dropout": ("float", 0.0, 0.5, False),
    "model.max_len": ("choice", (25, 50, 100, 150)),
}
VALID_METRIC = "valid_ndcg@10"  # what a trial reports per epoch and returns (train_model's validation record)


@dataclass(frozen=True)
class TuneBudget:
    total_s: float           # wall-clock seconds for the whole study
    trials: int = 8          # the budget is cut into this many trial slices (more start when trials end early)
    max_epochs: int = 20     # epoch cap of one trial
    max_trials: int | None = None  # stop after this many trials even with time left (None: the budget decides)

    def __post_init__(self) -> None:
        assert self.total_s > 0, f"the tuning budget must be > 0 seconds, got {self.total_s}"
        assert self.trials >= 1 and self.max_epochs >= 1, f"trials and max_epochs must be >= 1: {self}"

    @property
    def trial_s(self) -> float:
        """Training seconds of one trial."""
        return self.total_s / self.trials

    @property
    def start_until_s(self) -> float:
        """No trial starts after this (seconds from the study's start), so the last one ends by the budget."""
        return max(self.total_s - self.trial_s, 1e-3)


def suggest_overrides(trial: optuna.Trial) -> dict[str, Any]:
    """One point of SEARCH_SPACE, as flat overrides."""
    out: dict[str, Any] = {}
    for name, spec in SEARCH_SPACE.items():
        if spec[0] == "float":
            out[name] = trial.suggest_float(name, spec[1], spec[2], log=spec[3])
        else:
            out[name] = trial.suggest_categorical(name, spec[1])
    return out


def apply_overrides(model_config: ModelConfig, train_config: TrainConfig, overrides: dict[str, Any]
                    ) -> tuple[ModelConfig, TrainConfig]:
    """The configs with `overrides` ({"model.<field>" | "train.<field>": value}) applied; a name that is not
    a field of ModelConfig or TrainConfig is an error naming it."""
    fields = {"model": {f.name for f in dataclasses.fields(ModelConfig)},
              "train": {f.name for f in dataclasses.fields(TrainConfig)}}
    changes: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
    for name, value in overrides.items():
        prefix, _, field = name.partition(".")
        if field not in fields.get(prefix, set()):
            raise ValueError(f"tuned setting {name!r} is not a model.<field> of ModelConfig or train.<field> of "
                             "TrainConfig")
        changes[prefix][field] = value
    return dataclasses.replace(model_config, **changes["model"]), dataclasses.replace(train_config, **changes["train"])


def _objective(night: NightData, split: str, model_config: ModelConfig, train_config: TrainConfig,
               budget: TuneBudget) -> Callable[[optuna.Trial], float]:
    training = night.train_split(split)

    def objective(trial: optuna.Trial) -> float:
        overrides = suggest_overrides(trial)
        model_cfg, train_cfg = apply_overrides(model_config, train_config, overrides)
        train_cfg = dataclasses.replace(train_cfg, max_epochs=budget.max_epochs, time_budget_s=budget.trial_s)

        def on_epoch(epoch: int, record: dict[str, float]) -> None:
            value = record.get(VALID_METRIC)
            if value is None or math.isnan(value):
                return
            trial.report(value, epoch)
            if trial.should_prune():
                log.info("trial %d pruned at epoch %d (%s %.4f)", trial.number, epoch, VALID_METRIC, value)
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        _, metrics, history = train_model(model_cfg, train_cfg, training.sequences, training.valid_inputs,
                                          training.valid_targets, text_emb=night.text_emb, on_epoch=on_epoch)
        trial.set_user_attr("epochs", len(history))
        trial.set_user_attr("train_seconds", metrics["train_seconds"])
        return float(metrics[VALID_METRIC])

    return objective


def default_pruner() -> optuna.pruners.BasePruner:
    """Median rule: stop a trial whose validation metric at an epoch is below the median of earlier trials at
    that epoch, once two trials have finished and from epoch 2 on (epoch 1 says little after warm-up)."""
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)


def run_study(
    night: NightData, model_config: ModelConfig, train_config: TrainConfig, budget: TuneBudget, seed: int,
    storage: optuna.storages.BaseStorage | None = None, pruner: optuna.pruners.BasePruner | None = None,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None, study_name: str = "",
) -> optuna.Study:
    """Search SEARCH_SPACE around (model_config, train_config) on the night's gate split within `budget`;
    `on_trial(study, trial)` sees every finished trial (complete, pruned or failed). A trial that runs out of
    accelerator memory fails alone; any other error ends the study."""
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, budget.trials // 3))
    study = optuna.create_study(storage=storage, sampler=sampler, pruner=pruner or default_pruner(),
                                study_name=study_name or None, direction="maximize")
    split = night.gate_split()
    study.set_user_attr("gate_split", split)
    log.info("tuning on the %s split of %s: %.0f s, %.0f s per trial, at most %s trials of %d epochs", split,
             night.data_date, budget.total_s, budget.trial_s, budget.max_trials or "any", budget.max_epochs)
    study.optimize(_objective(night, split, model_config, train_config, budget), n_trials=budget.max_trials,
                   timeout=budget.start_until_s, catch=(torch.OutOfMemoryError,),
                   callbacks=[on_trial] if on_trial else None)
    return study
