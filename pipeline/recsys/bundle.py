"""A trained model as files: weights, config and the item id mapping, enough to rebuild and score.

Layout of a bundle folder: ``model.pt`` (state_dict, incl. the frozen text embeddings), ``config.json``
(ModelConfig), ``item_ids.json`` (item index i+1 -> item_id string; index 0 is padding), ``window.json``
(``train_until``: the last UTC day of the training window, which the gate's leakage guard reads; absent in
bundles saved before it was recorded, read as unknown).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.recsys.data import item_index
from pipeline.recsys.model import ModelConfig, SeqRecModel

FROZEN_BUFFERS = ("text_emb", "item_counts")  # rebuilt from each night's data, never carried over


@dataclass
class ModelBundle:
    model: SeqRecModel
    item_ids: list[str]  # item_ids[i] is the item at index i + 1
    train_until: dt.date | None = None  # last day of the training window; None = unknown

    @functools.cached_property
    def index(self) -> dict[str, int]:
        return item_index(self.item_ids)

    def encode(self, items: list[str]) -> np.ndarray:
        """Item ids -> model indices, unknown items dropped (the model itself attends to the last max_len)."""
        index = self.index
        return np.array([index[i] for i in items if i in index], dtype=np.int64)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), folder / "model.pt")
        (folder / "config.json").write_text(json.dumps(dataclasses.asdict(self.model.config), indent=2))
        (folder / "item_ids.json").write_text(json.dumps(self.item_ids))
        if self.train_until is not None:
            (folder / "window.json").write_text(json.dumps({"train_until": self.train_until.isoformat()}))
        return folder

    @classmethod
    def load(cls, folder: Path) -> ModelBundle:
        config = ModelConfig(**json.loads((folder / "config.json").read_text()))
        model = SeqRecModel(config)
        state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model.eval()
        item_ids = json.loads((folder / "item_ids.json").read_text())
        window = folder / "window.json"
        until = json.loads(window.read_text())["train_until"] if window.is_file() else None
        return cls(model=model, item_ids=item_ids, train_until=None if until is None else dt.date.fromisoformat(until))


def warm_start_state(bundle: ModelBundle, item_ids: list[str]) -> dict[str, torch.Tensor]:
    """The bundle's weights as a starting point for a model over `item_ids`: ID embedding rows follow their
    item to its new index (items new to the bundle start at zero, items no longer there are dropped); the frozen
    buffers (text embeddings, item counts) are left out, tonight's data provides them."""
    state = {k: v for k, v in bundle.model.state_dict().items() if k not in FROZEN_BUFFERS}
    if "id_emb.weight" in state:
        old, index = state["id_emb.weight"], bundle.index
        pairs = [(i + 1, index[item]) for i, item in enumerate(item_ids) if item in index]
        new = torch.zeros(len(item_ids) + 1, old.shape[1], dtype=old.dtype)  # (n_items+1, D)
        if pairs:
            dst, src = zip(*pairs, strict=True)
            new[list(dst)] = old[list(src)]
        state["id_emb.weight"] = new
    return state
