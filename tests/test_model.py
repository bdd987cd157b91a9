"""SeqRecModel: shapes, causal masking, padding, seen-item exclusion, cold items, checkpoint round trip."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.recsys.model import ModelConfig, SeqRecModel
from pipeline.recsys.ranking import top_k_unseen

N_ITEMS = 30
TEXT_DIM = 16


def make_model(item_repr: str = "id+text", counts: torch.Tensor | None = None, **kw) -> SeqRecModel:
    torch.manual_seed(0)
    text_dim = 0 if item_repr == "id" else TEXT_DIM
    cfg = ModelConfig(n_items=N_ITEMS, max_len=8, d_model=16, n_heads=2, item_repr=item_repr, text_dim=text_dim, **kw)
    text = torch.randn(N_ITEMS + 1, TEXT_DIM) if text_dim else None
    return SeqRecModel(cfg, text_emb=text, item_counts=counts).eval()


@pytest.mark.parametrize("item_repr", ["id", "text", "id+text"])
def test_forward_shapes_and_loss(item_repr: str) -> None:
    model = make_model(item_repr)
    seq = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]])
    tgt = torch.tensor([[0, 0, 4, 5, 6], [2, 3, 4, 5, 6]])
    logits, loss = model(seq, tgt)
    assert logits.shape == (8, N_ITEMS + 1)  # one row per non-zero target
    assert loss is not None and torch.isfinite(loss)
    logits, loss = model(seq)
    assert logits.shape == (2, N_ITEMS + 1) and loss is None
    assert torch.isinf(logits[:, 0]).all()  # padding is never a candidate
    assert model.item_representations().shape == (N_ITEMS + 1, 16)
    assert model.user_states(seq).shape == (2, 16)


@pytest.mark.parametrize("options", [{}, {"normalize": False}, {"text_prior": True}])
def test_scores_equal_user_states_dot_item_representations(options: dict) -> None:
    model = make_model(**options)
    seq = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    logits, _ = model(seq)
    manual = model.user_states(seq) @ model.item_representations().T
    torch.testing.assert_close(logits[:, 1:], manual[:, 1:])


def test_the_text_prior_adds_its_weight_times_the_last_items_text_cosine() -> None:
    plain, prior = make_model(), make_model(text_prior=True)
    prior.load_state_dict(plain.state_dict(), strict=False)  # the same model part
    with torch.no_grad():
        prior.text_prior_weight.fill_(3.0)
    seq = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    text = torch.nn.functional.normalize(prior.text_emb, dim=-1)
    expected = plain(seq)[0] + 3.0 * text[seq[:, -1]] @ text.T
    torch.testing.assert_close(prior(seq)[0][:, 1:], expected[:, 1:])
    tgt = torch.tensor([[0, 2, 3, 4], [5, 6, 7, 8]])
    loss = prior(seq, tgt)[1]
    loss.backward()
    assert prior.text_prior_weight.grad is not None and prior.text_prior_weight.grad != 0  # it is learned


def test_no_attention_to_the_future() -> None:
    model = make_model()
    a = torch.tensor([[1, 2, 3, 4, 5, 6]])
    b = a.clone()
    b[0, 4:] = torch.tensor([20, 21])  # change the last two items
    ha, hb = model._hidden(a), model._hidden(b)
    torch.testing.assert_close(ha[:, :4], hb[:, :4])
    assert not torch.allclose(ha[:, 4:], hb[:, 4:])


def test_extra_left_padding_changes_nothing() -> None:
    model = make_model()
    short = torch.tensor([[7, 8, 9]])
    padded = torch.tensor([[0, 0, 0, 0, 7, 8, 9]])
    torch.testing.assert_close(model.user_states(short), model.user_states(padded))
    # and a different history really does change the state (the check above is not vacuous)
    assert not torch.allclose(model.user_states(short), model.user_states(torch.tensor([[7, 8, 10]])))


@pytest.mark.parametrize(("n_layers", "text_prior"), [(1, False), (2, False), (3, False), (2, True)])
def test_branches_off_a_cached_history_equal_full_passes(n_layers: int, text_prior: bool) -> None:
    """branched_user_states: a history with its last n items replaced by a branch's n items gets the state of
    that history run alone, for every n up to the whole history (padding in the kept part, several branches
    in one call); user_states_and_prefix gives user_states."""
    model = make_model(n_layers=n_layers, text_prior=text_prior)
    seqs = torch.tensor([[0, 0, 0, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7], [0, 0, 0, 0, 0, 0, 9]])
    states, prefix = model.user_states_and_prefix(seqs)
    torch.testing.assert_close(states, model.user_states(seqs))
    lengths = torch.tensor([1, 3, 2, 7, 4])
    branches = torch.randint(1, N_ITEMS + 1, (3, int(lengths.sum())))  # (3, K), one branch after the other
    branched = model.branched_user_states(prefix, branches, lengths)  # (3, G, D)
    ends = lengths.cumsum(0).tolist()
    for g, (n, end) in enumerate(zip(lengths.tolist(), ends, strict=True)):
        history = torch.cat([seqs[:, : seqs.shape[1] - n], branches[:, end - n : end]], dim=1)
        torch.testing.assert_close(branched[:, g], model.user_states(history))
    with pytest.raises(AssertionError, match="branch lengths"):
        model.branched_user_states(prefix, branches[:, :8], torch.tensor([8]))


def test_recommend_excludes_seen_padding_and_masked_items() -> None:
    model = make_model()
    seqs = torch.tensor([[0, 0, 1, 2, 3], [4, 5, 6, 7, 8]])
    ids, scores = model.recommend(seqs, k=N_ITEMS - 5)
    assert ids.shape == scores.shape == (2, N_ITEMS - 5)
    for row, seq in zip(ids.tolist(), seqs.tolist(), strict=True):
        assert 0 not in row
        assert not set(row) & set(seq) - {0}
        assert len(set(row)) == len(row)
    assert torch.isfinite(scores).all()
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # sorted
    exclude = torch.zeros(N_ITEMS + 1, dtype=torch.bool)
    exclude[10:20] = True
    ids, _ = model.recommend(seqs, k=10, exclude=exclude)
    assert not ((ids >= 10) & (ids < 20)).any()
    # without exclusion the best items of the first user include seen ones (the mask does real work)
    unmasked, _ = model.recommend(seqs, k=N_ITEMS, exclude_seen=False)
    assert set(unmasked[0].tolist()) >= {1, 2, 3}


def test_text_repr_scores_items_never_seen_in_training() -> None:
    counts = torch.ones(N_ITEMS + 1)
    counts[20:] = 0  # items 20..30 have no training interactions
    for item_repr in ("text", "id+text"):
        model = make_model(item_repr, counts=counts)
        reps = model.item_representations()
        cold = reps[20:]
        assert torch.isfinite(cold).all() and cold.norm(dim=1).gt(0).all()
        assert torch.unique(cold, dim=0).shape[0] == cold.shape[0]  # distinct vectors
        # the cold vectors come from the text: a different text gives a different vector
        model.text_emb[25] = torch.randn(TEXT_DIM)
        assert not torch.allclose(model.item_representations()[25], reps[25])


def test_id_part_is_dropped_for_cold_items_in_id_text() -> None:
    counts = torch.ones(N_ITEMS + 1)
    counts[20:] = 0
    model = make_model("id+text", counts=counts)
    before = model.item_representations()
    with torch.no_grad():
        model.id_emb.weight[20:] += 100.0  # a cold ID row that drifted must not matter
        model.id_emb.weight[5] += 100.0  # a warm one must
    after = model.item_representations()
    torch.testing.assert_close(before[20:], after[20:])
    assert not torch.allclose(before[5], after[5])


def test_state_dict_and_config_rebuild_the_model() -> None:
    model = make_model("id+text")
    clone = SeqRecModel(ModelConfig(**dataclasses.asdict(model.config)))
    clone.load_state_dict(model.state_dict())
    clone.eval()
    seq = torch.tensor([[0, 3, 4, 5]])
    torch.testing.assert_close(model(seq)[0], clone(seq)[0])


def test_sampled_softmax_path() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(n_items=N_ITEMS, max_len=8, d_model=16, item_repr="id", sampled_softmax_above=10, n_negatives=8)
    model = SeqRecModel(cfg).train()
    seq = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    tgt = torch.tensor([[0, 2, 3, 4], [5, 6, 7, 8]])
    _, loss = model(seq, tgt)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.id_emb.weight.grad.abs().sum() > 0


def test_config_rejects_text_repr_without_text() -> None:
    with pytest.raises(AssertionError, match="needs text_dim"):
        ModelConfig(n_items=5, item_repr="text")


def test_top_k_unseen_never_returns_seen_items_and_respects_k() -> None:
    scores = torch.tensor([[0.0, 5.0, 4.0, 3.0, 2.0, 1.0],
                           [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    seen = torch.tensor([[0, 1, 3], [0, 0, 5]])  # left-padded: column 0 is the padding item
    top_scores, top_ids = top_k_unseen(scores.clone(), seen, k=3)
    assert top_ids.tolist() == [[2, 4, 5], [4, 3, 2]]
    assert top_scores.tolist() == [[4.0, 2.0, 1.0], [4.0, 3.0, 2.0]]
    # the same cells given as (row, column) pairs, as batch scoring does
    pairs = (torch.tensor([0, 0, 0, 1, 1]), torch.tensor([0, 1, 3, 0, 5]))
    assert top_k_unseen(scores.clone(), pairs, k=3)[1].tolist() == top_ids.tolist()
    # fewer than k left: the tail is -inf, never a seen item with a real score
    everything = torch.tensor([[0, 1, 2, 3, 4, 5]] * 2)
    tail, _ = top_k_unseen(scores.clone(), everything, k=2)
    assert torch.isneginf(tail).all()
    # keep: one column per row stays ranked although seen (evaluation's target)
    kept_scores, kept_ids = top_k_unseen(scores.clone(), seen, k=1, keep=torch.tensor([1, 0]))
    assert kept_ids.tolist() == [[1], [4]] and kept_scores[0, 0] == 5.0


def test_top_k_unseen_nan_handling() -> None:
    """NaN scores of unseen items rank last (after every finite score, before masked items) and come back as
    NaN, so a broken model shows up in validation instead of topping every list (issue 14, item 1); a NaN on a
    seen item is masked like any seen score."""
    scores = torch.tensor([[0.0, float("nan"), 2.0, 1.0, float("nan")]])
    top_scores, top_ids = top_k_unseen(scores, torch.tensor([[0, 4]]), k=2)
    assert top_ids.tolist() == [[2, 3]]
    assert top_scores.tolist() == [[2.0, 1.0]]
    all_scores, all_ids = top_k_unseen(scores.clone(), torch.tensor([[0, 4]]), k=4)
    assert all_ids[0, :3].tolist() == [2, 3, 1] and torch.isnan(all_scores[0, 2])
    assert torch.isneginf(all_scores[0, 3])
    assert torch.isneginf(scores[0, 4])  # masked in place
