"""The coverage guardrail of the gate: a challenger that wins NDCG by recommending only the bestsellers is
rejected, as a function on real evaluation dicts and through run_gate with a real MLflow (SQLite, temp folder).

The night: 20 bestsellers (items 1..20) and 80 tail items. Users alternate a tail item t and a
bestseller: (t mod 20) + 1 (60%) or a random one; the held-out item always follows a tail item, so it is
always a bestseller. A trained model learns to recommend bestsellers, the likely one first (NDCG far above
most-popular, lists drawn mostly from the fifth of the catalog that sells best); the champion is a random
model whose lists cover the whole catalog with a poor NDCG.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import registry
from pipeline.config import load_settings
from pipeline.guardrails import COVERAGE_METRIC, apply_guardrails, coverage_violation
from pipeline.recsys.bundle import ModelBundle
from pipeline.recsys.evaluate import evaluate_baselines, evaluate_model
from pipeline.recsys.model import ModelConfig, SeqRecModel
from pipeline.recsys.train import TrainConfig, train_model
from pipeline.registry import decide

N_ITEMS = 100
BESTSELLERS = 20
ITEM_IDS = [f"item-{j:02d}" for j in range(1, N_ITEMS + 1)]
CONFIG = ModelConfig(n_items=N_ITEMS, max_len=10, d_model=16, item_repr="id", dropout=0.1)


def bestseller_night(n_users: int = 500, seed: int = 0) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n_users):
        seq = []
        for _ in range(3):
            tail = int(rng.integers(BESTSELLERS + 1, N_ITEMS + 1))
            best = tail % BESTSELLERS + 1 if rng.random() < 0.6 else int(rng.integers(1, BESTSELLERS + 1))
            seq += [tail, best]
        seqs.append(np.array(seq, np.int64))
    return {"train": [s[:-2] for s in seqs], "valid_targets": np.array([s[-2] for s in seqs]),
            "test_inputs": [s[:-1] for s in seqs], "test_targets": np.array([s[-1] for s in seqs])}


@pytest.fixture(scope="module")
def night_and_models() -> tuple[dict, ModelBundle, ModelBundle]:
    night = bestseller_night()
    model, _, _ = train_model(CONFIG, TrainConfig(max_epochs=20, batch_size=64, patience=20, seed=0, device="cpu",
                                                        lr=3e-3),
                              night["train"], [s[:-1] for s in night["train"]],
                              np.array([s[-1] for s in night["train"]]))
    torch.manual_seed(3)
    diverse = ModelBundle(SeqRecModel(CONFIG).eval(), list(ITEM_IDS))
    return night, ModelBundle(model, list(ITEM_IDS)), diverse


def evaluate(night: dict):
    return lambda bundle: evaluate_model(bundle.model, night["test_inputs"], night["test_targets"])


def test_guardrail_rejects_the_bestseller_challenger_that_passes_on_ndcg(night_and_models: tuple) -> None:
    night, bestseller, diverse = night_and_models
    challenger, champion = evaluate(night)(bestseller), evaluate(night)(diverse)
    popular = evaluate_baselines(night["train"], night["test_inputs"], night["test_targets"], N_ITEMS)
    assert challenger[COVERAGE_METRIC] < 0.4 < 0.9 <= champion[COVERAGE_METRIC]  # mostly the bestsellers
    accuracy_only = decide(challenger["ndcg@10"], champion["ndcg@10"], popular["most_popular"]["ndcg@10"], 0.01)
    assert accuracy_only.promote  # NDCG beats the champion and most-popular
    guarded = apply_guardrails(accuracy_only, challenger, champion, max_loss=0.5)
    assert not guarded.promote and not guarded.forced
    assert guarded.reason.startswith("coverage guardrail: challenger coverage@10")
    assert "accuracy rule alone" in guarded.reason
    assert apply_guardrails(accuracy_only, challenger, champion, max_loss=1.0).promote  # guardrail off


def test_coverage_violation_on_plain_numbers() -> None:
    assert coverage_violation({"coverage@10": 0.5}, {"coverage@10": 1.0}, 0.5) is None  # exactly the floor
    assert "below champion 1.0000 x (1 - 0.5) = 0.5000" in coverage_violation(
        {"coverage@10": 0.49}, {"coverage@10": 1.0}, 0.5)
    assert coverage_violation({"coverage@10": 0.01}, None, 0.5) is None  # no champion: nothing to compare
    assert coverage_violation({"coverage@10": float("nan")}, {"coverage@10": 0.3}, 0.5) is not None
    forced = decide(0.01, 0.1, 0.05, 0.01, force=True)
    assert apply_guardrails(forced, {"coverage@10": 0.0}, {"coverage@10": 1.0}, 0.5) == forced
    with pytest.raises(AssertionError, match="max_loss must be in"):
        coverage_violation({}, {"coverage@10": 1.0}, 1.5)


def test_run_gate_keeps_the_diverse_champion(night_and_models: tuple, tmp_path) -> None:
    night, bestseller, diverse = night_and_models
    settings = load_settings(env={"NIGHTLY_RECS_HOME": str(tmp_path), "NIGHTLY_RECS_MODEL_NAME": "guarded"})
    popular = evaluate_baselines(night["train"], night["test_inputs"], night["test_targets"], N_ITEMS)
    versions = {}
    for name, bundle in (("diverse", diverse), ("bestseller", bestseller)):
        _, versions[name] = registry.log_training(settings, bundle.save(tmp_path / name), {}, {}, [], {},
                                                  {"data_date": "2026-10-10", "dag_run_id": "test"})
    first = registry.run_gate(settings, versions["diverse"], diverse, evaluate(night),
                              popular["most_popular"]["ndcg@10"], force=True, operator="alice")
    assert first.promoted
    gate = registry.run_gate(settings, versions["bestseller"], bestseller, evaluate(night),
                             popular["most_popular"]["ndcg@10"])
    assert gate.challenger_metrics["ndcg@10"] > gate.champion_metrics["ndcg@10"]
    assert not gate.promoted and gate.reason.startswith("coverage guardrail")
    assert registry.champion_version(settings) == versions["diverse"]
    tags = registry.version_tags(settings, versions["bestseller"])
    assert tags["gate.decision"] == "rejected" and tags["gate.reason"].startswith("coverage guardrail")
