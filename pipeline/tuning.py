"""Tuning within a budget, stored in MLflow, and the rule by which a tuned configuration reaches a night.

`tune_night` runs the search of pipeline.recsys.tune on a night's data and stores it in the pipeline's MLflow
experiment as one parent run (tag `nightly_recs.kind=tune`, named `tune <data date>`):
- params: the best configuration under the training runs' names (`model.d_model`, `train.lr`, ...) and the
  study's budget and method (`tune.*`); metric `best_valid_ndcg_at_10` and the trial counts;
- artifacts: `tuned_config.json` (the overrides, their value, the full configs they make), `trials.csv` and
  `trials.json` (the study's trials table, with each trial's per-epoch values) and `study.journal` (the Optuna
  study itself: `optuna.load_study(study_name=..., storage=JournalStorage(JournalFileBackend(path)))`);
- one nested run per trial (tag `mlflow.parentRunId`): its params, value, per-epoch validation metric and its
  Optuna state (tag `optuna.state`: COMPLETE, PRUNED or FAIL);
- tags `tune.status` (`pending` once a best configuration exists, `no_complete_trial` otherwise) and
  `tune.config` (the best overrides as JSON).

Adoption: a tuned configuration reaches serving only through the gate. The rule, applied by `config_for_night`
when the night's training starts (stages.stage_train) and by `record_gate` when the gate decides
(stages.stage_register):
1. Only the newest finished tune run counts. While its `tune.status` is `pending`, every night trains its
   candidate with its configuration, from scratch (the champion's weights may not fit its shapes, and the study
   measured it from scratch), and tags the training run `tune.run_id=<tune run>`, `tune.adoption=candidate`.
2. When the gate decides on such a candidate, the tune run's status becomes `promoted` or `rejected` (with
   `tune.gated_version`, `tune.gated_date`): it is not tried again. A night whose training or registration
   fails before the gate leaves it `pending`, so the next night tries it again.
3. Otherwise a night trains with the champion's configuration: the overrides the champion's training run
   carries (`tune.config`, tagged again `tune.adoption=champion`) when the champion was trained with a tuned
   configuration, else the settings. So a promoted configuration stays (the champion has it) and a rejected one
   is dropped: the night after it trains as before.
The settings still decide everything the search does not cover (epochs, time budget, item representation, ...).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import optuna
from mlflow.entities import Metric, Param, RunTag

from pipeline import registry
from pipeline.catalog import Catalog
from pipeline.config import Settings
from pipeline.recsys.model import ModelConfig
from pipeline.recsys.train import TrainConfig

log = logging.getLogger(__name__)

KIND_TAG, TUNE_KIND, TRIAL_KIND = "nightly_recs.kind", "tune", "tune_trial"
STATUS_TAG, PENDING, NO_COMPLETE_TRIAL, PROMOTED, REJECTED = (
    "tune.status", "pending", "no_complete_trial", "promoted", "rejected")
CONFIG_TAG, RUN_TAG, ADOPTION_TAG = "tune.config", "tune.run_id", "tune.adoption"
CANDIDATE, CHAMPION = "candidate", "champion"  # values of ADOPTION_TAG on a training run


@dataclass(frozen=True)
class TunedConfig:
    """A tuned configuration a night trains with (see the module's rule)."""

    run_id: str                 # the tune run that found it
    overrides: dict[str, Any]   # {"model.<field>" | "train.<field>": value} (recsys.tune.apply_overrides)
    adoption: str               # CANDIDATE: on trial through tonight's gate; CHAMPION: the champion's own

    @property
    def is_candidate(self) -> bool:
        return self.adoption == CANDIDATE

    def apply(self, model_config: ModelConfig, train_config: TrainConfig) -> tuple[ModelConfig, TrainConfig]:
        from pipeline.recsys.tune import apply_overrides

        return apply_overrides(model_config, train_config, self.overrides)

    def tags(self) -> dict[str, str]:
        """Tags of the training run that uses it."""
        return {RUN_TAG: self.run_id, ADOPTION_TAG: self.adoption, CONFIG_TAG: json.dumps(self.overrides)}


def night_configs(tuned: TunedConfig | None, model_config: ModelConfig, train_config: TrainConfig
                  ) -> tuple[ModelConfig, TrainConfig]:
    """The configs a night trains with: the settings' (the arguments) unless a tuned configuration applies."""
    return tuned.apply(model_config, train_config) if tuned else (model_config, train_config)


def latest_tune_run(settings: Settings) -> Any | None:
    """The newest finished tune run of the pipeline's experiment (an MLflow Run), or None."""
    experiment = registry.experiment_id(settings)
    runs = mlflow.MlflowClient().search_runs(
        [experiment], filter_string=f"tags.`{KIND_TAG}` = '{TUNE_KIND}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def config_for_night(settings: Settings) -> TunedConfig | None:
    """Tonight's tuned configuration by the module's rule: the newest tune run's while it is pending (on trial
    through the gate), else the champion's when it was trained with one, else None (the settings)."""
    latest = latest_tune_run(settings)
    if latest is not None and latest.data.tags.get(STATUS_TAG) == PENDING:
        log.info("tonight's candidate trains with the configuration of tune run %s (pending the gate)",
                 latest.info.run_id)
        return TunedConfig(latest.info.run_id, json.loads(latest.data.tags[CONFIG_TAG]), CANDIDATE)
    champion = registry.champion_version(settings)
    tags = registry.version_run_tags(settings, champion) if champion else {}
    if tags.get(RUN_TAG) and tags.get(CONFIG_TAG):
        return TunedConfig(tags[RUN_TAG], json.loads(tags[CONFIG_TAG]), CHAMPION)
    return None


def record_gate(settings: Settings, train_run_id: str, version: str, promoted: bool, data_date: dt.date) -> None:
    """After the gate decided on a version: when its training tried a pending tuned configuration, mark that
    tune run `promoted` or `rejected`, so later nights do not try it again (idempotent)."""
    registry.experiment_id(settings)  # points the client at the pipeline's tracking store
    client = mlflow.MlflowClient()
    tags = client.get_run(train_run_id).data.tags
    if tags.get(ADOPTION_TAG) != CANDIDATE or not tags.get(RUN_TAG):
        return
    tune_run = tags[RUN_TAG]
    if client.get_run(tune_run).data.tags.get(STATUS_TAG) != PENDING:
        return
    decision = {STATUS_TAG: PROMOTED if promoted else REJECTED, "tune.gated_version": version,
                "tune.gated_date": data_date.isoformat(), "tune.gated_run_id": train_run_id}
    client.log_batch(tune_run, tags=[RunTag(k, v) for k, v in decision.items()])
    log.info("tuned configuration of run %s %s by the gate (version %s)", tune_run, decision[STATUS_TAG], version)


def tune_night(
    settings: Settings, data_date: dt.date, budget_minutes: float, max_trials: int | None = None,
    max_epochs: int | None = None, dag_run_id: str = "", pruner: optuna.pruners.BasePruner | None = None,
) -> dict[str, Any]:
    """Search the configuration space on the night's gate split within `budget_minutes` (pipeline.recsys.tune)
    and store the study in MLflow (module docstring); returns the run id, the best value and configuration and
    the trial counts. The best configuration waits there, `pending`, for the next night's gate."""
    from pipeline.recsys.candidate import model_config_for
    from pipeline.recsys.data import load_night
    from pipeline.recsys.tune import SEARCH_SPACE, TuneBudget, run_study

    training = settings.training
    budget = TuneBudget(budget_minutes * 60, training.tune_trials, max_epochs or training.tune_max_epochs,
                        max_trials)
    night = load_night(Catalog.of(settings), data_date)
    model_config = model_config_for(night, settings.model)
    train_config = TrainConfig.from_settings(settings)
    experiment = registry.experiment_id(settings)
    tags = {KIND_TAG: TUNE_KIND, "data_date": data_date.isoformat(), STATUS_TAG: "running",
            **({"dag_run_id": dag_run_id} if dag_run_id else {})}
    with mlflow.start_run(experiment_id=experiment, run_name=f"tune {data_date}", tags=tags) as parent, \
            tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params({"tune.budget_minutes": budget_minutes, "tune.trial_seconds": round(budget.trial_s, 1),
                           "tune.max_epochs": budget.max_epochs, "tune.max_trials": max_trials,
                           "tune.sampler": "TPESampler", "tune.search_space": json.dumps(SEARCH_SPACE)})
        journal = Path(tmp) / "study.journal"
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        study = run_study(night, model_config, train_config, budget, training.seed, storage=storage,
                          pruner=pruner, on_trial=_trial_logger(experiment, parent.info.run_id),
                          study_name=f"tune-{data_date}-{parent.info.run_id[:8]}")
        mlflow.log_param("tune.pruner", type(study.pruner).__name__)
        mlflow.log_param("tune.study_name", study.study_name)
        result = _log_outcome(study, model_config, train_config, Path(tmp))
        mlflow.log_artifact(str(journal))
        result["run_id"] = parent.info.run_id
    log.info("tuning of %s: %s", data_date, {k: v for k, v in result.items() if k != "best_params"})
    return result


def _log_outcome(study: optuna.Study, model_config: ModelConfig, train_config: TrainConfig, tmp: Path
                 ) -> dict[str, Any]:
    """The study's trials table, counts and (when a trial completed) its best configuration, on the active
    (parent) run; returns the stage's result."""
    from pipeline.recsys.tune import apply_overrides

    states = [t.state for t in study.trials]
    counts = {name.lower(): states.count(state) for name, state in
              (("COMPLETE", optuna.trial.TrialState.COMPLETE), ("PRUNED", optuna.trial.TrialState.PRUNED),
               ("FAIL", optuna.trial.TrialState.FAIL))}
    mlflow.log_metrics({"trials": float(len(states)), **{f"trials_{k}": float(v) for k, v in counts.items()}})
    _log_trials_table(study, tmp)
    result: dict[str, Any] = {"trials": len(states), **{f"trials_{k}": v for k, v in counts.items()},
                              "gate_split": study.user_attrs.get("gate_split")}
    if not counts["complete"]:
        mlflow.set_tag(STATUS_TAG, NO_COMPLETE_TRIAL)
        log.warning("tuning finished no trial (%s): no tuned configuration", counts)
        return {**result, "status": NO_COMPLETE_TRIAL, "best_value": None, "best_params": {}}
    best = study.best_trial
    model_cfg, train_cfg = apply_overrides(model_config, train_config, best.params)
    tuned = {"overrides": best.params, "valid_ndcg@10": best.value, "trial": best.number,
             "gate_split": study.user_attrs.get("gate_split"), "model_config": dataclasses.asdict(model_cfg),
             "train_config": dataclasses.asdict(train_cfg)}
    mlflow.log_params(best.params)
    mlflow.log_metric("best_valid_ndcg_at_10", float(best.value))
    mlflow.log_dict(tuned, "tuned_config.json")
    mlflow.set_tags({CONFIG_TAG: json.dumps(best.params), "tune.best_trial": str(best.number),
                     STATUS_TAG: PENDING})
    return {**result, "status": PENDING, "best_value": best.value, "best_params": best.params}


def _log_trials_table(study: optuna.Study, tmp: Path) -> None:
    """trials.csv (Optuna's trials dataframe) and trials.json (with each trial's per-epoch values)."""
    study.trials_dataframe().to_csv(tmp / "trials.csv", index=False)
    mlflow.log_artifact(str(tmp / "trials.csv"))
    rows = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
             "intermediate_values": t.intermediate_values, "user_attrs": t.user_attrs,
             "datetime_start": t.datetime_start, "datetime_complete": t.datetime_complete} for t in study.trials]
    (tmp / "trials.json").write_text(json.dumps(rows, indent=2, default=str))
    mlflow.log_artifact(str(tmp / "trials.json"))


def _trial_logger(experiment: str, parent_run_id: str) -> Any:
    """An Optuna callback that logs each finished trial as a nested run of the study's run."""
    client = mlflow.MlflowClient()

    def log_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        started = trial.datetime_start or dt.datetime.now(dt.UTC)
        run = client.create_run(experiment, start_time=int(started.timestamp() * 1000),
                                run_name=f"trial {trial.number}",
                                tags={"mlflow.parentRunId": parent_run_id, KIND_TAG: TRIAL_KIND,
                                      "optuna.state": trial.state.name, "optuna.trial": str(trial.number)})
        now = int(time.time() * 1000)
        metrics = [Metric("valid_ndcg_at_10", float(v), now, int(step))
                   for step, v in sorted(trial.intermediate_values.items())]
        if trial.value is not None:
            metrics.append(Metric("value", float(trial.value), now, 0))
        params = [Param(k, str(v)) for k, v in trial.params.items()]
        client.log_batch(run.info.run_id, metrics=metrics, params=params)
        client.set_terminated(run.info.run_id, "FAILED" if trial.state == optuna.trial.TrialState.FAIL else "FINISHED")

    return log_trial
