"""The nightly DAG through Airflow's dag.test(), night after night on one small home.

One trained night is shared by the module (the champion); each test then runs other dates through the DAG:
parameters from a run's conf, a backfill run twice, degraded mode, and an ingest that fails its threshold.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
from conftest import SMALL_START, lake_query, write_small_demo

from pipeline.catalog import Catalog

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
DEMO_DAYS = 14
TRAINED = SMALL_START + dt.timedelta(days=7)
RETRAIN_FALSE = TRAINED + dt.timedelta(days=1)
BACKFILL = [TRAINED + dt.timedelta(days=d) for d in (2, 3, 4)]
DEGRADED = TRAINED + dt.timedelta(days=5)
BAD_INGEST = TRAINED + dt.timedelta(days=6)
assert BAD_INGEST < SMALL_START + dt.timedelta(days=DEMO_DAYS)


def run_dag(data_date: dt.date, **conf) -> str:
    """Parse the DAG file with the current environment (settings are read at parse) and run it once."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "nightly_recommendations.py"))
    assert not bag.import_errors, bag.import_errors
    logical = dt.datetime.combine(data_date + dt.timedelta(days=1), dt.time(2), tzinfo=dt.UTC)
    run = bag.dags["nightly_recommendations"].test(logical_date=logical,
                                                  run_conf={"data_date": data_date.isoformat(), **conf})
    return str(run.state)


@dataclass
class Home:
    root: Path
    settings: object

    def query(self, sql: str, **params) -> list[tuple]:
        with duckdb.connect(str(self.settings.paths.warehouse_path), read_only=True) as con:
            return con.execute(sql, params).fetchall()

    def published(self, day: dt.date) -> list[tuple]:
        """The published rows of a date, without generated_at (a wall-clock stamp)."""
        return self.query(
            """select dt, user_id, rank, item_id, score, source, model_name, model_version
               from recommendations where dt = $d order by user_id, rank""", d=day)

    def lake_partition(self, day: dt.date) -> list[tuple]:
        """The date's published rows in the lake, without generated_at."""
        return lake_query(self.settings, """select * exclude (generated_at) from {recommendations}
                                            where dt = $d order by user_id, rank""", {"d": day})

    def all_published(self) -> list[tuple]:
        return self.query("""select dt, user_id, rank, item_id, score, source, model_name, model_version
                             from recommendations order by dt, user_id, rank""")

    def stages(self, day: dt.date) -> dict[str, str]:
        """The last status of every stage that ran for a date (the `runs` ledger)."""
        rows = self.query("""select stage, status from runs where dt = $d
                             qualify row_number() over (partition by stage order by finished_at desc) = 1""",
                          d=day)
        return dict(rows)

    def report(self, day: dt.date) -> dict:
        return json.loads((Catalog.of(self.settings).report(day, ".json")).read_text())

    def versions(self) -> list[str]:
        from mlflow import MlflowClient

        uri = self.settings.paths.mlflow_uri
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        return sorted(v.version for v in client.search_model_versions(f"name = '{self.settings.serving.model_name}'"))

    def champion(self) -> str:
        from pipeline import registry

        return registry.champion_version(self.settings)


