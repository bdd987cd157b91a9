"""Batch scoring: top-N items for every active user, in blocks of users so memory stays bounded.

Per block of B users: user states (B, D) @ item representations of the scorable items (D, C) into a
reused (B, C) buffer -> the users' seen items set to -inf -> top-k. The scorable items are the model's items
that are still in the catalog, so padding and retired items never enter the matrix multiply. Users whose
history has no item the model knows fall back to the most popular catalog items they have not seen
(`source = 'popular'`).

Optional: per block after the top-k, MMR re-ranking of the top MMR_POOL x k items (`diversity` > 0, see
recsys.diversity; the published score is then the MMR value); after all blocks, the reason of each
recommendation (`reason_window` > 0: occlusion over the last items of the history, see recsys.explain), in
transformer batches of at most STATE_BATCH_TOKENS positions like the user states.

Two passes over the model's users, sorted by history length: (1) user states, in transformer batches of at
most STATE_BATCH_TOKENS history positions, each cut to its longest history (few large calls, little padding);
(2) blocks of chunk_users users: one matrix multiply into the reused buffer, seen items masked, top-k; with
reasons, a third in transformer batches again. Memory: the score buffer (chunk_users x C x 4 bytes), one
transformer batch's activations, the user states (users x D), the top-k (users x k), the inputs and the
output table; nothing of size users x items. The work around the multiply
and top-k is vectorised: ids become indices through Arrow hash lookups, histories are left-padded with numpy
and output strings are gathered with Arrow `take`, so no Python loop runs per user or per row.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pipeline import storage
from pipeline.catalog import Catalog
from pipeline.device import resolve_device
from pipeline.recsys.bundle import ModelBundle
from pipeline.recsys.data import Ragged, left_pad, token_batches
from pipeline.recsys.diversity import MMR_POOL, mmr_rerank
from pipeline.recsys.explain import occlusion_reasons
from pipeline.recsys.ranking import top_k_unseen

log = logging.getLogger(__name__)

RECOMMENDATION_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("rank", pa.int32()),
        ("item_id", pa.string()),
        ("score", pa.float64()),
        ("source", pa.string()),
        ("reason_item_id", pa.string()),  # the history item the recommendation rests on; null for 'popular'
    ]
)

Lists = Sequence[Sequence[str]] | pa.ListArray | pa.ChunkedArray
STATE_BATCH_TOKENS = 32_768  # history positions per transformer call; bounds its activations (~100 MB, d=64)


@dataclass
class ScoringInput:
    user_ids: Sequence[str] | pa.Array    # users to score
    histories: Lists                      # their most recent items, oldest first (model input)
    seen: Lists                           # every item each user interacted with (excluded from the output)
    catalog_ids: set[str] | Sequence[str]  # items allowed in the output
    popular: list[tuple[str, float]]      # (item_id, popularity) best first, for the fallback


def scoring_input(catalog: Catalog, data_date: dt.date) -> ScoringInput:
    """The night's active users with their histories and seen items, the catalog and the popularity list,
    from the marts user_activity, user_sequences, user_seen_items, item_catalog and item_popularity. Users,
    histories and seen items stay Arrow arrays (in user_sequences' order): no Python object per event."""
    from pipeline.publish import recommendable_items

    activity = storage.read_table(catalog.mart(data_date, "user_activity"), columns=["user_id", "is_active"])
    active = activity.filter(pc.fill_null(activity["is_active"], False))["user_id"]
    seqs = storage.read_table(catalog.mart(data_date, "user_sequences"), columns=["user_id", "item_ids"])
    seqs = seqs.filter(pc.is_in(seqs["user_id"], value_set=active.combine_chunks()))
    seen_rows = storage.read_table(catalog.mart(data_date, "user_seen_items"), columns=["user_id", "item_id"])
    per_user = seen_rows.group_by("user_id").aggregate([("item_id", "list")])
    at = pc.index_in(seqs["user_id"], value_set=per_user["user_id"].combine_chunks())
    seen = per_user["item_id_list"].combine_chunks().take(at)  # null: a user with no seen item
    seen = pc.if_else(pc.is_null(seen), pa.scalar([], seen.type), seen)
    catalog_ids = set(recommendable_items(catalog, data_date))  # items marked removed are never recommended
    pop = storage.read_table(catalog.mart(data_date, "item_popularity")).to_pydict()
    popular = sorted(zip(pop["item_id"], pop["events_30d"], pop["events_all"], strict=True),
                     key=lambda r: (-r[1], -r[2], r[0]))
    return ScoringInput(user_ids=seqs["user_id"].combine_chunks(), histories=seqs["item_ids"].combine_chunks(),
                        seen=seen.combine_chunks() if isinstance(seen, pa.ChunkedArray) else seen,
                        catalog_ids=catalog_ids, popular=[(i, float(a)) for i, a, _ in popular])


def as_lists(values: Sequence[str] | Lists, rows: Sequence[int] | None = None) -> list[Any]:
    """Python values of a ScoringInput field (an Arrow array or a Python list), all or the given `rows`."""
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return (values if rows is None else values.take(pa.array(rows, pa.int64()))).to_pylist()
    return [values[i] if isinstance(values[i], str) else list(values[i]) for i in rows or range(len(values))]


def _list_array(values: Lists) -> pa.ListArray:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.ListArray | pa.LargeListArray):
        return values
    return pa.array(values, pa.list_(pa.string()))


