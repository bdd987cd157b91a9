"""MLflow: tracking runs, the model registry and the champion gate (pipeline.tracking opens the live run).

Tracking: one experiment (`nightly-recs`) whose artifact location is set explicitly under the state
folder; each training is one run with the full config as params, per-epoch and final metrics, and artifacts
(the model's config and item-id mapping, the training curves, the evaluation table, the nightly report).

The model is logged as an MLflow pyfunc whose artifact is a ModelBundle folder (state_dict + config + item
ids), deliberately, rather than with the PyTorch flavour: the bundle reloads as our own SeqRecModel with
bit-identical weights (so scores are equal to the last bit), needs no torch.export tracing, and keeps the
scoring code (masking, chunking) in one place. The pyfunc is "models from code" (a three-line script stored
with the model, no pickled object) and ships the `pipeline` package as its code, so
`mlflow.pyfunc.load_model("models:/<name>@champion").predict([[item_id, ...], ...])` also works outside the
pipeline.

Aliases: every new version gets `challenger`; the gate moves `champion`. The gate's decision, its reasons and
the evidence are tags of the version (`gate.decision`, `gate.reason`, `gate.forced`, `gate.evidence`, ...).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline.catalog import Catalog
from pipeline.config import Settings
from pipeline.gate import GATE_METRIC, GateDecision, decide, strongest_baseline
from pipeline.guardrails import apply_guardrails
from pipeline.recsys.bundle import ModelBundle
from pipeline.recsys.pyfunc import BUNDLE_ARTIFACT, BundlePyfunc  # noqa: F401 - the script of models logged before

log = logging.getLogger(__name__)

EXPERIMENT = "nightly-recs"
CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_REQUIREMENTS = ("mlflow", "torch", "numpy", "pyarrow", "pydantic")  # what the pyfunc's imports need
PYFUNC_SCRIPT = (
    "import mlflow\n"
    "from pipeline.recsys.pyfunc import BundlePyfunc\n"
    "mlflow.models.set_model(BundlePyfunc())\n"
)


def _client(settings: Settings) -> MlflowClient:
    catalog = Catalog.of(settings)
    if catalog.mlflow_is_local:
        catalog.mlflow_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(catalog.mlflow_uri)
    mlflow.set_registry_uri(catalog.mlflow_uri)
    return MlflowClient(tracking_uri=catalog.mlflow_uri, registry_uri=catalog.mlflow_uri)


def experiment_id(settings: Settings) -> str:
    """The pipeline's experiment, created on first use with its artifacts at the catalog's artifact location
    (<home>/mlflow/artifacts for a local backend, `mlflow_artifacts_uri` when set, else the tracking server's
    default, e.g. artifacts it proxies to object storage). It becomes the process's active experiment: a run
    continued by id must belong to the active one, and a process may have used another tracking store before."""
    client = _client(settings)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        location = Catalog.of(settings).mlflow_artifact_location
        if isinstance(location, Path):
            location.mkdir(parents=True, exist_ok=True)
            location = location.resolve().as_uri()
        found = client.create_experiment(EXPERIMENT, artifact_location=location)
    else:
        found = exp.experiment_id
    mlflow.set_experiment(experiment_id=found)
    return found


# ---- tracking ----------------------------------------------------------------------------------------------


def run_params(train_info: dict[str, Any], data_date: Any) -> dict[str, Any]:
    """MLflow params of a training: the model and training configs, flattened with prefixes."""
    return {**{f"model.{k}": v for k, v in train_info["model_config"].items()},
            **{f"train.{k}": v for k, v in train_info["train_config"].items()},
            "data_date": str(data_date), "n_users": train_info["n_users"]}


def run_metrics(evaluation: dict[str, dict[str, float]], train_info: dict[str, Any]) -> dict[str, float]:
    """MLflow metrics of a training: test_<model or baseline>_<metric> and train_<metric>."""
    flat = {f"test_{name}_{k}": v for name, m in evaluation.items() for k, v in m.items()}
    flat.update({f"train_{k}": v for k, v in train_info["train_metrics"].items()})
    return flat


def log_training(
    settings: Settings,
    bundle_dir: Path,
    params: dict[str, Any],
    metrics: dict[str, float],
    history: list[dict[str, float]],
    artifacts: dict[str, Path],
    tags: dict[str, str],
    evaluation: dict[str, dict[str, float]] | None = None,
    run_id: str | None = None,
) -> tuple[str, str]:
    """One MLflow run for one training: params, per-epoch and final metrics, artifacts, the model.

    `evaluation` ({model or baseline: {metric: value}}) is logged as a table. Registers the model as a new
    version of settings.serving.model_name with alias `challenger`; returns (run_id, version). With `run_id`
    (the run pipeline.tracking opened for the training), that run is continued: its per-epoch metrics are
    already there and params it has are kept.
    """
    client = _client(settings)
    exp_id = experiment_id(settings)
    with mlflow.start_run(run_id=run_id, experiment_id=exp_id, run_name=None if run_id else tags.get("data_date")
                          ) as run:
        mlflow.set_tags(tags)
        logged = client.get_run(run.info.run_id).data.params if run_id else {}
        mlflow.log_params({k: str(v)[:6000] for k, v in params.items() if k not in logged})
        for epoch in [] if run_id else history:
            step = int(epoch.get("epoch", 0))
            mlflow.log_metrics(metric_dict({k: v for k, v in epoch.items() if k != "epoch"}), step=step)
        mlflow.log_metrics(metric_dict(metrics))
        for path in artifacts.values():
            mlflow.log_artifact(str(path))
        for name in ("config.json", "item_ids.json"):  # browsable in the UI without opening the model
            mlflow.log_artifact(str(bundle_dir / name), artifact_path="model_files")
        if evaluation:
            _log_evaluation(evaluation)
        info = _log_model(settings, bundle_dir)
        run_id = run.info.run_id
    # tags travel with the registration, so a retry finds this version by them (stages.stage_register)
    version = str(mlflow.register_model(info.model_uri, settings.serving.model_name,
                                        tags={**tags, "run_id": run_id}).version)
    client.set_registered_model_alias(settings.serving.model_name, CHALLENGER, version)
    for key, value in {**tags, "run_id": run_id}.items():
        client.set_model_version_tag(settings.serving.model_name, version, key, value)
    log.info("registered %s version %s (run %s) as %s", settings.serving.model_name, version, run_id, CHALLENGER)
    return run_id, version


def _log_model(settings: Settings, bundle_dir: Path) -> Any:
    """The pyfunc ships the `pipeline` package itself (code_paths; nightly-recs is not a published package)
    and pins the libraries it imports, so an environment rebuilt from the model's requirements loads it."""
    from importlib.metadata import version

    example = [json.loads((bundle_dir / "item_ids.json").read_text())[:3]]
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "bundle_pyfunc.py"
        script.write_text(PYFUNC_SCRIPT)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(script),
            artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
            model_config={"top_k": settings.serving.top_n},
            code_paths=[str(Path(__file__).resolve().parent)],
            pip_requirements=[f"{p}=={version(p).split('+')[0]}" for p in MODEL_REQUIREMENTS],  # 2.x+cpu -> 2.x
            input_example=example,
        )


