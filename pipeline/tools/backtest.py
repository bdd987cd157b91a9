"""`nightly-recs backtest`: replay real nights over a landing source and score what each night published
against the users' events of the next day.

For each data date D of [start, end] and each variant, in a state home of its own (lake, warehouse, MLflow,
all under `<out_dir>/<variant>/`, reading the base settings' landing folder), the whole night runs
(stages.run_night: ingest, features, embed, train, register + gate, select, recommend, publish, housekeeping,
report). Then D's published lists are scored against D+1:
  - the model's: the warehouse's `recommendations` of D, as published;
  - the baselines' (recsys.evaluate.baseline_scorers), published the same way: top-N for the same users (the
    night's scoring input), fitted on every user's history up to D (the night's user_sequences), the user's
    seen items removed, catalog items only;
  - the truth: the users active on D+1 with a history before it, and the items new to them that they
    interacted with on D+1 (D+1's split_temporal mart: the gate's own definition). A user active on D+1 whom
    D did not publish for counts as a miss for every method.
Metrics per night: HR@N, NDCG@N, recall@N, MRR (multi_target_metrics; each next-day user weighs the same),
coverage (distinct published items / recommendable catalog items), training seconds, the gate's decision and
every stage's wall time (the runs ledger). Summaries pool the nights, each (user, night) weighing the same.

Variants (all from the base settings):
  warm_start           as configured (warm start from the champion after the first night)
  scratch_same_budget  warm start off; the first night as warm_start's, then warm_start_epochs epochs from
                       scratch every night (the warm start's per-night epoch budget)
  scratch_converged    warm start off, converged_epochs epochs (early stopping ends it) on every k-th night
  warm_incremental     (on request) warm start with incremental nights on (settings `incremental`, ...)
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import storage, warehouse
from pipeline.catalog import Catalog
from pipeline.config import Settings, load_settings

log = logging.getLogger(__name__)

VARIANTS = ("warm_start", "scratch_same_budget", "scratch_converged")
EXTRA_VARIANTS = ("warm_incremental",)  # replayed only when asked for
PER_USER_METRICS = ("hr", "ndcg", "recall", "mrr")  # means over next-day users: pooled by user-weighted means


@dataclass(frozen=True)
class BacktestConfig:
    start: dt.date                     # first data date replayed
    end: dt.date                       # last data date replayed (its truth is end + 1 day)
    out_dir: Path                      # one state home per variant under it (must not hold one already)
    variants: tuple[str, ...] = VARIANTS
    converged_every: int = 3           # scratch_converged replays every k-th night (the first included)
    converged_epochs: int = 200        # its epoch cap; early stopping (patience) and the time budget end it
    top_n: int | None = None           # N of the lists and metrics; None: the settings' top_n


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict[str, Any]          # settings that differ from the base settings
    nights: list[dt.date]              # the data dates it replays
    later_epochs: int | None = None    # run_night's epoch cap after its first night (None: the settings')


@dataclass
class Night:
    """One replayed night of one variant."""

    date: dt.date
    status: str = "ok"                 # ok | failed (the night raised: nothing was published)
    error: str | None = None
    wall_seconds: float = 0.0
    train: dict[str, Any] = field(default_factory=dict)   # train_seconds, epochs, warm_start_from, gate split
    gate: dict[str, Any] = field(default_factory=dict)    # promoted, reason, version
    serving_version: str | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    methods: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> next-day metrics
    lists: dict[str, dict[str, list[str]]] | None = None  # until scored
    catalog_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"date": self.date.isoformat(), "status": self.status, "error": self.error,
                "wall_seconds": round(self.wall_seconds, 2), "train": self.train, "gate": self.gate,
                "serving_version": self.serving_version, "stage_seconds": self.stage_seconds,
                "methods": self.methods}


def nights_between(start: dt.date, end: dt.date) -> list[dt.date]:
    if end < start:
        raise ValueError(f"backtest: --to {end} is before --from {start}")
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def plan_variants(base: Settings, config: BacktestConfig) -> list[Variant]:
    """The variants to replay, in config.variants' order."""
    nights = nights_between(config.start, config.end)
    if config.converged_every < 1:
        raise ValueError(f"backtest: converged_every must be >= 1, got {config.converged_every}")
    known = {
        "warm_start": Variant("warm_start", {}, nights),
        "scratch_same_budget": Variant("scratch_same_budget", {"warm_start": False}, nights,
                                       later_epochs=base.training.warm_start_epochs),
        "scratch_converged": Variant("scratch_converged",
                                     {"warm_start": False, "max_epochs": config.converged_epochs},
                                     nights[:: config.converged_every]),
        "warm_incremental": Variant("warm_incremental", {"incremental": True}, nights),
    }
    unknown = [v for v in config.variants if v not in known]
    if unknown or not config.variants:
        raise ValueError(f"backtest: unknown variants {unknown}; choose from {[*VARIANTS, *EXTRA_VARIANTS]}")
    return [known[v] for v in config.variants]


