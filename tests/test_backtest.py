"""`nightly-recs backtest` (issue 15, item 1): next-day scoring checked by hand on tiny tables, the baselines'
lists published like a night's, and a real replay of two demo nights per variant (real stages, DuckDB, Delta,
MLflow; no mocks) whose figures are recomputed from the warehouse and the lake."""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SMALL_START, lake_query, write_small_demo

from pipeline.config import load_settings
from pipeline.tools.backtest import (
    VARIANTS,
    BacktestConfig,
    baseline_lists,
    next_day_metrics,
    plan_variants,
    published_model_lists,
)
from pipeline.tools.backtest_summary import incremental_vs_full, pooled

FIRST, LAST = SMALL_START + dt.timedelta(days=8), SMALL_START + dt.timedelta(days=9)
LOG2_3 = math.log2(3)


def test_next_day_metrics_by_hand() -> None:
    lists = {"u1": ["a", "b", "c"], "u2": ["x", "y", "z"], "u4": ["a", "b", "c"]}
    # u1 finds b at position 1; u2 finds nothing; u3 got no list (a miss); u4 is not active the next day
    truth = {"u1": ["b"], "u2": ["q"], "u3": ["a"]}
    m = next_day_metrics(lists, truth, k=3, catalog_size=10)
    assert m["hr@3"] == pytest.approx(1 / 3)
    assert m["ndcg@3"] == pytest.approx((1 / LOG2_3) / 3)
    assert m["recall@3"] == pytest.approx(1 / 3)
    assert m["mrr"] == pytest.approx(0.5 / 3)
    assert (m["n_users"], m["n_users_published"], m["n_targets"]) == (3, 2, 3)
    assert m["coverage@3"] == pytest.approx(6 / 10)  # a b c x y z


def test_next_day_metrics_with_several_new_items() -> None:
    # a at 0 and c at 2 of three targets: DCG 1 + 1/log2(4), ideal DCG of 3 hits; recall 2/3; a repeat counts once
    m = next_day_metrics({"u1": ["a", "b", "c", "d"]}, {"u1": ["a", "c", "w", "a"]}, k=3, catalog_size=4)
    assert m["ndcg@3"] == pytest.approx(1.5 / (1 + 1 / LOG2_3 + 0.5))
    assert m["recall@3"] == pytest.approx(2 / 3)
    assert m["hr@3"] == 1.0
    assert m["n_targets"] == 3


def test_baseline_lists_are_published_like_a_night() -> None:
    """Fitted on every user's history, seen items and items outside the catalog removed, top k."""
    items = ["a", "b", "c", "d", "e"]
    sequences = [np.array(s) for s in ([1, 2], [1, 2, 4], [1, 3])]  # a 3, b 2, c 1, d 1; a->b 2, a->c 1, b->d 1
    lists = baseline_lists(items, sequences, users=["u1", "u2"], histories=[["a"], ["b"]], seen=[["a"], ["b"]],
                           catalog_ids={"a", "b", "c", "e"}, k=3)  # d left the catalog
    assert lists["most_popular"] == {"u1": ["b", "c", "e"], "u2": ["a", "c", "e"]}
    # u1 follows a (b, then c); u2's only follower of b (d) is gone: back to popularity, b seen
    assert lists["item_transition"] == {"u1": ["b", "c", "e"], "u2": ["a", "c", "e"]}
    assert set(lists) == {"most_popular", "recent_popular", "item_transition"}


def test_pooling_weighs_every_user_night_the_same() -> None:
    def night(ndcg: float, users: int) -> dict[str, Any]:
        return {"methods": {"model": {"ndcg@10": ndcg, "hr@10": ndcg, "recall@10": ndcg, "mrr": ndcg,
                                      "coverage@10": 0.5, "n_users": users, "n_users_published": users}}}

    out = pooled([night(1.0, 1), night(0.0, 3), {"methods": {}}], "model", 10)
    assert out["ndcg@10"] == pytest.approx(0.25)
    assert out["user_nights"] == 4
    assert out["coverage@10"] == pytest.approx(0.5)


