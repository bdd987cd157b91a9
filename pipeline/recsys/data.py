"""The night's training data in model index space, read from the feature marts, and the index-space helpers
every part of the model side shares (the item index, ragged per-user lists, left padding, batches of
histories by length).

Item ids are strings at the boundary; here every item of the current catalog or of the interactions gets a
dense index 1..n (sorted by id, deterministic), 0 being padding. The mapping travels with the model.

Two splits of the night: the temporal one decides the gate (train on events before the data date D, evaluate
on D's events: split_temporal_train, split_temporal), leave-one-out is reported as a secondary metric and is
the fallback on a night with fewer than MIN_TEMPORAL_USERS users active on D (split_leave_one_out).
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pipeline import storage
from pipeline.catalog import Catalog
from pipeline.embed import embedding_matrix

log = logging.getLogger(__name__)

TEMPORAL, LEAVE_ONE_OUT = "temporal", "leave_one_out"
MIN_TEMPORAL_USERS = 10  # fewer users active on D (with a history before it) and the gate falls back to LOO
EPOCH = dt.date(1970, 1, 1)  # date32 values count days from it


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


@dataclass(frozen=True)
class EvalSplit:
    """Users to evaluate, in index space: what the model reads, what it must find, what it may not rank."""

    name: str                        # TEMPORAL or LEAVE_ONE_OUT
    users: list[str]
    inputs: list[np.ndarray]         # each user's history (indices), oldest first
    targets: list[np.ndarray]        # each user's held-out items (indices)
    exclude: list[np.ndarray] | None = None  # items removed from the ranking; None: the inputs

    def excluded(self) -> list[np.ndarray]:
        return self.inputs if self.exclude is None else self.exclude


def sample_split(split: EvalSplit, max_users: int | None, seed: int = 0) -> EvalSplit:
    """`split` with at most max_users users, drawn with a fixed seed (kept in their order)."""
    if max_users is None or len(split.users) <= max_users:
        return split
    keep = np.sort(np.random.default_rng(seed).choice(len(split.users), max_users, replace=False)).tolist()
    log.info("%s evaluation: a seeded sample of %d of %d users", split.name, max_users, len(split.users))
    return EvalSplit(split.name, [split.users[i] for i in keep], [split.inputs[i] for i in keep],
                     [split.targets[i] for i in keep],
                     None if split.exclude is None else [split.exclude[i] for i in keep])


@dataclass(frozen=True)
class TrainSplit:
    """What a candidate trains on: sequences, the early-stopping validation, and the window's last date."""

    name: str
    sequences: list[np.ndarray]
    valid_inputs: list[np.ndarray]
    valid_targets: np.ndarray
    train_until: dt.date             # no training event is later than this UTC day
    loss_from: list[int] | None = None  # per sequence: targets before this position do not count (None: all do)


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
    sequences: list[np.ndarray]         # each user's most recent items (indices), oldest first
    loo_users: list[str]                # users with >= 3 events
    loo_train: list[np.ndarray]         # their history minus the last two items (indices)
    loo_valid: np.ndarray               # second-to-last item (index)
    loo_test: np.ndarray                # last item (index)
    text_emb: np.ndarray | None         # (n_items+1, dim) float32, row 0 zeros; None if no embeddings
    data_date: dt.date | None = None    # D: the temporal split trains before it and evaluates on it
    before_d: list[np.ndarray] | None = None  # every user's most recent items before D (split_temporal_train)
    temporal: EvalSplit | None = None   # users active on D: history before D, new items on D as targets
    before_days: list[np.ndarray] | None = None  # each before_d item's UTC day (days since 1970-01-01)
    eval_max_users: int | None = None   # evaluation splits keep a seeded sample of at most this many users

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def index(self) -> dict[str, int]:
        return item_index(self.item_ids)

    def train_sequences(self) -> list[np.ndarray]:
        """Training histories: the LOO training part for users with >= 3 events, the whole history otherwise."""
        loo = set(self.loo_users)
        short = [seq for u, seq in zip(self.user_ids, self.sequences, strict=True) if u not in loo]
        return self.loo_train + [s for s in short if len(s) >= 2]

    def test_inputs(self) -> list[np.ndarray]:
        """Inputs for the test target: training part + validation item."""
        return [np.append(t, v) for t, v in zip(self.loo_train, self.loo_valid, strict=True)]

    def gate_split(self) -> str:
        """TEMPORAL when at least MIN_TEMPORAL_USERS users were active on D with a history before it (and
        there is something to train on before D), else LEAVE_ONE_OUT, with a warning."""
        users = 0 if self.temporal is None else len(self.temporal.users)
        trainable = any(len(s) >= 2 for s in self.before_d or [])
        if users >= MIN_TEMPORAL_USERS and trainable:
            return TEMPORAL
        log.warning("temporal split of %s has %d users active on it (< %d) or nothing to train on before it: "
                    "the gate falls back to leave-one-out", self.data_date, users, MIN_TEMPORAL_USERS)
        return LEAVE_ONE_OUT

    def eval_split(self, name: str) -> EvalSplit:
        """The users evaluated on `name`: all of them, or a seeded sample of eval_max_users (the same sample
        for every model of the night, so champion, challenger and baselines still see the same users)."""
        if name == TEMPORAL:
            assert self.temporal is not None, f"no temporal split loaded for {self.data_date}"
            split = self.temporal
        else:
            split = EvalSplit(LEAVE_ONE_OUT, self.loo_users, self.test_inputs(), [t[None] for t in self.loo_test])
        return sample_split(split, self.eval_max_users)

    def train_split(self, name: str, incremental: Incremental | None = None) -> TrainSplit:
        """TEMPORAL: the events before D only (each user's last one before D validates, for users with >= 3);
        LEAVE_ONE_OUT: the leave-one-out training part, whose window reaches D. With `incremental`, the
        temporal training sequences are those of the users with an event after incremental.since, whose loss
        counts only their new events, plus a seeded replay sample of the others, whole; they also validate."""
        assert self.data_date is not None, "load_night sets the data date"
        if name == LEAVE_ONE_OUT:
            return TrainSplit(name, self.train_sequences(), self.loo_train, self.loo_valid, self.data_date)
        keep = [len(s) >= 2 for s in self.before_d or []]
        before = [s for s, k in zip(self.before_d or [], keep, strict=True) if k]
        loss_from = None
        if incremental is not None:
            days = [d for d, k in zip(self.before_days or [], keep, strict=True) if k]
            before, loss_from = incremental.select(before, days, self.data_date)
        valid = [s for s in before if len(s) >= 3]
        sequences = [s[:-1] if len(s) >= 3 else s for s in before]
        if loss_from is not None:  # a changed user whose only new event validates has nothing left to train on
            trains = [start < len(s) for s, start in zip(sequences, loss_from, strict=True)]
            sequences = [s for s, t in zip(sequences, trains, strict=True) if t]
            loss_from = [start for start, t in zip(loss_from, trains, strict=True) if t]
        return TrainSplit(name, sequences, [s[:-1] for s in valid], np.array([s[-1] for s in valid], np.int64),
                          self.data_date - dt.timedelta(days=1), loss_from)


