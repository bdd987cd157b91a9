"""Faults on a real small night (DuckDB, Delta lake, MLflow; issue 14, items 5 and the fault-injection
acceptance): an exception in the middle of any stage, including between the warehouse commit and the lake
commit, leaves every earlier night published and identical in the warehouse and the lake, and rerunning the
night completes with both consistent. Overlapping publishes of one date are serialised by the date's lock."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from conftest import SMALL_START, write_small_demo

from pipeline import lake, registry, stages, warehouse
from pipeline import publish as publish_module
from pipeline.catalog import Catalog
from pipeline.config import Settings, load_settings
from pipeline.publish import PublishLockedError, publish

NIGHT = SMALL_START + dt.timedelta(days=8)
NEXT = NIGHT + dt.timedelta(days=1)


def snapshot(settings: Settings) -> dict[dt.date, tuple[set[tuple], set[tuple]]]:
    """Every published date: (warehouse rows, lake rows) as (user_id, rank, item_id, model_version)."""
    catalog = Catalog.of(settings)
    with warehouse.connect(catalog.warehouse) as con:
        rows = con.execute("select dt, user_id, rank, item_id, model_version from recommendations").fetchall()
    out: dict[dt.date, tuple[set[tuple], set[tuple]]] = {}
    for day, *rest in rows:
        out.setdefault(day, (set(), set()))[0].add(tuple(rest))
    for day in list(out):
        published = lake.read(catalog, "recommendations", day, ["user_id", "rank", "item_id", "model_version"])
        out[day][1].update(tuple(r.values()) for r in published.to_pylist())
    return out


def assert_consistent(state: dict[dt.date, tuple[set[tuple], set[tuple]]], day: dt.date) -> None:
    rows, lake = state[day]
    assert rows and rows == lake, f"{day}: warehouse and lake differ"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("faults-home")
    write_small_demo(root / "landing", days=12)
    settings = load_settings(env={"NIGHTLY_RECS_HOME": str(root), "NIGHTLY_RECS_GATE_BASELINES": "most_popular"})
    stages.run_night(settings, NIGHT, max_epochs=4)  # 2 epochs do not beat most-popular on the temporal split
    assert registry.champion_version(settings) is not None
    return settings


class Injected(RuntimeError):
    """The fault these tests inject."""


def after(real: Callable[..., Any]) -> Callable[..., Any]:
    """Run the real function (its outputs are written), then fail: the stage dies after doing its work."""

    def run(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise Injected("injected after the work was done")

    return run


def fail(*args: Any, **kwargs: Any) -> Any:
    raise Injected("injected mid-stage")


def publish_failing_at(step: str) -> Callable[..., Any]:
    real = publish_module.publish

    def checkpoint(name: str) -> None:
        if name == step:
            raise Injected(f"injected at publish step {name}")

    return lambda *args, **kwargs: real(*args, **{**kwargs, "checkpoint": checkpoint})


def _ingest_after() -> Callable[..., Any]:
    import pipeline.ingest

    return after(pipeline.ingest.ingest)


def _features_after() -> Callable[..., Any]:
    import pipeline.features

    return after(pipeline.features.run_features)


# stage -> (object to patch, attribute, replacement factory, retrain, what happens to NEXT)
FAULTS: dict[str, tuple[str, str, Callable[[], Callable[..., Any]], bool, str]] = {
    "ingest": ("pipeline.ingest", "ingest", _ingest_after, False, "unchanged"),
    "features": ("pipeline.features", "run_features", _features_after, False, "unchanged"),
    "embed": ("pipeline.embed", "embed_catalog", lambda: fail, False, "unchanged"),
    "train": ("pipeline.recsys.candidate", "train_candidate", lambda: fail, True, "degraded"),
    "register": ("pipeline.registry", "run_gate", lambda: fail, True, "degraded"),
    "select_model": ("pipeline.registry", "gated_versions", lambda: fail, False, "unchanged"),
    "recommend": ("pipeline.recsys.score", "score_users", lambda: fail, False, "unchanged"),
    "publish@locked": ("pipeline.publish", "publish", lambda: publish_failing_at("locked"), False, "unchanged"),
    "publish@rows_inserted": ("pipeline.publish", "publish", lambda: publish_failing_at("rows_inserted"), False,
                              "unchanged"),
    "publish@committed": ("pipeline.publish", "publish", lambda: publish_failing_at("committed"), False,
                          "committed"),
    "report": ("pipeline.report", "write_report", lambda: fail, False, "published"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_fault_in_any_stage_keeps_earlier_nights_and_the_rerun_completes(
    home: Settings, fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    module, attribute, replacement, retrain, effect = FAULTS[fault]
    before = snapshot(home)
    assert_consistent(before, NIGHT)
    monkeypatch.setattr(importlib.import_module(module), attribute, replacement())
    if effect == "degraded":  # the CLI night degrades like the DAG: it publishes with the champion
        result = stages.run_night(home, NEXT, retrain=retrain, max_epochs=1)
        assert result["select_model"]["degraded"]
    else:
        with pytest.raises(Injected):
            stages.run_night(home, NEXT, retrain=retrain, max_epochs=1)
    monkeypatch.undo()

    during = snapshot(home)
    assert during[NIGHT] == before[NIGHT], "the previous night changed"
    assert_consistent(during, NIGHT)
    if effect == "unchanged":
        assert during.get(NEXT) == before.get(NEXT), "a failed night must not change what is published"
    elif effect in ("degraded", "published"):
        assert_consistent(during, NEXT)
    else:  # committed, then died before the lake commit: the warehouse is new, the lake's date is not yet
        assert during[NEXT][0] and during[NEXT][1] == (before.get(NEXT) or (set(), set()))[1]

    stages.run_night(home, NEXT, retrain=retrain, max_epochs=1)
    after_rerun = snapshot(home)
    assert after_rerun[NIGHT] == before[NIGHT]
    assert_consistent(after_rerun, NEXT)
    assert warehouse.latest_published(Catalog.of(home).warehouse) == NEXT


# ---- one writer per date -------------------------------------------------------------------------------------


def rows(version: str) -> pa.Table:
    return pa.table({"user_id": ["u1", "u1", "u2"], "rank": pa.array([1, 2, 1], pa.int32()),
                     "item_id": ["i1", "i2", "i1"], "score": [2.0, 1.0, 1.0],
                     "source": ["model"] * 3, "model_version": [version] * 3})


def published_versions(catalog: Catalog, day: dt.date) -> tuple[set[str], set[str]]:
    with warehouse.connect(catalog.warehouse) as con:
        wh = {v for (v,) in con.execute("select model_version from recommendations where dt = $d",
                                        {"d": day}).fetchall()}
    published = set(lake.read(catalog, "recommendations", day).column("model_version").to_pylist())
    return wh, published


def test_a_second_writer_of_the_same_date_waits_for_the_lock(tmp_path: Path) -> None:
    """Writer B arrives while A holds the date: with no time to wait it gives up naming the lock, and A
    completes alone (warehouse and lake both A)."""
    catalog = Catalog.of(load_settings(env={"NIGHTLY_RECS_HOME": str(tmp_path)}))
    refused: list[str] = []

    def while_a_holds_the_date(step: str) -> None:
        if step != "locked":
            return
        with pytest.raises(PublishLockedError, match=f"another publish holds .*{NIGHT}"):
            publish(catalog, NIGHT, rows("B"), "test-recs", "B", lock_wait_s=0)
        refused.append("B")

    publish(catalog, NIGHT, rows("A"), "test-recs", "A", checkpoint=while_a_holds_the_date)
    assert refused == ["B"]
    assert published_versions(catalog, NIGHT) == ({"A"}, {"A"})


@pytest.mark.parametrize("backend", ["duckdb", "postgresql"])
def test_overlapping_publishes_of_one_date_end_consistent(tmp_path: Path, backend: str,
                                                          request: pytest.FixtureRequest) -> None:
    """B starts while A is between its temp file and its commit and waits for A: the warehouse and the lake
    both end with the last writer, B. With PostgreSQL the lock is an advisory lock in the warehouse."""
    uri = request.getfixturevalue("postgres_database") if backend == "postgresql" else ""
    catalog = Catalog.of(load_settings(env={"NIGHTLY_RECS_HOME": str(tmp_path)}, warehouse_uri=uri))
    errors: list[BaseException] = []

    def writer_b() -> None:
        try:
            publish(catalog, NIGHT, rows("B"), "test-recs", "B")
        except BaseException as err:  # reported by the assertion below
            errors.append(err)

    b = threading.Thread(target=writer_b)

    def start_b(step: str) -> None:
        if step == "locked":
            b.start()

    publish(catalog, NIGHT, rows("A"), "test-recs", "A", checkpoint=start_b)
    b.join()
    assert not errors, errors
    assert published_versions(catalog, NIGHT) == ({"B"}, {"B"})
