"""Beyond-accuracy metrics on hand-computed cases, their place in the evaluation, and MMR re-ranking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.recsys.bundle import ModelBundle
from pipeline.recsys.diversity import (
    ItemStats,
    beyond_accuracy,
    cold_share,
    gini,
    intra_list_diversity,
    mmr_rerank,
    novelty,
    popularity_lift,
)
from pipeline.recsys.evaluate import evaluate_baselines, evaluate_model, popularity_scores
from pipeline.recsys.model import ModelConfig, SeqRecModel
from pipeline.recsys.score import ScoringInput, Serving, score_users


def test_gini_of_uniform_exposure_is_zero_and_of_one_item_is_n_minus_one_over_n() -> None:
    assert gini(np.array([3, 3, 3, 3])) == 0.0
    assert gini(np.array([0, 0, 0, 5])) == pytest.approx(3 / 4)
    assert gini(np.array([1, 3])) == pytest.approx(0.25)  # (|1-3| * 2) / (2 * 2^2 * mean 2)
    assert gini(np.zeros(4)) == 0.0


def test_novelty_is_the_mean_self_information_under_smoothed_popularity() -> None:
    popularity = np.array([0, 1, 1, 1, 1])  # p(i) = (1 + 1) / (4 + 4) = 1/4 for every item -> 2 bits
    assert novelty(np.array([[1, 2], [3, 0]]), popularity) == pytest.approx(2.0)
    popularity = np.array([0, 5, 0, 1])  # p = 6/9, 1/9, 2/9
    expected = (-math.log2(6 / 9) - math.log2(1 / 9)) / 2
    assert novelty(np.array([[1, 2]]), popularity) == pytest.approx(expected)


def test_intra_list_diversity_of_identical_and_orthogonal_texts() -> None:
    text = np.array([[0, 0], [1, 0], [2, 0], [0, 1]], np.float32)  # item 2 points like item 1, item 3 apart
    assert intra_list_diversity(np.array([[1, 2]]), text) == pytest.approx(0.0)
    assert intra_list_diversity(np.array([[1, 3]]), text) == pytest.approx(1.0)
    # lists of one item have no pair and are left out; 3 items: cosines 1, 0, 0 -> 1 - 1/3
    assert intra_list_diversity(np.array([[1, 2, 3], [1, 0, 0]]), text) == pytest.approx(2 / 3)


def test_popularity_lift_and_cold_share() -> None:
    popularity = np.array([0, 10, 2, 0, 4])
    lists = np.array([[1, 3], [1, 0]])  # recommended popularity: user 0 (10 + 0) / 2 = 5, user 1: 10
    histories = [np.array([2, 4]), np.array([2])]  # history popularity: 3 and 2
    assert popularity_lift(lists, histories, popularity) == pytest.approx(7.5 / 2.5)
    assert cold_share(lists, popularity) == pytest.approx(1 / 3)


def test_beyond_accuracy_names_and_skips_ild_without_text() -> None:
    stats = ItemStats(np.array([0, 1, 1, 1, 1]), None)
    out = beyond_accuracy(np.array([[1, 2], [3, 4]]), [np.array([1]), np.array([2])], stats)
    assert set(out) == {"gini@2", "novelty@2", "popularity_lift@2", "cold_share@2"}
    assert out["gini@2"] == 0.0 and out["cold_share@2"] == 0.0


TRAIN = [np.array([1, 2, 3]), np.array([1, 2, 4]), np.array([2, 3, 1]), np.array([5, 2, 3])]


def test_every_baseline_and_the_model_report_the_metrics() -> None:
    text = np.eye(7, dtype=np.float32)
    stats = ItemStats(popularity_scores(TRAIN, 6), text)
    inputs, targets = [np.array([1, 2]), np.array([5]), np.array([6])], np.array([3, 2, 1])
    results = evaluate_baselines(TRAIN, inputs, targets, 6, item_stats=stats)
    torch.manual_seed(0)
    model = SeqRecModel(ModelConfig(n_items=6, max_len=5, d_model=8, item_repr="id")).eval()
    results["model"] = evaluate_model(model, inputs, targets, item_stats=stats)
    for name, metrics in results.items():
        assert {"coverage@10", "gini@6", "novelty@6", "ild@6", "popularity_lift@6", "cold_share@6"} <= set(metrics)
        # every list holds all unseen items (6 items, top 10), orthogonal texts: fully diverse
        assert metrics["ild@6"] == pytest.approx(1.0), name
        assert metrics["cold_share@6"] == pytest.approx(2 / 14), name  # item 6 (never trained): 2 of 14 slots


def test_mmr_with_weight_zero_keeps_the_order_and_with_weight_spreads_the_list() -> None:
    # items 0-2 point the same way and score highest; items 3-4 point elsewhere; item 5 like 0 but weak
    vectors = torch.nn.functional.normalize(torch.tensor(
        [[1.0, 0.0], [1.0, 0.05], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0], [1.0, -0.1]]), dim=-1)
    scores = torch.tensor([[5.0, 4.9, 4.8, 4.0, 3.9, 1.0]])
    candidates = torch.arange(6)[None]
    values, picked = mmr_rerank(scores, candidates, vectors, 3, weight=0.0)
    assert picked.tolist() == [[0, 1, 2]]
    values, picked = mmr_rerank(scores, candidates, vectors, 3, weight=0.5)
    # relevance (s - 1) / 4; second pick: item 3 (0.5 * 0.75 - 0.5 * 0) beats item 1 (0.5 * 0.975 - 0.5 * 1.0)
    assert picked.tolist() == [[0, 3, 1]]
    assert values[0].tolist() == sorted(values[0].tolist(), reverse=True)  # published as scores
    padded = np.vstack([[0.0, 0.0], vectors.numpy()])  # model index = candidate + 1
    assert intra_list_diversity(picked.numpy() + 1, padded) > intra_list_diversity(np.array([[1, 2, 3]]), padded)


def test_mmr_leaves_unavailable_candidates_out() -> None:
    vectors = torch.eye(3)
    values, picked = mmr_rerank(torch.tensor([[2.0, 1.0, float("-inf")]]), torch.arange(3)[None], vectors, 3, 0.3)
    assert picked[0, :2].tolist() == [0, 1] and math.isinf(values[0, 2].item())


def test_serving_with_diversity_zero_is_identical_and_above_zero_more_diverse() -> None:
    torch.manual_seed(0)
    n_items = 60
    ids = [f"i{j:02d}" for j in range(1, n_items + 1)]
    bundle = ModelBundle(SeqRecModel(ModelConfig(n_items=n_items, max_len=10, d_model=16, item_repr="id")).eval(),
                         ids)
    rng = np.random.default_rng(0)
    histories = [list(rng.choice(ids, 6)) for _ in range(40)]
    data = ScoringInput([f"u{n}" for n in range(40)], histories, histories, set(ids), [(i, 1.0) for i in ids])
    plain = score_users(bundle, data, k=10, device="cpu")
    assert score_users(bundle, data, k=10, device="cpu", serving=Serving(diversity=0.0)).equals(plain)
    diverse = score_users(bundle, data, k=10, device="cpu", serving=Serving(diversity=0.5))
    vectors = torch.nn.functional.normalize(bundle.model.item_representations().detach(), dim=-1).numpy()

    def ild(table) -> float:
        lists = np.array([bundle.index[i] for i in table.column("item_id").to_pylist()]).reshape(40, 10)
        return intra_list_diversity(lists, vectors)

    assert ild(diverse) > ild(plain)
    for user in range(40):  # scores (the MMR values) still never increase down a list
        scores = diverse.column("score").to_numpy()[user * 10 : (user + 1) * 10]
        assert np.all(np.diff(scores) <= 0)


def test_the_tradeoff_plot_is_a_png_with_both_panels(tmp_path) -> None:
    import matplotlib.image as mpimg

    from pipeline.tools.explain_benchmark import plot_tradeoff

    curve = {"0": {"ndcg@10": 0.30, "ild@10": 0.40, "coverage@10": 0.20},
             "0.5": {"ndcg@10": 0.26, "ild@10": 0.60, "coverage@10": 0.35}}
    path = plot_tradeoff({"id+text": curve}, tmp_path / "out" / "tradeoff.png")
    image = mpimg.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 2 * image.shape[0] * 0.9
    assert image[..., :3].std() > 0.05, "the plot draws something"
