"""Batch scoring: top-N items for every active user, in blocks of users so memory stays bounded.

Per block: user states (B, D) @ item representations (D, N) -> mask padding, items no longer in the catalog
and the user's seen items -> top-k. Users whose history has no item the model knows fall back to the
most popular catalog items they have not seen (`source = 'popular'`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from pipeline.bundle import ModelBundle

log = logging.getLogger(__name__)

RECOMMENDATION_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("rank", pa.int32()),
        ("item_id", pa.string()),
        ("score", pa.float64()),
        ("source", pa.string()),
    ]
)


@dataclass
class ScoringInput:
    user_ids: list[str]            # users to score
    histories: list[list[str]]     # their most recent items, oldest first (model input)
    seen: list[list[str]]          # every item each user interacted with (excluded)
    catalog_ids: set[str]          # items allowed in the output
    popular: list[tuple[str, float]]  # (item_id, popularity) best first, for the fallback


def _left_pad(seqs: list[np.ndarray], max_len: int) -> torch.Tensor:
    out = torch.zeros(len(seqs), max_len, dtype=torch.long)
    for row, seq in enumerate(seqs):
        if len(seq):
            out[row, -len(seq):] = torch.from_numpy(seq[-max_len:])
    return out


def score_users(
    bundle: ModelBundle, data: ScoringInput, k: int, chunk_users: int = 4096, device: str = "cpu"
) -> pa.Table:
    """Top-k per user as a table (user_id, rank, item_id, score, source), ranks 1..k, best first."""
    model = bundle.model.to(device).eval()
    index = bundle.index
    n_rows = len(bundle.item_ids) + 1
    allowed = torch.zeros(n_rows, dtype=torch.bool)
    allowed[[index[i] for i in data.catalog_ids if i in index]] = True
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
        items = model.item_representations().float()  # (N+1, D)
    blocked = (~allowed).to(device)
    blocked[0] = True
    users, ranks, item_out, scores, sources = [], [], [], [], []
    encoded = [bundle.encode(h) for h in data.histories]
    model_rows = [i for i, seq in enumerate(encoded) if len(seq)]
    for start in range(0, len(model_rows), chunk_users):
        rows = model_rows[start : start + chunk_users]
        seqs = _left_pad([encoded[r] for r in rows], model.config.max_len).to(device)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            block = (model.user_states(seqs).float() @ items.T)  # (B, N+1)
        block.masked_fill_(blocked, float("-inf"))
        seen_rows = [(j, index[i]) for j, r in enumerate(rows) for i in data.seen[r] if i in index]
        if seen_rows:
            r_idx, c_idx = zip(*seen_rows, strict=True)
            block[list(r_idx), list(c_idx)] = float("-inf")
        top_scores, top_ids = block.topk(min(k, n_rows - 1), dim=1)  # (B, k)
        top_scores, top_ids = top_scores.float().cpu().numpy(), top_ids.cpu().numpy()
        for j, r in enumerate(rows):
            valid = np.isfinite(top_scores[j])
            n = int(valid.sum())
            users.extend([data.user_ids[r]] * n)
            ranks.extend(range(1, n + 1))
            item_out.extend(bundle.item_ids[i - 1] for i in top_ids[j][valid])
            scores.extend(top_scores[j][valid].tolist())
            sources.extend(["model"] * n)
    fallback = sorted(set(range(len(data.user_ids))) - set(model_rows))
    for r in fallback:
        seen = set(data.seen[r])
        picks = [(i, s) for i, s in data.popular if i in data.catalog_ids and i not in seen][:k]
        users.extend([data.user_ids[r]] * len(picks))
        ranks.extend(range(1, len(picks) + 1))
        item_out.extend(i for i, _ in picks)
        scores.extend(float(s) for _, s in picks)
        sources.extend(["popular"] * len(picks))
    log.info("scored %d users with the model, %d with the popularity fallback", len(model_rows), len(fallback))
    return pa.table(
        {"user_id": users, "rank": ranks, "item_id": item_out, "score": scores, "source": sources},
        schema=RECOMMENDATION_SCHEMA,
    )