@dataclass(frozen=True)
class Incremental:
    """An incremental warm night's training set: every user with an event after `since` (the champion's
    training window's last day), whose loss counts only the events after `since` (the champion has learnt
    the rest), and a `replay` share of the others, whole, drawn with a seed of the night's date."""

    since: dt.date
    replay: float

    def select(self, sequences: list[np.ndarray], days: list[np.ndarray], data_date: dt.date
               ) -> tuple[list[np.ndarray], list[int]]:
        """(the chosen sequences, per chosen sequence the position of its first target that counts)."""
        assert len(sequences) == len(days), "one day per item of each sequence"
        since = (self.since - EPOCH).days
        n_new = np.array([int(np.count_nonzero(d > since)) for d in days], np.int64)
        changed = n_new > 0
        draw = np.random.default_rng(data_date.toordinal()).random(len(sequences)) < self.replay
        chosen = np.flatnonzero(changed | draw)
        log.info("incremental night: %d users with events after %s (%d new events) + %d replayed of %d unchanged",
                 int(changed.sum()), self.since, int(n_new.sum()), int((draw & ~changed).sum()),
                 int((~changed).sum()))
        return ([sequences[i] for i in chosen],
                [len(sequences[i]) - int(n_new[i]) if changed[i] else 0 for i in chosen])


