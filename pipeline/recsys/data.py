"""The night's training data in model index space, read from the feature marts.

Item ids are strings at the boundary; here every item of the current catalog or of the interactions gets a
dense index 1..n (sorted by id, deterministic), 0 being padding. The mapping travels with the model.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.catalog import Catalog
from pipeline.embed import embedding_matrix


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
    catalog_ids: set[str]               # items currently in the catalog

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def index(self) -> dict[str, int]:
        return {item: i + 1 for i, item in enumerate(self.item_ids)}

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
    items = pq.read_table(catalog.mart(data_date, "item_catalog"), columns=["item_id"])
    seqs = pq.read_table(catalog.mart(data_date, "user_sequences"), columns=["user_id", "item_ids"])
    loo = pq.read_table(catalog.mart(data_date, "split_leave_one_out")).to_pydict()
    catalog_ids = set(items.column("item_id").to_pylist())
    sequences = seqs.column("item_ids").to_pylist()
    interacted = {i for seq in sequences for i in seq}
    item_ids = sorted(catalog_ids | interacted)
    index = {item: i + 1 for i, item in enumerate(item_ids)}
    text_emb = _text_matrix(catalog.night_embeddings(data_date), index)
    return NightData(
        item_ids=item_ids,
        user_ids=seqs.column("user_id").to_pylist(),
        sequences=sequences,
        loo_users=loo["user_id"],
        loo_train=[np.array([index[i] for i in t], np.int64) for t in loo["train_items"]],
        loo_valid=np.array([index[i] for i in loo["valid_item"]], np.int64),
        loo_test=np.array([index[i] for i in loo["test_item"]], np.int64),
        text_emb=text_emb,
        catalog_ids=catalog_ids,
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
