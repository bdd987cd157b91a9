"""Tuning within a budget (issue 15, item 4) on a real small night (DuckDB features, real torch, MLflow on SQLite,
Optuna, no mocks): the study and its best configuration in MLflow, pruning, the tuned configuration reaching a
night only through the gate, and the weekly DAG."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
from conftest import SMALL_START, write_small_demo

from pipeline import registry, stages, tuning
from pipeline.config import Settings, load_settings
from pipeline.recsys.tune import SEARCH_SPACE, TuneBudget, apply_overrides
from pipeline.tools.cli import main

REPO = Path(__file__).resolve().parent.parent
NIGHT = SMALL_START + dt.timedelta(days=9)
NEXT, AFTER = NIGHT + dt.timedelta(days=1), NIGHT + dt.timedelta(days=2)
TUNED_KEYS = sorted(SEARCH_SPACE)


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A home with the small demo source, one night run (version 1 is champion, trained with the settings) and
    the next two nights' features, ready to train."""
    home = tmp_path_factory.mktemp("tune-home")
    write_small_demo(home / "landing", days=12)
    settings = load_settings(env={"NIGHTLY_RECS_HOME": str(home), "NIGHTLY_RECS_GATE_BASELINES": "most_popular"})
    results = stages.run_night(settings, NIGHT, max_epochs=2)
    assert results["register"]["promoted"], results["register"]
    for day in (NEXT, AFTER):
        stages.stage_ingest(settings, day)
        stages.stage_features(settings, day)
        stages.stage_embed(settings, day)
    return {"settings": settings, "home": home}


def client_for(settings: Settings) -> mlflow.MlflowClient:
    registry.experiment_id(settings)
    return mlflow.MlflowClient()