def load_night(catalog: Catalog, data_date: dt.date, eval_max_users: int | None = None) -> NightData:
    """The night's marts (item_catalog, user_sequences, the leave-one-out and temporal splits, embeddings) in
    index space; evaluation splits sampled down to eval_max_users (None = all users). Ids are mapped to indices
    in Arrow (no Python string per event): at 50M events that is seconds and a few GiB, not minutes and 15."""
    items = storage.read_table(catalog.mart(data_date, "item_catalog"), columns=["item_id"])
    seqs = storage.read_table(catalog.mart(data_date, "user_sequences"), columns=["user_id", "item_ids"])
    loo = storage.read_table(catalog.mart(data_date, "split_leave_one_out"))
    before = storage.read_table(catalog.mart(data_date, "split_temporal_train"), columns=["item_ids", "event_days"])
    on_d = storage.read_table(catalog.mart(data_date, "split_temporal"))
    lists = [seqs.column("item_ids"), before.column("item_ids"), on_d.column("history_items"),
             on_d.column("target_items"), on_d.column("seen_items")]
    every = [items.column("item_id"), *(chunk.flatten() for column in lists for chunk in column.chunks)]
    item_ids = pc.unique(pa.chunked_array([values.cast(pa.string()) for values in every]))
    item_ids = item_ids.take(pc.sort_indices(item_ids))  # byte order of UTF-8 = code point order = sorted()

    def encode(column: pa.ChunkedArray) -> list[np.ndarray]:
        return _index_lists(column, item_ids)

    return NightData(
        item_ids=item_ids.to_pylist(),
        user_ids=seqs.column("user_id").to_pylist(),
        sequences=encode(seqs.column("item_ids")),
        loo_users=loo.column("user_id").to_pylist(),
        loo_train=encode(loo.column("train_items")),
        loo_valid=_indices(loo.column("valid_item"), item_ids),
        loo_test=_indices(loo.column("test_item"), item_ids),
        text_emb=_text_matrix(catalog.night_embeddings(data_date), item_ids),
        data_date=data_date,
        before_d=encode(before.column("item_ids")),
        before_days=_day_lists(before.column("event_days")),
        temporal=EvalSplit(TEMPORAL, on_d.column("user_id").to_pylist(), encode(on_d.column("history_items")),
                           encode(on_d.column("target_items")), encode(on_d.column("seen_items"))),
        eval_max_users=eval_max_users,
    )


def _indices(values: pa.ChunkedArray | pa.Array, item_ids: pa.Array) -> np.ndarray:
    """Item ids as indices 1..n of the sorted `item_ids` (every id must be in it)."""
    found = pc.index_in(values.cast(pa.string()), value_set=item_ids)
    assert found.null_count == 0, "an item id outside the night's index"
    return found.to_numpy(zero_copy_only=False).astype(np.int64) + 1


def _index_lists(column: pa.ChunkedArray, item_ids: pa.Array) -> list[np.ndarray]:
    """A list<string> column of item ids as one int64 index array per row, chunk by chunk."""
    out: list[np.ndarray] = []
    for chunk in column.chunks:
        if len(chunk) == 0:
            continue
        flat = _indices(chunk.flatten(), item_ids)
        offsets = chunk.offsets.to_numpy().astype(np.int64)
        out.extend(np.split(flat, offsets[1:-1] - offsets[0]))
    return out


def _day_lists(column: pa.ChunkedArray) -> list[np.ndarray]:
    """A list<date32> column as one int32 array of days since 1970-01-01 per row (no Python date objects)."""
    lists = column.combine_chunks()
    if len(lists) == 0:
        return []
    days = lists.flatten().cast(pa.int32()).to_numpy(zero_copy_only=False)
    offsets = lists.offsets.to_numpy() - lists.offsets[0].as_py()
    return np.split(days, offsets[1:-1])


def _text_matrix(location: Path | str, item_ids: pa.Array) -> np.ndarray | None:
    """(n_items+1, dim) text embeddings aligned with the index; items without text stay zero."""
    if not storage.exists(location):
        return None
    table = storage.read_table(location)
    vectors = embedding_matrix(table.column("embedding"))
    found = pc.index_in(table.column("item_id").cast(pa.string()), value_set=item_ids)
    known = pc.is_valid(found).to_numpy(zero_copy_only=False)  # an embedded item outside the index: skipped
    rows = pc.fill_null(found, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    out = np.zeros((len(item_ids) + 1, vectors.shape[1]), np.float32)
    out[rows[known] + 1] = vectors[known]
    return out