def variant_settings(base: Settings, home: Path, overrides: dict[str, Any]) -> Settings:
    """The base settings with a state home of the variant's own (lake, warehouse, MLflow under `home`; no
    shared lake_uri, warehouse_uri or tracking server) reading the base landing folder, plus `overrides`."""
    values = {name: value for section, fields in base.to_dict().items() if section != "paths"
              for name, value in fields.items()}
    return load_settings(env={}, home=home, landing_dir=Catalog.of(base).landing, **{**values, **overrides})


# ---- lists and truth -------------------------------------------------------------------------------------------


def published_model_lists(settings: Settings, day: dt.date) -> dict[str, list[str]]:
    """The model's published table of `day`: user -> items, best first (empty when nothing was published)."""
    table = warehouse.published_night(Catalog.of(settings).warehouse, day).to_pydict()
    out: dict[str, list[str]] = {}
    for user, item in zip(table["user_id"], table["item_id"], strict=True):  # ordered by user, rank
        out.setdefault(user, []).append(item)
    return out


def baseline_lists(item_ids: Sequence[str], sequences: Sequence[np.ndarray], users: Sequence[str],
                   histories: Sequence[Sequence[str]], seen: Sequence[Sequence[str]], catalog_ids: set[str],
                   k: int, chunk_users: int = 512) -> dict[str, dict[str, list[str]]]:
    """Each baseline's top-k lists for `users`, as a night would publish them: fitted on `sequences` (every
    user's history up to the night, as indices 1..n of `item_ids`), scored from each user's history, seen
    items and items outside `catalog_ids` removed (recsys.model.top_k_unseen). Returns baseline -> user ->
    items, best first."""
    import torch

    from pipeline.recsys.data import item_index, left_pad
    from pipeline.recsys.evaluate import baseline_scorers
    from pipeline.recsys.ranking import top_k_unseen

    index = item_index(item_ids)

    def encode(lists: Sequence[Sequence[str]]) -> list[np.ndarray]:
        return [np.array([index[i] for i in items if i in index], np.int64) for items in lists]

    n_items = len(item_ids)
    outside = torch.ones(n_items + 1, dtype=torch.bool)
    outside[[index[i] for i in catalog_ids if i in index]] = False
    hist, seen_idx = encode(histories), encode(seen)
    out: dict[str, dict[str, list[str]]] = {}
    for name, score_fn in baseline_scorers(list(sequences), n_items).items():
        lists: dict[str, list[str]] = {}
        for start in range(0, len(users), chunk_users):
            rows = np.arange(start, min(start + chunk_users, len(users)))
            scores = score_fn(rows, [hist[r] for r in rows]).float().clone()  # (B, N+1)
            scores[:, outside] = float("-inf")
            values, columns = top_k_unseen(scores, left_pad([seen_idx[r] for r in rows]), min(k, n_items))
            for row, vals, cols in zip(rows, values.tolist(), columns.tolist(), strict=True):
                lists[users[row]] = [item_ids[c - 1] for v, c in zip(vals, cols, strict=True) if v != float("-inf")]
        out[name] = lists
    return out


def night_lists(settings: Settings, day: dt.date, k: int) -> tuple[dict[str, dict[str, list[str]]], int]:
    """({method: {user: items}}, recommendable catalog size) of one replayed night: the model's published table
    and the baselines' lists for the same users (the night's scoring input)."""
    from pipeline.recsys.data import load_night
    from pipeline.recsys.score import as_lists, scoring_input

    catalog = Catalog.of(settings)
    data = scoring_input(catalog, day)
    night = load_night(catalog, day)
    users = as_lists(data.user_ids)
    baselines = baseline_lists(night.item_ids, night.sequences, users, as_lists(data.histories), as_lists(data.seen),
                               set(data.catalog_ids), k, settings.serving.score_chunk_users)
    return {"model": published_model_lists(settings, day), **baselines}, len(data.catalog_ids)


