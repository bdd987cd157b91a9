"""Quality benchmark: baselines and the model (id / text / id+text) on one dataset, leave-one-out, full ranking.

Input: EVENTS.csv (`user_id,item_id,timestamp`; a user's order = timestamp order, ties kept in file order) and
ITEMS.tsv (`item_id<TAB>text`). Per user: last event = test, second-to-last = validation (early stopping),
earlier = training; users with fewer than 3 events are training only. Every item of the catalog (items file
plus any item seen in events) is ranked; items already in the user's input history are removed.
`--cold-items F` removes every interaction of a random fraction F of the items from TRAINING only (their text
stays known) and reports recall@10 on test targets that are such cold items, next to random ranking.
The model code is exactly what the nightly run uses (`pipeline.recsys.model`, `pipeline.recsys.train`, `pipeline.recsys.evaluate`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.recsys.evaluate import evaluate_baselines, evaluate_model
from pipeline.recsys.model import ITEM_REPRS, ModelConfig
from pipeline.recsys.train import TrainConfig, train_model

log = logging.getLogger(__name__)

REPORT_METRICS = ("hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr", "coverage@10")


@dataclasses.dataclass
class Dataset:
    item_ids: list[str]                 # item_ids[i - 1] is the original id of index i
    texts: list[str]                    # texts[i - 1] is the text of index i ("" when the items file lacks it)
    sequences: list[np.ndarray]         # per user, item indices in time order
    items_sha256: str                   # sha256 of the items file (text-embedding cache key)
    n_file_items: int                   # items listed in the items file (the rest only appear in events)


def load_dataset(events_path: Path, items_path: Path) -> Dataset:
    import pandas as pd

    raw = items_path.read_bytes()
    item_ids: list[str] = []
    texts: list[str] = []
    lines = raw.decode("utf-8").splitlines()
    if not lines or lines[0].split("\t")[0].strip() != "item_id":
        raise ValueError(f"{items_path}: expected a header line 'item_id<TAB>text', got {lines[:1]!r}")
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t", 1)
        if len(parts) != 2:
            raise ValueError(f"{items_path}:{line_no}: expected 'item_id<TAB>text', got {line[:80]!r}")
        item_ids.append(parts[0].strip())
        texts.append(parts[1].strip())
    index = {iid: i + 1 for i, iid in enumerate(item_ids)}
    n_file_items = len(item_ids)
    if len(index) != len(item_ids):
        raise ValueError(f"{items_path}: duplicate item_id values")

    events = pd.read_csv(events_path, dtype={"user_id": str, "item_id": str}, keep_default_na=False)
    missing_cols = {"user_id", "item_id", "timestamp"} - set(events.columns)
    if missing_cols:
        raise ValueError(f"{events_path}: missing columns {sorted(missing_cols)}")
    for iid in pd.unique(events["item_id"]):
        if iid not in index:
            index[iid] = len(item_ids) + 1
            item_ids.append(iid)
            texts.append("")
    user_code, _ = pd.factorize(events["user_id"])
    item_idx = events["item_id"].map(index).to_numpy(np.int64)
    ts = pd.to_numeric(events["timestamp"], errors="raise").to_numpy()
    order = np.lexsort((np.arange(len(events)), ts, user_code))  # stable: ties keep file order
    users, items = user_code[order], item_idx[order]
    bounds = np.flatnonzero(np.diff(users)) + 1
    sequences = np.split(items, bounds)
    log.info("%s: %d users, %d items, %d events", events_path.name, len(sequences), len(item_ids), len(events))
    return Dataset(item_ids, texts, sequences, hashlib.sha256(raw).hexdigest(), n_file_items)


def leave_one_out(sequences: list[np.ndarray]) -> dict[str, object]:
    """train = seq[:-2] (whole seq if < 3 events); valid: seq[:-2] -> seq[-2]; test: seq[:-1] -> seq[-1]."""
    train, v_in, v_tgt, t_in, t_tgt = [], [], [], [], []
    for s in sequences:
        if len(s) < 3:
            train.append(s)
            continue
        train.append(s[:-2])
        v_in.append(s[:-2])
        v_tgt.append(s[-2])
        t_in.append(s[:-1])
        t_tgt.append(s[-1])
    return {"train": train, "valid_inputs": v_in, "valid_targets": np.array(v_tgt, np.int64),
            "test_inputs": t_in, "test_targets": np.array(t_tgt, np.int64)}


def text_embeddings(data: Dataset, work_dir: Path) -> np.ndarray:
    """(n_items+1, dim) MiniLM embeddings (row 0 zeros), cached in work_dir keyed by the items file's sha256."""
    work_dir.mkdir(parents=True, exist_ok=True)
    cache = work_dir / f"text_emb_{data.items_sha256}.npy"
    n_file_items = data.n_file_items
    if cache.exists():
        emb = np.load(cache)
        log.info("text embeddings from cache %s", cache)
    else:
        from pipeline.embed import encode_texts

        t0 = time.perf_counter()
        emb = encode_texts(data.texts[:n_file_items])
        np.save(cache, emb)
        log.info("encoded %d texts in %.0f s -> %s", len(data.texts), time.perf_counter() - t0, cache)
    assert emb.shape[0] == n_file_items, f"{cache}: {emb.shape[0]} rows for {n_file_items} items"
    extra = len(data.texts) - n_file_items  # items only seen in events have no text: zero vectors
    emb = np.concatenate([emb, np.zeros((extra, emb.shape[1]), np.float32)])
    return np.concatenate([np.zeros((1, emb.shape[1]), np.float32), emb]).astype(np.float32)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d_m, d_t = ModelConfig(n_items=1, item_repr="id"), TrainConfig()
    parser.add_argument("--events", type=Path, required=True, help="CSV with user_id,item_id,timestamp")
    parser.add_argument("--items", type=Path, required=True, help="TSV with item_id<TAB>text")
    parser.add_argument("--dataset-name", default=None, help="name in the report (default: events file stem)")
    parser.add_argument("--item-repr", default="all", choices=[*ITEM_REPRS, "all"])
    parser.add_argument("--cold-items", type=float, default=0.0, help="fraction of items made cold (0 = none)")
    parser.add_argument("--max-epochs", type=int, default=d_t.max_epochs)
    parser.add_argument("--time-budget-minutes", type=float, default=None, help="total training budget, all models")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--work-dir", type=Path, default=Path(".cache/quality_benchmark"))
    parser.add_argument("--seed", type=int, default=d_t.seed)
    parser.add_argument("--max-len", type=int, default=d_m.max_len)
    parser.add_argument("--d-model", type=int, default=d_m.d_model)
    parser.add_argument("--n-layers", type=int, default=d_m.n_layers)
    parser.add_argument("--n-heads", type=int, default=d_m.n_heads)
    parser.add_argument("--dropout", type=float, default=d_m.dropout)
    parser.add_argument("--id-dropout", type=float, default=d_m.id_dropout)
    parser.add_argument("--temperature", type=float, default=d_m.temperature)
    parser.add_argument("--no-normalize", action="store_true", help="dot-product scores instead of cosine")
    parser.add_argument("--text-hidden", type=int, default=d_m.text_hidden)
    parser.add_argument("--label-smoothing", type=float, default=d_m.label_smoothing)
    parser.add_argument("--batch-size", type=int, default=d_t.batch_size)
    parser.add_argument("--lr", type=float, default=d_t.lr)
    parser.add_argument("--weight-decay", type=float, default=d_t.weight_decay)
    parser.add_argument("--warmup-epochs", type=int, default=d_t.warmup_epochs)
    parser.add_argument("--patience", type=int, default=d_t.patience)
    parser.add_argument("--device", default=None)


