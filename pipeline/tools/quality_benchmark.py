"""Quality benchmark: baselines and the model (id / text / id+text) on one dataset, leave-one-out, full ranking.

Input: EVENTS.csv (`user_id,item_id,timestamp`; a user's order = timestamp order, ties kept in file order) and
ITEMS.tsv (`item_id<TAB>text`). The data goes the night's way: the `events` importer writes landing files into a
temporary state home, then the real stages ingest, features and embed run on the last data day, and
`load_night` reads the marts. So the split is the night's (sql/marts/split_leave_one_out.sql: last event = test,
second-to-last = validation for early stopping, earlier = training; users with fewer than 3 events are
training only), the histories are the night's user_sequences (the most recent max(200, max_len + 2) events),
and the text embeddings come from the night's encoder and its cache (kept in WORK_DIR/item_embeddings across
runs). Every item of the catalog is ranked; items already in the user's input history are removed.
`--cold-items F` removes every interaction of a random fraction F of the items from TRAINING only (their text
stays known) and reports recall@10 on test targets that are such cold items, next to random ranking.
Training and evaluation are the night's functions (`pipeline.recsys.train`, `pipeline.recsys.evaluate`).
`--explain` prints how faithful the reasons are and `--diversity-weights` the accuracy/diversity trade-off of
MMR re-ranking, for each trained model (`pipeline.tools.explain_benchmark`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.catalog import Catalog
from pipeline.config import load_settings
from pipeline.recsys.bundle import ModelBundle
from pipeline.recsys.data import NightData, load_night
from pipeline.recsys.evaluate import evaluate_baselines, evaluate_model
from pipeline.recsys.model import ITEM_REPRS, ModelConfig, SeqRecModel
from pipeline.recsys.train import TrainConfig, train_model
from pipeline.tools.explain_benchmark import faithfulness, plot_tradeoff, print_extras, tradeoff

log = logging.getLogger(__name__)

REPORT_METRICS = ("hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr", "coverage@10")


@dataclasses.dataclass
class Prepared:
    night: NightData       # the marts of the last data day in model index space
    data_date: dt.date     # the last day of the imported events
    imported: dict[str, int]  # what the importer wrote (events, days, items)


def prepare_night(args: argparse.Namespace, home: Path, embed: bool) -> Prepared:
    """Import the dataset into `home` and run the night's ingest, features and (when `embed`) embed stages on
    the last data day; the embedding cache lives in WORK_DIR so later runs encode nothing again."""
    from pipeline.ingest import landing_files
    from pipeline.stages import stage_embed, stage_features, stage_ingest
    from pipeline.tools.importers import import_dataset

    settings = load_settings(env={}, home=home, max_len=args.max_len)
    catalog = Catalog.of(settings)
    imported = import_dataset("events", args.events, catalog.landing, items=args.items)
    data_date = max(landing_files(catalog.landing_dir("events")))
    _share_embedding_cache(catalog, args.work_dir)
    stage_ingest(settings, data_date)
    stage_features(settings, data_date)
    if embed:
        stage_embed(settings, data_date)
    return Prepared(load_night(catalog, data_date), data_date, imported)


def _share_embedding_cache(catalog: Catalog, work_dir: Path) -> None:
    """Point the temporary home's embedding cache (keyed by encoder and text hash) at one in work_dir."""
    cache = catalog.embedding_cache
    assert isinstance(cache, Path), f"the benchmark shares a local embedding cache, not {cache}"
    shared = (work_dir / cache.name).resolve()
    shared.mkdir(parents=True, exist_ok=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.symlink_to(shared, target_is_directory=True)


def cold_item_indices(night: NightData, fraction: float, seed: int) -> np.ndarray:
    """A random `fraction` of the interacted items (model indices), sorted."""
    interacted = np.unique(np.concatenate(night.sequences))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(interacted, int(round(fraction * len(interacted))), replace=False))


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
    parser.add_argument("--text-prior", action=argparse.BooleanOptionalAction, default=d_m.text_prior,
                        help="add a learned weight x cosine(text of the last item, text of the candidate)")
    parser.add_argument("--text-whiten", action=argparse.BooleanOptionalAction, default=d_m.text_whiten,
                        help="whiten the frozen text embeddings before the adapter")
    parser.add_argument("--batch-size", type=int, default=d_t.batch_size)
    parser.add_argument("--lr", type=float, default=d_t.lr)
    parser.add_argument("--weight-decay", type=float, default=d_t.weight_decay)
    parser.add_argument("--warmup-epochs", type=int, default=d_t.warmup_epochs)
    parser.add_argument("--patience", type=int, default=d_t.patience)
    parser.add_argument("--windows-per-user", type=int, default=d_t.windows_per_user,
                        help="max_len windows per user per epoch, newest first (0 = the whole history)")
    parser.add_argument("--min-lr-ratio", type=float, default=d_t.min_lr_ratio,
                        help="floor of the cosine schedule (1 = a constant rate after the warm-up)")
    parser.add_argument("--budget-schedule", action="store_true",
                        help="bind the cosine horizon to the epochs the time budget allows (default: --max-epochs)")
    parser.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                        help="bf16 autocast in training (auto: CUDA, or a CPU with native bf16)")
    parser.add_argument("--device", default=d_t.device, help="auto | cpu | cuda[:N] (training; auto = cuda if any)")
    parser.add_argument("--explain", action="store_true", help="print the faithfulness of the reasons")
    parser.add_argument("--reason-window", type=int, default=5, help="history items occluded for a reason")
    parser.add_argument("--diversity-weights", default="", help="MMR weights for the trade-off, e.g. 0,0.2,0.5")
    parser.add_argument("--plot", type=Path, default=None,
                        help="PNG of the accuracy/diversity trade-off (with --diversity-weights)")


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
    reprs = list(ITEM_REPRS) if args.item_repr == "all" else [args.item_repr]
    args.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="quality-home-", dir=args.work_dir) as home:
        prepared = prepare_night(args, Path(home), embed=any(r != "id" for r in reprs))
    night = prepared.night
    train_seqs = night.train_sequences()
    test_inputs = night.test_inputs()
    cold = None
    if args.cold_items > 0:
        cold = cold_item_indices(night, args.cold_items, args.seed)
        train_seqs = [s[~np.isin(s, cold)] for s in train_seqs]
        log.info("cold items: %d items removed from training", len(cold))

    extras: dict[str, dict] = {}
    results: dict[str, dict[str, float]] = dict(
        evaluate_baselines(train_seqs, test_inputs, night.loo_test, night.n_items, cold_items=cold)
    )
    for i, repr_name in enumerate(reprs):
        budget = None
        if args.time_budget_minutes is not None:
            left = args.time_budget_minutes * 60 - (time.perf_counter() - t_start)
            budget = max(1.0, left / (len(reprs) - i))
        model, train_metrics = train_one(args, night, train_seqs, repr_name, budget)
        test = evaluate_model(model, test_inputs, night.loo_test, cold_items=cold)
        keep = ("train_seconds", "seconds_per_epoch", "best_epoch", "epochs", "valid_ndcg@10")
        results[repr_name] = {**test, **{k: train_metrics[k] for k in keep}}
        extras[repr_name] = _extras(args, night, model, test_inputs)
        log.info("%s: test ndcg@10 %.4f, %.1f s/epoch", repr_name, test["ndcg@10"], train_metrics["seconds_per_epoch"])

    name = args.dataset_name or args.events.stem
    report = {
        "dataset": {"name": name, "events": str(args.events), "items": str(args.items),
                    "data_date": prepared.data_date.isoformat(), "n_users": len(night.user_ids),
                    "n_items": night.n_items, "n_events_imported": prepared.imported["events"],
                    "n_test_users": len(night.loo_test), "cold_items": 0 if cold is None else len(cold)},
        "protocol": "leave-one-out (last = test, second-to-last = validation), full ranking over all items, "
                    "items in the input history removed, ties ranked against the target",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
        "results": results,
        "explain_and_diversity": extras,
        "total_seconds": time.perf_counter() - t_start,
    }
    print_table(f"{name}: test metrics ({report['protocol']})", results)
    for repr_name, extra in extras.items():
        print_extras(f"{name} {repr_name}", extra.get("faithfulness"), extra.get("tradeoff"))
    curves = {repr_name: extra["tradeoff"] for repr_name, extra in extras.items() if extra.get("tradeoff")}
    if args.plot is not None and curves:
        log.info("wrote the trade-off plot %s", plot_tradeoff(curves, args.plot))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        log.info("wrote %s", args.json)
    return 0


