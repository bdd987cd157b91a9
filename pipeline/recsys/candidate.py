"""A night's candidate: train on the night's split (optionally warm-started), evaluate it and the baselines on
the same test items, and save everything the registry needs into one folder.

    <folder>/bundle/          the model (recsys.bundle.ModelBundle)
    <folder>/metrics.json     {"model": {...}, "most_popular": {...}, ...} on the test items: accuracy and the
                              beyond-accuracy metrics (coverage, Gini, novelty, ILD, popularity lift, cold share)
    <folder>/train.json       model and training configs, training metrics, per-epoch history, sizes
    <folder>/training_curves.png
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import ModelSettings
from pipeline.recsys.bundle import ModelBundle
from pipeline.recsys.data import NightData
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
                       text_dim=text_dim)


def effective_train_config(train_config: TrainConfig, warm_start: bool) -> TrainConfig:
    """The config a candidate really trains with: a converged (warm) start stops soon after the validation
    metric stops improving."""
    return dataclasses.replace(train_config, patience=min(train_config.patience, 3)) if warm_start else train_config


def train_candidate(
    night: NightData, model_config: ModelConfig, train_config: TrainConfig, init_state: dict[str, Any] | None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> Candidate:
    """Train on the night's leave-one-out training part, evaluate model and baselines on its test items;
    `on_epoch(epoch, record)` sees each epoch as it ends (live tracking)."""
    train_config = effective_train_config(train_config, bool(init_state))
    train_seqs = night.train_sequences()
    model, train_metrics, history = train_model(model_config, train_config, train_seqs, night.loo_train,
                                                night.loo_valid, text_emb=night.text_emb, on_epoch=on_epoch,
                                                init_state=init_state)
    test_inputs = night.test_inputs()
    stats = ItemStats(popularity_scores(train_seqs, night.n_items), night.text_emb)
    metrics = {"model": evaluate_model(model, test_inputs, night.loo_test, item_stats=stats)}
    metrics.update(evaluate_baselines(train_seqs, test_inputs, night.loo_test, night.n_items, item_stats=stats))
    log.info("candidate ndcg@10 %.4f; baselines %s", metrics["model"]["ndcg@10"],
             {name: round(m["ndcg@10"], 4) for name, m in metrics.items() if name != "model"})
    train_info = {
        "model_config": dataclasses.asdict(model_config),
        "train_config": dataclasses.asdict(train_config),
        "train_metrics": train_metrics,
        "history": history,
        "n_users": len(night.user_ids),
        "n_train_sequences": len(train_seqs),
    }
    return Candidate(ModelBundle(model, night.item_ids), metrics, train_info)