def print_table(title: str, results: dict[str, dict[str, float]], file=sys.stdout) -> None:
    """The human-readable report (stdout is this command's output, not a log)."""
    cols = [*REPORT_METRICS, "cold_recall@10", "random_recall@10", "train_seconds", "seconds_per_epoch", "best_epoch"]
    cols = [c for c in cols if any(c in r for r in results.values())]
    print(f"\n{title}", file=file)
    print(f"{'model':<16}" + "".join(f"{c:>18}" for c in cols), file=file)
    for name, r in results.items():
        cells = "".join(f"{r[c]:>18.4f}" if c in r else f"{'-':>18}" for c in cols)
        print(f"{name:<16}{cells}", file=file)


def run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    data = load_dataset(args.events, args.items)
    n_items = len(data.item_ids)
    split = leave_one_out(data.sequences)
    train_seqs: list[np.ndarray] = split["train"]
    cold = None
    if args.cold_items > 0:
        interacted = np.unique(np.concatenate(data.sequences))
        rng = np.random.default_rng(args.seed)
        cold = np.sort(rng.choice(interacted, int(round(args.cold_items * len(interacted))), replace=False))
        train_seqs = [s[~np.isin(s, cold)] for s in train_seqs]
        log.info("cold items: %d of %d interacted items removed from training", len(cold), len(interacted))

    results: dict[str, dict[str, float]] = {}
    for name, m in evaluate_baselines(
        train_seqs, split["test_inputs"], split["test_targets"], n_items, cold_items=cold
    ).items():
        results[name] = m

    reprs = list(ITEM_REPRS) if args.item_repr == "all" else [args.item_repr]
    text_emb = text_embeddings(data, args.work_dir) if any(r != "id" for r in reprs) else None
    for i, repr_name in enumerate(reprs):
        budget = None
        if args.time_budget_minutes is not None:
            left = args.time_budget_minutes * 60 - (time.perf_counter() - t_start)
            budget = max(1.0, left / (len(reprs) - i))
        model_cfg = ModelConfig(
            n_items=n_items, max_len=args.max_len, d_model=args.d_model, n_heads=args.n_heads,
            n_layers=args.n_layers, dropout=args.dropout, item_repr=repr_name,
            text_dim=0 if text_emb is None or repr_name == "id" else text_emb.shape[1],
            text_hidden=args.text_hidden, id_dropout=args.id_dropout, normalize=not args.no_normalize,
            temperature=args.temperature, label_smoothing=args.label_smoothing,
        )
        train_cfg = TrainConfig(
            max_epochs=args.max_epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
            warmup_epochs=args.warmup_epochs, patience=args.patience, seed=args.seed, time_budget_s=budget,
            device=args.device,
        )
        model, train_metrics, _ = train_model(
            model_cfg, train_cfg, train_seqs, split["valid_inputs"], split["valid_targets"], text_emb=text_emb,
            on_epoch=lambda epoch, rec, name=repr_name: log.info(
                "%s epoch %d: loss %.4f, valid ndcg@10 %.4f, %.1f s", name, epoch, rec["loss"],
                rec.get("valid_ndcg@10", float("nan")), rec["seconds"]),
        )
        test = evaluate_model(model, split["test_inputs"], split["test_targets"], cold_items=cold)
        keep = ("train_seconds", "seconds_per_epoch", "best_epoch", "epochs", "valid_ndcg@10")
        results[repr_name] = {**test, **{k: train_metrics[k] for k in keep}}
        log.info("%s: test ndcg@10 %.4f, %.1f s/epoch", repr_name, test["ndcg@10"], train_metrics["seconds_per_epoch"])

    name = args.dataset_name or args.events.stem
    report = {
        "dataset": {"name": name, "events": str(args.events), "items": str(args.items), "n_users": len(data.sequences),
                    "n_items": n_items, "n_events": int(sum(len(s) for s in data.sequences)),
                    "n_test_users": len(split["test_targets"]),
                    "cold_items": 0 if cold is None else len(cold)},
        "protocol": "leave-one-out (last = test, second-to-last = validation), full ranking over all items, "
                    "items in the input history removed, ties ranked against the target",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
        "results": results,
        "total_seconds": time.perf_counter() - t_start,
    }
    print_table(f"{name}: test metrics ({report['protocol']})", results)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        log.info("wrote %s", args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