def _extras(args: argparse.Namespace, night: NightData, model: SeqRecModel, inputs: list[np.ndarray]
            ) -> dict[str, dict]:
    """Faithfulness of the reasons and the diversity trade-off of one trained model, when asked for."""
    bundle = ModelBundle(model.cpu().eval(), night.item_ids)
    out: dict[str, dict] = {}
    if args.explain:
        out["faithfulness"] = faithfulness(bundle, inputs, args.reason_window, seed=args.seed)
    if args.diversity_weights:
        weights = [float(w) for w in args.diversity_weights.split(",")]
        out["tradeoff"] = tradeoff(bundle, inputs, night.loo_test, weights, night.text_emb)
    return out


def train_one(
    args: argparse.Namespace, night: NightData, train_seqs: list[np.ndarray], repr_name: str, budget: float | None
) -> tuple[SeqRecModel, dict[str, float]]:
    """Train one item representation with the night's train_model, validating on the night's split."""
    text_emb = night.text_emb if repr_name != "id" else None
    if repr_name != "id" and text_emb is None:
        raise ValueError(f"item_repr {repr_name!r} needs text embeddings, and the night has none")
    model_cfg = ModelConfig(
        n_items=night.n_items, max_len=args.max_len, d_model=args.d_model, n_heads=args.n_heads,
        n_layers=args.n_layers, dropout=args.dropout, item_repr=repr_name,
        text_dim=0 if text_emb is None else text_emb.shape[1],
        text_hidden=args.text_hidden, id_dropout=args.id_dropout, normalize=not args.no_normalize,
        temperature=args.temperature, label_smoothing=args.label_smoothing, text_whiten=args.text_whiten,
        text_prior=args.text_prior and repr_name != "id",
    )
    train_cfg = TrainConfig(
        max_epochs=args.max_epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, patience=args.patience, seed=args.seed, time_budget_s=budget,
        device=args.device, windows_per_user=args.windows_per_user,
        min_lr_ratio=args.min_lr_ratio, budget_schedule=args.budget_schedule,
        bf16={"auto": None, "on": True, "off": False}[args.bf16],
    )
    model, train_metrics, _ = train_model(model_cfg, train_cfg, train_seqs, night.loo_train, night.loo_valid,
                                          text_emb=text_emb)
    return model, train_metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
