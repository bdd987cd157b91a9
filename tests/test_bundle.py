"""The bundle's warm start: the champion's ID rows follow their items into tonight's index."""

from __future__ import annotations

import torch

from pipeline.recsys.bundle import ModelBundle, warm_start_state
from pipeline.recsys.model import ModelConfig, SeqRecModel


def champion(item_ids: list[str], item_repr: str = "id") -> ModelBundle:
    torch.manual_seed(0)
    config = ModelConfig(n_items=len(item_ids), max_len=8, d_model=8, item_repr=item_repr,
                         text_dim=0 if item_repr == "id" else 4)
    return ModelBundle(SeqRecModel(config).eval(), item_ids)


def test_warm_start_keeps_known_rows_zeroes_new_items_and_drops_removed_ones() -> None:
    old = champion(["a", "b", "c", "d"])  # rows 1..4
    tonight = ["b", "d", "e", "f"]         # a, c removed; e, f new
    state = warm_start_state(old, tonight)
    old_rows, new_rows = old.model.state_dict()["id_emb.weight"], state["id_emb.weight"]
    assert new_rows.shape == (len(tonight) + 1, 8)
    torch.testing.assert_close(new_rows[1], old_rows[2])  # b: old index 2 -> new index 1
    torch.testing.assert_close(new_rows[2], old_rows[4])  # d: old index 4 -> new index 2
    assert not new_rows[3:].any() and not new_rows[0].any()  # e, f start at zero; padding stays zero
    for removed in (old_rows[1], old_rows[3]):  # a and c are nowhere in tonight's rows
        assert not (new_rows == removed).all(dim=1).any()
    # every other weight is carried over unchanged; the frozen buffers come from tonight's data
    for name, value in old.model.state_dict().items():
        if name not in ("id_emb.weight", "item_counts"):
            assert torch.equal(state[name], value), name
    assert "item_counts" not in state


def test_warm_start_state_loads_into_tonights_model_and_leaves_the_champion_alone() -> None:
    old = champion(["a", "b", "c"], item_repr="id+text")
    before = {k: v.clone() for k, v in old.model.state_dict().items()}
    state = warm_start_state(old, ["c", "x"])
    assert "text_emb" not in state and "item_counts" not in state
    tonight = SeqRecModel(ModelConfig(n_items=2, max_len=8, d_model=8, item_repr="id+text", text_dim=4))
    missing, unexpected = tonight.load_state_dict(state, strict=False)
    assert set(missing) == {"text_emb", "item_counts"} and not unexpected
    for name, value in old.model.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} of the champion changed"
