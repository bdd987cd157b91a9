"""Reasons for recommendations: which history item a recommendation rests on.

Occlusion (the faithful method): for each of the last `window` items of a user's history, remove that item
(the older items move up, as if the user had never interacted with it), recompute the user state and score
the user's recommended items against it. The reason of a recommendation is the history item whose removal
lowers its score the most; by construction no other item within the window lowers it more. Attention
weights are not used: they say where the model looked, not what changed its output.

Cost: `window` extra user-state passes per user (the transformer over the history; removals of padding are
skipped), each scored against the user's N recommended items only (a (window, B, N) product, nothing of size
users x catalog).

Items the model scores through their text alone (it uses text and the item had no training interactions)
get the history item whose text embedding is nearest (cosine) to theirs, among the items the model reads.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.recsys.data import Ragged, left_pad


def _occluded(padded: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """(window * B, W - 1) histories with the j-th last item removed (j = 0..window-1, j-major), and
    (window, B) whether that position held an item. `padded` is (B, W) left-padded."""
    B, W = padded.shape
    seqs, valid = [], []
    for j in range(window):
        column = W - 1 - j
        if column < 0:
            seqs.append(torch.zeros(B, max(1, W - 1), dtype=padded.dtype, device=padded.device))
            valid.append(torch.zeros(B, dtype=torch.bool, device=padded.device))
            continue
        keep = torch.cat([padded[:, :column], padded[:, column + 1 :]], dim=1)  # (B, W - 1)
        if keep.shape[1] == 0:
            keep = torch.zeros(B, 1, dtype=padded.dtype, device=padded.device)
        seqs.append(keep)
        valid.append(padded[:, column] > 0)
    return torch.cat(seqs), torch.stack(valid)  # (window*B, W-1), (window, B)


def _states(model: torch.nn.Module, seqs: Tensor, max_tokens: int) -> Tensor:
    """(R, L) sequences -> (R, D') user states, in batches of at most max_tokens history positions."""
    rows = max(1, max_tokens // max(1, seqs.shape[1]))
    return torch.cat([model.user_states(seqs[s : s + rows]).float() for s in range(0, len(seqs), rows)])


def _text_only(model: torch.nn.Module, recommended: Tensor) -> Tensor | None:
    """(B, N) bool: recommended items the model scores through text alone; None when there are none."""
    if model.config.item_repr == "id" or not hasattr(model, "text_emb"):
        return None
    cold = model.item_counts[recommended] <= 0  # (B, N)
    return cold if bool(cold.any()) else None


def _nearest_text(model: torch.nn.Module, history: Tensor, recommended: Tensor) -> Tensor:
    """(B, N) position in `history` (B, L) of the item whose text is nearest to each recommended item's."""
    hist_text = F.normalize(model.text_emb[history].float(), dim=-1)  # (B, L, T)
    rec_text = F.normalize(model.text_emb[recommended].float(), dim=-1)  # (B, N, T)
    similarity = torch.einsum("blt,bnt->bnl", hist_text, rec_text)  # (B, N, L)
    similarity = similarity.masked_fill((history == 0).unsqueeze(1), float("-inf"))
    return similarity.argmax(dim=2)  # (B, N)


@torch.inference_mode()
def occlusion_reasons(
    model: torch.nn.Module,
    histories: Ragged,
    users: np.ndarray,
    states: Tensor,
    recommended: Tensor,
    vectors: Tensor,
    window: int,
    max_tokens: int = 32_768,
) -> Tensor:
    """(B, N) model index of the reason of each recommended item (0 = none).

    histories: model indices (0 = padding) per user; users: (B,) rows of `histories`; states: (B, D') their
    user states; recommended: (B, N) model indices of their recommended items (0 = empty slot); vectors:
    (B, N, D') the recommended items' representations (as scored)."""
    assert window >= 1, f"window must be >= 1, got {window}"
    device = states.device
    max_len = model.config.max_len
    padded = left_pad(histories, max_len + 1, users=users).to(device)  # (B, W): one older item in reserve
    items = vectors.float()  # (B, N, D')
    base = torch.einsum("bd,bnd->bn", states, items)  # (B, N)
    seqs, valid = _occluded(padded, window)
    occluded = _states(model, seqs[:, -max_len:], max_tokens).view(window, len(users), -1)  # (window, B, D')
    drop = base.unsqueeze(0) - torch.einsum("jbd,bnd->jbn", occluded, items)  # (window, B, N)
    drop = drop.masked_fill(~valid.unsqueeze(2), float("-inf"))
    position = padded.shape[1] - 1 - drop.argmax(dim=0)  # (B, N) column of the reason in `padded`
    reason = padded.gather(1, position)  # (B, N)
    text_only = _text_only(model, recommended)
    if text_only is not None:
        history = padded[:, -max_len:]  # (B, L) what the model reads
        nearest = history.gather(1, _nearest_text(model, history, recommended))  # (B, N)
        reason = torch.where(text_only, nearest, reason)
    return torch.where(recommended > 0, reason, torch.zeros_like(reason))