def lookup(values: Lists, index: pa.Array) -> Ragged:
    """Map each user's item ids to positions in `index` (0-based), dropping ids not in it, order kept."""
    lists = _list_array(values)
    flat = lists.flatten()
    position = pc.index_in(flat, value_set=index)  # (nnz,) int32, null where unknown
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    owner = np.repeat(np.arange(len(lists)), lengths)
    known = pc.is_valid(position).to_numpy(zero_copy_only=False)
    kept = pc.drop_null(position).to_numpy(zero_copy_only=False).astype(np.int64)
    counts = np.bincount(owner[known], minlength=len(lists))
    return Ragged(offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), values=kept)


@dataclass
class Picks:
    """Chosen (user, rank, item, score, reason) rows as numpy arrays; items are positions in an id array,
    reasons model indices (0 = no reason)."""

    user: np.ndarray
    rank: np.ndarray
    item: np.ndarray
    score: np.ndarray
    reason: np.ndarray

    @classmethod
    def from_topk(cls, users: np.ndarray, items: np.ndarray, scores: np.ndarray,
                  reasons: np.ndarray | None = None) -> Picks:
        """users (B,), items, scores and reasons (B, k) best first; -inf entries (nothing left to pick) are
        dropped. NaN scores are kept so that validation reports a broken model instead of a short list."""
        keep = ~np.isneginf(scores)
        ranks = np.broadcast_to(np.arange(1, scores.shape[1] + 1, dtype=np.int32), scores.shape)
        reasons = np.zeros(scores.shape, np.int64) if reasons is None else reasons
        return cls(np.broadcast_to(users[:, None], scores.shape)[keep], ranks[keep], items[keep],
                   scores[keep].astype(np.float64), reasons[keep])

    @classmethod
    def concat(cls, parts: list[Picks]) -> Picks:
        if not parts:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0),
                       np.zeros(0, np.int64))
        fields = ("user", "rank", "item", "score", "reason")
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))

    def table(self, user_ids: pa.Array, item_ids: pa.Array, source: str, model_items: pa.Array | None = None
              ) -> pa.Table:
        """The rows as a table; reasons are looked up in `model_items` (index i + 1 -> id), null without."""
        no_reason = self.reason <= 0
        reasons = (pa.nulls(len(self.user), pa.string()) if model_items is None or no_reason.all() else
                   model_items.take(pa.array(np.where(no_reason, 0, self.reason - 1), mask=no_reason)))
        return pa.table(
            {
                "user_id": user_ids.take(pa.array(self.user)),
                "rank": pa.array(self.rank, pa.int32()),
                "item_id": item_ids.take(pa.array(self.item)),
                "score": pa.array(self.score, pa.float64()),
                "source": pa.array(np.full(len(self.user), source, dtype=object), pa.string()),
                "reason_item_id": reasons,
            },
            schema=RECOMMENDATION_SCHEMA,
        )


def _catalog_positions(catalog_ids: set[str] | Sequence[str], index: pa.Array) -> np.ndarray:
    """Sorted unique positions in `index` of the catalog items it contains."""
    catalog = pa.array(sorted(catalog_ids), pa.string())
    return np.unique(pc.drop_null(pc.index_in(catalog, value_set=index)).to_numpy(zero_copy_only=False))


