"""Offline evaluation: ranking metrics, the model under the full-ranking protocol, and baselines.

Protocol (shared by the model and every baseline): each user has an input history and one or more held-out
targets; all items 1..n_items are ranked, the user's excluded items (by default the input history) are removed
from the ranking except the targets themselves, and a target's rank is the number of remaining non-target
items scoring higher than or equal to it (ties count against the target, so a constant scorer gets no credit);
the i-th best ranked target of a user then sits at position rank + i. Target 0 (an item unknown to the model)
is a miss. NaN is the worst case for the model: a NaN target score is a miss and every other candidate with a
NaN score counts as ranked above the target.

Several targets per user (the temporal split: every new item of the user's day D) use the standard
full-ranking metrics over the target set (multi_target_metrics): HR@K = at least one target in the top K,
NDCG@K = DCG of the hits over the ideal DCG of min(|targets|, K) hits (binary relevance), recall@K = hits /
|targets|, MRR from the first target. Each user weighs the same whatever the size of their day; with one
target per user (leave-one-out) they reduce to the classic HR@K (= recall@K), NDCG@K and MRR.

With `item_stats`, the top-10 lists are also measured beyond accuracy (recsys.diversity: Gini of exposure,
novelty, intra-list diversity, popularity lift, cold-item share), for the model and every baseline alike.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from pipeline.recsys.data import left_pad
from pipeline.recsys.diversity import TOP_N, ItemStats, beyond_accuracy
from pipeline.recsys.model import SeqRecModel
from pipeline.recsys.ranking import top_k_unseen

if TYPE_CHECKING:
    from pipeline.recsys.bundle import ModelBundle
    from pipeline.recsys.data import EvalSplit

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


def multi_target_metrics(
    positions: Sequence[np.ndarray], n_targets: np.ndarray, ks: Sequence[int] = (10, 20)
) -> dict[str, float]:
    """HR@k, NDCG@k, recall@k and MRR of users with several targets, from each user's 0-based positions of
    its ranked targets in the full ranking (a missed target has no position) and its number of targets:
    HR@k = any target in the top k; NDCG@k = DCG of the hits / ideal DCG of min(n_targets, k) hits;
    recall@k = hits in the top k / n_targets; MRR = 1 / (position of the first target + 1). With one target
    each, these are rank_metrics' values (recall@k = HR@k)."""
    n_targets = np.asarray(n_targets, dtype=np.int64)
    out: dict[str, float] = {}
    if len(n_targets) == 0:
        return {**{f"{m}@{k}": 0.0 for k in ks for m in ("hr", "ndcg", "recall")}, "mrr": 0.0}
    discounts = 1.0 / np.log2(np.arange(max(ks)) + 2.0)  # discount of position 0..max(ks)-1
    for k in ks:
        hits = [np.asarray(p)[np.asarray(p) < k] for p in positions]
        dcg = np.array([discounts[h].sum() for h in hits])
        ideal = np.array([discounts[: min(n, k)].sum() for n in n_targets])
        n_hits = np.array([len(h) for h in hits], dtype=np.float64)
        out[f"hr@{k}"] = float((n_hits > 0).mean())
        out[f"ndcg@{k}"] = float(np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), 0.0).mean())
        out[f"recall@{k}"] = float((n_hits / np.maximum(n_targets, 1)).mean())
    first = np.array([np.min(p) if len(p) else np.inf for p in positions], dtype=np.float64)
    out["mrr"] = float((1.0 / (first + 1.0)).mean())
    return out


