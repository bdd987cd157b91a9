"""Quality benchmark extras: how faithful the published reasons are, and the accuracy/diversity trade-off of
MMR re-ranking. Both go through the production scoring path (`recsys.score.score_users`) on the night's test
users (input = training part + validation item, the held-out item is the target).

Faithfulness: for each recommended row with a reason, the drop of the item's score when the reason item is
removed from the history, against the drop when one other history item the model reads (drawn at random,
any position, not only the occlusion window) is removed. The figure is the share of rows where the reason's
drop is strictly larger (rows whose history holds a single item have no other item and are left out).

Trade-off: for each diversity weight, HR@10 and NDCG@10 of the target within the served top-10 (seen items
excluded, as served), catalog coverage and intra-list diversity (text embeddings; the model's item vectors
when the night has no text).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from pipeline.recsys.bundle import ModelBundle
from pipeline.recsys.data import left_pad
from pipeline.recsys.diversity import intra_list_diversity
from pipeline.recsys.score import ScoringInput, Serving, score_users

MAX_ROWS = 5000  # faithfulness rows checked (a random sample beyond this)


def _scoring_input(bundle: ModelBundle, inputs: list[np.ndarray]) -> ScoringInput:
    histories = [[bundle.item_ids[i - 1] for i in seq] for seq in inputs]
    return ScoringInput([f"u{n}" for n in range(len(inputs))], histories, histories, set(bundle.item_ids),
                        [(i, 0.0) for i in bundle.item_ids])


@torch.no_grad()
def _scores_without(bundle: ModelBundle, histories: list[np.ndarray], items: np.ndarray) -> np.ndarray:
    """Score of items[r] after histories[r], for every row r."""
    model, out = bundle.model, []
    vectors = model.item_representations()
    for start in range(0, len(histories), 1024):
        seqs = left_pad(histories[start : start + 1024], model.config.max_len)  # (B, L)
        states = model.user_states(seqs)  # (B, D)
        out.append((states * vectors[torch.from_numpy(items[start : start + 1024])]).sum(-1).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def faithfulness(bundle: ModelBundle, inputs: list[np.ndarray], window: int, k: int = 10, seed: int = 0
                 ) -> dict[str, float]:
    """Share of reasoned rows whose reason's removal lowers the score more than a random history item's."""
    table = score_users(bundle, _scoring_input(bundle, inputs), k, device="cpu", serving=Serving(window))
    table = table.filter(pa.compute.is_valid(table["reason_item_id"]))
    rng = np.random.default_rng(seed)
    rows = rng.choice(table.num_rows, min(MAX_ROWS, table.num_rows), replace=False)
    index, max_len = bundle.index, bundle.model.config.max_len
    users = [int(u[1:]) for u in table["user_id"].take(pa.array(rows)).to_pylist()]
    items = np.array([index[i] for i in table["item_id"].take(pa.array(rows)).to_pylist()])
    reasons = [index[i] for i in table["reason_item_id"].take(pa.array(rows)).to_pylist()]
    base, without_reason, without_other, kept = [], [], [], []
    for n, (user, reason) in enumerate(zip(users, reasons, strict=True)):
        seq = inputs[user][-(max_len + 1):]  # what the model reads, and the item that moves up on a removal
        read = np.arange(max(0, len(seq) - max_len), len(seq))
        at = int(read[seq[read] == reason][-1])  # the reason's (last) position
        others = read[read != at]
        if not len(others):
            continue
        other = int(rng.choice(others))
        base.append(seq)
        without_reason.append(np.delete(seq, at))
        without_other.append(np.delete(seq, other))
        kept.append(n)
    kept_items = items[kept]
    full = _scores_without(bundle, base, kept_items)
    drop_reason = full - _scores_without(bundle, without_reason, kept_items)
    drop_other = full - _scores_without(bundle, without_other, kept_items)
    return {"rows": float(len(kept)), "reason_beats_random": float(np.mean(drop_reason > drop_other)) if kept
            else 0.0, "mean_drop_reason": float(np.mean(drop_reason)) if kept else 0.0,
            "mean_drop_random": float(np.mean(drop_other)) if kept else 0.0}


def tradeoff(bundle: ModelBundle, inputs: list[np.ndarray], targets: np.ndarray, weights: list[float],
             text_emb: np.ndarray | None, k: int = 10) -> dict[str, dict[str, float]]:
    """Per diversity weight: hr@k, ndcg@k of the target in the served list, coverage@k and ild@k."""
    data = _scoring_input(bundle, inputs)
    with torch.no_grad():
        vectors = text_emb if text_emb is not None else bundle.model.item_representations().numpy()
    out = {}
    for weight in weights:
        table = score_users(bundle, data, k, device="cpu", serving=Serving(diversity=weight))
        users = np.array([int(u[1:]) for u in table["user_id"].to_pylist()])
        items = np.array([bundle.index[i] for i in table["item_id"].to_pylist()])
        ranks = table["rank"].to_numpy()
        hit = items == targets[users]
        lists = np.zeros((len(inputs), k), np.int64)
        lists[users, ranks - 1] = items
        out[f"{weight:g}"] = {
            f"hr@{k}": float(hit.sum() / len(inputs)),
            f"ndcg@{k}": float(np.sum(1.0 / np.log2(ranks[hit] + 1.0)) / len(inputs)),
            f"coverage@{k}": float(len(np.unique(items)) / len(bundle.item_ids)),
            f"ild@{k}": intra_list_diversity(lists, vectors),
        }
    return out


def plot_tradeoff(curves: dict[str, dict[str, dict[str, float]]], path: Path, k: int = 10) -> Path:
    """The accuracy/diversity trade-off as a PNG: NDCG@k against intra-list diversity and against coverage, one
    line per model, each point labelled with its MMR weight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, x in zip(axes, (f"ild@{k}", f"coverage@{k}"), strict=True):
        for name, curve in curves.items():
            xs = [row[x] for row in curve.values()]
            ys = [row[f"ndcg@{k}"] for row in curve.values()]
            ax.plot(xs, ys, marker="o", label=name)
            for weight, xv, yv in zip(curve, xs, ys, strict=True):
                ax.annotate(weight, (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(x)
        ax.set_ylabel(f"ndcg@{k}")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("accuracy / diversity trade-off (MMR weight at each point)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def print_extras(name: str, faithful: dict[str, float] | None, curve: dict[str, dict[str, float]] | None,
                 file=sys.stdout) -> None:
    """The human-readable lines (stdout is the benchmark's output, not a log)."""
    if faithful:
        print(f"\n{name}: reasons faithful in {faithful['reason_beats_random']:.1%} of {faithful['rows']:.0f} rows "
              f"(removing the reason lowers the item's score more than removing a random history item; mean drop "
              f"{faithful['mean_drop_reason']:.3f} vs {faithful['mean_drop_random']:.3f})", file=file)
    if curve:
        print(f"\n{name}: accuracy/diversity trade-off (MMR weight)", file=file)
        cols = list(next(iter(curve.values())))
        print(f"{'weight':<8}" + "".join(f"{c:>14}" for c in cols), file=file)
        for weight, row in curve.items():
            print(f"{weight:<8}" + "".join(f"{row[c]:>14.4f}" for c in cols), file=file)