def _log_evaluation(evaluation: dict[str, dict[str, float]]) -> None:
    """The evaluation table (one row per model or baseline) as evaluation.json (MLflow table) and .csv."""
    metric_names = sorted({m for row in evaluation.values() for m in row})
    columns: dict[str, list[Any]] = {"model": list(evaluation)}
    for name in metric_names:
        columns[name] = [evaluation[model].get(name) for model in evaluation]
    mlflow.log_table(data=columns, artifact_file="evaluation.json")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "evaluation.csv"
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            writer.writerows(zip(*columns.values(), strict=True))
        mlflow.log_artifact(str(path))


def metric_dict(values: dict[str, Any]) -> dict[str, float]:
    """Numeric entries with MLflow-safe names ("ndcg@10" -> "ndcg_at_10")."""
    return {k.replace("@", "_at_"): float(v) for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def log_report(settings: Settings, run_id: str, files: list[Path]) -> None:
    """Attach the nightly report's files (Markdown, JSON, HTML) to the training run, under report/."""
    client = _client(settings)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path="report")


# ---- registry ----------------------------------------------------------------------------------------------


def champion_version(settings: Settings) -> str | None:
    client = _client(settings)
    try:
        return str(client.get_model_version_by_alias(settings.serving.model_name, CHAMPION).version)
    except MlflowException:
        return None