def target_lists(targets: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each user's targets as an array of distinct indices, in order (one target per user: a 1-array)."""
    if isinstance(targets, np.ndarray) and targets.ndim == 1 and targets.dtype != object:
        return [targets[i : i + 1].astype(np.int64) for i in range(len(targets))]
    return [np.array(list(dict.fromkeys(np.asarray(t, dtype=np.int64).tolist())), dtype=np.int64) for t in targets]


COUNT_UP_TO_TARGETS = 4  # one counting pass per target up to this many targets per row, else by buckets


def _target_ranks(scores: Tensor, targets: Tensor, excluded: Tensor, n_items: int) -> tuple[Tensor, Tensor]:
    """(ranks, n_candidates): ranks (B, T) = how many items that are neither excluded nor a target of the row
    score >= the target (ties and NaN count against it), NOT_RANKED for padding, unknown or non-finite
    targets; n_candidates (B,) = items left in the ranking (targets included)."""
    valid = (targets > 0) & (targets <= n_items)  # (B, T)
    safe = torch.where(valid, targets, torch.zeros_like(targets))
    target_scores = scores.gather(1, safe)  # (B, T)
    pool = excluded.clone().scatter_(1, safe, True)  # (B, N+1): targets leave the competitor pool
    competitors = torch.where(torch.isnan(scores), float("inf"), scores).masked_fill(pool, float("-inf"))
    ranked = valid & torch.isfinite(target_scores)
    if targets.shape[1] <= COUNT_UP_TO_TARGETS:  # one linear pass per target column
        at_least = torch.stack([(competitors >= target_scores[:, t : t + 1]).float().sum(1).long()  # exact
                                for t in range(targets.shape[1])], dim=1)  # (B, T)   below 2^24 items
    else:
        at_least = _bucket_counts(competitors, torch.where(ranked, target_scores, float("inf")))
    n_candidates = (~pool).sum(1) + valid.sum(1)
    return torch.where(ranked, at_least, NOT_RANKED), n_candidates


def _bucket_counts(competitors: Tensor, target_scores: Tensor) -> Tensor:
    """(B, T): per target, how many competitors score >= it, in one pass over each row whatever T (no sort of
    the row): a competitor's bucket is how many of the row's sorted targets it is at least, and a target's count
    is the number of competitors in the buckets above its place."""
    ordered, order = target_scores.sort(dim=1)  # (B, T) ascending
    bucket = torch.searchsorted(ordered.contiguous(), competitors.contiguous(), right=True)  # (B, N+1) in 0..T
    per_bucket = torch.zeros(len(bucket), ordered.shape[1] + 1, dtype=torch.int64)
    per_bucket.scatter_add_(1, bucket, torch.ones_like(bucket))
    above = per_bucket.flip(1).cumsum(1).flip(1)[:, 1:]  # above[:, j] = competitors in buckets j+1..T
    return torch.empty_like(above).scatter_(1, order, above)


def _positions(ranks: np.ndarray) -> np.ndarray:
    """0-based positions of one user's targets from their ranks among the other items: the i-th best ranked
    target sits at rank + i (the targets before it are above it too); misses stay NOT_RANKED."""
    out = np.full(len(ranks), NOT_RANKED, dtype=np.int64)
    ranked = np.flatnonzero(ranks >= 0)
    order = ranked[np.argsort(ranks[ranked], kind="stable")]
    out[order] = ranks[order] + np.arange(len(order))
    return out


def _ranking_metrics(
    score_fn: Callable[[np.ndarray, list[np.ndarray]], Tensor],
    inputs: list[np.ndarray],
    targets: np.ndarray | Sequence[np.ndarray],
    n_items: int,
    ks: Sequence[int] = (10, 20),
    cold_items: np.ndarray | None = None,
    batch_size: int = 512,
    item_stats: ItemStats | None = None,
    exclude: list[np.ndarray] | None = None,
) -> dict[str, float]:
    """The protocol for any scorer: score_fn(user positions, histories) -> (B, n_items+1) scores. `targets`:
    one index per user or an index list per user; `exclude`: the items removed from each user's ranking
    (default: the input history)."""
    target_sets = target_lists(targets)
    assert len(inputs) == len(target_sets), f"{len(inputs)} inputs but {len(target_sets)} targets"
    exclude = inputs if exclude is None else exclude
    positions: list[np.ndarray] = []
    top_k = max(10, max(ks))
    top10_items: list[np.ndarray] = []
    top10_lists: list[np.ndarray] = []  # (B, 10) per batch, 0 = empty slot
    n_candidates = np.zeros(len(target_sets), dtype=np.float64)
    for start in range(0, len(target_sets), batch_size):
        idx = np.arange(start, min(start + batch_size, len(target_sets)))
        hist = [np.asarray(inputs[i], dtype=np.int64) for i in idx]
        scores = score_fn(idx, hist).float().clone()  # (B, N+1)
        assert scores.shape == (len(idx), n_items + 1), f"scores {tuple(scores.shape)} != {(len(idx), n_items + 1)}"
        tgt = left_pad([target_sets[i] for i in idx])  # (B, T), 0 = padding
        seen = left_pad([np.asarray(exclude[i], dtype=np.int64) for i in idx])  # (B, Lmax)
        excluded = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, seen, True)
        excluded[:, 0] = True
        ranks, candidates = _target_ranks(scores, tgt, excluded, n_items)
        n_candidates[idx] = candidates.numpy()
        for row, i in enumerate(idx):
            positions.append(_positions(ranks[row, tgt.shape[1] - len(target_sets[i]) :].numpy()))
        keep = tgt[:, -1]  # (B,) one target per row stays in the top-10 lists (as the single-target protocol)
        keep = torch.where((keep > 0) & (keep <= n_items), keep, torch.zeros_like(keep))
        scores[:, 0] = float("-inf")
        top = top_k_unseen(scores, seen, min(top_k, n_items), keep=keep)[1][:, :10]
        top10_items.append(top[torch.isfinite(scores.gather(1, top))].numpy())
        top10_lists.append(torch.where(torch.isfinite(scores.gather(1, top)), top, 0).numpy())
    metrics = multi_target_metrics([p[p >= 0] for p in positions], np.array([len(t) for t in target_sets]), ks)
    reached = np.unique(np.concatenate(top10_items)) if top10_items else np.zeros(0, np.int64)
    metrics["coverage@10"] = float(len(reached[reached > 0]) / n_items)
    metrics["n_users"] = float(len(target_sets))
    metrics["n_targets"] = float(sum(len(t) for t in target_sets))
    if item_stats is not None and top10_lists:
        metrics.update(beyond_accuracy(np.concatenate(top10_lists)[:, :TOP_N], inputs, item_stats))
    if cold_items is not None:
        metrics.update(_cold_metrics(target_sets, positions, n_candidates, cold_items))
    return metrics


