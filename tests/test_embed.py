"""Embedding stage: the real MiniLM encoder against sentence-transformers, batching, and the lake cache."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.embed import (
    TextEncoder,
    check_sentence_transformers_layout,
    default_encoder_path,
    embed_items,
    encoder_id,
    plan_batches,
)

WORDS = ("adhesive sanding roll grit microscope slide pipette tip nitrile glove safety goggles beaker flask "
         "stainless steel lab bench digital caliper thermometer industrial scientific tape measure").split()


def varied_texts(n: int = 50, seed: int = 0) -> list[str]:
    """0 to ~600 words: empty, one word, product-like, and longer than max_seq_length (truncated)."""
    rng = np.random.default_rng(seed)
    sizes = [0, 1, 2, 3, 5, 8, 300, 600, *rng.integers(4, 120, size=n - 8)]
    texts = [" ".join(rng.choice(WORDS, size=int(k))) for k in sizes]
    texts[3] = "Ünïcödé 日本語 テキスト, punctuation!? (and) 3/4-inch 10yd #80"
    return texts


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    """The default encoder: MiniLM, device and precision auto (bf16 on CPUs with native bf16)."""
    return TextEncoder.load()


@pytest.fixture(scope="module")
def reference() -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(default_encoder_path(), device="cpu")


class EncodeSpy:
    """Wraps TextEncoder.encode to record which texts were actually encoded."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.inner = encoder.encode
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str], **kwargs: Any) -> np.ndarray:
        self.calls.append(list(texts))
        return self.inner(texts, **kwargs)

    @property
    def encoded(self) -> list[str]:
        return [t for call in self.calls for t in call]


@pytest.fixture
def spy(encoder: TextEncoder, monkeypatch: pytest.MonkeyPatch) -> Iterator[EncodeSpy]:
    recorder = EncodeSpy(encoder)
    monkeypatch.setattr(encoder, "encode", recorder)
    yield recorder


def test_default_encoder_agrees_with_sentence_transformers(encoder: TextEncoder, reference: Any) -> None:
    texts = varied_texts()
    ours = encoder.encode(texts)
    ref = reference.encode(texts, batch_size=16, convert_to_numpy=True)
    assert ours.shape == ref.shape == (len(texts), 384)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosine = (ours * ref).sum(axis=1)
    assert cosine.min() >= 0.999, f"text {int(cosine.argmin())}: cosine {cosine.min():.6f}"


def test_fp32_matches_sentence_transformers_closely(reference: Any) -> None:
    texts = varied_texts(20, seed=1)
    fp32 = TextEncoder.load(precision="fp32", batch_tokens=512)
    cosine = (fp32.encode(texts, batch_size=3) * reference.encode(texts, convert_to_numpy=True)).sum(axis=1)
    assert cosine.min() >= 0.99999, f"text {int(cosine.argmin())}: cosine {cosine.min():.7f}"


def test_output_order_does_not_depend_on_batching(encoder: TextEncoder) -> None:
    texts = varied_texts(30, seed=2)
    together = encoder.encode(texts)
    one_by_one = np.stack([encoder.encode([t])[0] for t in texts[:6]])
    assert (together[:6] * one_by_one).sum(axis=1).min() >= 0.999
    assert encoder.encode([]).shape == (0, 384)


def test_plan_batches_respects_the_token_budget() -> None:
    lengths = np.array([5, 200, 17, 17, 3, 64, 256, 9, 9, 9, 120])
    batches = plan_batches(lengths, batch_tokens=256)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))  # every text exactly once
    assert list(lengths[flat]) == sorted(lengths, reverse=True)  # longest first: padding only within ties
    for batch in batches:
        assert len(batch) * lengths[batch].max() <= 256 or len(batch) == 1
    assert max(len(b) for b in plan_batches(lengths, batch_tokens=10_000, max_batch_size=4)) == 4
    assert [len(b) for b in plan_batches(np.array([300]), batch_tokens=256)] == [1]  # over budget: alone


def test_second_call_is_served_from_the_cache(encoder: TextEncoder, spy: EncodeSpy, tmp_path: Path) -> None:
    ids = [f"i{k}" for k in range(12)]
    texts = varied_texts(12, seed=3)
    first, counts = embed_items(ids, texts, tmp_path, encoder)
    assert (counts["items"], counts["encoded"], counts["cached"]) == (12, 12, 0)
    second, counts = embed_items(ids, texts, tmp_path, encoder)
    assert (counts["encoded"], counts["cached"]) == (0, 12)
    assert spy.calls == [texts]  # the second call never reached the model
    np.testing.assert_array_equal(first, second)
    part = next(tmp_path.glob("*.parquet"))
    table = pq.read_table(part)
    assert table.column_names == ["encoder", "text_sha256", "item_id", "embedding", "created_at"]
    assert set(table.column("encoder").to_pylist()) == {encoder.id}