@pytest.fixture(scope="module")
def home(airflow_db, tmp_path_factory: pytest.TempPathFactory) -> Home:
    """A home with DEMO_DAYS of landing drops and one trained, published night (the champion)."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("dagrun-home")
    mp.setenv("NIGHTLY_RECS_HOME", str(root))
    mp.setenv("NIGHTLY_RECS_MAX_EPOCHS", "3")
    write_small_demo(root / "landing", days=DEMO_DAYS)
    from pipeline.config import load_settings

    assert run_dag(TRAINED) == "success"
    yield Home(root, load_settings())
    mp.undo()


def test_first_night_trains_the_champion_and_says_what_it_served(home: Home) -> None:
    assert home.champion() == "1"
    assert {r[7] for r in home.published(TRAINED)} == {"1"}
    report = home.report(TRAINED)
    assert report["select_model"]["degraded"] is False
    assert report["register"]["promoted"] is True


def test_params_top_n_7_and_retrain_false_reuse_the_champion(home: Home) -> None:
    champion, versions = home.champion(), home.versions()

    assert run_dag(RETRAIN_FALSE, top_n=7, retrain=False) == "success"

    rows = home.published(RETRAIN_FALSE)
    per_user: dict[str, list[int]] = {}
    for _, user, rank, *_ in rows:
        per_user.setdefault(user, []).append(rank)
    assert per_user and all(ranks == list(range(1, 8)) for ranks in per_user.values())
    assert {r[7] for r in rows} == {champion}
    assert home.versions() == versions, "retrain=false registered a model version"
    stages = home.stages(RETRAIN_FALSE)
    assert "train" not in stages and "register" not in stages
    assert stages["select_model"] == "ok" and home.report(RETRAIN_FALSE)["select_model"]["degraded"] is False


def test_backfill_twice_publishes_identical_tables_and_ingest_noops(home: Home) -> None:
    for day in BACKFILL:
        assert run_dag(day, retrain=False) == "success", day
    first = {day: (home.published(day), home.lake_partition(day)) for day in BACKFILL}
    (second_pass_started,) = home.query("select now()")[0]

    for day in BACKFILL:
        assert run_dag(day, retrain=False) == "success", day

    for day in BACKFILL:
        assert first[day][0], f"nothing published for {day}"
        assert home.published(day) == first[day][0], f"rerun of {day} changed the warehouse table"
        assert home.lake_partition(day) == first[day][1], f"rerun of {day} changed the lake partition"
    statuses = home.query("select distinct status from ingest_ledger where ingested_at >= $t",
                          t=second_pass_started)
    assert statuses == [("noop",)]


def test_degraded_night_publishes_with_the_previous_champion(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    champion, versions = home.champion(), home.versions()
    def broken_training(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected training fault")

    monkeypatch.setattr("pipeline.recsys.candidate.train_candidate", broken_training)

    state = run_dag(DEGRADED)

    assert state == "success", "a night whose training failed must still publish"
    assert home.stages(DEGRADED)["train"] == "failed"
    assert {r[7] for r in home.published(DEGRADED)} == {champion}
    assert home.versions() == versions
    report = home.report(DEGRADED)
    assert report["select_model"]["degraded"] is True
    assert report["select_model"]["version"] == champion
    md = (Catalog.of(home.settings).report(DEGRADED, ".md")).read_text()
    assert "DEGRADED" in md.upper()


def test_publish_event_tells_consumers_the_date_path_and_model(home: Home, tmp_path: Path) -> None:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from pipeline.dag_support import ASSET_NAMES, write_daily_summary

    with create_session() as session:
        extras = session.scalars(
            select(AssetEvent.extra).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == ASSET_NAMES["recommendations"]).order_by(AssetEvent.timestamp)
        ).all()
    by_date = {e["data_date"]: e for e in extras if e.get("lake_table", "").startswith(str(home.root))}
    assert by_date[DEGRADED.isoformat()]["degraded"] is True
    event = by_date[RETRAIN_FALSE.isoformat()]
    assert event["degraded"] is False and event["model_version"] == home.champion()

    summary = write_daily_summary(event, tmp_path / "consumer")

    assert summary["rows"] == len(home.published(RETRAIN_FALSE)) == event["rows"]
    assert summary["users"] == event["users"] and summary["distinct_items"] > 7
    assert json.loads(Path(summary["path"]).read_text())["data_date"] == RETRAIN_FALSE.isoformat()


def test_ingest_over_quarantine_threshold_fails_the_night_and_publishes_nothing(home: Home) -> None:
    landing = home.root / "landing" / "events" / f"{BAD_INGEST.isoformat()}.jsonl"
    lines = landing.read_text().splitlines()
    broken = ["{broken json" if i % 10 == 0 else line for i, line in enumerate(lines)]  # 10% of the lines
    landing.write_text("\n".join(broken) + "\n")
    before = home.all_published()

    assert run_dag(BAD_INGEST) == "failed"

    assert home.published(BAD_INGEST) == []
    assert home.all_published() == before, "a failed night changed earlier nights"
    assert home.stages(BAD_INGEST) == {"ingest": "failed"}, "a stage ran after ingest failed"
    (status,) = home.query("select distinct status from ingest_ledger where dt = $d and kind = 'events'",
                           d=BAD_INGEST)[0]
    assert status == "failed"