@torch.inference_mode()
def _user_states(
    model: torch.nn.Module, histories: Ragged, users: np.ndarray, device: torch.device, max_tokens: int
) -> torch.Tensor:
    """(U, D') query vectors of `users` (sorted by history length), in batches of at most max_tokens
    history positions: few large transformer calls however small the scoring chunks are."""
    lengths = np.minimum(histories.lengths[users], model.config.max_len)
    states = []
    for start, end in token_batches(lengths, max_tokens):
        seqs = left_pad(histories, model.config.max_len, users=users[start:end]).to(device)  # (B, L)
        states.append(model.user_states(seqs).float())  # (B, D')
    return torch.cat(states)


@dataclass(frozen=True)
class Serving:
    """How lists are shaped beyond the top-k by score."""

    reason_window: int = 0   # history items occluded for each recommendation's reason (0 = no reasons)
    diversity: float = 0.0   # MMR weight in [0, 1] (0 = the top-k by score, unchanged)


@torch.inference_mode()
def _score_with_model(
    model: torch.nn.Module, histories: Ragged, seen: Ragged, users: np.ndarray, columns: np.ndarray, k: int,
    chunk_users: int, device: torch.device, serving: Serving = Serving(),
) -> Picks:
    """Top-k over the scorable item rows `columns` (model indices) for `users`; picks index into `columns`."""
    items = model.item_representations().float()[torch.from_numpy(columns).to(device)]  # (C, D')
    column_of = np.full(model.config.n_items + 1, -1, dtype=np.int64)
    column_of[columns] = np.arange(len(columns))
    k = min(k, len(columns))
    pool = k if serving.diversity == 0 else min(len(columns), MMR_POOL * k)
    unit_items = torch.nn.functional.normalize(items, dim=-1) if serving.diversity else items
    model_index = torch.from_numpy(columns).to(device)  # column -> model index
    order = users[np.argsort(np.minimum(histories.lengths[users], model.config.max_len), kind="stable")]
    states = _user_states(model, histories, order, device, STATE_BATCH_TOKENS)  # (U, D')
    buffer = torch.empty(min(chunk_users, len(order)), len(columns), device=device)  # (B, C), reused
    top_columns, top_scores = [], []
    for start in range(0, len(order), chunk_users):
        block_users = order[start : start + chunk_users]
        block = buffer[: len(block_users)]
        torch.mm(states[start : start + chunk_users], items.T, out=block)  # (B, C)
        row, item = seen.rows(block_users)
        column = column_of[item]
        row, column = row[column >= 0], column[column >= 0]
        seen_cells = (torch.from_numpy(row).to(device), torch.from_numpy(column).to(device))
        block_scores, block_columns = top_k_unseen(block, seen_cells, pool)  # (B, pool)
        if serving.diversity:
            block_scores, block_columns = mmr_rerank(block_scores, block_columns, unit_items, k, serving.diversity)
        top_scores.append(block_scores.cpu().numpy())
        top_columns.append(block_columns.cpu().numpy())
    chosen = np.concatenate(top_columns)  # (U, k)
    reasons = None
    if serving.reason_window:  # after the blocks: few large transformer calls, as for the user states
        recommended = model_index[torch.from_numpy(chosen).to(device)]  # (U, k)
        reasons = occlusion_reasons(model, histories, order, states, recommended, serving.reason_window,
                                    STATE_BATCH_TOKENS).cpu().numpy()  # (U, k) model indices
    return Picks.from_topk(order, chosen, np.concatenate(top_scores), reasons)


def _popular_fallback(n_popular: int, seen: Ragged, users: np.ndarray, k: int, chunk_users: int) -> Picks:
    """The first k of the n_popular items (best first) that each user has not seen; `seen` holds positions
    in the popularity list."""
    lengths = seen.lengths[users]
    width = min(n_popular, k + int(lengths.max(initial=0)))  # enough candidates for anyone
    parts = []
    for start in range(0, len(users), chunk_users):
        block_users = users[start : start + chunk_users]
        row, position = seen.rows(block_users)
        taken = np.zeros((len(block_users), width), dtype=bool)
        inside = position < width
        taken[row[inside], position[inside]] = True
        candidates = np.argsort(taken, axis=1, kind="stable")[:, :k]  # unseen positions first, in order
        scores = np.where(np.take_along_axis(taken, candidates, axis=1), -np.inf, 0.0)
        parts.append(Picks.from_topk(block_users, candidates, scores))
    return Picks.concat(parts)


