"""The MLflow registry and the champion/challenger gate, against a real MLflow (SQLite backend, temp folder).

One registry history is built once for the module, on a tiny synthetic catalog where the next item is usually
the successor of the last one (a trained model learns it; most-popular cannot):
v1 scores every item the same (the first model must beat most-popular: rejected), v2 has random weights and is
forced by an operator, v3 is trained (better: promoted), v4 has random weights (broken: never promoted).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline import registry
from pipeline.config import Settings, load_settings
from pipeline.recsys.bundle import ModelBundle
from pipeline.recsys.evaluate import evaluate_baselines, evaluate_model
from pipeline.recsys.model import ModelConfig, SeqRecModel
from pipeline.recsys.score import ScoringInput, score_users
from pipeline.recsys.train import TrainConfig, train_model
from pipeline.registry import decide
from pipeline.report import plot_history

N_ITEMS = 30
ITEM_IDS = [f"item-{j:02d}" for j in range(1, N_ITEMS + 1)]
MODEL_CONFIG = ModelConfig(n_items=N_ITEMS, max_len=10, d_model=16, item_repr="id", dropout=0.1)
MODEL_NAME = "test-recs"


# ---- the rule, without MLflow ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("challenger", "champion", "popular", "promote", "reason"),
    [
        (0.10, None, 0.05, True, "first model"),
        (0.04, None, 0.05, False, "does not beat most-popular"),
        (0.05, None, 0.05, False, "does not beat most-popular"),
        (0.099, 0.10, 0.05, True, ">= champion"),      # within the 1% tolerance
        (0.098, 0.10, 0.05, False, "below champion"),
        (0.20, 0.30, 0.25, False, "does not beat most-popular"),
        (math.nan, None, 0.05, False, "not a finite number"),
        (math.nan, 0.10, 0.05, False, "not a finite number"),
        (0.10, math.nan, 0.05, True, "champion ndcg@10 is nan"),
        (0.10, 0.05, math.nan, False, "cannot compare"),
    ],
)
def test_gate_rule(challenger: float, champion: float | None, popular: float, promote: bool, reason: str
                   ) -> None:
    decision = decide(challenger, champion, popular, tolerance=0.01)
    assert (decision.promote, decision.forced) == (promote, False)
    assert reason in decision.reason


def test_force_promote_overrides_and_says_what_the_gate_would_have_done() -> None:
    decision = decide(0.01, 0.10, 0.05, tolerance=0.01, force=True)
    assert decision.promote and decision.forced
    assert decision.reason.startswith("force_promote") and "would reject" in decision.reason


# ---- a real registry ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Night:
    train: list[np.ndarray]
    valid_inputs: list[np.ndarray]
    valid_targets: np.ndarray
    test_inputs: list[np.ndarray]
    test_targets: np.ndarray


def synthetic_night(n_users: int = 300, length: int = 12, seed: int = 0) -> Night:
    """Sequences whose next item is the successor of the last (90%) or a random item (10%)."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n_users):
        seq = [int(rng.integers(1, N_ITEMS + 1))]
        for _ in range(length - 1):
            seq.append(seq[-1] % N_ITEMS + 1 if rng.random() < 0.9 else int(rng.integers(1, N_ITEMS + 1)))
        seqs.append(np.array(seq, dtype=np.int64))
    return Night([s[:-2] for s in seqs], [s[:-2] for s in seqs], np.array([s[-2] for s in seqs]),
                 [s[:-1] for s in seqs], np.array([s[-1] for s in seqs]))


def evaluator(night: Night) -> Any:
    """The gate's evaluate(bundle): test items of the night, mapped through the bundle's own index."""

    def evaluate(bundle: ModelBundle) -> dict[str, float]:
        index = bundle.index
        inputs = [bundle.encode([ITEM_IDS[i - 1] for i in seq]) for seq in night.test_inputs]
        targets = np.array([index.get(ITEM_IDS[t - 1], 0) for t in night.test_targets], np.int64)
        return evaluate_model(bundle.model, inputs, targets)

    return evaluate


