"""The gate, the registry and serving on a real small night (DuckDB features, MLflow registry, no mocks):
health check before any metric, the strongest baseline, idempotent registration, degraded mode from the
recorded gate, the chosen version serves, future dates, removed items, rollback (issue 14, items 1, 6, 8)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from conftest import SMALL_START, write_small_demo

from pipeline import lake, registry, stages, warehouse
from pipeline.catalog import Catalog
from pipeline.config import Settings, load_settings
from pipeline.publish import PublishValidationError, validation_inputs
from pipeline.recsys.bundle import ModelBundle

NIGHT = SMALL_START + dt.timedelta(days=9)


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A home with the small demo source and one night run without Airflow (version 1 is champion)."""
    home = tmp_path_factory.mktemp("gate-home")
    write_small_demo(home / "landing", days=12)
    fast = load_settings(env={"NIGHTLY_RECS_HOME": str(home), "NIGHTLY_RECS_GATE_BASELINES": "most_popular"})
    results = stages.run_night(fast, NIGHT, max_epochs=2)  # 2 epochs beat most-popular only
    assert results["register"]["promoted"], results["register"]
    settings = load_settings(env={"NIGHTLY_RECS_HOME": str(home)})  # the default gate: every baseline
    assert settings.serving.gate_baselines == ("most_popular", "recent_popular", "item_transition")
    return {"settings": settings, "fast": fast, "results": results, "home": home}


def candidate_copy(night: dict[str, Any], name: str) -> Path:
    """A copy of the night's candidate folder (bundle, metrics.json, train.json) to alter."""
    source = Path(night["results"]["train"]["candidate_dir"])
    target = Catalog.of(night["settings"]).candidates_dir(NIGHT) / name
    shutil.copytree(source, target)
    return target


def published(settings: Settings, day: dt.date) -> tuple[set[tuple], set[tuple]]:
    """(warehouse rows, lake rows) of a date as (user_id, rank, item_id, model_version)."""
    with warehouse.connect(Catalog.of(settings).warehouse) as con:
        rows = set(con.execute("select user_id, rank, item_id, model_version from recommendations where dt = $d",
                               {"d": day}).fetchall())
    catalog = Catalog.of(settings)
    in_lake = lake.read(catalog, "recommendations", day, ["user_id", "rank", "item_id", "model_version"])
    return rows, set() if in_lake is None else set(map(tuple, (r.values() for r in in_lake.to_pylist())))


# ---- item 1: the gate checks the model itself, and beats the strongest baseline ------------------------------


def test_nan_challenger_fails_the_health_check_before_any_metric(night: dict[str, Any]) -> None:
    settings = night["settings"]
    folder = candidate_copy(night, "nan-half")
    bundle = ModelBundle.load(folder / "bundle")
    with torch.no_grad():  # NaN for half the catalog: today's metric rewarded it (issue 14, item 1)
        bundle.model.id_emb.weight[1::2] = float("nan")
    shutil.rmtree(folder / "bundle")
    bundle.save(folder / "bundle")
    champion = registry.champion_version(settings)
    result = stages.stage_register(settings, NIGHT, str(folder), dag_run_id="nan-run")
    assert not result["promoted"] and "health" in result["reason"] and "not finite" in result["reason"]
    assert registry.champion_version(settings) == champion
    tags = registry.version_tags(settings, result["version"])
    assert tags["gate.decision"] == "rejected" and "health" in json.loads(tags["gate.evidence"])


def test_force_promote_cannot_promote_an_unhealthy_model(night: dict[str, Any]) -> None:
    settings = night["settings"]
    folder = candidate_copy(night, "nan-forced")
    bundle = ModelBundle.load(folder / "bundle")
    with torch.no_grad():
        bundle.model.id_emb.weight[3] = float("inf")
    shutil.rmtree(folder / "bundle")
    bundle.save(folder / "bundle")
    result = stages.stage_register(settings, NIGHT, str(folder), force_promote=True, dag_run_id="forced-run")
    assert not result["promoted"] and not result["forced"] and "health" in result["reason"]


