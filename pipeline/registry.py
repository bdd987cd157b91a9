"""The only module that talks to MLflow: tracking runs, the model registry and the champion gate.

Models are logged as an MLflow pyfunc whose artifact is a ModelBundle folder (state_dict + config + item ids),
deliberately: it reloads as our own class with bit-identical scores, needs no torch.export tracing, and
`mlflow.pyfunc.load_model("models:/<name>@champion").predict(...)` still works for other consumers.
Aliases: every new version gets `challenger`; the gate moves `champion`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.pyfunc import PythonModel

from pipeline.bundle import ModelBundle
from pipeline.config import Settings

log = logging.getLogger(__name__)

EXPERIMENT = "nightly-recs"
CHAMPION = "champion"
CHALLENGER = "challenger"


class BundlePyfunc(PythonModel):
    """pyfunc wrapper: predict({"items": [[item_id, ...], ...], "k": 10}) -> top-k item ids per history."""

    def load_context(self, context: Any) -> None:
        self.bundle = ModelBundle.load(Path(context.artifacts["bundle"]))

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> list[list[str]]:
        import torch

        k = int((params or {}).get("k", 10))
        histories = model_input["items"] if isinstance(model_input, dict) else list(model_input["items"])
        out = []
        for items in histories:
            seq = torch.as_tensor(self.bundle.encode(list(items)))[None, :]
            if seq.shape[1] == 0:
                out.append([])
                continue
            ids, _ = self.bundle.model.recommend(seq, k)
            out.append([self.bundle.item_ids[i - 1] for i in ids[0].tolist()])
        return out


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    forced: bool = False


def _client(settings: Settings) -> MlflowClient:
    Path(settings.home / "mlflow").mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_registry_uri(settings.mlflow_uri)
    return MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)


def experiment_id(settings: Settings) -> str:
    client = _client(settings)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        return exp.experiment_id
    artifacts = (settings.home / "mlflow" / "artifacts").resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    return client.create_experiment(EXPERIMENT, artifact_location=artifacts.as_uri())


def decide(
    challenger_ndcg: float,
    champion_ndcg: float | None,
    popular_ndcg: float,
    tolerance: float,
    force: bool = False,
) -> GateDecision:
    """The promotion rule: beat most-popular, and be no worse than the champion beyond the tolerance."""
    if force:
        return GateDecision(True, "force_promote requested by operator", forced=True)
    if challenger_ndcg <= popular_ndcg:
        return GateDecision(
            False, f"challenger ndcg@10 {challenger_ndcg:.4f} does not beat most-popular {popular_ndcg:.4f}"
        )
    if champion_ndcg is None:
        return GateDecision(True, f"first model; ndcg@10 {challenger_ndcg:.4f} beats most-popular {popular_ndcg:.4f}")
    floor = champion_ndcg * (1 - tolerance)
    if challenger_ndcg < floor:
        return GateDecision(
            False,
            f"challenger ndcg@10 {challenger_ndcg:.4f} below champion {champion_ndcg:.4f} x (1 - {tolerance})",
        )
    return GateDecision(
        True, f"challenger ndcg@10 {challenger_ndcg:.4f} >= champion {champion_ndcg:.4f} x (1 - {tolerance})"
    )


def log_training(
    settings: Settings,
    bundle_dir: Path,
    params: dict[str, Any],
    metrics: dict[str, float],
    history: list[dict[str, float]],
    artifacts: dict[str, Path],
    tags: dict[str, str],
) -> tuple[str, str]:
    """One MLflow run for one training: params, per-epoch and final metrics, artifacts, the model.

    Registers the model as a new version with alias `challenger`; returns (run_id, version).
    """
    client = _client(settings)
    exp_id = experiment_id(settings)
    with mlflow.start_run(experiment_id=exp_id, run_name=tags.get("data_date")) as run:
        mlflow.set_tags(tags)
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        for step, epoch in enumerate(history, start=1):
            mlflow.log_metrics(_metric_dict(epoch), step=step)
        mlflow.log_metrics(_metric_dict(metrics))
        for path in artifacts.values():
            mlflow.log_artifact(str(path))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=BundlePyfunc(),
            artifacts={"bundle": str(bundle_dir)},
            pip_requirements=["nightly-recs", "torch", "numpy"],
        )
        run_id = run.info.run_id
    version = mlflow.register_model(info.model_uri, settings.model_name).version
    client.set_registered_model_alias(settings.model_name, CHALLENGER, version)
    for key, value in tags.items():
        client.set_model_version_tag(settings.model_name, version, key, value)
    log.info("registered %s version %s (run %s) as %s", settings.model_name, version, run_id, CHALLENGER)
    return run_id, str(version)


def _metric_dict(values: dict[str, Any]) -> dict[str, float]:
    """Numeric entries with MLflow-safe names ("ndcg@10" -> "ndcg_at_10")."""
    return {k.replace("@", "_at_"): float(v) for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def champion_version(settings: Settings) -> str | None:
    client = _client(settings)
    try:
        return str(client.get_model_version_by_alias(settings.model_name, CHAMPION).version)
    except mlflow.exceptions.MlflowException:
        return None


def load_bundle(settings: Settings, version_or_alias: str = CHAMPION) -> tuple[ModelBundle, str]:
    """Download a registered model and rebuild it; returns (bundle, version)."""
    client = _client(settings)
    if version_or_alias.isdigit():
        version = version_or_alias
    else:
        version = str(client.get_model_version_by_alias(settings.model_name, version_or_alias).version)
    with tempfile.TemporaryDirectory(dir=settings.home) as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{settings.model_name}/{version}", dst_path=tmp
        )
        config = next(Path(local).rglob("config.json"))
        bundle = ModelBundle.load(config.parent)
    return bundle, version


def apply_gate(settings: Settings, version: str, decision: GateDecision, evidence: dict[str, Any]) -> None:
    """Record the decision on the version as tags, and move `champion` if it passed."""
    client = _client(settings)
    name = settings.model_name
    client.set_model_version_tag(name, version, "gate.decision", "promoted" if decision.promote else "rejected")
    client.set_model_version_tag(name, version, "gate.reason", decision.reason)
    client.set_model_version_tag(name, version, "gate.forced", str(decision.forced).lower())
    client.set_model_version_tag(name, version, "gate.evidence", json.dumps(evidence, sort_keys=True)[:4000])
    if decision.forced:
        client.set_model_version_tag(name, version, "gate.forced_by", os.environ.get("USER", "operator"))
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    log.info("gate for %s v%s: %s (%s)", name, version, "promote" if decision.promote else "reject", decision.reason)


def version_tags(settings: Settings, version: str) -> dict[str, str]:
    return dict(_client(settings).get_model_version(settings.model_name, version).tags)


def log_report(settings: Settings, run_id: str, report: Path) -> None:
    """Attach the nightly report to the training run."""
    _client(settings).log_artifact(run_id, str(report))


def versions_for_date(settings: Settings, data_date: str) -> list[str]:
    """Versions registered for a data date (from their `data_date` tag), oldest first."""
    client = _client(settings)
    try:
        versions = client.search_model_versions(filter_string=f"name = '{settings.model_name}'")
    except mlflow.exceptions.MlflowException:
        return []
    found = [v.version for v in versions if v.tags.get("data_date") == data_date]
    return sorted((str(v) for v in found), key=int)