def next_day_truth(catalog: Catalog, day: dt.date) -> dict[str, list[str]] | None:
    """user -> the items new to them that they interacted with on `day`, for the users active on it with a
    history before it (`day`'s split_temporal mart); None when that night's features were not built."""
    location = catalog.mart(day, "split_temporal")
    if not storage.exists(location):
        return None
    table = storage.read_table(location, columns=["user_id", "target_items"]).to_pydict()
    return dict(zip(table["user_id"], table["target_items"], strict=True))


def next_day_metrics(lists: dict[str, list[str]], truth: dict[str, list[str]], k: int, catalog_size: int
                     ) -> dict[str, float]:
    """HR@k, NDCG@k, recall@k and MRR of published lists against the next day's truth, over every user of the
    truth (a user with no list is a miss), plus coverage@k of the lists over the catalog."""
    from pipeline.recsys.evaluate import multi_target_metrics

    positions, n_targets = [], []
    for user, items in truth.items():
        ranked = {item: pos for pos, item in enumerate(lists.get(user, [])[:k])}
        targets = set(items)
        positions.append(np.array(sorted(ranked[t] for t in targets if t in ranked), np.int64))
        n_targets.append(len(targets))
    metrics = multi_target_metrics(positions, np.array(n_targets, np.int64), ks=(k,))
    reached = {item for items in lists.values() for item in items[:k]}
    return {**metrics, f"coverage@{k}": len(reached) / catalog_size if catalog_size else 0.0,
            "n_users": float(len(truth)), "n_users_published": float(sum(u in lists for u in truth)),
            "n_targets": float(sum(n_targets))}


# ---- the replay ------------------------------------------------------------------------------------------------


def stage_seconds(settings: Settings, day: dt.date) -> dict[str, float]:
    """Wall seconds of each stage of the date's night (its latest successful run), from the runs ledger."""
    with warehouse.connect(Catalog.of(settings).warehouse) as wh:
        return {stage: round(float(seconds), 3) for stage, seconds in wh.query("backtest/stage_seconds",
                                                                                 {"dt": day})}


def _run_night(settings: Settings, day: dt.date, top_n: int, max_epochs: int | None) -> Night:
    from pipeline.stages import run_night

    night, t0 = Night(day), time.perf_counter()
    try:
        results = run_night(settings, day, top_n=top_n, max_epochs=max_epochs)
    except Exception as err:  # a failed night publishes nothing: recorded, and the replay goes on
        log.exception("backtest: the night of %s failed", day)
        night.status, night.error, results = "failed", f"{type(err).__name__}: {err}"[:500], {}
    night.wall_seconds = time.perf_counter() - t0
    train, register = results.get("train") or {}, results.get("register") or {}
    night.train = {key: train.get(key) for key in ("train_seconds", "epochs", "seconds_per_epoch",
                                                   "warm_start_from", "gate_split", "ndcg@10",
                                                   "incremental_since", "n_train_sequences")}
    night.gate = {key: register.get(key) for key in ("version", "promoted", "reason")}
    night.serving_version = (results.get("select_model") or {}).get("version")
    night.stage_seconds = stage_seconds(settings, day)
    return night


def _prepare_truth(settings: Settings, day: dt.date) -> None:
    """Ingest and build the features of a day the variant does not replay, for its truth."""
    from pipeline.stages import stage_features, stage_ingest

    stage_ingest(settings, day)
    stage_features(settings, day)


def seed_embedding_cache(source: Settings, target: Settings) -> None:
    """Copy one variant home's embedding cache into a new one: it is keyed by (encoder, text hash), so the copy
    only saves encoding the same texts again."""
    src, dst = Catalog.of(source).embedding_cache, Catalog.of(target).embedding_cache
    if isinstance(src, Path) and isinstance(dst, Path) and src.is_dir() and not dst.exists():
        shutil.copytree(src, dst)


def replay(variant: Variant, settings: Settings, top_n: int, seed_from: Settings | None = None) -> list[Night]:
    """Run the variant's nights in order in its home and score each against the next day."""
    from pipeline.recsys.evaluate import BASELINES

    catalog, nights, pending = Catalog.of(settings), [], []
    replayed = set(variant.nights)
    for i, day in enumerate(variant.nights):
        log.info("backtest %s: night %s (%d/%d)", variant.name, day, i + 1, len(variant.nights))
        if i == 0 and seed_from is not None:
            seed_embedding_cache(seed_from, settings)
        night = _run_night(settings, day, top_n, variant.later_epochs if i else None)
        try:
            night.lists, night.catalog_size = night_lists(settings, day, top_n)
        except Exception as err:  # no marts for the night (ingest or features failed): nothing to score
            log.exception("backtest: no lists for %s", day)
            night.status, night.error = "failed", night.error or f"{type(err).__name__}: {err}"[:500]
        nights.append(night)
        if night.lists is not None:  # a night without marts has nothing to score, not zeros
            pending.append(night)
        if day + dt.timedelta(days=1) not in replayed:
            try:
                _prepare_truth(settings, day + dt.timedelta(days=1))
            except Exception:  # e.g. the next day fails ingest's volume check: this night stays unscored
                log.exception("backtest: no truth for the night of %s", day)
        for waiting in list(pending):
            truth = next_day_truth(catalog, waiting.date + dt.timedelta(days=1))
            if truth is None:
                continue
            lists = waiting.lists or {}  # a failed night that published nothing scores the model's empty lists
            waiting.methods = {method: next_day_metrics(lists.get(method, {}), truth, top_n, waiting.catalog_size)
                               for method in ("model", *BASELINES)}
            waiting.lists = None
            pending.remove(waiting)
    return nights


