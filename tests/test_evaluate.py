"""Ranking metrics on hand-computed cases, baselines on a toy sequence set, the full-ranking protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.recsys.evaluate import (
    evaluate_baselines,
    evaluate_model,
    popularity_scores,
    rank_metrics,
    recent_popularity_scores,
    transition_matrix,
)
from pipeline.recsys.model import ModelConfig


def test_rank_metrics_hand_computed() -> None:
    ranks = np.array([0, 4, 12, -1])  # first place, fifth place, 13th place, not ranked
    m = rank_metrics(ranks, ks=(10, 20))
    assert m["hr@10"] == pytest.approx(2 / 4)
    assert m["hr@20"] == pytest.approx(3 / 4)
    assert m["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(6)) / 4)
    # 0-based rank r -> 1 / log2(r + 2)
    assert m["ndcg@20"] == pytest.approx((1.0 + 1 / math.log2(6) + 1 / math.log2(14)) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 5 + 1 / 13) / 4)


def test_rank_metrics_large_rank_is_a_miss() -> None:
    m = rank_metrics(np.array([10**9, 9]), ks=(10,))
    assert m["hr@10"] == pytest.approx(0.5)
    assert m["ndcg@10"] == pytest.approx(0.5 / math.log2(11))


TOY = [np.array([1, 2, 3]), np.array([1, 2, 4]), np.array([2, 3, 1]), np.array([5, 2, 3])]


def test_popularity_and_transitions_on_toy_sequences() -> None:
    pop = popularity_scores(TOY, n_items=6)
    np.testing.assert_array_equal(pop, [0, 3, 4, 3, 1, 1, 0])
    trans = transition_matrix(TOY, n_items=6).toarray()
    assert trans[2, 3] == 3 and trans[1, 2] == 2 and trans[2, 4] == 1 and trans[3, 1] == 1 and trans[5, 2] == 1
    assert trans.sum() == 8
    recent = recent_popularity_scores(TOY, n_items=6)  # last event of each user: 3, 4, 1, 3
    assert recent[3] > recent[1] > recent[2]  # recency beats overall popularity; ties broken by popularity
    assert recent[4] > recent[5]


def test_baselines_on_toy_protocol() -> None:
    inputs = [np.array([1, 2]), np.array([5]), np.array([6])]
    targets = np.array([3, 2, 1])
    res = evaluate_baselines(TOY, inputs, targets, n_items=6, ks=(1, 2))
    # transition: after 2 comes 3 (3x) -> rank 0; after 5 comes 2 -> rank 0; item 6 never seen -> popularity
    # order with seen 6 removed: 2 (4), then 1 and 3 tied at 3 (1 vs 3 broken pessimistically: rank 2)
    assert res["item_transition"]["hr@1"] == pytest.approx(2 / 3)
    assert res["item_transition"]["hr@2"] == pytest.approx(2 / 3)
    # most popular: user 1 (1, 2 seen) ranks 3 first among {3, 4, 5, 6}; user 2 ranks 2 first; user 3: 2 first,
    # then 1 tied with 3 -> rank 2
    assert res["most_popular"]["hr@1"] == pytest.approx(2 / 3)
    assert set(res) == {"most_popular", "recent_popular", "item_transition"}


class FixedScores(torch.nn.Module):
    """A stand-in model whose user state is ignored: every user gets the same item scores."""

    def __init__(self, item_scores: list[float]) -> None:
        super().__init__()
        self.config = ModelConfig(n_items=len(item_scores) - 1, item_repr="id", max_len=10)
        self.scores = torch.nn.Parameter(torch.tensor(item_scores).unsqueeze(1))

    def item_representations(self) -> torch.Tensor:
        return self.scores  # (N+1, 1)

    def user_states(self, seqs: torch.Tensor) -> torch.Tensor:
        return torch.ones(seqs.shape[0], 1)


def test_evaluate_model_removes_seen_items_but_never_the_target() -> None:
    model = FixedScores([0.0, 9.0, 8.0, 7.0, 6.0, 5.0])  # item 1 best, item 5 worst
    # user 0: items 1, 2 seen -> target 3 is first; user 1: nothing seen -> target 3 is third
    # user 2: target 1 was seen before and is still ranked (first)
    inputs = [np.array([1, 2]), np.array([], np.int64), np.array([1, 4])]
    m = evaluate_model(model, inputs, np.array([3, 3, 1]), ks=(1, 3))
    assert m["hr@1"] == pytest.approx(2 / 3)
    assert m["hr@3"] == pytest.approx(1.0)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1) / 3)
    # coverage: top lists are {3,4,5}, {1,2,3}, {1,2,3}: every item
    assert m["coverage@10"] == pytest.approx(1.0)


def test_evaluate_model_unknown_target_is_a_miss() -> None:
    model = FixedScores([0.0, 9.0, 8.0, 7.0])
    m = evaluate_model(model, [np.array([2]), np.array([2])], np.array([0, 1]), ks=(1,))
    assert m["hr@1"] == pytest.approx(0.5)


def test_cold_recall_counts_cold_targets_only() -> None:
    model = FixedScores([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0])  # 12 items
    inputs = [np.array([12]), np.array([12]), np.array([12]), np.array([12])]
    # ranks with 12 removed: item 11 -> 0, item 2 -> 9, item 1 -> 10, item 10 -> 1
    targets = np.array([11, 2, 1, 10])
    m = evaluate_model(model, inputs, targets, cold_items=np.array([1, 2, 5]))
    assert m["n_cold_targets"] == 2
    assert m["cold_recall@10"] == pytest.approx(0.5)  # item 2 hit, item 1 miss; warm hits do not count
    assert m["hr@10"] == pytest.approx(3 / 4)
    assert m["random_recall@10"] == pytest.approx(10 / 11)


def test_nan_scores_count_against_the_model() -> None:
    """NaN is the worst case (issue 14, item 1): a scorer that is NaN everywhere but on the target must not get
    full marks (it did: 1.0), and NaN on half the catalog must not beat an honest scorer."""
    from pipeline.recsys.evaluate import _ranking_metrics

    n_items, targets = 20, np.array([3, 7, 11], dtype=np.int64)
    inputs = [np.array([1], dtype=np.int64)] * len(targets)

    def nan_but_target(idx: np.ndarray, hist: list[np.ndarray]) -> torch.Tensor:
        scores = torch.full((len(idx), n_items + 1), float("nan"))
        scores[torch.arange(len(idx)), torch.from_numpy(targets[idx])] = 1.0
        return scores

    def half_nan(idx: np.ndarray, hist: list[np.ndarray]) -> torch.Tensor:
        scores = torch.arange(n_items + 1, dtype=torch.float32).flip(0).repeat(len(idx), 1)  # item 1 best
        scores[:, ::2] = float("nan")
        return scores

    assert _ranking_metrics(nan_but_target, inputs, targets, n_items)["ndcg@10"] == 0.0
    honest = rank_metrics(targets - 2)  # targets ranked by id: item 2 first (item 1 is seen)
    assert _ranking_metrics(half_nan, inputs, targets, n_items)["ndcg@10"] < honest["ndcg@10"]


# ---- several targets per user (the temporal split: every new item of the day) -------------------------------


def test_multi_target_metrics_hand_computed() -> None:
    from pipeline.recsys.evaluate import multi_target_metrics

    # user 1: two targets at positions 0 and 2; user 2: three targets, none ranked; user 3: one target at 5
    m = multi_target_metrics([np.array([0, 2]), np.array([], np.int64), np.array([5])], np.array([2, 3, 1]),
                             ks=(3, 10))
    ideal_2 = 1 + 1 / math.log2(3)  # two hits possible in the top 3: positions 0 and 1
    assert m["hr@3"] == pytest.approx(1 / 3)
    assert m["ndcg@3"] == pytest.approx(((1 + 1 / math.log2(4)) / ideal_2) / 3)
    assert m["recall@3"] == pytest.approx((2 / 2) / 3)
    assert m["hr@10"] == pytest.approx(2 / 3)
    assert m["ndcg@10"] == pytest.approx(((1 + 1 / math.log2(4)) / ideal_2 + 1 / math.log2(7)) / 3)
    assert m["recall@10"] == pytest.approx((1 + 0 + 1) / 3)
    assert m["mrr"] == pytest.approx((1 + 0 + 1 / 6) / 3)


def test_multi_target_protocol_ranks_each_target_among_the_other_items() -> None:
    """Item i scores 10 - i (item 1 best). User 0 read item 1 and has targets 3 and 5: the ranking without
    item 1 is 2, 3, 4, 5, 6, so the targets sit at positions 1 and 3. User 1 read item 6 but has seen items 2
    and 4 too (exclude): the ranking is 1, 3, 5 and its target 5 sits at position 2. User 2 scores all tied:
    its targets go after every tied item."""
    from pipeline.recsys.evaluate import _ranking_metrics

    n_items = 6

    def by_id(idx: np.ndarray, hist: list[np.ndarray]) -> torch.Tensor:
        scores = (10 - torch.arange(n_items + 1, dtype=torch.float32)).repeat(len(idx), 1)
        scores[idx == 2] = 1.0  # user 2: a constant scorer
        return scores

    inputs = [np.array([1]), np.array([6]), np.array([1])]
    targets = [np.array([3, 5]), np.array([5]), np.array([2, 3])]
    exclude = [np.array([1]), np.array([2, 4, 6]), np.array([1])]
    m = _ranking_metrics(by_id, inputs, targets, n_items, ks=(2, 4), exclude=exclude)
    ndcg_user0_at4 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    ndcg_user1_at4 = 1 / math.log2(4)
    ndcg_user2_at4 = (1 / math.log2(5)) / (1 + 1 / math.log2(3))  # 4, 5, 6 tie and go first: positions 3, 4
    assert m["ndcg@4"] == pytest.approx((ndcg_user0_at4 + ndcg_user1_at4 + ndcg_user2_at4) / 3)
    assert m["hr@2"] == pytest.approx(1 / 3) and m["hr@4"] == pytest.approx(1.0)
    assert m["recall@4"] == pytest.approx((1 + 1 + 1 / 2) / 3)
    assert m["mrr"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)
    assert m["n_users"] == 3 and m["n_targets"] == 5


def test_one_target_per_user_gives_the_single_target_metrics() -> None:
    from pipeline.recsys.evaluate import _ranking_metrics

    n_items = 6
    inputs = [np.array([1, 2]), np.array([5]), np.array([6])]
    targets = np.array([3, 2, 1])

    def by_id(idx: np.ndarray, hist: list[np.ndarray]) -> torch.Tensor:
        return (10 - torch.arange(n_items + 1, dtype=torch.float32)).repeat(len(idx), 1)

    single = _ranking_metrics(by_id, inputs, targets, n_items)
    as_lists = _ranking_metrics(by_id, inputs, [t[None] for t in targets], n_items)
    assert single == as_lists
    assert single["recall@10"] == single["hr@10"]
    expected = rank_metrics(np.array([0, 1, 0]))  # user 1's target 2 comes after item 1
    assert all(single[k] == pytest.approx(v) for k, v in expected.items())


def test_counting_and_bucketing_give_the_same_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Few targets per row are ranked by one counting pass each, many by buckets of the sorted targets: both
    paths agree, ties, NaN and excluded items included."""
    from pipeline.recsys import evaluate

    torch.manual_seed(0)
    scores = torch.randn(64, 301)
    scores[:, 5] = scores[:, 9]  # ties
    scores[3, 7] = float("nan")
    excluded = torch.zeros_like(scores, dtype=torch.bool)
    excluded[:, :20] = True
    for n_targets in (1, 3, 12):
        targets = torch.randint(0, 301, (64, n_targets))
        targets[0, 0] = 0  # padding
        counted = evaluate._target_ranks(scores, targets, excluded, 300)
        monkeypatch.setattr(evaluate, "COUNT_UP_TO_TARGETS", -1)
        bucketed = evaluate._target_ranks(scores, targets, excluded, 300)
        monkeypatch.setattr(evaluate, "COUNT_UP_TO_TARGETS", 8)
        assert torch.equal(counted[0], bucketed[0]) and torch.equal(counted[1], bucketed[1])
        assert (counted[0] >= 0).any()  # real ranks, not only NOT_RANKED
