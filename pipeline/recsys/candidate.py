"""A night's candidate: train on the night's gate split (optionally warm-started), evaluate it and the
baselines on the same users and targets, and save everything the registry needs into one folder.

The gate split is temporal (recsys.data): the candidate trains on events before the data date D only, and the
model it publishes is that model: it is not refit on D's events afterwards, so the model the gate evaluated is
the model that serves, and tomorrow's night (warm-started from it) learns D. Leave-one-out is the fallback on
a night with too few users active on D (its training window reaches D; `gate_split` says which).

    <folder>/bundle/          the model (recsys.bundle.ModelBundle, with its training window's last date)
    <folder>/metrics.json     {"model": {...}, "most_popular": {...}, ...} on the gate split: accuracy and the
                              beyond-accuracy metrics (coverage, Gini, novelty, ILD, popularity lift, cold share);
                              {"loo_model": {...}, "loo_most_popular": {...}, ...} on leave-one-out, secondary
                              (reported and logged, never deciding)
    <folder>/train.json       model and training configs, training metrics, per-epoch history, sizes, gate_split,
                              train_until
    <folder>/training_curves.png
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import ModelSettings, TrainingSettings
from pipeline.recsys.bundle import ModelBundle
from pipeline.recsys.data import LEAVE_ONE_OUT, TEMPORAL, EvalSplit, Incremental, NightData
from pipeline.recsys.diversity import ItemStats
from pipeline.recsys.evaluate import evaluate_baselines, evaluate_model, popularity_scores
from pipeline.recsys.model import ModelConfig
from pipeline.recsys.train import TrainConfig, train_model

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    bundle: ModelBundle
    metrics: dict[str, dict[str, float]]    # model and baselines on the test items
    train_info: dict[str, Any]              # configs, training metrics, history, sizes

    def save(self, folder: Path) -> Path:
        """Write the candidate folder; returns the bundle folder."""
        from pipeline.report import plot_history

        bundle_dir = self.bundle.save(folder / "bundle")
        (folder / "metrics.json").write_text(json.dumps(self.metrics, indent=2))
        (folder / "train.json").write_text(json.dumps(self.train_info, indent=2, default=str))
        plot_history(self.train_info["history"], folder / "training_curves.png")
        return bundle_dir


def model_config_for(night: NightData, cfg: ModelSettings) -> ModelConfig:
    """The model shape for tonight's catalog: text fusion only when the night has embeddings."""
    text_dim = 0 if night.text_emb is None else night.text_emb.shape[1]
    return ModelConfig(n_items=night.n_items, max_len=cfg.max_len, item_repr=cfg.item_repr if text_dim else "id",
                       text_dim=text_dim, sampled_softmax_above=cfg.sampled_softmax_above)


def effective_train_config(train_config: TrainConfig, warm_start: bool, reanneal: bool = False) -> TrainConfig:
    """The config a candidate really trains with: a converged (warm) start stops soon after the validation
    metric stops improving, and peaks at warm_lr_scale of the learning rate (a smaller step leaves more of the
    champion in place). A `reanneal` night (the periodic full night of an incremental deployment) runs every
    epoch instead, the whole warm-up and cosine decay, and keeps the best: the nights between only fine-tune."""
    if not warm_start:
        return train_config
    patience = train_config.max_epochs if reanneal else min(train_config.patience, 3)
    return dataclasses.replace(train_config, patience=patience, lr=train_config.lr * train_config.warm_lr_scale)


def incremental_plan(training: TrainingSettings, data_date: dt.date, champion_until: dt.date | None,
                     new_item_share: float) -> Incremental | None:
    """Whether a warm night trains incrementally (and from which day on): when `incremental` is on, the champion's
    training window is known, the date is not a full-retrain date (ordinal a multiple of full_retrain_every)
    and at most incremental_max_new_items of tonight's items are new to the champion."""
    if not training.incremental or champion_until is None:
        return None
    if data_date.toordinal() % training.full_retrain_every == 0:
        log.info("full warm night: %s is a full-retrain date (every %d days)", data_date, training.full_retrain_every)
        return None
    if new_item_share > training.incremental_max_new_items:
        log.info("full warm night: %.1f%% of the items are new to the champion (> %.1f%%)", 100 * new_item_share,
                 100 * training.incremental_max_new_items)
        return None
    return Incremental(since=champion_until, replay=training.incremental_replay)


def train_candidate(
    night: NightData, model_config: ModelConfig, train_config: TrainConfig, init_state: dict[str, Any] | None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None, split: str | None = None,
    incremental: Incremental | None = None,
) -> Candidate:
    """Train on the training side of `split` (default: the night's gate split), evaluate model and baselines
    on its evaluation side, and on leave-one-out as a secondary metric; `on_epoch(epoch, record)` sees each
    epoch as it ends (live tracking). `incremental` narrows a temporal split's training sequences to the users
    that changed since the champion's window plus a replay sample (the evaluation is unchanged). `train_config`
    is used as given: a warm start passes its effective_train_config."""
    split = split or night.gate_split()
    training = night.train_split(split, incremental if split == TEMPORAL else None)
    model, train_metrics, history = train_model(model_config, train_config, training.sequences,
                                                training.valid_inputs, training.valid_targets,
                                                text_emb=night.text_emb, on_epoch=on_epoch, init_state=init_state,
                                                loss_from=training.loss_from)
    evaluation = night.eval_split(split)
    metrics = _evaluate(model, night, training.sequences, evaluation)
    if split != LEAVE_ONE_OUT:
        loo = _evaluate(model, night, night.train_sequences(), night.eval_split(LEAVE_ONE_OUT))
        metrics.update({f"loo_{name}": m for name, m in loo.items()})
    log.info("candidate %s ndcg@10 %.4f (trained until %s); baselines %s", split, metrics["model"]["ndcg@10"],
             training.train_until, {name: round(m["ndcg@10"], 4) for name, m in metrics.items() if name != "model"})
    train_info = {
        "model_config": dataclasses.asdict(model_config),
        "train_config": dataclasses.asdict(train_config),
        "train_metrics": train_metrics,
        "history": history,
        "n_users": len(night.user_ids),
        "n_train_sequences": len(training.sequences),
        "gate_split": split,
        "train_until": training.train_until.isoformat(),
        "n_eval_users": len(evaluation.users),
        "incremental_since": incremental.since.isoformat() if incremental and split == TEMPORAL else None,
    }
    return Candidate(ModelBundle(model, night.item_ids, training.train_until), metrics, train_info)


def _evaluate(model: Any, night: NightData, train_seqs: list[Any], split: EvalSplit) -> dict[str, dict[str, float]]:
    """The model and the baselines (fitted on `train_seqs`, the model's own training data) on one split."""
    stats = ItemStats(popularity_scores(train_seqs, night.n_items), night.text_emb)
    metrics = {"model": evaluate_model(model, split.inputs, split.targets, item_stats=stats,
                                       exclude=split.exclude)}
    metrics.update(evaluate_baselines(train_seqs, split.inputs, split.targets, night.n_items, item_stats=stats,
                                      exclude=split.exclude))
    return metrics