def _popular_in_catalog(popular: list[tuple[str, float]], catalog_ids: set[str] | Sequence[str]) -> pa.Table:
    """The popularity list restricted to catalog items, first occurrence of each item, best first."""
    table = pa.table({"item_id": pa.array([i for i, _ in popular], pa.string()),
                      "score": pa.array([float(s) for _, s in popular], pa.float64())})
    table = table.filter(pc.is_in(table["item_id"], value_set=pa.array(list(catalog_ids), pa.string())))
    _, first = np.unique(table["item_id"].to_numpy(zero_copy_only=False), return_index=True)
    return table.take(pa.array(np.sort(first)))


def score_users(
    bundle: ModelBundle, data: ScoringInput, k: int, chunk_users: int = 512, device: str = "auto",
    serving: Serving = Serving(),
) -> pa.Table:
    """Top-k per user as a table (user_id, rank, item_id, score, source, reason_item_id), ranks 1..k, best
    first, users in input order. A user gets fewer than k rows only when fewer than k items are left to
    recommend. `device` is the setting (settings.model.device): auto | cpu | cuda[:N]; `serving` adds reasons
    and MMR re-ranking (off by default)."""
    assert k >= 1, f"k must be >= 1, got {k}"
    assert chunk_users >= 1, f"chunk_users must be >= 1, got {chunk_users}"
    started = time.perf_counter()
    torch_device = resolve_device(device)
    user_ids = data.user_ids if isinstance(data.user_ids, pa.Array) else pa.array(data.user_ids, pa.string())
    model_items = pa.array(bundle.item_ids, pa.string())
    histories = _shift(lookup(data.histories, model_items))  # model indices, 0 = padding
    seen_lists = _list_array(data.seen)
    columns = _catalog_positions(data.catalog_ids, model_items) + 1
    has_history = (histories.lengths > 0) & (len(columns) > 0)
    model_users, fallback_users = np.flatnonzero(has_history), np.flatnonzero(~has_history)

    parts = []
    if len(model_users):
        model = _on_device(bundle.model, torch_device)
        seen = _shift(lookup(seen_lists, model_items))
        with model.frozen_items():
            picks = _score_with_model(model, histories, seen, model_users, columns, k, chunk_users, torch_device,
                                      serving)
        parts.append((picks, picks.table(user_ids, model_items.take(pa.array(columns - 1)), "model",
                                         model_items)))
    if len(fallback_users):
        parts.append(_fallback_part(data, seen_lists, user_ids, fallback_users, k, chunk_users))
    out = _in_user_order(parts, k)
    log.info("scored %d users with the model and %d with the popularity fallback: %d rows in %.1f s on %s",
             len(model_users), len(fallback_users), out.num_rows, time.perf_counter() - started, torch_device)
    return out


def _shift(positions: Ragged) -> Ragged:
    """Positions in the item id list -> model indices (index 0 is padding)."""
    return Ragged(positions.offsets, positions.values + 1)


def _on_device(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model in eval mode on `device`; a copy when it lives elsewhere, so the caller's model stays put."""
    if next(model.parameters()).device != device:
        model = copy.deepcopy(model).to(device)
    return model.eval()


def _fallback_part(
    data: ScoringInput,
    seen_lists: pa.ListArray,
    user_ids: pa.Array,
    users: np.ndarray,
    k: int,
    chunk_users: int,
) -> tuple[Picks, pa.Table]:
    """Most-popular catalog items each of `users` has not seen, scored by their popularity."""
    popular = _popular_in_catalog(data.popular, data.catalog_ids)
    seen = lookup(pc.take(seen_lists, pa.array(users)), popular["item_id"])
    picks = _popular_fallback(popular.num_rows, seen, np.arange(len(users)), k, chunk_users)
    picks.user = users[picks.user]
    table = picks.table(user_ids, popular["item_id"], "popular")
    return picks, table.set_column(3, "score", popular["score"].take(pa.array(picks.item)))


def _in_user_order(parts: list[tuple[Picks, pa.Table]], k: int) -> pa.Table:
    """Concatenate the parts sorted by (input position of the user, rank)."""
    if not parts:
        return RECOMMENDATION_SCHEMA.empty_table()
    key = np.concatenate([p.user.astype(np.int64) * (k + 1) + p.rank for p, _ in parts])
    table = pa.concat_tables([t for _, t in parts])
    return table.take(pa.array(np.argsort(key, kind="stable")))