def random_bundle(seed: int) -> ModelBundle:
    torch.manual_seed(seed)
    return ModelBundle(SeqRecModel(MODEL_CONFIG).eval(), list(ITEM_IDS))


def flat_bundle() -> ModelBundle:
    """A model that scores every item the same (all weights zero)."""
    bundle = random_bundle(0)
    with torch.no_grad():
        for p in bundle.model.parameters():
            p.zero_()
    return bundle


def register(settings: Settings, bundle: ModelBundle, folder: Path, night: Night, history: list[dict]
             ) -> tuple[str, str]:
    folder.mkdir(parents=True)
    bundle_dir = bundle.save(folder / "bundle")
    evaluation = {"model": evaluator(night)(bundle),
                  **evaluate_baselines(night.train, night.test_inputs, night.test_targets, N_ITEMS)}
    (folder / "metrics.json").write_text(json.dumps(evaluation))
    artifacts = {"metrics.json": folder / "metrics.json"}
    if plot_history(history, folder / "training_curves.png"):
        artifacts["training_curves.png"] = folder / "training_curves.png"
    params = {f"model.{k}": v for k, v in dataclasses.asdict(bundle.model.config).items()}
    flat = {f"test_{name}_{k}": v for name, m in evaluation.items() for k, v in m.items()}
    return registry.log_training(settings, bundle_dir, params, flat, history, artifacts,
                                 {"data_date": "2026-10-10", "dag_run_id": "test"}, evaluation=evaluation)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("registry-home")
    settings = load_settings(env={"NIGHTLY_RECS_HOME": str(home), "NIGHTLY_RECS_MODEL_NAME": MODEL_NAME})
    night = synthetic_night()
    evaluate = evaluator(night)
    popular = evaluate_baselines(night.train, night.test_inputs, night.test_targets, N_ITEMS)["most_popular"]
    trained_model, _, train_history = train_model(
        MODEL_CONFIG, TrainConfig(max_epochs=8, batch_size=64, patience=8, seed=0, device="cpu"),
        night.train, night.valid_inputs, night.valid_targets)
    bundles = {"1": flat_bundle(), "2": random_bundle(1), "3": ModelBundle(trained_model, list(ITEM_IDS)),
               "4": random_bundle(2)}
    out: dict[str, Any] = {"settings": settings, "bundles": bundles, "gates": {}, "champion_after": {},
                           "runs": {}, "popular": popular, "train_history": train_history}
    for expected, bundle in bundles.items():
        hist = train_history if expected == "3" else []
        run_id, version = register(settings, bundle, home / f"candidate-{expected}", night, hist)
        assert version == expected
        force = version == "2"
        out["gates"][version] = registry.run_gate(settings, version, bundle, evaluate, popular["ndcg@10"],
                                                  force=force, operator="alice" if force else "operator")
        out["champion_after"][version] = registry.champion_version(settings)
        out["runs"][version] = run_id
    return out


def test_first_model_must_beat_most_popular(history: dict) -> None:
    gate = history["gates"]["1"]
    assert not gate.promoted and "does not beat most-popular" in gate.reason
    assert history["champion_after"]["1"] is None
    tags = registry.version_tags(history["settings"], "1")
    assert tags["gate.decision"] == "rejected" and tags["gate.forced"] == "false"


def test_force_promote_is_recorded_in_tags(history: dict) -> None:
    assert history["champion_after"]["2"] == "2"
    tags = registry.version_tags(history["settings"], "2")
    assert tags["gate.decision"] == "promoted"
    assert tags["gate.forced"] == "true" and tags["gate.forced_by"] == "alice"
    assert tags["gate.reason"].startswith("force_promote requested by operator")
    evidence = json.loads(tags["gate.evidence"])
    assert evidence["challenger"] == history["gates"]["2"].challenger_metrics["ndcg@10"]


def test_better_challenger_is_promoted(history: dict) -> None:
    gate = history["gates"]["3"]
    assert gate.promoted and not gate.forced and gate.previous_champion == "2"
    assert gate.champion_metrics is not None  # the champion was re-evaluated on the same split
    assert gate.challenger_metrics["ndcg@10"] > 2 * max(gate.champion_metrics["ndcg@10"], gate.popular_ndcg)
    assert history["champion_after"]["3"] == "3"
    assert registry.version_tags(history["settings"], "3")["gate.decision"] == "promoted"


