"""Registering a night's candidate and gating it: MLflow's side of `stages.stage_register`.

The candidate folder (recsys.candidate) is logged as a new model version (`challenger`), re-evaluated with the
champion on the night's gate split, health-checked through the serving path, and promoted only if it wins
(pipeline.gate holds the rules; pipeline.registry the MLflow calls).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from pathlib import Path
from typing import Any

from pipeline import storage
from pipeline.catalog import Catalog
from pipeline.config import Settings

log = logging.getLogger(__name__)


def register_candidate(settings: Settings, data_date: dt.date, folder: Path, candidate_dir: str, force_promote: bool,
              dag_run_id: str, operator: str, train_run_id: str) -> dict[str, Any]:
    """stages.stage_register on a local copy of the candidate folder (gate.json is written into it)."""
    from pipeline import registry, tracking, tuning

    metrics = json.loads((folder / "metrics.json").read_text())
    name = storage.name_of(candidate_dir)
    tags = {"data_date": data_date.isoformat(), "dag_run_id": dag_run_id, "candidate": name}
    window = json.loads((folder / "train.json").read_text())
    split = {"gate_split": window.get("gate_split", "leave_one_out"), "train_until": window.get("train_until")}
    earlier = registry.versions_for_date(settings, tags["data_date"], dag_run_id, name)
    if earlier:
        version = earlier[-1]
        run_id = registry.version_tags(settings, version).get("run_id", "")
        log.info("register retried: reusing version %s registered for %s by this run", version, data_date)
    else:
        train_info = json.loads((folder / "train.json").read_text())
        artifacts = {name: folder / name for name in ("metrics.json", "train.json", "training_curves.png")
                     if (folder / name).is_file()}
        run_id, version = registry.log_training(
            settings, folder / "bundle", registry.run_params(train_info, data_date),
            registry.run_metrics(metrics, train_info), train_info["history"], artifacts,
            {**tags, **{k: str(v or "") for k, v in split.items()}}, evaluation=metrics,
            run_id=train_run_id or None)
    gate = registry.recorded_gate(settings, version) or gate_candidate(
        settings, data_date, version, folder, metrics, force_promote, operator or dag_run_id or "cli")
    if run_id:
        tracking.log_gate(settings, run_id, gate)
        tuning.record_gate(settings, run_id, version, gate.promoted, data_date)
    record = {**gate.to_dict(), "champion_version": gate.previous_champion, **split}
    (folder / "gate.json").write_text(json.dumps(record, indent=2))
    return {"run_id": run_id, "version": version, "promoted": gate.promoted, "reason": gate.reason,
            "forced": gate.forced, "previous_champion": gate.previous_champion,
            "candidate_dir": candidate_dir}


def gate_candidate(settings: Settings, data_date: dt.date, version: str, folder: Path, metrics: dict[str, Any],
          force: bool, operator: str) -> Any:
    """registry.run_gate with the night's gate split (the candidate's metrics are on it: recsys.candidate), its
    baselines, the leakage guard (temporal split) and a health check on a sample of the night's users through
    the serving path; without the champion when it saw a user erased since."""
    from pipeline import registry
    from pipeline.erasure.lineage import champion_saw_erased
    from pipeline.gate import health_problem, leakage_problem, sample_users
    from pipeline.recsys.bundle import ModelBundle
    from pipeline.recsys.data import TEMPORAL, load_night
    from pipeline.recsys.evaluate import evaluate_bundle
    from pipeline.recsys.score import scoring_input

    catalog = Catalog.of(settings)
    night = load_night(catalog, data_date, settings.training.eval_max_users)
    split = night.eval_split(night.gate_split())
    sample = sample_users(scoring_input(catalog, data_date), settings.serving.gate_sample_users)
    baselines = {name: float(metrics.get(name, {}).get("ndcg@10", math.nan))  # missing: never beaten
                 for name in settings.serving.gate_baselines}

    def problem(bundle: ModelBundle) -> str | None:
        leak = leakage_problem(bundle, data_date) if split.name == TEMPORAL else None
        return leak or health_problem(bundle, sample, settings.serving.top_n, settings.model.device)

    return registry.run_gate(
        settings, version, ModelBundle.load(folder / "bundle"),
        lambda bundle: evaluate_bundle(bundle, split, night.item_ids), baselines, force=force, operator=operator,
        health=problem,
        champion_saw_erased=champion_saw_erased(settings, version),
    )