def test_changed_text_is_reencoded_and_others_are_not(
    encoder: TextEncoder, spy: EncodeSpy, tmp_path: Path
) -> None:
    ids = ["a", "b", "c"]
    texts = ["nitrile gloves, size M", "glass beaker 250 ml", "digital caliper"]
    before, _ = embed_items(ids, texts, tmp_path, encoder)
    changed = [texts[0], "glass beaker 250 ml, borosilicate, pack of 12", texts[2]]
    after, counts = embed_items(ids, changed, tmp_path, encoder)
    assert (counts["encoded"], counts["cached"]) == (1, 2)
    assert spy.calls[-1] == [changed[1]]
    np.testing.assert_array_equal(after[[0, 2]], before[[0, 2]])
    assert float(after[1] @ before[1]) < 0.99  # the old vector is not served for the new text
    back, counts = embed_items(ids, texts, tmp_path, encoder)  # reverting hits the old vector again
    assert counts["encoded"] == 0
    np.testing.assert_array_equal(back, before)


def test_new_items_and_duplicate_texts_are_encoded_once(
    encoder: TextEncoder, spy: EncodeSpy, tmp_path: Path
) -> None:
    embed_items(["a", "b"], ["flask", "beaker"], tmp_path, encoder)
    texts = ["flask", "beaker", "pipette", "pipette"]
    vectors, counts = embed_items(["a", "b", "c", "d"], texts, tmp_path, encoder)
    assert spy.calls[-1] == ["pipette"]
    assert (counts["items"], counts["texts"], counts["encoded"], counts["cached"]) == (4, 3, 1, 2)
    np.testing.assert_array_equal(vectors[2], vectors[3])


def test_the_cache_is_per_encoder(encoder: TextEncoder, tmp_path: Path) -> None:
    embed_items(["a"], ["flask"], tmp_path, encoder)
    other = dataclasses.replace(encoder, id=encoder.id + "-other")
    _, counts = embed_items(["a"], ["flask"], tmp_path, other)
    assert counts["encoded"] == 1


def test_encoder_id_follows_the_weights_and_precision(tmp_path: Path) -> None:
    folder = tmp_path / "my-encoder"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    base = encoder_id(str(folder))
    assert base.startswith(f"{tmp_path.name}/my-encoder@")
    assert encoder_id(str(folder), "bf16") == base + "-bf16"
    assert encoder_id(str(folder), max_seq_length=128) != base
    (folder / "model.safetensors").write_bytes(b"\x01" + b"\x00" * 63)  # same size, retrained weights
    assert encoder_id(str(folder)) != base


def test_unsupported_model_layouts_are_refused(tmp_path: Path) -> None:
    dense = tmp_path / "dense"
    dense.mkdir()
    (dense / "modules.json").write_text(json.dumps([
        {"path": "", "type": "sentence_transformers.models.Transformer"},
        {"path": "2_Dense", "type": "sentence_transformers.models.Dense"},
    ]))
    with pytest.raises(ValueError, match="modules.json: module 'Dense'"):
        check_sentence_transformers_layout(dense)
    cls = tmp_path / "cls"
    (cls / "1_Pooling").mkdir(parents=True)
    pooling = {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
    (cls / "modules.json").write_text(json.dumps([pooling]))
    (cls / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True,
                                                                "pooling_mode_mean_tokens": False}))
    with pytest.raises(ValueError, match="only mean pooling"):
        check_sentence_transformers_layout(cls)
    check_sentence_transformers_layout(Path(default_encoder_path()))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        TextEncoder.load(str(tmp_path))
    with pytest.raises(ValueError, match="precision must be one of"):
        TextEncoder.load(precision="int4")


def test_large_catalogs_log_their_progress(
    encoder: TextEncoder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("pipeline.embed.PROGRESS_LOG_TEXTS", 20)
    with caplog.at_level(logging.INFO, logger="pipeline.embed"):
        encoder.encode(varied_texts(40), batch_size=4)
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("embedded ")]
    assert len(progress) >= 5 and progress[-1].startswith("embedded 40/40 texts (100%)"), progress