def trial_runs(settings: Settings, parent_run_id: str) -> list[Any]:
    client = client_for(settings)
    return client.search_runs([registry.experiment_id(settings)],
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


def train_and_gate(settings: Settings, day: dt.date, refuse: bool = False, force: bool = False
                   ) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Train a night's candidate (1 epoch) and gate it: (train result, register result, training run tags). With
    `refuse`, the candidate's most-popular baseline is set above the model, so the gate refuses it."""
    train = stages.stage_train(settings, day, max_epochs=1)
    folder = Path(train["candidate_dir"])
    if refuse:
        metrics = json.loads((folder / "metrics.json").read_text())
        metrics["most_popular"]["ndcg@10"] = metrics["model"]["ndcg@10"] + 0.01
        (folder / "metrics.json").write_text(json.dumps(metrics))
    register = stages.stage_register(settings, day, str(folder), force_promote=force, train_run_id=train["run_id"])
    return train, register, dict(client_for(settings).get_run(train["run_id"]).data.tags)


def trained_overrides(train: dict[str, Any]) -> dict[str, Any]:
    """The tunable settings a candidate really trained with (its train.json), as flat overrides."""
    info = json.loads((Path(train["candidate_dir"]) / "train.json").read_text())
    return {key: info[f"{key.split('.')[0]}_config"][key.split(".")[1]] for key in TUNED_KEYS}


def test_study_from_the_cli_stores_the_best_configuration_and_the_study(
    night: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = night["settings"]
    monkeypatch.setenv("NIGHTLY_RECS_HOME", str(night["home"]))
    monkeypatch.setenv("NIGHTLY_RECS_GATE_BASELINES", "most_popular")
    assert main(["tune", "--date", NIGHT.isoformat(), "--budget-minutes", "2", "--trials", "3",
                 "--max-epochs", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["trials"] == 3 and result["status"] == tuning.PENDING, result
    assert result["gate_split"] == "temporal"
    assert sorted(result["best_params"]) == TUNED_KEYS

    client = client_for(settings)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == f"tune {NIGHT}"
    assert run.data.tags[tuning.KIND_TAG] == "tune" and run.data.tags[tuning.STATUS_TAG] == tuning.PENDING
    assert json.loads(run.data.tags[tuning.CONFIG_TAG]) == result["best_params"]
    assert {k: run.data.params[k] for k in TUNED_KEYS} == {k: str(v) for k, v in result["best_params"].items()}
    assert run.data.metrics["best_valid_ndcg_at_10"] == pytest.approx(result["best_value"])
    assert run.data.metrics["trials"] == 3.0
    artifacts = {a.path for a in client.list_artifacts(result["run_id"])}
    assert {"tuned_config.json", "trials.csv", "trials.json", "study.journal"} <= artifacts
    tuned = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/tuned_config.json")
    assert tuned["overrides"] == result["best_params"] and tuned["valid_ndcg@10"] == pytest.approx(result["best_value"])
    assert tuned["model_config"]["d_model"] == result["best_params"]["model.d_model"]

    # the study itself reloads from its journal, with the same trials
    local = Path(mlflow.artifacts.download_artifacts(f"{run.info.artifact_uri}/study.journal"))
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(local)))
    study = optuna.load_study(study_name=run.data.params["tune.study_name"], storage=storage)
    assert len(study.trials) == 3 and study.best_value == pytest.approx(result["best_value"])

    trials = trial_runs(settings, result["run_id"])
    assert len(trials) == 3
    for trial in trials:
        assert trial.data.tags["optuna.state"] in {"COMPLETE", "PRUNED"}
        assert sorted(trial.data.params) == TUNED_KEYS and "valid_ndcg_at_10" in trial.data.metrics
    assert max(t.data.metrics.get("value", -1.0) for t in trials) == pytest.approx(result["best_value"])


def test_a_pruned_trial_stops_at_the_epoch_the_pruner_says(night: dict[str, Any]) -> None:
    """A pruner that prunes every trial from epoch 2 on: each trial reports epochs 1 and 2, never trains epoch 3,
    and ends PRUNED; no trial completes, so there is no tuned configuration to try."""
    settings = night["settings"]
    always_from_epoch_2 = optuna.pruners.ThresholdPruner(lower=2.0, n_warmup_steps=2)  # ndcg never reaches 2
    result = tuning.tune_night(settings, NIGHT, budget_minutes=2, max_trials=2, max_epochs=3,
                               pruner=always_from_epoch_2)
    assert (result["trials"], result["trials_pruned"], result["trials_complete"]) == (2, 2, 0), result
    assert result["status"] == tuning.NO_COMPLETE_TRIAL and result["best_params"] == {}
    run = client_for(settings).get_run(result["run_id"])
    assert run.data.tags[tuning.STATUS_TAG] == tuning.NO_COMPLETE_TRIAL and tuning.CONFIG_TAG not in run.data.tags
    assert run.data.params["tune.pruner"] == "ThresholdPruner"
    trials = trial_runs(settings, result["run_id"])
    assert [t.data.tags["optuna.state"] for t in trials] == ["PRUNED", "PRUNED"]
    history = client_for(settings).get_metric_history(trials[0].info.run_id, "valid_ndcg_at_10")
    assert sorted(m.step for m in history) == [1, 2]
    assert tuning.config_for_night(settings) is None or tuning.config_for_night(settings).run_id != result["run_id"]


def test_the_study_stops_at_its_budget(night: dict[str, Any]) -> None:
    """No trial cap: only the budget ends the study (3 s; trials start until 3 - 3/8 s)."""
    started = time.perf_counter()
    result = tuning.tune_night(night["settings"], NIGHT, budget_minutes=0.05, max_epochs=2)
    assert result["trials"] >= 1
    assert time.perf_counter() - started < 60, "the study ran far past its budget"
    budget = TuneBudget(180.0, trials=6)
    assert (budget.trial_s, budget.start_until_s) == (30.0, 150.0)


def test_a_refused_tuned_configuration_is_tried_once_then_the_champions_returns(night: dict[str, Any]) -> None:
    settings = night["settings"]
    tune = tuning.tune_night(settings, NIGHT, budget_minutes=2, max_trials=2, max_epochs=1)
    assert tune["status"] == tuning.PENDING
    champion = registry.champion_version(settings)

    train, register, tags = train_and_gate(settings, NEXT, refuse=True)
    assert tags[tuning.RUN_TAG] == tune["run_id"] and tags[tuning.ADOPTION_TAG] == tuning.CANDIDATE
    assert trained_overrides(train) == tune["best_params"]
    assert train["warm_start_from"] is None, "a tuned configuration is tried from scratch"
    assert train["tuned_config"] == {"run_id": tune["run_id"], "adoption": tuning.CANDIDATE}
    assert not register["promoted"] and registry.champion_version(settings) == champion
    tune_tags = client_for(settings).get_run(tune["run_id"]).data.tags
    assert tune_tags[tuning.STATUS_TAG] == tuning.REJECTED
    assert (tune_tags["tune.gated_version"], tune_tags["tune.gated_date"]) == (register["version"], NEXT.isoformat())

    train, _, tags = train_and_gate(settings, AFTER)
    assert tags.get(tuning.RUN_TAG) != tune["run_id"] and tags.get(tuning.ADOPTION_TAG) != tuning.CANDIDATE
    assert train["tuned_config"] is None or train["tuned_config"]["adoption"] == tuning.CHAMPION
    champion_config = registry.load_bundle(settings, champion)[0].model.config
    model_keys = [k for k in TUNED_KEYS if k.startswith("model.")]
    trained = trained_overrides(train)
    assert {k: trained[k] for k in model_keys} == {k: getattr(champion_config, k[len("model."):]) for k in model_keys}
    assert train["warm_start_from"] == champion


def test_a_promoted_tuned_configuration_stays_as_the_champions(night: dict[str, Any]) -> None:
    settings = night["settings"]
    tune = tuning.tune_night(settings, NIGHT, budget_minutes=2, max_trials=2, max_epochs=1)
    train, register, tags = train_and_gate(settings, NEXT, force=True)
    assert tags[tuning.ADOPTION_TAG] == tuning.CANDIDATE and register["promoted"]
    assert client_for(settings).get_run(tune["run_id"]).data.tags[tuning.STATUS_TAG] == tuning.PROMOTED

    train, _, tags = train_and_gate(settings, AFTER)
    assert (tags[tuning.RUN_TAG], tags[tuning.ADOPTION_TAG]) == (tune["run_id"], tuning.CHAMPION)
    assert trained_overrides(train) == tune["best_params"]
    assert train["warm_start_from"] == register["version"], "the champion's own configuration warm-starts"


def test_overrides_name_real_fields() -> None:
    from pipeline.recsys.model import ModelConfig
    from pipeline.recsys.train import TrainConfig

    base = ModelConfig(5, item_repr="id")
    model, train = apply_overrides(base, TrainConfig(), {"model.d_model": 32, "train.lr": 0.01})
    assert (model.d_model, train.lr) == (32, 0.01)
    with pytest.raises(ValueError, match="'model.width'"):
        apply_overrides(base, TrainConfig(), {"model.width": 32})


def test_weekly_dag_parses_and_runs_the_tune_stage() -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions.param import ParamsDict, ParamValidationError

    from pipeline.dag_support import tune_date_from_context

    bag = DagBag(dag_folder=str(REPO / "dags" / "tune_weekly.py"))
    assert not bag.import_errors
    dag = bag.dags["tune_weekly"]
    from airflow.sdk import CronTriggerTimetable

    assert isinstance(dag.timetable, CronTriggerTimetable) and dag.timetable.expression == "0 6 * * 0"
    assert dag.catchup is False and dag.max_active_runs == 1
    assert [t.task_id for t in dag.tasks] == ["tune"]
    (task,) = dag.tasks
    assert task.execution_timeout is not None and task.retry_exponential_backoff
    assert set(dag.params) == {"budget_minutes", "max_trials", "data_date"}
    params = ParamsDict(dag.params)
    with pytest.raises(ParamValidationError, match="budget_minutes"):
        params["budget_minutes"] = 0
        params.validate()
    sunday = dt.datetime(2026, 11, 29, 6, tzinfo=dt.UTC)
    assert tune_date_from_context({"params": {}, "logical_date": sunday}) == dt.date(2026, 11, 28)
    assert tune_date_from_context({"params": {"data_date": "2026-11-01"}}) == dt.date(2026, 11, 1)


def test_weekly_dag_runs_a_study_through_airflow(night: dict[str, Any], airflow_db: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """dag.test() of tune_weekly with a tiny budget: the task runs the stage, the study lands in MLflow with the
    Airflow run's id and in the ledger."""
    from airflow.dag_processing.dagbag import DagBag

    from pipeline import warehouse
    from pipeline.catalog import Catalog

    monkeypatch.setenv("NIGHTLY_RECS_HOME", str(night["home"]))  # the DAG file reads its settings at parse
    bag = DagBag(dag_folder=str(REPO / "dags" / "tune_weekly.py"))
    run = bag.dags["tune_weekly"].test(logical_date=dt.datetime(2026, 11, 29, 6, tzinfo=dt.UTC), run_conf={
        "budget_minutes": 0.05, "max_trials": 1, "data_date": NIGHT.isoformat()})
    assert str(run.state) == "success"
    settings = night["settings"]
    latest = tuning.latest_tune_run(settings)
    assert latest.data.tags["dag_run_id"] == run.run_id and latest.data.tags["data_date"] == NIGHT.isoformat()
    ledger = warehouse.night_results(Catalog.of(settings).warehouse, NIGHT)["tune"]
    assert ledger["run_id"] == latest.info.run_id and ledger["trials"] == 1
