"""Offline evaluation: ranking metrics, the model under the full-ranking protocol, and baselines.

Protocol (shared by the model and every baseline): each user has an input history and one held-out target;
all items 1..n_items are ranked, items in the user's input history are removed from the ranking except the
target itself, and the rank of the target is the number of remaining items scoring strictly higher plus the
number tied with it (ties count against the target, so a constant scorer gets no credit). Target 0 (an item
unknown to the model) is a miss. NaN is the worst case for the model: a NaN target score is a miss and every
other candidate with a NaN score counts as ranked above the target.

With `item_stats`, the top-10 lists are also measured beyond accuracy (recsys.diversity: Gini of exposure,
novelty, intra-list diversity, popularity lift, cold-item share), for the model and every baseline alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from pipeline.recsys.data import left_pad
from pipeline.recsys.diversity import TOP_N, ItemStats, beyond_accuracy
from pipeline.recsys.model import top_k_unseen

if TYPE_CHECKING:
    from pipeline.recsys.bundle import ModelBundle
    from pipeline.recsys.data import NightData

log = logging.getLogger(__name__)

NOT_RANKED = -1
BASELINES = ("most_popular", "recent_popular", "item_transition")
RECENT_FRACTION = 0.2  # recent_popular counts the last 20% of each user's training events (at least one)


def rank_metrics(ranks: np.ndarray, ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    """HR@k, NDCG@k and MRR from 0-based target ranks; a negative rank means "not ranked" (a miss)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        return {**{f"{m}@{k}": 0.0 for k in ks for m in ("hr", "ndcg")}, "mrr": 0.0}
    ranked = ranks >= 0
    safe = np.where(ranked, ranks, np.inf)
    out: dict[str, float] = {}
    for k in ks:
        hit = safe < k
        out[f"hr@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(np.where(hit, safe, 0) + 2.0), 0.0).mean())
    out["mrr"] = float(np.where(ranked, 1.0 / (safe + 1.0), 0.0).mean())
    return out


def _ranking_metrics(
    score_fn: Callable[[np.ndarray, list[np.ndarray]], Tensor],
    inputs: list[np.ndarray],
    targets: np.ndarray,
    n_items: int,
    ks: Sequence[int] = (10, 20),
    cold_items: np.ndarray | None = None,
    batch_size: int = 512,
    item_stats: ItemStats | None = None,
) -> dict[str, float]:
    """The protocol for any scorer: score_fn(user positions, histories) -> (B, n_items+1) scores."""
    targets = np.asarray(targets, dtype=np.int64)
    assert len(inputs) == len(targets), f"{len(inputs)} inputs but {len(targets)} targets"
    ranks = np.full(len(targets), NOT_RANKED, dtype=np.int64)
    top_k = max(10, max(ks))
    top10_items: list[np.ndarray] = []
    top10_lists: list[np.ndarray] = []  # (B, 10) per batch, 0 = empty slot
    n_candidates = np.zeros(len(targets), dtype=np.float64)
    for start in range(0, len(targets), batch_size):
        idx = np.arange(start, min(start + batch_size, len(targets)))
        hist = [np.asarray(inputs[i], dtype=np.int64) for i in idx]
        scores = score_fn(idx, hist).float().clone()  # (B, N+1)
        assert scores.shape == (len(idx), n_items + 1), f"scores {tuple(scores.shape)} != {(len(idx), n_items + 1)}"
        tgt = torch.from_numpy(targets[idx])  # (B,)
        valid = (tgt > 0) & (tgt <= n_items)
        tgt_safe = torch.where(valid, tgt, torch.zeros_like(tgt))
        scores[:, 0] = float("-inf")
        seen = left_pad(hist)  # (B, Lmax)
        target_score = scores.gather(1, tgt_safe.unsqueeze(1))  # (B, 1)
        top = top_k_unseen(scores, seen, min(top_k, n_items), keep=tgt_safe)[1][:, :10]  # the target stays ranked
        excluded = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, seen, True)
        excluded[:, 0] = True
        excluded.scatter_(1, tgt_safe.unsqueeze(1), ~valid.unsqueeze(1))
        n_candidates[idx] = (~excluded).sum(1).numpy()
        higher = ((scores > target_score) | (torch.isnan(scores) & ~excluded)).sum(1)  # NaN counts against
        tied = ((scores == target_score) & ~excluded).sum(1) - 1  # minus the target itself
        rank = higher + tied.clamp(min=0)
        ranks[idx] = torch.where(valid & torch.isfinite(target_score[:, 0]), rank, NOT_RANKED).numpy()
        top10_items.append(top[torch.isfinite(scores.gather(1, top))].numpy())
        top10_lists.append(torch.where(torch.isfinite(scores.gather(1, top)), top, 0).numpy())
    metrics = rank_metrics(ranks, ks)
    reached = np.unique(np.concatenate(top10_items)) if top10_items else np.zeros(0, np.int64)
    metrics["coverage@10"] = float(len(reached[reached > 0]) / n_items)
    metrics["n_users"] = float(len(targets))
    if item_stats is not None and top10_lists:
        metrics.update(beyond_accuracy(np.concatenate(top10_lists)[:, :TOP_N], inputs, item_stats))
    if cold_items is not None:
        is_cold = np.isin(targets, np.asarray(cold_items, dtype=np.int64)) & (targets > 0)
        cold_ranks = ranks[is_cold]
        metrics["cold_recall@10"] = float(((cold_ranks >= 0) & (cold_ranks < 10)).mean()) if is_cold.any() else 0.0
        metrics["n_cold_targets"] = float(is_cold.sum())
        random_recall = np.mean(10.0 / np.maximum(n_candidates[is_cold], 10.0)) if is_cold.any() else 0.0
        metrics["random_recall@10"] = float(random_recall)
    return metrics


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    inputs: list[np.ndarray],
    targets: np.ndarray,
    ks: Sequence[int] = (10, 20),
    cold_items: np.ndarray | None = None,
    batch_size: int = 512,
    item_stats: ItemStats | None = None,
) -> dict[str, float]:
    """Full-ranking metrics of a SeqRecModel: hr@k, ndcg@k, mrr, coverage@10 (+ cold_recall@10, n_cold_targets;
    + the beyond-accuracy metrics with item_stats)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    items = model.item_representations()  # (N+1, D)
    max_len = model.config.max_len

    def score_fn(idx: np.ndarray, hist: list[np.ndarray]) -> Tensor:
        seqs = left_pad(hist, max_len).to(device)
        return (model.user_states(seqs) @ items.T).float().cpu()

    try:
        return _ranking_metrics(score_fn, inputs, targets, model.config.n_items, ks, cold_items, batch_size,
                                item_stats)
    finally:
        model.train(was_training)


def evaluate_bundle(bundle: ModelBundle, night: NightData) -> dict[str, float]:
    """A model bundle on the night's leave-one-out test items, mapped through the bundle's own item index
    (items it does not know are dropped from inputs and count as misses as targets)."""
    index = bundle.index
    inputs = [bundle.encode([night.item_ids[i - 1] for i in seq]) for seq in night.test_inputs()]
    targets = np.array([index.get(night.item_ids[t - 1], 0) for t in night.loo_test], np.int64)
    return evaluate_model(bundle.model, inputs, targets)


# ---- baselines -----------------------------------------------------------------------------------------------


def popularity_scores(train_seqs: list[np.ndarray], n_items: int) -> np.ndarray:
    """(n_items+1,) interaction counts over the training sequences (row 0 = 0)."""
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in train_seqs]) if train_seqs else np.zeros(0, np.int64)
    counts = np.bincount(flat[(flat > 0) & (flat <= n_items)], minlength=n_items + 1).astype(np.float64)
    counts[0] = 0.0
    return counts


def recent_popularity_scores(
    train_seqs: list[np.ndarray], n_items: int, recent_fraction: float = RECENT_FRACTION
) -> np.ndarray:
    """Counts over the last `recent_fraction` of each user's training events (at least one per user).

    Sequences carry order, not clock time, so "recent" is per user; overall popularity breaks ties.
    """
    recent = [np.asarray(s)[-max(1, int(np.ceil(len(s) * recent_fraction))) :] for s in train_seqs if len(s)]
    counts = popularity_scores(recent, n_items)
    overall = popularity_scores(train_seqs, n_items)
    return counts + overall / (overall.max() + 1.0)


def transition_matrix(train_seqs: list[np.ndarray], n_items: int) -> sp.csr_matrix:
    """(n_items+1, n_items+1) counts of item a immediately followed by item b in the training sequences."""
    src, dst = [], []
    for s in train_seqs:
        s = np.asarray(s, dtype=np.int64)
        if len(s) > 1:
            src.append(s[:-1])
            dst.append(s[1:])
    src_a = np.concatenate(src) if src else np.zeros(0, np.int64)
    dst_a = np.concatenate(dst) if dst else np.zeros(0, np.int64)
    data = np.ones(len(src_a), dtype=np.float64)
    return sp.csr_matrix((data, (src_a, dst_a)), shape=(n_items + 1, n_items + 1))


def evaluate_baselines(
    train_seqs: list[np.ndarray],
    inputs: list[np.ndarray],
    targets: np.ndarray,
    n_items: int,
    ks: Sequence[int] = (10, 20),
    cold_items: np.ndarray | None = None,
    item_stats: ItemStats | None = None,
) -> dict[str, dict[str, float]]:
    """most_popular, recent_popular and item_transition (last item -> next item counts, backing off to
    popularity for ties and unseen last items), under the same protocol as the model."""
    pop = popularity_scores(train_seqs, n_items)
    pop_tiebreak = torch.from_numpy(pop / (pop.max() + 1.0)).float()  # < 1: only orders equal counts
    recent = torch.from_numpy(recent_popularity_scores(train_seqs, n_items)).float()
    trans = transition_matrix(train_seqs, n_items)

    def constant(vec: Tensor) -> Callable[[np.ndarray, list[np.ndarray]], Tensor]:
        return lambda idx, hist: vec.unsqueeze(0).expand(len(idx), -1)

    def transition_fn(idx: np.ndarray, hist: list[np.ndarray]) -> Tensor:
        last = np.array([h[-1] if len(h) else 0 for h in hist], dtype=np.int64)
        rows = torch.from_numpy(trans[last].toarray()).float()  # (B, N+1)
        return rows + pop_tiebreak.unsqueeze(0)

    scorers = {
        "most_popular": constant(torch.from_numpy(pop).float()),
        "recent_popular": constant(recent),
        "item_transition": transition_fn,
    }
    return {
        name: _ranking_metrics(fn, inputs, targets, n_items, ks, cold_items, item_stats=item_stats)
        for name, fn in scorers.items()
    }