def _cold_metrics(target_sets: list[np.ndarray], positions: list[np.ndarray], n_candidates: np.ndarray,
                  cold_items: np.ndarray) -> dict[str, float]:
    """Recall@10 over the targets with no training interactions, and a random ranking's for comparison."""
    flat = np.concatenate(target_sets) if target_sets else np.zeros(0, np.int64)
    flat_pos = np.concatenate(positions) if positions else np.zeros(0, np.int64)
    per_target = np.repeat(n_candidates, [len(t) for t in target_sets])
    is_cold = np.isin(flat, np.asarray(cold_items, dtype=np.int64)) & (flat > 0)
    cold_pos = flat_pos[is_cold]
    return {
        "cold_recall@10": float(((cold_pos >= 0) & (cold_pos < 10)).mean()) if is_cold.any() else 0.0,
        "n_cold_targets": float(is_cold.sum()),
        "random_recall@10": float(np.mean(10.0 / np.maximum(per_target[is_cold], 10.0))) if is_cold.any() else 0.0,
    }


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    inputs: list[np.ndarray],
    targets: np.ndarray | Sequence[np.ndarray],
    ks: Sequence[int] = (10, 20),
    cold_items: np.ndarray | None = None,
    batch_size: int = 512,
    item_stats: ItemStats | None = None,
    exclude: list[np.ndarray] | None = None,
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
        with model.frozen_items() if isinstance(model, SeqRecModel) else contextlib.nullcontext():
            return _ranking_metrics(score_fn, inputs, targets, model.config.n_items, ks, cold_items, batch_size,
                                    item_stats, exclude)
    finally:
        model.train(was_training)


def evaluate_bundle(bundle: ModelBundle, split: EvalSplit, item_ids: list[str]) -> dict[str, float]:
    """A model bundle on an evaluation split in the night's index space (`item_ids`), mapped through the
    bundle's own item index: items it does not know are dropped from inputs and count as misses as targets."""
    index = bundle.index

    def remap(seqs: list[np.ndarray], unknown: int | None) -> list[np.ndarray]:
        ids = ([index.get(item_ids[i - 1], unknown) for i in seq] for seq in seqs)
        return [np.array([i for i in seq if i is not None], np.int64) for seq in ids]

    return evaluate_model(bundle.model, remap(split.inputs, None), remap(split.targets, 0),
                          exclude=remap(split.excluded(), None))


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


ScoreFn = Callable[[np.ndarray, list[np.ndarray]], Tensor]


def baseline_scorers(train_seqs: list[np.ndarray], n_items: int) -> dict[str, ScoreFn]:
    """Each baseline as a scorer, fitted on `train_seqs`: score_fn(user positions, histories) -> (B, n_items+1).
    most_popular and recent_popular score every user alike; item_transition scores the counts of items that
    followed the user's last item, backing off to popularity for ties and unseen last items. The offline
    evaluation (evaluate_baselines) and the backtest's published baseline lists both score with these."""
    pop = popularity_scores(train_seqs, n_items)
    pop_tiebreak = torch.from_numpy(pop / (pop.max() + 1.0)).float()  # < 1: only orders equal counts
    recent = torch.from_numpy(recent_popularity_scores(train_seqs, n_items)).float()
    trans = transition_matrix(train_seqs, n_items)

    def constant(vec: Tensor) -> ScoreFn:
        return lambda idx, hist: vec.unsqueeze(0).expand(len(idx), -1)

    def transition_fn(idx: np.ndarray, hist: list[np.ndarray]) -> Tensor:
        last = np.array([h[-1] if len(h) else 0 for h in hist], dtype=np.int64)
        followers = trans[last]  # (B, N+1) sparse: written into the dense rows, never densified in float64
        row = torch.from_numpy(np.repeat(np.arange(len(last)), np.diff(followers.indptr)))
        column = torch.from_numpy(followers.indices.astype(np.int64))
        counts = torch.from_numpy(followers.data.astype(np.float32))
        return pop_tiebreak.repeat(len(last), 1).index_put_((row, column), counts, accumulate=True)

    return {
        "most_popular": constant(torch.from_numpy(pop).float()),
        "recent_popular": constant(recent),
        "item_transition": transition_fn,
    }


def evaluate_baselines(
    train_seqs: list[np.ndarray],
    inputs: list[np.ndarray],
    targets: np.ndarray | Sequence[np.ndarray],
    n_items: int,
    ks: Sequence[int] = (10, 20),
    cold_items: np.ndarray | None = None,
    item_stats: ItemStats | None = None,
    exclude: list[np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """most_popular, recent_popular and item_transition (baseline_scorers), under the same protocol as the
    model."""
    return {
        name: _ranking_metrics(fn, inputs, targets, n_items, ks, cold_items, item_stats=item_stats,
                               exclude=exclude)
        for name, fn in baseline_scorers(train_seqs, n_items).items()
    }