def resolve_version(settings: Settings, version_or_alias: str) -> str:
    """'3' -> '3'; 'champion' -> the version the alias points to (MlflowException if none)."""
    if version_or_alias.isdigit():
        return version_or_alias
    client = _client(settings)
    return str(client.get_model_version_by_alias(settings.serving.model_name, version_or_alias).version)


def load_bundle(settings: Settings, version_or_alias: str = CHAMPION) -> tuple[ModelBundle, str]:
    """Download `models:/<name>/<version>` (or `@alias`) and rebuild the bundle; returns (bundle, version)."""
    from mlflow.models import Model

    _client(settings)
    version = resolve_version(settings, version_or_alias)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{settings.serving.model_name}/{version}", dst_path=tmp
        ))
        flavor = Model.load(local).flavors["python_function"]
        bundle = ModelBundle.load(local / flavor["artifacts"][BUNDLE_ARTIFACT]["path"])
    log.info("loaded %s version %s from the registry", settings.serving.model_name, version)
    return bundle, version


def apply_gate(
    settings: Settings,
    version: str,
    decision: GateDecision,
    evidence: dict[str, Any],
    operator: str = "operator",
) -> None:
    """Record the decision on the version as tags, and move `champion` if it passed."""
    client = _client(settings)
    name = settings.serving.model_name
    tags = {
        "gate.decision": "promoted" if decision.promote else "rejected",
        "gate.reason": decision.reason,
        "gate.forced": str(decision.forced).lower(),
        "gate.evidence": json.dumps(evidence, sort_keys=True, default=str)[:5000],
    }
    if decision.forced:
        tags["gate.forced_by"] = operator
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    log.info("gate for %s v%s: %s (%s)", name, version, tags["gate.decision"], decision.reason)


@dataclass(frozen=True)
class GateResult:
    version: str
    promoted: bool
    reason: str
    forced: bool
    previous_champion: str | None
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    popular_ndcg: float
    baselines: dict[str, float] = field(default_factory=dict)
    health: str | None = None  # why the challenger failed the health check (None: healthy)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Health = Callable[[ModelBundle], str | None]  # why a model must not serve, or None (gate.health_problem)


def run_gate(
    settings: Settings,
    version: str,
    challenger: ModelBundle,
    evaluate: Callable[[ModelBundle], dict[str, float]],
    baselines: Mapping[str, float] | float,
    force: bool = False,
    operator: str = "operator",
    health: Health | None = None,
    champion_saw_erased: bool = False,
) -> GateResult:
    """Champion/challenger gate for a registered version: check the challenger's health (no metric is
    computed for a model that fails it, and force cannot promote it), evaluate the challenger and the current
    champion (loaded from the registry) with the same `evaluate` (the same night's split), decide against the
    strongest baseline (`baselines`: {name: ndcg@10}; a float is most-popular alone), record, promote.
    A champion that saw an erased user (pipeline.erasure.lineage) is not compared: beating the baselines is enough."""
    baselines = dict(baselines) if isinstance(baselines, Mapping) else {"most_popular": float(baselines)}
    popular = baselines.get("most_popular", strongest_baseline(baselines)[1])
    previous = champion_version(settings)
    problem = health(challenger) if health else None
    if problem:
        decision = GateDecision(False, f"challenger fails the health check: {problem}")
        evidence = {"metric": GATE_METRIC, "health": problem, "champion_version": previous, **baselines}
        apply_gate(settings, version, decision, evidence, operator)
        return GateResult(version, False, decision.reason, False, previous, {}, None, popular, baselines, problem)
    champion_metrics, champion_note = None, ""
    if previous is not None and previous != version and champion_saw_erased:
        champion_note = f"champion v{previous} saw an erased user, so only the baselines count; "
    elif previous is not None and previous != version:
        champion = load_bundle(settings, previous)[0]
        champion_problem = health(champion) if health else None
        if champion_problem:  # a broken champion must not win the re-evaluation
            champion_metrics, champion_note = {GATE_METRIC: math.nan}, f"champion v{previous} {champion_problem}; "
        else:
            champion_metrics = evaluate(champion)
    challenger_metrics = evaluate(challenger)
    decision = decide(challenger_metrics[GATE_METRIC],
                      None if champion_metrics is None else champion_metrics[GATE_METRIC],
                      baselines, settings.serving.gate_tolerance, force=force)
    decision = GateDecision(decision.promote, champion_note + decision.reason, decision.forced)
    decision = apply_guardrails(decision, challenger_metrics, champion_metrics,
                                settings.serving.gate_max_coverage_loss)
    evidence = {
        "metric": GATE_METRIC,
        "challenger": challenger_metrics[GATE_METRIC],
        "champion_version": previous,
        "champion": None if champion_metrics is None else champion_metrics[GATE_METRIC],
        **baselines,
        "strongest_baseline": strongest_baseline(baselines)[0],
        "tolerance": settings.serving.gate_tolerance,
    }
    apply_gate(settings, version, decision, evidence, operator)
    return GateResult(version, decision.promote, decision.reason, decision.forced, previous,
                      challenger_metrics, champion_metrics, popular, baselines)