def test_incremental_nights_are_compared_with_full_warm_nights_on_the_same_dates() -> None:
    def night(date: str, ndcg: float, seconds: float, since: str | None, warm: bool = True) -> dict[str, Any]:
        metrics = {"ndcg@10": ndcg, "hr@10": ndcg, "recall@10": ndcg, "mrr": ndcg, "coverage@10": 0.5,
                   "n_users": 10, "n_users_published": 10}
        return {"date": date, "methods": {"model": metrics}, "train": {
            "train_seconds": seconds, "incremental_since": since, "warm_start_from": "1" if warm else None}}

    full = [night("d1", 0.1, 500, None, warm=False), night("d2", 0.20, 100, "full"), night("d3", 0.20, 100, "full"),
            night("d4", 0.20, 100, "full")]
    inc = [night("d1", 0.1, 500, None, warm=False), night("d2", 0.20, 20, "d1"), night("d3", 0.19, 30, "d2"),
           night("d4", 0.21, 100, "full")]  # d4: a full-retrain date
    out = incremental_vs_full({"warm_start": {"nights": full}, "warm_incremental": {"nights": inc}}, 10)
    assert out is not None
    assert out["nights"] == ["d2", "d3", "d4"]  # the first night trains from scratch in both: left out
    assert out["incremental_nights"] == ["d2", "d3"]
    assert out["incremental_ndcg"] == pytest.approx(0.20) and out["full_ndcg"] == pytest.approx(0.20)
    assert out["train_time_share"] == pytest.approx(0.25) and out["cost_at_most_25pct"]
    assert out["within_1pct"]
    inc[2] = night("d3", 0.10, 30, "d2")
    assert not incremental_vs_full({"warm_start": {"nights": full}, "warm_incremental": {"nights": inc}},
                                   10)["within_1pct"]
    assert incremental_vs_full({"warm_start": {"nights": full}}, 10) is None


def test_variants_follow_the_settings(tmp_path: Path) -> None:
    base = load_settings(env={}, home=tmp_path, warm_start_epochs=3)
    config = BacktestConfig(FIRST, FIRST + dt.timedelta(days=6), tmp_path / "bt", converged_every=3,
                            converged_epochs=50)
    warm, scratch, converged = plan_variants(base, config)
    assert warm.overrides == {} and len(warm.nights) == 7
    assert scratch.overrides == {"warm_start": False} and scratch.later_epochs == 3
    assert converged.overrides == {"warm_start": False, "max_epochs": 50}
    assert converged.nights == [FIRST, FIRST + dt.timedelta(days=3), FIRST + dt.timedelta(days=6)]
    [incremental] = plan_variants(base, BacktestConfig(FIRST, FIRST, tmp_path, variants=("warm_incremental",)))
    assert incremental.overrides == {"incremental": True}
    with pytest.raises(ValueError, match="unknown variants"):
        plan_variants(base, BacktestConfig(FIRST, FIRST, tmp_path, variants=("lucky",)))
    with pytest.raises(ValueError, match="before --from"):
        plan_variants(base, BacktestConfig(FIRST, SMALL_START, tmp_path))