def run_backtest(base: Settings, config: BacktestConfig) -> dict[str, Any]:
    """Replay every variant and return the JSON-able result: per variant its nights and its summary."""
    from pipeline.tools.backtest_summary import summarise

    top_n = config.top_n or base.serving.top_n
    variants = plan_variants(base, config)
    out: dict[str, Any] = {"from": config.start.isoformat(), "to": config.end.isoformat(), "top_n": top_n,
                           "landing": str(Catalog.of(base).landing), "out_dir": str(config.out_dir),
                           "settings": {"max_epochs": base.training.max_epochs,
                                        "warm_start_epochs": base.training.warm_start_epochs,
                                        "converged_epochs": config.converged_epochs,
                                        "converged_every": config.converged_every,
                                        "max_len": base.model.max_len, "item_repr": str(base.model.item_repr),
                                        "time_budget_minutes": base.training.time_budget_minutes},
                           "variants": {}}
    first: Settings | None = None
    for variant in variants:
        home = config.out_dir / variant.name
        if home.exists() and any(home.iterdir()):
            raise FileExistsError(f"backtest: {home} already holds a state home; choose another --out-dir")
        settings = variant_settings(base, home, variant.overrides)
        t0 = time.perf_counter()
        nights = replay(variant, settings, top_n, seed_from=first)
        first = first or settings
        out["variants"][variant.name] = {"home": str(home), "overrides": variant.overrides,
                                         "later_epochs": variant.later_epochs,
                                         "wall_seconds": round(time.perf_counter() - t0, 1),
                                         "nights": [n.to_dict() for n in nights]}
    out["summary"] = summarise(out, top_n)
    return out


# ---- the command -----------------------------------------------------------------------------------------------


def add_arguments(parser: Any) -> None:
    """`nightly-recs backtest`'s options."""
    parser.add_argument("--from", dest="start", type=dt.date.fromisoformat, required=True,
                        help="first data date replayed")
    parser.add_argument("--to", dest="end", type=dt.date.fromisoformat, required=True,
                        help="last data date replayed (scored against the day after it)")
    parser.add_argument("--json", type=Path, help="write the full result (every night, every variant) here")
    parser.add_argument("--html", type=Path, help="write the page with the plot here")
    parser.add_argument("--out-dir", type=Path, help="a new folder for the variants' state homes "
                        "(default: <home>/backtest/<from>_<to>)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of {', '.join((*VARIANTS, *EXTRA_VARIANTS))}")
    parser.add_argument("--converged-every", type=int, default=BacktestConfig.converged_every,
                        help="scratch_converged replays every k-th night")
    parser.add_argument("--converged-epochs", type=int, default=BacktestConfig.converged_epochs,
                        help="scratch_converged's epoch cap (early stopping usually ends it sooner)")
    parser.add_argument("--top-n", type=int, help="N of the lists and metrics (default: the settings' top_n)")


def run_command(settings: Settings, args: Any) -> int:
    """Run the backtest from the parsed arguments, print the table, write --json and --html."""
    import json

    from pipeline.tools.backtest_report import write_backtest_html
    from pipeline.tools.backtest_summary import format_table

    out_dir = args.out_dir or Catalog.of(settings).backtest_root / f"{args.start}_{args.end}"
    config = BacktestConfig(args.start, args.end, out_dir.resolve(),
                            tuple(v.strip() for v in args.variants.split(",") if v.strip()),
                            args.converged_every, args.converged_epochs, args.top_n)
    result = run_backtest(settings, config)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    if args.html:
        write_backtest_html(result, args.html)
    print(format_table(result))
    return 0 if all(s["failed"] < s["nights"] for s in result["summary"]["variants"].values()) else 1