def version_tags(settings: Settings, version: str) -> dict[str, str]:
    return dict(_client(settings).get_model_version(settings.serving.model_name, version).tags)


def version_run_tags(settings: Settings, version: str) -> dict[str, str]:
    """The tags of the run that logged a version (its training run's lineage); empty without a run."""
    client = _client(settings)
    run_id = client.get_model_version(settings.serving.model_name, version).run_id
    return dict(client.get_run(run_id).data.tags) if run_id else {}


def versions_for_date(settings: Settings, data_date: str, dag_run_id: str = "", candidate: str = "") -> list[str]:
    """Versions registered for a data date (their `data_date` tag), oldest first; only those of one Airflow run
    when dag_run_id is given (a rerun of a date must not count an earlier run's model as tonight's), and of one
    candidate folder when `candidate` is given (its name: the `candidate` tag)."""
    client = _client(settings)
    try:
        versions = client.search_model_versions(filter_string=f"name = '{settings.serving.model_name}'")
    except MlflowException:
        return []
    wanted = {"data_date": data_date, "dag_run_id": dag_run_id, "candidate": candidate}
    found = [v.version for v in versions
             if all(v.tags.get(key) == value for key, value in wanted.items() if value or key == "data_date")]
    return sorted((str(v) for v in found), key=int)


def gated_versions(settings: Settings, data_date: str, dag_run_id: str = "") -> list[str]:
    """Tonight's versions (as versions_for_date) on which the gate recorded a decision, oldest first."""
    return [v for v in versions_for_date(settings, data_date, dag_run_id)
            if "gate.decision" in version_tags(settings, v)]


def recorded_gate(settings: Settings, version: str) -> GateResult | None:
    """The gate result recorded on a version's tags, or None when no gate ran for it (a retried `register`
    returns this instead of gating again)."""
    tags = version_tags(settings, version)
    if "gate.decision" not in tags:
        return None
    evidence = json.loads(tags.get("gate.evidence") or "{}")
    baselines = {k: float(evidence[k]) for k in ("most_popular", "recent_popular", "item_transition")
                 if isinstance(evidence.get(k), int | float)}
    champion = evidence.get("champion")
    return GateResult(version, tags["gate.decision"] == "promoted", tags.get("gate.reason", ""),
                      tags.get("gate.forced") == "true", evidence.get("champion_version"),
                      {} if evidence.get("challenger") is None else {GATE_METRIC: evidence["challenger"]},
                      None if champion is None else {GATE_METRIC: champion},
                      baselines.get("most_popular", math.nan), baselines, evidence.get("health"))


def rollback(settings: Settings, to_version: str, operator: str, reason: str) -> str | None:
    """Point `champion` at an earlier version, audited like a forced promotion (rollback.* tags on the version:
    who, when, why, from which version); returns the previous champion."""
    import datetime as dt

    client = _client(settings)
    name = settings.serving.model_name
    if not to_version.isdigit():
        raise ValueError(f"rollback needs a version number, got {to_version!r}")
    client.get_model_version(name, to_version)  # MlflowException naming the version when it does not exist
    previous = champion_version(settings)
    tags = {"rollback.by": operator, "rollback.at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "rollback.reason": reason, "rollback.from_version": str(previous)}
    for key, value in tags.items():
        client.set_model_version_tag(name, to_version, key, value)
    client.set_registered_model_alias(name, CHAMPION, to_version)
    log.warning("ROLLBACK by %s: %s champion %s -> %s (%s)", operator, name, previous, to_version, reason)
    return previous
