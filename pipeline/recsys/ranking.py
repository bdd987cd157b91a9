"""The one path from scores to recommendations (`top_k_unseen`): the model's `recommend`, batch scoring,
evaluation and the MLflow pyfunc all end here."""

from __future__ import annotations

import torch
from torch import Tensor


def top_k_unseen(
    scores: Tensor, seen: Tensor | tuple[Tensor, Tensor] | None, k: int, keep: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The one path from scores to recommendations: seen items -> -inf, then top-k (the model's `recommend`,
    batch scoring, evaluation and the MLflow pyfunc all end here).

    scores: (B, C), masked in place. seen: (B, L) columns per row (0-padded, so column 0 is masked too: the
    padding item in model index space), or (rows, columns) index pairs, or None. keep: (B,) one column per row
    that stays unmasked (evaluation's target). Returns (top scores, top columns), both (B, k), best first; a
    row with fewer than k items left ends in -inf entries. NaN scores rank last among the unmasked items (after
    every finite score, before -inf) and are returned as NaN, so that publishing validation and the gate's
    health check see them (torch's topk alone would rank NaN first).
    """
    if seen is not None:
        kept = None if keep is None else scores.gather(1, keep.unsqueeze(1))  # (B, 1), before masking
        if isinstance(seen, tuple):
            scores[seen] = float("-inf")
        else:
            scores.scatter_(1, seen, float("-inf"))
        if keep is not None:
            scores.scatter_(1, keep.unsqueeze(1), kept)
    top = scores.topk(k, dim=1)  # (B, k) values, (B, k) indices
    if not torch.isnan(top.values).any():  # topk ranks NaN first: a NaN anywhere in a row would be in its top
        return top
    nan = torch.isnan(scores)
    lowest = torch.finfo(scores.dtype).min
    order = scores.masked_fill(nan, lowest).topk(k, dim=1).indices  # (B, k), NaN after every finite score
    return scores.gather(1, order), order
