"""The night's training data in model index space, read from the feature marts, and the index-space helpers
every part of the model side shares (the item index, ragged per-user lists, left padding, batches of
histories by length).

Item ids are strings at the boundary; here every item of the current catalog or of the interactions gets a
dense index 1..n (sorted by id, deterministic), 0 being padding. The mapping travels with the model.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from pipeline.catalog import Catalog
from pipeline.embed import embedding_matrix


def item_index(item_ids: Sequence[str]) -> dict[str, int]:
    """Item id -> model index: item_ids[i] gets i + 1 (index 0 is padding)."""
    return {item: i + 1 for i, item in enumerate(item_ids)}


@dataclass
class Ragged:
    """Per-user integer lists in CSR form: the values of user u are values[offsets[u]:offsets[u + 1]]."""

    offsets: np.ndarray  # (U + 1,) int64
    values: np.ndarray   # (nnz,) int64

    @classmethod
    def from_lists(cls, seqs: Sequence[np.ndarray | Sequence[int]]) -> Ragged:
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        values = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs]) if len(seqs) else np.zeros(0)
        return cls(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), values.astype(np.int64))

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def rows(self, users: np.ndarray, last: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(row within `users`, value) pairs of the given users; with `last`, only user i's last[i] values."""
        lengths = self.lengths[users] if last is None else last
        ends = self.offsets[users + 1]
        starts = ends - lengths
        row = np.repeat(np.arange(len(users)), lengths)
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return row, self.values[np.repeat(starts, lengths) + within]


def left_pad(
    seqs: Ragged | Sequence[np.ndarray], max_len: int | None = None, users: np.ndarray | None = None
) -> torch.Tensor:
    """(B, L) int64 of each history's last max_len items (all with None), left-padded with 0; L = the longest
    kept history, at least 1. `users` picks rows of a Ragged (default: all, in order)."""
    ragged = seqs if isinstance(seqs, Ragged) else Ragged.from_lists(seqs)
    users = np.arange(len(ragged.offsets) - 1) if users is None else users
    lengths = ragged.lengths[users]
    if max_len is not None:
        lengths = np.minimum(lengths, max_len)
    width = max(1, int(lengths.max(initial=0)))
    row, items = ragged.rows(users, last=lengths)
    within = np.arange(len(row)) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # 0..len-1 per user
    column = within + np.repeat(width - lengths, lengths)
    out = np.zeros((len(users), width), dtype=np.int64)
    out[row, column] = items
    return torch.from_numpy(out)


def token_batches(lengths: np.ndarray, max_tokens: int) -> list[tuple[int, int]]:
    """[start, end) ranges over ascending `lengths` such that (end - start) x the batch's longest length
    stays within max_tokens (a batch holds at least one user)."""
    batches, start = [], 0
    while start < len(lengths):
        ends = range(start + 1, len(lengths) + 1)
        fit = bisect.bisect_right(ends, max_tokens, key=lambda e: (e - start) * max(1, int(lengths[e - 1])))
        end = start + max(1, fit)
        batches.append((start, end))
        start = end
    return batches


@dataclass
class NightData:
    item_ids: list[str]                 # index i+1 -> item id
    user_ids: list[str]                 # users of user_sequences, in mart order
    sequences: list[list[str]]          # each user's most recent items, oldest first
    loo_users: list[str]                # users with >= 3 events
    loo_train: list[np.ndarray]         # their history minus the last two items (indices)
    loo_valid: np.ndarray               # second-to-last item (index)
    loo_test: np.ndarray                # last item (index)
    text_emb: np.ndarray | None         # (n_items+1, dim) float32, row 0 zeros; None if no embeddings

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def index(self) -> dict[str, int]:
        return item_index(self.item_ids)

    def train_sequences(self) -> list[np.ndarray]:
        """Training histories: the LOO training part for users with >= 3 events, the whole history otherwise."""
        index = self.index()
        loo = set(self.loo_users)
        short = [np.array([index[i] for i in seq], np.int64) for u, seq in zip(self.user_ids, self.sequences,
                                                                                   strict=True) if u not in loo]
        return self.loo_train + [s for s in short if len(s) >= 2]

    def test_inputs(self) -> list[np.ndarray]:
        """Inputs for the test target: training part + validation item."""
        return [np.append(t, v) for t, v in zip(self.loo_train, self.loo_valid, strict=True)]


def load_night(catalog: Catalog, data_date: dt.date) -> NightData:
    """The night's marts (item_catalog, user_sequences, split_leave_one_out, embeddings) in index space."""
    items = pq.read_table(catalog.mart(data_date, "item_catalog"), columns=["item_id"])
    seqs = pq.read_table(catalog.mart(data_date, "user_sequences"), columns=["user_id", "item_ids"])
    loo = pq.read_table(catalog.mart(data_date, "split_leave_one_out")).to_pydict()
    sequences = seqs.column("item_ids").to_pylist()
    interacted = {i for seq in sequences for i in seq}
    item_ids = sorted(set(items.column("item_id").to_pylist()) | interacted)
    index = item_index(item_ids)
    return NightData(
        item_ids=item_ids,
        user_ids=seqs.column("user_id").to_pylist(),
        sequences=sequences,
        loo_users=loo["user_id"],
        loo_train=[np.array([index[i] for i in t], np.int64) for t in loo["train_items"]],
        loo_valid=np.array([index[i] for i in loo["valid_item"]], np.int64),
        loo_test=np.array([index[i] for i in loo["test_item"]], np.int64),
        text_emb=_text_matrix(catalog.night_embeddings(data_date), index),
    )


def _text_matrix(path: Path, index: dict[str, int]) -> np.ndarray | None:
    """(n_items+1, dim) text embeddings aligned with the index; items without text stay zero."""
    if not path.is_file():
        return None
    table = pq.read_table(path)
    ids = table.column("item_id").to_pylist()
    vectors = embedding_matrix(table.column("embedding"))
    out = np.zeros((len(index) + 1, vectors.shape[1]), np.float32)
    for item, vec in zip(ids, vectors, strict=True):
        if item in index:
            out[index[item]] = vec
    return out
