"""Reasons on a tiny trained id+text model: every reason is in the user's history; for warm items it is the
history item (within the window) whose removal lowers the recommendation's score the most, checked one user
and one removal at a time; text-only items get the history item with the nearest text; fallback rows none."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.recsys import explain
from pipeline.recsys.bundle import ModelBundle
from pipeline.recsys.data import Ragged, left_pad
from pipeline.recsys.explain import occlusion_reasons
from pipeline.recsys.model import ModelConfig, SeqRecModel
from pipeline.recsys.score import ScoringInput, Serving, score_users
from pipeline.recsys.train import TrainConfig, train_model

N_ITEMS = 40
ITEM_IDS = [f"i{j:02d}" for j in range(1, N_ITEMS + 1)]
COLD = set(range(35, N_ITEMS + 1))  # items 35..40 never appear in training: scored through their text alone
WINDOW = 4
MAX_LEN = 8


def sequences(n_users: int, length: int, seed: int) -> list[np.ndarray]:
    """Next item = successor of the last within 1..34 (80%) or a random warm item."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_users):
        seq = [int(rng.integers(1, 35))]
        for _ in range(length - 1):
            seq.append(seq[-1] % 34 + 1 if rng.random() < 0.8 else int(rng.integers(1, 35)))
        out.append(np.array(seq, np.int64))
    return out


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    rng = np.random.default_rng(1)
    text = rng.normal(size=(N_ITEMS + 1, 12)).astype(np.float32)
    text[0] = 0.0
    seqs = sequences(200, 10, seed=0)
    config = ModelConfig(n_items=N_ITEMS, max_len=MAX_LEN, d_model=16, item_repr="id+text", text_dim=12,
                         text_hidden=0, dropout=0.1)
    model, _, _ = train_model(config, TrainConfig(max_epochs=3, batch_size=64, patience=3, seed=0, device="cpu"),
                              [s[:-1] for s in seqs], [s[:-1] for s in seqs], np.array([s[-1] for s in seqs]),
                              text_emb=text)
    return ModelBundle(model.eval(), list(ITEM_IDS))


def scoring_input() -> ScoringInput:
    histories = [[ITEM_IDS[i - 1] for i in s] for s in sequences(30, 12, seed=5)]
    histories[:3] = [histories[0][:1], histories[1][:2], histories[2][:3]]  # shorter than the window
    histories.append([])  # no history: the popularity fallback
    users = [f"u{n:02d}" for n in range(len(histories))]
    return ScoringInput(users, histories, histories, set(ITEM_IDS), [(i, 1.0) for i in ITEM_IDS])


def score(bundle: ModelBundle, history: list[int], item: int) -> float:
    """The model's score of `item` (model index) after `history` (model indices, oldest first)."""
    model = bundle.model
    with torch.no_grad():
        state = model.user_states(torch.tensor([history[-MAX_LEN:] or [0]]))  # (1, D)
        return float(state[0] @ model.item_representations()[item])


def test_reasons_are_faithful_occlusion_or_nearest_text(bundle: ModelBundle) -> None:
    data = scoring_input()
    table = score_users(bundle, data, k=5, chunk_users=4, device="cpu", serving=Serving(reason_window=WINDOW))
    index, text = bundle.index, bundle.model.text_emb
    histories = dict(zip(data.user_ids, data.histories, strict=True))
    checked = {"occlusion": 0, "text": 0}
    for row in table.to_pylist():
        if row["source"] == "popular":
            assert row["reason_item_id"] is None
            continue
        history = [index[i] for i in histories[row["user_id"]]]
        item, reason = index[row["item_id"]], index[row["reason_item_id"]]
        assert row["reason_item_id"] in histories[row["user_id"]][-MAX_LEN:]
        if item in COLD:
            cosine = torch.nn.functional.cosine_similarity(text[history[-MAX_LEN:]], text[item][None])
            assert reason == history[-MAX_LEN:][int(cosine.argmax())]
            checked["text"] += 1
            continue
        base = score(bundle, history, item)
        window = range(max(0, len(history) - WINDOW), len(history))
        drops = {p: base - score(bundle, history[:p] + history[p + 1 :], item) for p in window}
        best = max(drops.values())
        assert max(d for p, d in drops.items() if history[p] == reason) == pytest.approx(best, abs=1e-4)
        checked["occlusion"] += 1
    assert checked["occlusion"] > 50 and checked["text"] > 0, checked


def test_reasons_do_not_depend_on_the_chunk_size(bundle: ModelBundle) -> None:
    data = scoring_input()
    tables = [score_users(bundle, data, k=5, chunk_users=c, device="cpu", serving=Serving(reason_window=WINDOW))
              for c in (1, 7, 1000)]
    for other in tables[1:]:
        assert other.column("reason_item_id").equals(tables[0].column("reason_item_id"))