def independent_truth(settings: Any, day: dt.date) -> dict[str, list[str]]:
    """Users with an event on `day` (UTC, ingested by then) and a history before it -> their new items."""
    rows = lake_query(settings, """
        with events as (
            select distinct user_id, item_id, cast(timezone('UTC', event_ts) as date) as day
            from {interactions} where dt <= $day)
        select a.user_id, a.item_id from events as a
        where a.day = $day
          and a.user_id in (select user_id from events where day < $day)
          and not exists (select 1 from events as b where b.user_id = a.user_id and b.item_id = a.item_id
                          and b.day < $day)""", {"day": day})
    out: dict[str, list[str]] = {}
    for user, item in rows:
        out.setdefault(user, []).append(item)
    return out


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two demo nights replayed by every variant through the CLI, with small training settings."""
    from pipeline.tools.cli import main

    home = tmp_path_factory.mktemp("backtest-home")
    write_small_demo(home / "landing", days=12)
    out = home / "out"
    env = {"NIGHTLY_RECS_HOME": str(home), "NIGHTLY_RECS_MAX_EPOCHS": "3", "NIGHTLY_RECS_WARM_START_EPOCHS": "1",
           "NIGHTLY_RECS_MAX_LEN": "20", "NIGHTLY_RECS_GATE_BASELINES": "most_popular"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        rc = main(["backtest", "--from", FIRST.isoformat(), "--to", LAST.isoformat(), "--json", str(out / "bt.json"),
                   "--html", str(out / "bt.html"), "--converged-every", "2", "--converged-epochs", "4"])
    return {"rc": rc, "home": home, "result": json.loads((out / "bt.json").read_text()), "html": out / "bt.html"}


def test_a_replay_has_every_variant_night_and_baseline(replayed: dict[str, Any]) -> None:
    result = replayed["result"]
    assert replayed["rc"] == 0
    assert list(result["variants"]) == list(VARIANTS)
    dates = {name: [n["date"] for n in v["nights"]] for name, v in result["variants"].items()}
    assert dates == {"warm_start": [str(FIRST), str(LAST)], "scratch_same_budget": [str(FIRST), str(LAST)],
                     "scratch_converged": [str(FIRST)]}
    for name, variant in result["variants"].items():
        for night in variant["nights"]:
            assert night["status"] == "ok", (name, night)
            assert set(night["methods"]) == {"model", "most_popular", "recent_popular", "item_transition"}
            assert night["methods"]["model"]["n_users"] > 10
            assert night["train"]["train_seconds"] > 0
            assert {"ingest", "train", "register", "publish"} <= set(night["stage_seconds"])
        summary = result["summary"]["variants"][name]
        assert set(summary["methods"]) == {"model", "most_popular", "recent_popular", "item_transition"}
    warm, scratch = result["variants"]["warm_start"]["nights"], result["variants"]["scratch_same_budget"]["nights"]
    assert warm[1]["train"]["warm_start_from"] == "1" and scratch[1]["train"]["warm_start_from"] is None
    assert scratch[1]["train"]["epochs"] == 1  # the warm start's per-night budget, from scratch
    assert result["summary"]["warm_vs_converged"]["nights"] == [str(FIRST)]


def test_the_model_figures_are_the_published_table_against_the_next_day(replayed: dict[str, Any]) -> None:
    """Recompute the warm variant's first night from its warehouse and its lake, independently of the marts."""
    result = replayed["result"]
    settings = load_settings(env={}, home=Path(result["variants"]["warm_start"]["home"]))
    night = result["variants"]["warm_start"]["nights"][0]
    published = published_model_lists(settings, FIRST)
    truth = independent_truth(settings, FIRST + dt.timedelta(days=1))
    expected = next_day_metrics(published, truth, 10, 1)
    got = night["methods"]["model"]
    assert got["n_users"] == len(truth) and got["n_targets"] == expected["n_targets"]
    for key in ("hr@10", "ndcg@10", "recall@10", "mrr", "n_users_published"):
        assert got[key] == pytest.approx(expected[key]), key
    # the baselines were scored on the same users
    assert {m["n_users"] for m in night["methods"].values()} == {len(truth)}


def test_the_html_page_has_the_plot(replayed: dict[str, Any]) -> None:
    html = replayed["html"].read_text()
    match = re.search(r'id="plot-backtest"[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert match, "no plot in the page"
    assert base64.b64decode(match.group(1)).startswith(b"\x89PNG\r\n\x1a\n")
    for name in VARIANTS:
        assert name in html