def test_challenger_must_beat_the_strongest_baseline(night: dict[str, Any]) -> None:
    """The same weights as the champion (so the champion rule passes) but an item-transition baseline that
    the model does not beat: rejected, naming the baseline; most-popular alone would have promoted it."""
    settings = night["settings"]
    folder = candidate_copy(night, "weak-vs-transition")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["model"]["ndcg@10"] > metrics["most_popular"]["ndcg@10"]
    metrics["item_transition"]["ndcg@10"] = metrics["model"]["ndcg@10"] + 0.01
    (folder / "metrics.json").write_text(json.dumps(metrics))
    result = stages.stage_register(settings, NIGHT, str(folder), dag_run_id="baseline-run")
    assert not result["promoted"]
    assert "does not beat item-transition" in result["reason"], result["reason"]
    evidence = json.loads(registry.version_tags(settings, result["version"])["gate.evidence"])
    assert evidence["strongest_baseline"] == "item-transition"


# ---- issue 15 item 2: the temporal split decides, with a leakage guard --------------------------------------


def test_the_night_trains_before_the_data_date_and_the_temporal_split_decides(night: dict[str, Any]) -> None:
    train = night["results"]["train"]
    assert (train["gate_split"], train["train_until"]) == ("temporal", (NIGHT - dt.timedelta(days=1)).isoformat())
    gate = json.loads((Path(train["candidate_dir"]) / "gate.json").read_text())
    assert (gate["gate_split"], gate["train_until"]) == (train["gate_split"], train["train_until"])
    assert ModelBundle.load(Path(train["bundle_dir"])).train_until == NIGHT - dt.timedelta(days=1)
    metrics = json.loads((Path(train["candidate_dir"]) / "metrics.json").read_text())
    assert {"loo_model", "loo_item_transition"} <= set(metrics)  # leave-one-out: reported, not deciding
    settings = night["settings"]
    assert registry.version_run_tags(settings, night["results"]["register"]["version"])["gate_split"] == "temporal"


def test_a_challenger_trained_on_the_data_dates_events_is_refused(night: dict[str, Any]) -> None:
    """Trained on the leave-one-out split, whose window reaches the data date: the leakage guard rejects it."""
    from pipeline.recsys.candidate import model_config_for, train_candidate
    from pipeline.recsys.data import LEAVE_ONE_OUT, load_night
    from pipeline.recsys.train import TrainConfig

    settings = night["settings"]
    catalog = Catalog.of(settings)
    data = load_night(catalog, NIGHT)
    leaky = train_candidate(data, model_config_for(data, settings.model),
                            TrainConfig(max_epochs=1, device="cpu", time_budget_s=None), None, split=LEAVE_ONE_OUT)
    assert leaky.bundle.train_until == NIGHT
    folder = catalog.candidates_dir(NIGHT) / "leaky"
    leaky.save(folder)
    champion = registry.champion_version(settings)
    result = stages.stage_register(settings, NIGHT, str(folder), force_promote=True, dag_run_id="leaky-run")
    assert not result["promoted"] and "leakage guard" in result["reason"], result["reason"]
    assert f"up to {NIGHT}" in result["reason"]
    assert registry.champion_version(settings) == champion


