"""Beyond accuracy: fairness and diversity of top-N lists, and MMR re-ranking for serving.

Metrics over the top-N lists of all evaluated users (`lists`: (U, N) model indices, 0 = empty slot):
- coverage: distinct recommended items / catalog items;
- gini: Gini index of the items' exposure (how often each catalog item is recommended; 0 = every item equally
  often, (n-1)/n = one item takes every slot);
- novelty: mean self-information -log2 p(i) of the recommended items, p(i) = (interactions of i + 1) /
  (all interactions + catalog items) in training (smoothed so cold items have a finite value);
- ild: intra-list diversity, 1 - mean pairwise cosine of the text embeddings within a list, averaged over
  lists with at least two items (absent when the night has no text);
- popularity_lift: mean training popularity of the recommended items over that of the users' history items
  (both averaged per user first, then over users); above 1 means the lists lean to bestsellers;
- cold_share: share of recommended slots that go to items without training interactions.

MMR (Carbonell & Goldstein 1998) re-ranks each user's top candidates: step by step it picks the candidate
maximising (1 - w) * relevance - w * (max cosine to the items already picked), relevance being the score
min-max scaled to [0, 1] within the user's candidates, the cosine taken between the model's item vectors.
The max over no picked item counts as -1, so a candidate's value only falls as the list grows and the picked
values are non-increasing: they are the published scores when diversity is on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

TOP_N = 10
MMR_POOL = 5  # MMR chooses among the top MMR_POOL * N items by score


@dataclass
class ItemStats:
    """What the beyond-accuracy metrics need to know about items, in model index space (row 0 = padding)."""

    popularity: np.ndarray          # (n_items+1,) training interactions per item
    text_emb: np.ndarray | None     # (n_items+1, T) text embeddings; None = no text (ild is skipped)


def gini(exposure: np.ndarray) -> float:
    """Gini index of non-negative exposure counts, one per catalog item (0 for an empty or uniform vector)."""
    x = np.sort(np.asarray(exposure, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total <= 0:
        return 0.0
    return float(np.sum((2 * np.arange(1, n + 1) - n - 1) * x) / (n * total))


def novelty(lists: np.ndarray, popularity: np.ndarray) -> float:
    """Mean self-information (bits) of the recommended items under smoothed training popularity."""
    pop = np.asarray(popularity, dtype=np.float64)[1:]
    p = (pop + 1.0) / (pop.sum() + len(pop))
    items = lists[lists > 0]
    return float(np.mean(-np.log2(p[items - 1]))) if items.size else 0.0


def intra_list_diversity(lists: np.ndarray, text_emb: np.ndarray) -> float:
    """1 - mean pairwise cosine of the text embeddings within each list, averaged over lists of >= 2 items."""
    vectors = torch.from_numpy(np.asarray(text_emb, dtype=np.float32))
    unit = F.normalize(vectors, dim=-1)[torch.from_numpy(lists)]  # (U, N, T); row 0 is zero
    present = torch.from_numpy(lists > 0)  # (U, N)
    cosine = unit @ unit.transpose(1, 2)  # (U, N, N)
    pair = present.unsqueeze(1) & present.unsqueeze(2) & ~torch.eye(lists.shape[1], dtype=torch.bool)
    n_pairs = pair.sum(dim=(1, 2))
    mean_cos = (cosine * pair).sum(dim=(1, 2)) / n_pairs.clamp(min=1)
    usable = n_pairs > 0
    return float((1.0 - mean_cos[usable]).mean()) if bool(usable.any()) else 0.0


def popularity_lift(lists: np.ndarray, histories: list[np.ndarray], popularity: np.ndarray) -> float:
    """Mean popularity of the recommendations over the mean popularity of the histories (per user, then over
    users with both); 0 when the histories have no popularity at all."""
    pop = np.asarray(popularity, dtype=np.float64)
    recs, hist = [], []
    for row, history in zip(lists, histories, strict=True):
        items, seen = row[row > 0], np.asarray(history, dtype=np.int64)
        seen = seen[seen > 0]
        if items.size and seen.size:
            recs.append(pop[items].mean())
            hist.append(pop[seen].mean())
    denominator = float(np.mean(hist)) if hist else 0.0
    return float(np.mean(recs)) / denominator if denominator > 0 else 0.0


def cold_share(lists: np.ndarray, popularity: np.ndarray) -> float:
    """Share of recommended slots that hold an item without training interactions."""
    items = lists[lists > 0]
    return float(np.mean(np.asarray(popularity)[items] <= 0)) if items.size else 0.0


def beyond_accuracy(lists: np.ndarray, histories: list[np.ndarray], stats: ItemStats) -> dict[str, float]:
    """The fairness and diversity metrics of top-N lists (U, N) under the names `<metric>@N`."""
    n = lists.shape[1]
    n_items = len(stats.popularity) - 1
    exposure = np.bincount(lists[lists > 0], minlength=n_items + 1)[1:]
    out = {
        f"gini@{n}": gini(exposure),
        f"novelty@{n}": novelty(lists, stats.popularity),
        f"popularity_lift@{n}": popularity_lift(lists, histories, stats.popularity),
        f"cold_share@{n}": cold_share(lists, stats.popularity),
    }
    if stats.text_emb is not None:
        out[f"ild@{n}"] = intra_list_diversity(lists, stats.text_emb)
    return out


def mmr_rerank(scores: Tensor, candidates: Tensor, unit_vectors: Tensor, k: int, weight: float
               ) -> tuple[Tensor, Tensor]:
    """Pick k of each row's candidates by MMR. scores, candidates: (B, M) best first (-inf = unavailable);
    unit_vectors: (C, D) L2-normalised vectors indexed by `candidates`. Returns (MMR values, candidates), both
    (B, k), in pick order; a row with fewer than k available candidates ends in -inf entries."""
    assert 0.0 <= weight <= 1.0, f"diversity weight must be in [0, 1], got {weight}"
    B, M = scores.shape
    k = min(k, M)
    available = torch.isfinite(scores)  # (B, M)
    low = scores.masked_fill(~available, float("inf")).min(dim=1, keepdim=True).values  # (B, 1)
    high = scores.masked_fill(~available, float("-inf")).max(dim=1, keepdim=True).values  # (B, 1)
    relevance = ((scores - low) / (high - low).clamp(min=1e-12)).nan_to_num(0.0)  # (B, M) in [0, 1]
    vectors = unit_vectors[candidates]  # (B, M, D)
    similarity = vectors @ vectors.transpose(1, 2)  # (B, M, M)
    closest = torch.full((B, M), -1.0, device=scores.device)  # max cosine to the picked items
    rows = torch.arange(B, device=scores.device)
    values, picks = [], []
    for _ in range(k):
        value = ((1.0 - weight) * relevance - weight * closest).masked_fill(~available, float("-inf"))  # (B, M)
        best = value.argmax(dim=1)  # (B,)
        values.append(value[rows, best])
        picks.append(candidates[rows, best])
        available[rows, best] = False
        closest = torch.maximum(closest, similarity[rows, best])  # (B, M)
    return torch.stack(values, dim=1), torch.stack(picks, dim=1)
