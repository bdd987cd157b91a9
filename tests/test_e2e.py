"""End to end: the nightly DAG through Airflow's dag.test() on small generated data, real DuckDB, torch, MLflow."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import pytest
from conftest import SMALL_START, lake_query, write_small_demo

from pipeline.catalog import Catalog

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
NIGHT = SMALL_START + dt.timedelta(days=10)


def run_dag(data_date: dt.date, **conf) -> str:
    """Parse the DAG with the current environment and run it once through Airflow."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "nightly_recommendations.py"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["nightly_recommendations"]
    logical = dt.datetime.combine(data_date + dt.timedelta(days=1), dt.time(2), tzinfo=dt.UTC)
    run = dag.test(logical_date=logical, run_conf={"data_date": data_date.isoformat(), **conf})
    return str(run.state)


@pytest.fixture(scope="module")
def night(airflow_db, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One trained, published night on a fresh home (shared by the tests of this module)."""
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("e2e-home")
    mp.setenv("NIGHTLY_RECS_HOME", str(home))
    mp.setenv("NIGHTLY_RECS_MAX_EPOCHS", "12")
    demo = write_small_demo(home / "landing", days=12)
    from pipeline.config import load_settings

    state = run_dag(NIGHT)
    yield {"home": home, "settings": load_settings(), "state": state, "demo": demo, "mp": mp}
    mp.undo()


def _wh(night: dict) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(night["settings"].paths.warehouse_path), read_only=True)


def _seen_and_active(night: dict) -> tuple[dict[str, set[str]], set[str], set[str]]:
    rows = lake_query(night["settings"], "select user_id, item_id from {interactions} where dt <= $d", {"d": NIGHT})
    seen: dict[str, set[str]] = {}
    for user, item in rows:
        seen.setdefault(user, set()).add(item)
    active = {u for (u,) in lake_query(
        night["settings"], "select distinct user_id from {interactions} where cast(event_ts as date) > $d - 30",
        {"d": NIGHT})}
    catalog = {i for (i,) in duckdb.sql(
        f"select item_id from read_parquet('{Catalog.of(night['settings']).mart(NIGHT, 'item_catalog')}')"
    ).fetchall()}
    return seen, active, catalog


def test_run_succeeds_and_publishes_n_valid_rows_per_active_user(night: dict) -> None:
    assert night["state"] == "success"
    seen, active, catalog = _seen_and_active(night)
    top_n = night["settings"].serving.top_n
    with _wh(night) as con:
        rows = con.execute(
            "select user_id, rank, item_id, score, source from recommendations where dt = $d order by user_id, rank",
            {"d": NIGHT},
        ).fetchall()
    by_user: dict[str, list[tuple]] = {}
    for user, rank, item, score, source in rows:
        by_user.setdefault(user, []).append((rank, item, score, source))
    assert set(by_user) == active
    for user, recs in by_user.items():
        assert [r[0] for r in recs] == list(range(1, top_n + 1)), user
        items = [r[1] for r in recs]
        assert len(set(items)) == top_n
        assert not set(items) & seen[user], f"{user} was recommended an item they interacted with"
        assert set(items) <= catalog
        scores = [r[2] for r in recs]
        assert scores == sorted(scores, reverse=True)


def test_champion_registered_in_mlflow(night: dict) -> None:
    from mlflow import MlflowClient

    uri = night["settings"].paths.mlflow_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias(night["settings"].serving.model_name, "champion")
    assert version.tags["data_date"] == NIGHT.isoformat()
    assert version.tags["gate.decision"] == "promoted"


def test_quarantine_holds_malformed_rows_with_reasons(night: dict) -> None:
    rows = lake_query(night["settings"], "select reason, raw, line_no from {quarantine} where kind = 'events'")
    assert len(rows) > 10
    reasons = {r[0] for r in rows}
    assert {"broken_json", "unparsable_timestamp"} <= reasons
    assert all(r[0] and r[1] is not None and r[2] >= 1 for r in rows)


def test_rows_read_equal_accepted_plus_quarantined_plus_duplicates(night: dict) -> None:
    landing = night["home"] / "landing" / "events"
    lines = 0
    for path in sorted(landing.glob("*.jsonl")):
        if dt.date.fromisoformat(path.name[:10]) <= NIGHT:
            lines += sum(1 for line in path.read_bytes().splitlines() if line.strip())
    with _wh(night) as con:
        read, accepted, quarantined, duplicates = con.execute(
            """select sum(rows_read), sum(accepted), sum(quarantined), sum(duplicates) from ingest_ledger
               where kind = 'events' and status = 'ok'"""
        ).fetchall()[0]
    [(lake_rows,)] = lake_query(night["settings"], "select count(*) from {interactions}")
    assert read == lines
    assert read == accepted + quarantined + duplicates
    assert accepted == lake_rows
    assert quarantined > 0 and duplicates > 0


def test_model_beats_most_popular_by_a_clear_margin(night: dict) -> None:
    report = json.loads((Catalog.of(night["settings"]).report(NIGHT, ".json")).read_text())
    model, popular = report["metrics"]["model"], report["metrics"]["most_popular"]
    assert model["ndcg@10"] > 2.0 * popular["ndcg@10"], (model, popular)


def test_next_night_warm_starts_from_the_champion_and_goes_through_the_gate(night: dict) -> None:
    """The following night (without Airflow: the same stage functions) starts from the champion's weights,
    registers a new version and records the gate's decision on it."""
    from mlflow import MlflowClient

    from pipeline.config import load_settings
    from pipeline.stages import run_night

    next_day = NIGHT + dt.timedelta(days=1)
    every = next(n for n in range(2, 10) if next_day.toordinal() % n)  # not a full-retrain date
    settings = load_settings(incremental=True, full_retrain_every=every, incremental_max_new_items=1.0)
    results = run_night(settings, next_day, max_epochs=3)
    assert results["train"]["warm_start_from"] == "1"
    # an incremental warm night: the users with events after the champion's window (NIGHT - 1) plus a replay
    # sample of the others, fewer than every user with a history
    assert results["train"]["incremental_since"] == (NIGHT - dt.timedelta(days=1)).isoformat()
    trained = json.loads((Path(results["train"]["candidate_dir"]) / "train.json").read_text())
    assert 0 < trained["n_train_sequences"] < 0.8 * trained["n_users"]
    register = results["register"]
    assert register["version"] == "2" and register["previous_champion"] == "1"
    client = MlflowClient(tracking_uri=settings.paths.mlflow_uri, registry_uri=settings.paths.mlflow_uri)
    tags = client.get_model_version(settings.serving.model_name, "2").tags
    assert tags["gate.decision"] in ("promoted", "rejected") and tags["gate.reason"]
    served = results["select_model"]["version"]
    assert served == ("2" if register["promoted"] else "1")
    with _wh(night) as con:
        (versions,) = con.execute(
            "select list(distinct model_version) from recommendations where dt = $d", {"d": next_day}
        ).fetchall()[0]
    assert versions == [served]
