"""The night's stages as plain functions: (settings, data date, small values) -> small dict.

Each stage reads and writes only under the settings' folders, keyed by the data date, so rerunning a date
replaces what that date wrote. The Airflow DAG and the CLI (`nightly-recs night`) call these; they return
small JSON-able dicts (paths, counts, versions) that travel between tasks as XCom.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline import storage, warehouse
from pipeline.catalog import Catalog
from pipeline.config import Settings
from pipeline.scratch import task_scratch

log = logging.getLogger(__name__)


class DataDateError(ValueError):
    """The data date has not ended yet (UTC) and future dates are not allowed."""


def check_data_date(settings: Settings, data_date: dt.date, today: dt.date | None = None) -> None:
    """Refuse a data date that is today or later (UTC) unless `allow_future_dates` is set: its data is
    incomplete, and a published future date would be the newest night for every reader."""
    today = today or dt.datetime.now(dt.UTC).date()
    if data_date >= today and not settings.serving.allow_future_dates:
        raise DataDateError(f"data date {data_date} has not ended yet (today is {today} UTC); set "
                            "allow_future_dates to process it anyway")


def _ledger(stage: str) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Record every run of a stage (status, timings, returned counts or the error) in the `runs` ledger; the
    stage runs with a scratch folder of its own as TMPDIR, removed after it (pipeline.scratch)."""

    def wrap(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        def run(settings: Settings, data_date: dt.date, *args: Any, **kwargs: Any) -> dict[str, Any]:
            started = dt.datetime.now(dt.UTC)
            check_data_date(settings, data_date)
            try:
                with task_scratch(Catalog.of(settings)):
                    result = fn(settings, data_date, *args, **kwargs)
            except Exception as err:
                warehouse.record_run(Catalog.of(settings).warehouse, data_date, stage, "failed", started,
                                     {"error": f"{type(err).__name__}: {err}"[:2000]})
                raise
            warehouse.record_run(Catalog.of(settings).warehouse, data_date, stage, "ok", started, result,
                                 run_id=result.get("run_id"))
            return result

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        return run

    return wrap


@_ledger("ingest")
def stage_ingest(settings: Settings, data_date: dt.date) -> dict[str, Any]:
    """Landing files -> validated lake partitions (see pipeline.ingest). Refuses to run while an erasure is
    incomplete (pipeline.erasure: rerun `forget` to finish it)."""
    from pipeline.erasure.lineage import closed_tombstones
    from pipeline.ingest import ingest

    closed_tombstones(Catalog.of(settings))
    return ingest(settings, data_date)


@_ledger("features")
def stage_features(settings: Settings, data_date: dt.date) -> dict[str, Any]:
    """Lake -> feature marts for the night (see sql/)."""
    from pipeline.features import run_features

    return run_features(settings, data_date)


@_ledger("embed")
def stage_embed(settings: Settings, data_date: dt.date) -> dict[str, Any]:
    """Embed the current catalog's texts, encoding only texts not in the cache."""
    from pipeline.embed import embed_catalog

    return embed_catalog(settings.model, Catalog.of(settings), data_date)


@_ledger("train")
def stage_train(settings: Settings, data_date: dt.date, max_epochs: int | None = None, dag_run_id: str = ""
                ) -> dict[str, Any]:
    """Train a candidate on the night's gate split (temporal: events before the data date; leave-one-out when
    too few users were active on it), evaluate it and the baselines on that split's targets and on leave-one-out.
    The MLflow run opens first and sees every epoch as it ends (pipeline.tracking); its id is returned. Starts
    from scratch when the champion saw a user erased since (its erasure lineage is tagged on the run), or to try
    a tuned configuration pending the gate; the configuration is the champion's otherwise (pipeline.tuning)."""
    from pipeline import tracking, tuning
    from pipeline.erasure.lineage import closed_tombstones, training_tags
    from pipeline.recsys.candidate import effective_train_config, incremental_plan, model_config_for, train_candidate
    from pipeline.recsys.data import load_night
    from pipeline.recsys.train import TrainConfig

    catalog = Catalog.of(settings)
    closed = closed_tombstones(catalog)
    with tracking.training_run(settings, data_date, tracking.lineage_tags(catalog, data_date, dag_run_id)) as run:
        night = load_night(catalog, data_date, settings.training.eval_max_users)
        tuned = tuning.config_for_night(settings)
        warm = _WarmStart() if tuned and tuned.is_candidate else _warm_start(settings, night.item_ids, closed)
        init_state, warm_from, erasure_retrain = warm.state, warm.version, warm.erasure_retrain
        training = settings.training
        incremental = incremental_plan(training, data_date, warm.train_until, warm.new_items) if init_state else None
        reanneal = bool(init_state) and training.incremental and incremental is None
        run.set_tags({**training_tags(closed, warm_from, erasure_retrain), **(tuned.tags() if tuned else {}),
                      "incremental_since": incremental.since.isoformat() if incremental else "full",
                      "reanneal": str(reanneal).lower()})
        epochs = max_epochs or (min(training.max_epochs, training.warm_start_epochs) if init_state
                                else training.max_epochs)
        model_config, train_config = tuning.night_configs(tuned, model_config_for(night, settings.model),
                                                          TrainConfig.from_settings(settings, max_epochs=epochs))
        train_config = effective_train_config(train_config, bool(init_state), reanneal)
        run.log_configs(model_config, train_config, data_date)
        candidate = train_candidate(night, model_config, train_config, init_state, on_epoch=run.on_epoch,
                                    incremental=incremental)
        run.set_tags({k: str(candidate.train_info[k]) for k in ("gate_split", "train_until")})
        out = catalog.new_candidate(data_date)
        with storage.local_folder(out, write_back=True) as folder:  # written locally, then copied to a URI
            candidate.save(folder)
    metrics, train_metrics = candidate.metrics, candidate.train_info["train_metrics"]
    return {
        "candidate_dir": str(out),
        "bundle_dir": str(storage.child(out, "bundle")),
        "run_id": run.run_id,
        "ndcg@10": metrics["model"]["ndcg@10"],
        "hr@10": metrics["model"]["hr@10"],
        "popular_ndcg@10": metrics["most_popular"]["ndcg@10"],
        "gate_split": candidate.train_info["gate_split"],
        "train_until": candidate.train_info["train_until"],
        "epochs": train_metrics.get("epochs"),
        "warm_start_from": warm_from,
        "incremental_since": candidate.train_info["incremental_since"],
        "n_train_sequences": candidate.train_info["n_train_sequences"],
        "erasure_retrain": erasure_retrain,
        "tuned_config": {"run_id": tuned.run_id, "adoption": tuned.adoption} if tuned else None,
        "seconds_per_epoch": train_metrics.get("seconds_per_epoch"),
        "train_seconds": train_metrics.get("train_seconds"),
    }


@dataclass
class _WarmStart:
    """Where tonight's training starts: the champion's weights remapped to tonight's items (`state`), its
    version, its training window's last day and the share of tonight's items new to it; no state when warm
    start is off, without a champion, or when the champion saw a user erased since (erasure_retrain)."""

    state: dict[str, Any] | None = None
    version: str | None = None
    erasure_retrain: bool = False
    train_until: dt.date | None = None
    new_items: float = 1.0


def _warm_start(settings: Settings, item_ids: list[str], closed_tombstones: int) -> _WarmStart:
    if not settings.training.warm_start:
        return _WarmStart()
    from pipeline import registry
    from pipeline.erasure.lineage import saw_erased_user
    from pipeline.recsys.bundle import warm_start_state

    version = registry.champion_version(settings)
    if version is None:
        return _WarmStart()
    if saw_erased_user(settings, version, closed_tombstones):
        log.info("champion version %s saw a user erased since: training from scratch", version)
        return _WarmStart(erasure_retrain=True)
    bundle, _ = registry.load_bundle(settings, version)
    log.info("warm start from champion version %s (%d known items)", version, len(bundle.index))
    new_items = sum(item not in bundle.index for item in item_ids) / max(1, len(item_ids))
    return _WarmStart(warm_start_state(bundle, item_ids), version, False, bundle.train_until, new_items)


@_ledger("tune")
def stage_tune(settings: Settings, data_date: dt.date, budget_minutes: float, max_trials: int | None = None,
               max_epochs: int | None = None, dag_run_id: str = "") -> dict[str, Any]:
    """Search the model's configuration on the night's gate split within the budget (Optuna: TPE, pruning on the
    validation metric) and store the study and its best configuration in MLflow, pending the next night's gate."""
    from pipeline.tuning import tune_night

    return tune_night(settings, data_date, budget_minutes, max_trials, max_epochs, dag_run_id)


@_ledger("register")
def stage_register(
    settings: Settings, data_date: dt.date, candidate_dir: str, force_promote: bool = False, dag_run_id: str = "",
    operator: str = "", train_run_id: str = "",
) -> dict[str, Any]:
    """Log the candidate to MLflow as a new version (`challenger`), check its health through the serving path,
    re-evaluate the champion on the same split, and promote the challenger to `champion` only if it beats the
    strongest baseline and the champion (or an operator forces it, recorded as such).

    Continues the training's MLflow run when `train_run_id` names it. Idempotent per (date, DAG run,
    candidate): a retry finds the version the failed attempt registered (its tags) and gates it, or returns the
    decision already recorded on it, instead of registering another. A tuned configuration on trial is marked
    gated (pipeline.tuning.record_gate)."""
    from pipeline.gating import register_candidate

    with storage.local_folder(storage.as_location(candidate_dir), write_back=True) as folder:
        return register_candidate(settings, data_date, folder, candidate_dir, force_promote, dag_run_id, operator,
                                  train_run_id)


@_ledger("select_model")
def stage_select_model(
    settings: Settings, data_date: dt.date, retrain: bool = True, dag_run_id: str = ""
) -> dict[str, Any]:
    """Which model serves tonight: the champion. Degraded when tonight's training was expected but no gate
    decision was recorded for this date (and this Airflow run, when given): training, registration or the
    gate failed, whether or not a version was registered."""
    from pipeline import registry

    champion = registry.champion_version(settings)
    if champion is None:
        raise RuntimeError(f"no '{registry.CHAMPION}' model in the registry {settings.serving.model_name!r}; "
                           "the first night must train a model that beats the baselines")
    gated = registry.gated_versions(settings, data_date.isoformat(), dag_run_id)
    degraded = retrain and not gated
    if degraded:
        log.error("DEGRADED: no gate decision was recorded for %s; serving champion version %s", data_date,
                  champion)
    return {"version": champion, "degraded": degraded, "retrain": retrain, "trained_versions": gated}


def stage_plan_scoring(settings: Settings, data_date: dt.date) -> list[dict[str, int]]:
    """The scoring shards of the night ({"shard": i, "of": n}): one below `score_shard_users` active users."""
    from pipeline import shards

    activity = storage.read_table(Catalog.of(settings).mart(data_date, "user_activity"), columns=["is_active"])
    active = sum(bool(a) for a in activity.column("is_active").to_pylist())
    serving = settings.serving
    return shards.plan(active, serving.score_shard_users, serving.score_max_shards)


@_ledger("recommend")
def stage_recommend(settings: Settings, data_date: dt.date, top_n: int | None = None,
                    model_version: str | None = None, diversity: float | None = None,
                    shard: dict[str, int] | None = None) -> dict[str, Any]:
    """Score the night's active users (or one shard of them: pipeline.shards) with the version select_model
    chose (`models:/<name>/<version>`; the current champion when none is given), each row with its reason (and
    MMR re-ranking when the diversity weight is above 0); stage the table (the shard's part) for publishing."""
    import pyarrow as pa

    from pipeline import registry, shards
    from pipeline.recsys.score import Serving, score_users, scoring_input

    k = top_n or settings.serving.top_n
    weight = settings.serving.diversity if diversity is None else diversity
    part = shard or {"shard": 0, "of": 1}
    bundle, version = registry.load_bundle(settings, model_version or registry.CHAMPION)
    data = shards.take(scoring_input(Catalog.of(settings), data_date), part["shard"], part["of"])
    table = score_users(bundle, data, k, settings.serving.score_chunk_users, settings.model.device,
                        Serving(settings.serving.reason_window, weight))
    staged = Catalog.of(settings).new_staged_recommendations(data_date)
    storage.write_table(table, staged)
    sources = pa.table(table).column("source").to_pylist()
    return {"staged": str(staged), "model_version": version, "top_n": k, "users": len(data.user_ids),
            "rows": table.num_rows, "popular_fallback_rows": sources.count("popular"), "diversity": weight,
            "shard": part["shard"], "of": part["of"]}


@_ledger("publish")
def stage_publish(
    settings: Settings, data_date: dt.date, staged: str | list[dict[str, Any]], top_n: int, model_version: str | None
) -> dict[str, Any]:
    """Validate the staged table (or every shard's part together: pipeline.shards.combine) against the
    publishing rules, then publish it atomically. Erased users are never expected (pipeline.erasure), so a row
    for one breaks the rule expected_users."""
    from pipeline import shards
    from pipeline.erasure.lineage import forgotten
    from pipeline.publish import publish_validated, validation_inputs

    catalog = Catalog.of(settings)
    users, seen, items = validation_inputs(catalog, data_date)
    users = forgotten(catalog).keep(users)
    table = (storage.read_table(staged) if isinstance(staged, str)
             else shards.combine(staged, storage.read_table))
    return publish_validated(catalog, data_date, table, users, seen, items, top_n, settings.serving.model_name,
                             model_version)


@_ledger("housekeeping")
def stage_housekeeping(settings: Settings, data_date: dt.date) -> dict[str, Any]:
    """After publishing: remove staged tables and old rejected candidates, compact the embedding cache."""
    from pipeline.housekeeping import run_housekeeping

    return run_housekeeping(settings.operations, Catalog.of(settings), data_date)


@_ledger("report")
def stage_report(settings: Settings, data_date: dt.date) -> dict[str, Any]:
    """Write the nightly report (Markdown + JSON) from the stages' ledger entries for the date, and attach it
    to the MLflow run when tonight registered one."""
    from pipeline.report import write_report

    results = {"data_date": data_date.isoformat(),
               **warehouse.night_results(Catalog.of(settings).warehouse, data_date)}
    if results.get("train", {}).get("status") == "failed":
        results.pop("register", None)
    paths = write_report(settings, data_date, results)
    run_id = (results.get("register") or {}).get("run_id")
    if run_id:
        from pipeline import registry

        with storage.local_files([storage.as_location(p) for p in paths.values()]) as files:
            registry.log_report(settings, run_id, files)
    return paths


def run_rollback(settings: Settings, to_version: str, operator: str, reason: str, top_n: int | None = None
                 ) -> dict[str, Any]:
    """Point `champion` at an earlier version (audited on the version: who, when, why) and republish the
    latest published date with it (recommend + publish, validated like any night)."""
    from pipeline import registry

    previous = registry.rollback(settings, to_version, operator, reason)
    day = warehouse.latest_published(Catalog.of(settings).warehouse)
    out: dict[str, Any] = {"champion": to_version, "previous_champion": previous, "republished": None}
    if day is None:
        log.warning("rollback: nothing is published yet; the next night serves version %s", to_version)
        return out
    k = top_n or settings.serving.top_n
    staged = stage_recommend(settings, day, k, to_version)
    out["republished"] = {"data_date": day.isoformat(),
                          **stage_publish(settings, day, staged["staged"], k, staged["model_version"])}
    return out


def run_forget(settings: Settings, user_ids: list[str], requester: str, reason: str = "") -> dict[str, Any]:
    """Erase users everywhere (pipeline.erasure): record their tombstones, rewrite every copy without them.
    Idempotent; not keyed by a data date. The CLI's `forget` and the forget_users DAG call this."""
    from pipeline.erasure.run import forget

    return forget(settings, user_ids, requester, reason)


def run_night(settings: Settings, data_date: dt.date, top_n: int | None = None, retrain: bool = True,
              max_epochs: int | None = None, force_promote: bool = False) -> dict[str, Any]:
    """The whole night without Airflow, in the DAG's order and with its degraded mode."""
    t0 = time.perf_counter()
    run_id = f"cli-{uuid.uuid4().hex[:12]}"  # tonight's versions are told from earlier runs of the date by it
    results: dict[str, Any] = {"data_date": data_date.isoformat()}
    results["ingest"] = stage_ingest(settings, data_date)
    results["features"] = stage_features(settings, data_date)
    results["embed"] = stage_embed(settings, data_date)
    if retrain:
        try:
            results["train"] = stage_train(settings, data_date, max_epochs)
            results["register"] = stage_register(settings, data_date, results["train"]["candidate_dir"],
                                                 force_promote, run_id, "cli",
                                                 train_run_id=results["train"]["run_id"])
        except Exception:  # degraded mode, exactly as the DAG: any training or registration failure
            log.exception("training or registration failed; serving the current champion (degraded)")
    results["select_model"] = stage_select_model(settings, data_date, retrain, run_id)
    k = top_n or settings.serving.top_n
    parts = [stage_recommend(settings, data_date, k, results["select_model"]["version"], shard=shard)
             for shard in stage_plan_scoring(settings, data_date)]
    results["recommend"] = parts[0] if len(parts) == 1 else {
        "parts": parts, "model_version": parts[0]["model_version"], "top_n": k,
        "users": sum(p["users"] for p in parts), "rows": sum(p["rows"] for p in parts)}
    results["publish"] = stage_publish(settings, data_date, parts, k, parts[0]["model_version"])
    results["housekeeping"] = stage_housekeeping(settings, data_date)
    results["report"] = stage_report(settings, data_date)
    log.info("night %s done in %.1f s", data_date, time.perf_counter() - t0)
    return results