def test_without_a_window_there_are_no_reasons_and_the_lists_are_unchanged(bundle: ModelBundle) -> None:
    data = scoring_input()
    plain = score_users(bundle, data, k=5, device="cpu")
    explained = score_users(bundle, data, k=5, device="cpu", serving=Serving(reason_window=WINDOW))
    assert plain.column("reason_item_id").null_count == plain.num_rows
    assert plain.drop_columns(["reason_item_id"]).equals(explained.drop_columns(["reason_item_id"]))
    fallback = explained.filter(pa.compute.equal(explained["source"], "popular"))
    assert fallback.num_rows == 5 and fallback.column("reason_item_id").null_count == 5


def reference_reasons(model: torch.nn.Module, histories: list[list[int]], recommended: torch.Tensor, window: int
                      ) -> tuple[torch.Tensor, list[dict[int, torch.Tensor]]]:
    """The definition, one user and one removal at a time: (B, N) reasons, and per user {position removed:
    (N,) drop of each recommended item's score}."""
    max_len, items = model.config.max_len, model.item_representations()
    cold = model.item_counts <= 0
    reasons, all_drops = torch.zeros_like(recommended), []
    for b, history in enumerate(histories):
        vectors = items[recommended[b]]  # (N, D)
        base = model.user_states(torch.tensor([history[-max_len:] or [0]]))[0] @ vectors.T  # (N,)
        drops = {}
        for p in range(len(history) - 1, max(-1, len(history) - 1 - window), -1):  # newest first
            occluded = (history[:p] + history[p + 1 :])[-max_len:] or [0]
            drops[p] = base - model.user_states(torch.tensor([occluded]))[0] @ vectors.T
        all_drops.append(drops)
        read = history[-max_len:]
        for n, item in enumerate(recommended[b].tolist()):
            if item == 0 or not history:
                continue
            if model.config.item_repr != "id" and cold[item]:
                text = model.text_emb
                reasons[b, n] = read[int(torch.nn.functional.cosine_similarity(text[read], text[item][None]).argmax())]
            else:
                reasons[b, n] = history[max(drops, key=lambda p: (float(drops[p][n]), p))]  # ties: the newest
    return reasons, all_drops


@pytest.mark.parametrize(("item_repr", "n_layers", "window", "max_tokens", "branch_positions"),
                         [("id+text", 2, 4, 32_768, 64), ("id+text", 3, 8, 20, 64), ("id", 1, 1, 32_768, 64),
                          ("id", 2, 3, 7, 64), ("id+text", 2, 8, 32_768, 4)])
def test_fast_occlusion_matches_the_reference(item_repr: str, n_layers: int, window: int, max_tokens: int,
                                              branch_positions: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The branched computation gives the reasons of the plain definition on a random model: histories from
    empty to longer than max_len + 1 (the item in reserve moves up), windows beyond the history and max_len,
    cold (text-only) items, empty slots, small transformer batches, removals split over several passes."""
    monkeypatch.setattr(explain, "BRANCH_POSITIONS", branch_positions)
    monkeypatch.setattr(explain, "NEAREST_TEXT_USERS", 3)  # text-only reasons in several blocks of users
    torch.manual_seed(3)
    max_len, n_items = 6, 30
    counts = torch.ones(n_items + 1)
    counts[25:] = 0  # items 25..30: no training interactions, text-only for id+text
    text_dim = 0 if item_repr == "id" else 12
    config = ModelConfig(n_items=n_items, max_len=max_len, d_model=16, n_heads=2, n_layers=n_layers,
                         item_repr=item_repr, text_dim=text_dim, text_hidden=0)
    model = SeqRecModel(config, torch.randn(n_items + 1, 12) if text_dim else None, counts).eval()
    rng = np.random.default_rng(0)
    histories = [rng.integers(1, 25, size=rng.integers(0, max_len + 4)).tolist() for _ in range(40)]
    histories[5] = [3, 3, 7]  # a repeated item
    recommended = torch.from_numpy(rng.integers(1, n_items + 1, size=(40, 5)))
    recommended[::7, -1] = 0  # an empty slot
    users = rng.permutation(40)  # any order of rows
    with torch.no_grad():
        states = model.user_states(left_pad(Ragged.from_lists(histories), max_len, users))
        fast = occlusion_reasons(model, Ragged.from_lists(histories), users, states, recommended[users], window,
                                 max_tokens)
        expected, drops = reference_reasons(model, histories, recommended, window)
    for row, user in enumerate(users.tolist()):
        history, ours, theirs = histories[user], fast[row].tolist(), expected[user].tolist()
        for n, (got, want) in enumerate(zip(ours, theirs, strict=True)):
            item = int(recommended[user, n])
            if got == want:
                continue
            # only a near tie may differ: the chosen item's drop is the largest within float tolerance
            assert item > 0 and not (item_repr != "id" and item >= 25), (user, n, got, want)
            chosen = max(float(d[n]) for p, d in drops[user].items() if history[p] == got)
            assert chosen == pytest.approx(max(float(d[n]) for d in drops[user].values()), abs=1e-5)
    assert (fast == expected[users]).float().mean() > 0.99
