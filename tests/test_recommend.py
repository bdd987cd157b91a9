"""Batch scoring: equal to a brute-force reference, seen and retired items masked, popularity fallback,
results independent of the chunk size, vectorised helpers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.recsys.bundle import ModelBundle
from pipeline.recsys.data import Ragged, left_pad
from pipeline.recsys.model import ModelConfig, SeqRecModel
from pipeline.recsys.score import ScoringInput, lookup, score_users

N_ITEMS = 50
ITEM_IDS = [f"i{j:02d}" for j in range(1, N_ITEMS + 1)]


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    torch.manual_seed(0)
    model = SeqRecModel(ModelConfig(n_items=N_ITEMS, max_len=10, d_model=16, item_repr="id")).eval()
    return ModelBundle(model, list(ITEM_IDS))


def make_input(n_users: int = 40, seed: int = 0) -> ScoringInput:
    rng = np.random.default_rng(seed)
    histories = [list(rng.choice(ITEM_IDS, int(rng.integers(1, 25)))) for _ in range(n_users)]
    histories[3] = ["unknown-item"]  # nothing the model knows -> popular fallback
    histories[7] = []                # no history at all -> popular fallback
    seen = [h + ["i01"] for h in histories]  # i01 seen by everyone (but not in their model input)
    catalog = set(ITEM_IDS[:45]) | {"new-item"}  # i46..i50 retired; new-item unknown to the model
    popular = [("new-item", 99.0), ("i50", 98.0)] + [(i, float(60 - n)) for n, i in enumerate(ITEM_IDS)]
    return ScoringInput([f"u{n:03d}" for n in range(n_users)], histories, seen, catalog, popular)


def brute_force(bundle: ModelBundle, data: ScoringInput, k: int) -> dict[str, list[tuple[str, float]]]:
    """Per user: full scores, mask seen/retired/padding, sort. Only users with a known history."""
    model, index = bundle.model, bundle.index
    items = model.item_representations()
    out = {}
    for user, history, seen in zip(data.user_ids, data.histories, data.seen, strict=True):
        encoded = bundle.encode(history)[-model.config.max_len :]
        if not len(encoded):
            continue
        with torch.no_grad():
            scores = (model.user_states(torch.from_numpy(encoded)[None]) @ items.T)[0].numpy().copy()
        blocked = [0] + [index[i] for i in seen if i in index] + [j for i, j in index.items()
                                                                   if i not in data.catalog_ids]
        scores[blocked] = -np.inf
        order = np.argsort(-scores, kind="stable")[:k]
        out[user] = [(ITEM_IDS[j - 1], float(scores[j])) for j in order if np.isfinite(scores[j])]
    return out


def by_user(table: pa.Table) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        out.setdefault(row["user_id"], []).append(row)
    return out


def test_model_users_match_brute_force(bundle: ModelBundle) -> None:
    data = make_input()
    table = score_users(bundle, data, k=5, chunk_users=7, device="cpu")
    expected = brute_force(bundle, data, 5)
    got = {u: rows for u, rows in by_user(table).items() if rows[0]["source"] == "model"}
    assert set(got) == set(expected)
    for user, rows in got.items():
        assert [r["item_id"] for r in rows] == [i for i, _ in expected[user]], user
        np.testing.assert_allclose([r["score"] for r in rows], [s for _, s in expected[user]], rtol=1e-5)


def test_output_rules_hold(bundle: ModelBundle) -> None:
    data = make_input()
    table = score_users(bundle, data, k=8, chunk_users=5, device="cpu")
    assert table.column_names == ["user_id", "rank", "item_id", "score", "source", "reason_item_id"]
    rows = by_user(table)
    assert list(rows) == list(data.user_ids)  # every user, in input order
    for user, seen in zip(data.user_ids, data.seen, strict=True):
        recs = rows[user]
        items = [r["item_id"] for r in recs]
        assert [r["rank"] for r in recs] == list(range(1, 9))
        assert len(set(items)) == 8
        assert not set(items) & set(seen), f"{user} got a seen item"
        assert set(items) <= data.catalog_ids, f"{user} got a retired item"
        scores = [r["score"] for r in recs]
        assert scores == sorted(scores, reverse=True)


def test_users_without_known_history_get_unseen_popular_catalog_items(bundle: ModelBundle) -> None:
    data = make_input()
    rows = by_user(score_users(bundle, data, k=4, device="cpu"))
    for user in ("u003", "u007"):
        assert {r["source"] for r in rows[user]} == {"popular"}
        # new-item first; i50 is retired; i01 is seen by everyone
        assert [r["item_id"] for r in rows[user]] == ["new-item", "i02", "i03", "i04"]
        assert [r["score"] for r in rows[user]] == [99.0, 59.0, 58.0, 57.0]
    assert {r["source"] for u, recs in rows.items() if u not in ("u003", "u007") for r in recs} == {"model"}


def test_chunk_size_does_not_change_the_result(bundle: ModelBundle) -> None:
    data = make_input(n_users=60, seed=3)
    tables = [score_users(bundle, data, k=6, chunk_users=c, device="cpu") for c in (1, 4, 1000)]
    for other in tables[1:]:
        assert other.column("item_id").equals(tables[0].column("item_id"))
        np.testing.assert_allclose(other.column("score").to_numpy(), tables[0].column("score").to_numpy(),
                                   rtol=1e-6)


def test_arrow_input_gives_the_same_table(bundle: ModelBundle) -> None:
    data = make_input()
    arrow = ScoringInput(pa.array(data.user_ids), pa.array(data.histories, pa.list_(pa.string())),
                         pa.array(data.seen, pa.list_(pa.string())), data.catalog_ids, data.popular)
    assert score_users(bundle, arrow, k=5, device="cpu").equals(score_users(bundle, data, k=5, device="cpu"))


def test_fewer_rows_only_when_fewer_items_are_left(bundle: ModelBundle) -> None:
    data = ScoringInput(["heavy", "cold"], [ITEM_IDS[:40], []], [ITEM_IDS[:40], ITEM_IDS[:44]],
                        set(ITEM_IDS[:45]), [(i, 1.0) for i in ITEM_IDS])
    rows = by_user(score_users(bundle, data, k=10, device="cpu"))
    assert sorted(r["item_id"] for r in rows["heavy"]) == ITEM_IDS[40:45]  # the 5 unseen catalog items
    assert [r["item_id"] for r in rows["cold"]] == ["i45"]
    assert all(np.isfinite(r["score"]) for recs in rows.values() for r in recs)


def test_lookup_and_left_pad_keep_the_last_known_items() -> None:
    index = pa.array(["a", "b", "c", "d"])
    ragged = lookup([["a", "x", "b"], [], ["d", "d", "c", "a", "b"]], index)
    assert ragged.offsets.tolist() == [0, 2, 2, 7]
    assert ragged.values.tolist() == [0, 1, 3, 3, 2, 0, 1]
    shifted = Ragged(ragged.offsets, ragged.values + 1)
    padded = left_pad(shifted, max_len=3, users=np.array([0, 1, 2]))
    assert padded.tolist() == [[0, 1, 2], [0, 0, 0], [3, 1, 2]]
    assert left_pad(shifted, max_len=3, users=np.array([1])).tolist() == [[0]]
