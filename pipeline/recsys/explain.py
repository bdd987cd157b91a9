"""Reasons for recommendations: which history item a recommendation rests on.

Occlusion (the faithful method): for each of the last `window` items of a user's history, remove that item
(the older items move up, as if the user had never interacted with it), recompute the user state and score
the user's recommended items against it. The reason of a recommendation is the history item whose removal
lowers its score the most; by construction no other item within the window lowers it more. Attention
weights are not used: they say where the model looked, not what changed its output.

Computation (the same states as `window` full passes, up to float rounding): positions count from the end
of the history and attention is causal, so removing the j-th last item leaves every older item's hidden
states, keys and values exactly as in the trunk, the history without its newest item (which is the j = 0
removal). Per batch of users, one pass over the trunk caches each block's keys and values; a second pass
computes every further removal as a branch that replaces the trunk's last j items by the j items after the
removed one (SeqRecModel.branched_user_states), against the cached positions before it, all removals side by
side (more passes only when their positions exceed BRANCH_POSITIONS: windows above 11). In both passes the
last block runs at the final positions only, all a user state reads. Removals beyond a batch's longest
history are not computed; removals of padding within it are, and are masked out of the arg-max (users are
batched by history length, so they are few).

Cost per user: one pass over the history (its last block: the key/value projections, and the rest at the final
position only) and window * (window - 1) / 2 branch positions, instead of `window` passes over the history; a
few transformer calls per batch of users (two for windows up to 11). Each state is scored against the user's
N recommended items only (a (window, B, N) product, nothing of size users x catalog). Batches hold at most
`max_tokens` positions. The trunk's pass costs about as much as a user state's, a floor for an exact method,
so the cost relative to scoring is highest where the transformer dominates scoring (long histories, small
catalogs). Figures: README, "Reasons" (bench/bench_score.py).

Items the model scores through their text alone (it uses text and the item had no training interactions)
get the history item whose text embedding is nearest (cosine) to theirs, among the items the model reads.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.recsys.data import Ragged, left_pad, token_batches

BRANCH_POSITIONS = 64  # removals computed in one pass while their recomputed positions fit (window <= 11: one)


def _removal_groups(last: int, budget: int) -> list[tuple[int, int]]:
    """Removals 1..last in runs [first, end] whose branches (j positions for removal j) hold at most `budget`
    positions together, or one removal."""
    groups, first = [], 1
    while first <= last:
        end = first
        while end < last and (first + end + 1) * (end + 2 - first) // 2 <= budget:
            end += 1
        groups.append((first, end))
        first = end + 1
    return groups


def _occluded_states(model: torch.nn.Module, padded: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """(window, B, D') user states with the j-th last item of `padded` (B, W, left-padded) removed (j-major;
    zero beyond the history's width) and (window, B) whether that position held an item."""
    B, W = padded.shape
    trunk = padded[:, : W - 1] if W > 1 else torch.zeros_like(padded)  # (B, W - 1): the newest item removed
    first, prefix = model.user_states_and_prefix(trunk)  # (B, D'), keys/values of every position
    states = first.new_zeros(window, B, first.shape[1]).float()  # (window, B, D')
    states[0] = first.float()
    for start, end in _removal_groups(min(window, W) - 1, BRANCH_POSITIONS):
        # removal j: the trunk's last j items replaced by the j items after the removed one, padded[:, W - j :]
        removals = torch.arange(start, end + 1, device=padded.device)  # (g,)
        columns = torch.cat([torch.arange(W - j, W, device=padded.device) for j in range(start, end + 1)])
        branched = model.branched_user_states(prefix, padded[:, columns], removals)  # (B, g, D')
        states[start : end + 1] = branched.float().transpose(0, 1)
    removed = torch.arange(window, device=padded.device)  # j = 0..window-1 at column W - 1 - j
    valid = padded[:, (W - 1 - removed).clamp(min=0)].T > 0  # (window, B)
    return states, valid & (removed < W).unsqueeze(1)


NEAREST_TEXT_USERS = 2048  # users whose nearest-text reasons are found at once (memory ~ users x max_len x text dim)


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
    window: int,
    max_tokens: int = 32_768,
) -> Tensor:
    """(B, N) model index of the reason of each recommended item (0 = none).

    histories: model indices (0 = padding) per user; users: (B,) rows of `histories`; states: (B, D') their
    user states (as scored); recommended: (B, N) model indices of their recommended items (0 = empty slot).
    Users are batched by history length, at most max_tokens history positions per transformer call."""
    assert window >= 1, f"window must be >= 1, got {window}"
    device = states.device
    max_len = model.config.max_len
    table = model.item_representations().float()  # (n_items + 1, D') as scored
    lengths = np.minimum(histories.lengths[users], max_len + 1)  # one older item in reserve
    by_length = np.argsort(lengths, kind="stable")
    reason = torch.zeros(recommended.shape, dtype=torch.long, device=device)  # (B, N)
    per_user = min(window * (window - 1) // 2, BRANCH_POSITIONS)  # recomputed positions per pass, at most
    for start, end in token_batches(lengths[by_length] + per_user, max_tokens):
        rows = torch.from_numpy(by_length[start:end]).to(device)
        padded = left_pad(histories, max_len + 1, users=users[by_length[start:end]]).to(device)  # (b, W)
        occluded, valid = _occluded_states(model, padded, window)  # (window, b, D'), (window, b)
        items = table[recommended[rows]]  # (b, N, D')
        base = torch.einsum("bd,bnd->bn", states[rows], items)  # (b, N)
        drop = base.unsqueeze(0) - torch.einsum("jbd,bnd->jbn", occluded, items)  # (window, b, N)
        drop = drop.masked_fill(~valid.unsqueeze(2), float("-inf"))
        position = padded.shape[1] - 1 - drop.argmax(dim=0)  # (b, N) column of the reason in `padded`
        reason[rows] = padded.gather(1, position)
    text_only = _text_only(model, recommended)
    if text_only is not None:
        with_text_only = text_only.any(dim=1).nonzero().squeeze(1)  # (B',) users with a text-only item
        for rows in with_text_only.split(NEAREST_TEXT_USERS):  # bounded: (users, L, T) text vectors at a time
            history = left_pad(histories, max_len, users=users[rows.cpu().numpy()]).to(device)  # (b, L) as read
            nearest = history.gather(1, _nearest_text(model, history, recommended[rows]))  # (b, N)
            reason[rows] = torch.where(text_only[rows], nearest, reason[rows])
    return torch.where(recommended > 0, reason, torch.zeros_like(reason))