def test_a_night_without_users_active_on_the_data_date_falls_back_to_leave_one_out(
    night: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    import dataclasses

    from pipeline.recsys.candidate import model_config_for, train_candidate
    from pipeline.recsys.data import MIN_TEMPORAL_USERS, load_night
    from pipeline.recsys.train import TrainConfig

    settings = night["settings"]
    full = load_night(Catalog.of(settings), NIGHT)
    few = dataclasses.replace(full.temporal, users=full.temporal.users[: MIN_TEMPORAL_USERS - 1])
    for quiet in (dataclasses.replace(full, temporal=few), dataclasses.replace(full, before_d=[])):
        with caplog.at_level("WARNING", logger="pipeline.recsys.data"):
            assert quiet.gate_split() == "leave_one_out"
        assert "falls back to leave-one-out" in caplog.text
    candidate = train_candidate(quiet, model_config_for(quiet, settings.model),
                                TrainConfig(max_epochs=1, device="cpu", time_budget_s=None), None)
    assert (candidate.train_info["gate_split"], candidate.train_info["train_until"]) == (
        "leave_one_out", NIGHT.isoformat())
    assert "model" in candidate.metrics and not any(name.startswith("loo_") for name in candidate.metrics)


def test_champion_and_challenger_are_compared_on_the_same_users_and_targets(
    night: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.recsys import evaluate

    settings = night["settings"]
    seen: list[tuple[str, list[str], list[list[str]], list[list[str]]]] = []
    real = evaluate.evaluate_bundle

    def spy(bundle: ModelBundle, split: Any, item_ids: list[str]) -> dict[str, float]:
        def ids(lists: list[Any]) -> list[list[str]]:
            return [[item_ids[i - 1] for i in items] for items in lists]

        seen.append((split.name, list(split.users), ids(split.targets), ids(split.excluded())))
        return real(bundle, split, item_ids)

    monkeypatch.setattr(evaluate, "evaluate_bundle", spy)
    result = stages.stage_register(settings, NIGHT, str(candidate_copy(night, "same-split")), dag_run_id="same")
    assert len(seen) == 2, "the gate evaluates the champion and the challenger"
    assert seen[0] == seen[1] and seen[0][0] == "temporal"
    mart = pq.read_table(Catalog.of(settings).mart(NIGHT, "split_temporal")).to_pydict()
    assert seen[0][1] == mart["user_id"] and seen[0][2] == mart["target_items"]
    _, _, targets, excluded = seen[0]
    assert all(not set(t) & set(x) for t, x in zip(targets, excluded, strict=True))  # nothing seen is a target
    gate = json.loads((Path(result["candidate_dir"]) / "gate.json").read_text())
    for key in ("n_users", "n_targets"):
        assert gate["champion_metrics"][key] == gate["challenger_metrics"][key] > 0


def test_a_large_night_is_evaluated_on_one_seeded_sample_of_users_for_both_models(
    night: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.recsys import evaluate

    settings = load_settings(env={"NIGHTLY_RECS_HOME": str(night["home"]), "NIGHTLY_RECS_EVAL_MAX_USERS": "12"})
    seen: list[list[str]] = []
    real = evaluate.evaluate_bundle

    def spy(bundle: ModelBundle, split: Any, item_ids: list[str]) -> dict[str, float]:
        seen.append(list(split.users))
        return real(bundle, split, item_ids)

    monkeypatch.setattr(evaluate, "evaluate_bundle", spy)
    stages.stage_register(settings, NIGHT, str(candidate_copy(night, "sampled")), dag_run_id="sampled")
    everyone = pq.read_table(Catalog.of(settings).mart(NIGHT, "split_temporal")).column("user_id").to_pylist()
    assert len(everyone) > 12
    assert len(seen) == 2 and seen[0] == seen[1] and len(seen[0]) == 12
    assert set(seen[0]) < set(everyone) and seen[0] == [u for u in everyone if u in set(seen[0])]  # mart order


def test_the_serving_path_of_the_champion_passes_the_publishing_rules(night: dict[str, Any]) -> None:
    from pipeline.gate import health_problem, sample_users
    from pipeline.recsys.score import scoring_input

    settings = night["settings"]
    bundle, _ = registry.load_bundle(settings, registry.CHAMPION)
    sample = sample_users(scoring_input(Catalog.of(settings), NIGHT), 50)
    assert len(sample.user_ids) == 50
    assert health_problem(bundle, sample, settings.serving.top_n) is None
    broken = sample_users(scoring_input(Catalog.of(settings), NIGHT), 50)
    broken.user_ids = [broken.user_ids[0]] + list(broken.user_ids[1:])
    broken.user_ids[1] = broken.user_ids[0]  # two lists for one user: the output breaks rows_per_user
    problem = health_problem(bundle, broken, settings.serving.top_n) or ""
    assert "publishing rules" in problem and "rows_per_user" in problem


def test_an_unhealthy_champion_never_wins_the_re_evaluation(night: dict[str, Any]) -> None:
    fast = night["fast"]
    broken = candidate_copy(night, "broken-champion")
    bundle = ModelBundle.load(broken / "bundle")
    with torch.no_grad():
        bundle.model.id_emb.weight[2] = float("nan")
    shutil.rmtree(broken / "bundle")
    bundle.save(broken / "bundle")
    rejected = stages.stage_register(fast, NIGHT, str(broken), dag_run_id="broken-champion")
    registry.rollback(fast, rejected["version"], "test", "simulate a broken champion")
    healthy = stages.stage_register(fast, NIGHT, str(candidate_copy(night, "after-broken")), dag_run_id="healthy")
    assert healthy["promoted"], healthy["reason"]
    assert healthy["reason"].startswith(f"champion v{rejected['version']} health:"), healthy["reason"]
    assert registry.champion_version(fast) == healthy["version"]


# ---- item 6: idempotent registration, degraded from the gate, the chosen version serves ----------------------


def test_register_retry_reuses_the_version_and_degraded_follows_the_recorded_gate(
    night: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = night["settings"]
    folder = candidate_copy(night, "retried")
    before = registry.versions_for_date(settings, NIGHT.isoformat())

    def gate_dies(*args: object, **kwargs: object) -> None:
        raise ConnectionError("injected: the tracking server went away after the version was registered")

    monkeypatch.setattr(registry, "run_gate", gate_dies)
    with pytest.raises(ConnectionError, match="injected"):
        stages.stage_register(settings, NIGHT, str(folder), dag_run_id="retry-run")
    registered = registry.versions_for_date(settings, NIGHT.isoformat(), "retry-run")
    assert len(registered) == 1
    chosen = stages.stage_select_model(settings, NIGHT, True, "retry-run")
    assert chosen["degraded"], "a version without a gate decision is not tonight's model"

    monkeypatch.undo()
    first = stages.stage_register(settings, NIGHT, str(folder), dag_run_id="retry-run")
    again = stages.stage_register(settings, NIGHT, str(folder), dag_run_id="retry-run")
    assert first["version"] == again["version"] == registered[0]
    assert (first["promoted"], first["reason"]) == (again["promoted"], again["reason"])
    after = registry.versions_for_date(settings, NIGHT.isoformat())
    assert len(after) == len(before) + 1
    assert not stages.stage_select_model(settings, NIGHT, True, "retry-run")["degraded"]


def test_recommend_serves_the_version_select_model_chose(night: dict[str, Any]) -> None:
    settings = night["settings"]
    staged = stages.stage_recommend(settings, NIGHT, 5, model_version="1")
    assert staged["model_version"] == "1"
    table = pq.read_table(staged["staged"])
    assert table.num_rows == staged["rows"] and staged["top_n"] == 5


def test_three_mapped_shards_publish_exactly_the_rows_of_one(night: dict[str, Any]) -> None:
    """Scoring fanned out over 3 shards publishes the rows (and scores) of the unsharded night; a missing or
    repeated part is refused before anything is published."""
    from pipeline.config import load_settings
    from pipeline.shards import ShardPartsError

    settings = night["settings"]
    whole = stages.stage_recommend(settings, NIGHT, 10, "1")
    stages.stage_publish(settings, NIGHT, [whole], 10, "1")
    one = published(settings, NIGHT)[0]
    one_scores = {(r["user_id"], r["rank"]): r["score"] for r in pq.read_table(whole["staged"]).to_pylist()}

    users = len(set(pq.read_table(whole["staged"]).column("user_id").to_pylist()))
    sharded = load_settings(home=night["home"], score_shard_users=max(1, users // 3), score_max_shards=3)
    plan = stages.stage_plan_scoring(sharded, NIGHT)
    assert plan == [{"shard": i, "of": 3} for i in range(3)]
    assert stages.stage_plan_scoring(settings, NIGHT) == [{"shard": 0, "of": 1}]  # below the threshold
    parts = [stages.stage_recommend(sharded, NIGHT, 10, "1", shard=shard) for shard in plan]
    assert sum(p["users"] for p in parts) == whole["users"] and all(p["users"] for p in parts)
    for broken in ([parts[0], parts[2]], [parts[0], parts[1], parts[1]]):
        with pytest.raises(ShardPartsError):
            stages.stage_publish(sharded, NIGHT, broken, 10, "1")
    assert published(settings, NIGHT)[0] == one  # nothing published by the refused attempts
    stages.stage_publish(sharded, NIGHT, list(reversed(parts)), 10, "1")
    rows, in_lake = published(settings, NIGHT)
    assert rows == one and in_lake == one
    for part in parts:
        for r in pq.read_table(part["staged"]).to_pylist():
            assert r["score"] == pytest.approx(one_scores[(r["user_id"], r["rank"])], rel=1e-6)


# ---- item 6: future data dates, recommendations_latest, removed items ----------------------------------------


def test_future_data_dates_are_refused_unless_allowed(night: dict[str, Any]) -> None:
    settings = night["settings"]
    today = dt.datetime.now(dt.UTC).date()
    with pytest.raises(stages.DataDateError, match=f"data date {today} has not ended"):
        stages.stage_features(settings, today)
    with pytest.raises(stages.DataDateError, match="allow_future_dates"):
        stages.stage_select_model(settings, today + dt.timedelta(days=30))
    allowed = load_settings(env={"NIGHTLY_RECS_HOME": str(night["home"]), "NIGHTLY_RECS_ALLOW_FUTURE_DATES": "true"})
    stages.check_data_date(allowed, today + dt.timedelta(days=30))


def test_a_future_dated_publish_does_not_pin_recommendations_latest(tmp_path: Path) -> None:
    from pipeline.publish import publish

    catalog = Catalog.of(load_settings(env={"NIGHTLY_RECS_HOME": str(tmp_path)}))
    rows = pa.table({"user_id": ["u1"], "rank": pa.array([1], pa.int32()), "item_id": ["i1"], "score": [1.0],
                     "source": ["model"]})
    past, future = dt.date(2026, 10, 10), dt.datetime.now(dt.UTC).date() + dt.timedelta(days=365)
    publish(catalog, past, rows, "test-recs", "1")
    publish(catalog, future, rows, "test-recs", "2")
    with warehouse.connect(catalog.warehouse) as con:
        latest = con.execute("select distinct dt, model_version from recommendations_latest").fetchall()
    assert latest == [(past, "1")]
    assert warehouse.latest_published(catalog.warehouse) == past


def test_items_marked_removed_are_never_recommended(night: dict[str, Any]) -> None:
    settings = night["settings"]
    catalog = Catalog.of(settings)
    top = stages.stage_recommend(settings, NIGHT, 10, "1")
    counts = pc.value_counts(pq.read_table(top["staged"]).column("item_id")).to_pylist()
    removed = max(counts, key=lambda c: c["counts"])["values"]  # the most recommended item
    items = pq.read_table(catalog.mart(NIGHT, "item_catalog"))
    latest = items.filter(pc.equal(items["item_id"], removed)).select(
        ["item_id", "title", "description", "brand", "genres", "categories", "tags"])
    marked = latest.append_column("updated_at", pa.array([dt.datetime(2099, 1, 1, tzinfo=dt.UTC)],
                                                         pa.timestamp("us", tz="UTC")))
    marked = marked.append_column("removed", pa.array([True])).append_column("dt", pa.array([NIGHT], pa.date32()))
    before = lake.read(catalog, "items", NIGHT)
    lake.replace_dates(catalog, "items", [NIGHT], pa.concat_tables([before, marked], promote_options="default"))
    try:
        stages.stage_features(settings, NIGHT)
        staged = stages.stage_recommend(settings, NIGHT, 10, "1")
        assert removed not in set(pq.read_table(staged["staged"]).column("item_id").to_pylist())
        users, seen, recommendable = validation_inputs(catalog, NIGHT)
        assert removed not in recommendable
        with pytest.raises(PublishValidationError, match="catalog_only"):
            from pipeline.publish import validate

            validate(pq.read_table(top["staged"]), users, seen, recommendable, 10)
        stages.stage_publish(settings, NIGHT, staged["staged"], 10, "1")
        rows, in_lake = published(settings, NIGHT)
        assert rows == in_lake and removed not in {item for _, _, item, _ in rows}
    finally:
        lake.replace_dates(catalog, "items", [NIGHT], before)
        stages.stage_features(settings, NIGHT)


def test_a_removal_in_the_landing_catalog_is_never_recommended(night: dict[str, Any]) -> None:
    """The documented field end to end: a catalog line `{"item_id": ..., "removed": true}` in a later file of
    the date (a correction: tags order a date's files) marks the item removed; it needs no text."""
    settings = night["settings"]
    catalog = Catalog.of(settings)
    top = stages.stage_recommend(settings, NIGHT, 10, "1")
    counts = pc.value_counts(pq.read_table(top["staged"]).column("item_id")).to_pylist()
    removed = max(counts, key=lambda c: c["counts"])["values"]
    drop = catalog.landing_file("items", NIGHT, ".2.jsonl")
    drop.write_text(f'{{"item_id": "{removed}", "removed": true, "updated_at": "{NIGHT}T23:59:59Z"}}\n')
    try:
        stages.stage_ingest(settings, NIGHT)
        stages.stage_features(settings, NIGHT)
        items = pq.read_table(catalog.mart(NIGHT, "item_catalog")).to_pylist()
        assert [i["is_removed"] for i in items if i["item_id"] == removed] == [True]
        staged = stages.stage_recommend(settings, NIGHT, 10, "1")
        assert removed not in set(pq.read_table(staged["staged"]).column("item_id").to_pylist())
    finally:
        drop.unlink()
        stages.stage_ingest(settings, NIGHT)  # the date is re-ingested without the vanished file
        stages.stage_features(settings, NIGHT)
    items = pq.read_table(catalog.mart(NIGHT, "item_catalog")).to_pylist()
    assert [i["is_removed"] for i in items if i["item_id"] == removed] == [False]


# ---- item 8: rollback ----------------------------------------------------------------------------------------


def test_rollback_points_champion_back_audits_and_republishes(
    night: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.tools.cli import main

    settings = night["settings"]
    forced = stages.stage_register(settings, NIGHT, str(candidate_copy(night, "to-roll-back")), force_promote=True,
                                   dag_run_id="forced-good", operator="bob")
    assert forced["promoted"] and registry.champion_version(settings) == forced["version"]
    stages.stage_publish(settings, NIGHT, **{k: v for k, v in stages.stage_recommend(
        settings, NIGHT, 10, forced["version"]).items() if k in ("staged", "top_n", "model_version")})
    assert {v for *_, v in published(settings, NIGHT)[0]} == {forced["version"]}

    monkeypatch.setenv("NIGHTLY_RECS_HOME", str(night["home"]))
    assert main(["rollback", "--to-version", "1", "--reason", "bad night", "--operator", "alice"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["previous_champion"] == forced["version"] and out["republished"]["data_date"] == NIGHT.isoformat()
    assert registry.champion_version(settings) == "1"
    tags = registry.version_tags(settings, "1")
    assert (tags["rollback.by"], tags["rollback.reason"], tags["rollback.from_version"]) == (
        "alice", "bad night", forced["version"])
    assert tags["rollback.at"]
    rows, in_lake = published(settings, NIGHT)
    assert rows == in_lake and {v for *_, v in rows} == {"1"}
    with duckdb.connect(str(Catalog.of(settings).warehouse), read_only=True) as con:
        (n,) = con.execute("select count(*) from runs where dt = $d and stage = 'publish' and status = 'ok'",
                           {"d": NIGHT}).fetchall()[0]
    assert n >= 2