def test_broken_challenger_is_never_promoted_and_champion_keeps_serving(history: dict) -> None:
    settings, gate = history["settings"], history["gates"]["4"]
    assert not gate.promoted and not gate.forced
    assert gate.challenger_metrics["ndcg@10"] < 0.5 * gate.champion_metrics["ndcg@10"]
    assert history["champion_after"]["4"] == "3"
    tags = registry.version_tags(settings, "4")
    assert tags["gate.decision"] == "rejected" and tags["gate.forced"] == "false"
    bundle, version = registry.load_bundle(settings, registry.CHAMPION)
    assert version == "3"
    for name, tensor in history["bundles"]["3"].model.state_dict().items():
        assert torch.equal(bundle.model.state_dict()[name], tensor), name


def scoring_input(night: Night) -> ScoringInput:
    histories = [[ITEM_IDS[i - 1] for i in seq] for seq in night.test_inputs]
    return ScoringInput([f"user-{n}" for n in range(len(histories))] + ["newcomer"], histories + [[]],
                        histories + [[]], set(ITEM_IDS), [(i, 1.0) for i in ITEM_IDS])


def test_model_from_registry_gives_the_same_top_n_as_the_trained_one(history: dict) -> None:
    data = scoring_input(synthetic_night())
    loaded, _ = registry.load_bundle(history["settings"], "champion")
    in_memory = score_users(history["bundles"]["3"], data, k=10, device="cpu")
    from_registry = score_users(loaded, data, k=10, device="cpu")
    assert from_registry.equals(in_memory)  # ids and scores, bit for bit
    assert from_registry.num_rows == len(data.user_ids) * 10


def test_pyfunc_from_registry_recommends_like_the_model(history: dict) -> None:
    import mlflow

    night = synthetic_night()
    histories = [[ITEM_IDS[i - 1] for i in seq] for seq in night.test_inputs[:5]] + [["unknown"]]
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    predicted = model.predict(histories)
    bundle = history["bundles"]["3"]
    for items, got in zip(histories[:5], predicted[:5], strict=True):
        seq = torch.from_numpy(bundle.encode(items)[-MODEL_CONFIG.max_len :])[None]  # (1, L)
        ids, _ = bundle.model.recommend(seq, 10)
        assert got == [ITEM_IDS[i - 1] for i in ids[0].tolist()]
    assert predicted[5] == []


def test_run_has_params_metrics_per_epoch_and_artifacts(history: dict) -> None:
    from mlflow import MlflowClient

    settings = history["settings"]
    client = MlflowClient(tracking_uri=settings.paths.mlflow_uri, registry_uri=settings.paths.mlflow_uri)
    experiment = client.get_experiment_by_name(registry.EXPERIMENT)
    assert experiment.artifact_location == (settings.home / "mlflow" / "artifacts").resolve().as_uri()
    run = client.get_run(history["runs"]["3"])
    assert run.data.params["model.d_model"] == "16" and run.data.params["model.item_repr"] == "id"
    assert "test_model_ndcg_at_10" in run.data.metrics and "test_most_popular_ndcg_at_10" in run.data.metrics
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == [int(h["epoch"]) for h in history["train_history"]]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    names |= {a.path for a in client.list_artifacts(run.info.run_id, "model_files")}
    assert {"metrics.json", "training_curves.png", "evaluation.json", "evaluation.csv",
            "model_files/config.json", "model_files/item_ids.json"} <= names
    version = client.get_model_version(MODEL_NAME, "3")
    assert version.tags["run_id"] == run.info.run_id and version.tags["data_date"] == "2026-10-10"
    assert str(client.get_model_version_by_alias(MODEL_NAME, registry.CHALLENGER).version) == "4"


def test_model_name_must_be_a_plain_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model_name"):  # refused when the settings load, before MLflow
        load_settings(env={"NIGHTLY_RECS_HOME": str(tmp_path), "NIGHTLY_RECS_MODEL_NAME": "bad' name"})
