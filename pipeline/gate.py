"""The champion/challenger gate's rules, without MLflow: the promotion rule and the model health check.

Health comes before any metric: a model whose scores are not finite for every item, or whose output through
the real serving path (recsys.score.score_users) on a sample of users breaks the publishing rules
(publish.validate), is rejected whatever its NDCG says, and `force_promote` cannot override that (the night
could not publish with it). The rule then asks the challenger to beat the strongest baseline of the evaluation
split (most_popular, recent_popular, item_transition) and to be no worse than the champion beyond the tolerance.

Leakage guard: on the temporal split (evaluate on the data date D's events), a model whose training window
reaches D (its bundle's `train_until` is D or later, or unknown) has seen the answers; it is rejected like an
unhealthy one (a champion in that case is not compared, as a broken champion).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.recsys.bundle import ModelBundle
    from pipeline.recsys.score import ScoringInput

GATE_METRIC = "ndcg@10"
BASELINE_LABELS = {"most_popular": "most-popular", "recent_popular": "recent-popular",
                   "item_transition": "item-transition"}


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    forced: bool = False


def strongest_baseline(baselines: Mapping[str, float] | float) -> tuple[str, float]:
    """(label, value) of the best baseline; a non-finite value wins, so that it is reported, never beaten."""
    if not isinstance(baselines, Mapping):
        baselines = {"most_popular": float(baselines)}
    assert baselines, "the gate needs at least one baseline"
    name, value = max(baselines.items(), key=lambda kv: (not math.isfinite(kv[1]), kv[1]))
    return BASELINE_LABELS.get(name, name), float(value)


def _rule(challenger: float, champion: float | None, baselines: Mapping[str, float] | float,
          tolerance: float) -> GateDecision:
    label, best = strongest_baseline(baselines)
    if not math.isfinite(challenger):
        return GateDecision(False, f"challenger {GATE_METRIC} is {challenger}, not a finite number")
    if not math.isfinite(best):
        return GateDecision(False, f"{label} {GATE_METRIC} is {best}; cannot compare with it")
    if challenger <= best:
        return GateDecision(
            False, f"challenger {GATE_METRIC} {challenger:.4f} does not beat {label} {best:.4f}"
        )
    if champion is None:
        return GateDecision(True, f"first model; {GATE_METRIC} {challenger:.4f} beats {label} {best:.4f}")
    if not math.isfinite(champion):
        return GateDecision(True, f"champion {GATE_METRIC} is {champion}; challenger {challenger:.4f} beats "
                                  f"{label} {best:.4f}")
    floor = champion * (1 - tolerance)
    if challenger < floor:
        return GateDecision(
            False, f"challenger {GATE_METRIC} {challenger:.4f} below champion {champion:.4f} "
                   f"x (1 - {tolerance}) = {floor:.4f}",
        )
    return GateDecision(
        True, f"challenger {GATE_METRIC} {challenger:.4f} >= champion {champion:.4f} x (1 - {tolerance}) = "
              f"{floor:.4f} and beats {label} {best:.4f}",
    )


def decide(
    challenger_ndcg: float,
    champion_ndcg: float | None,
    baselines: Mapping[str, float] | float,
    tolerance: float,
    force: bool = False,
) -> GateDecision:
    """The promotion rule: beat the strongest baseline (a float means most-popular alone), and be no worse
    than the champion beyond the tolerance.

    The first model (no champion) must still beat the baselines; NaN or infinite metrics never pass.
    `force` promotes anyway and says what the rule alone would have decided.
    """
    verdict = _rule(challenger_ndcg, champion_ndcg, baselines, tolerance)
    if not force:
        return verdict
    would = "promote" if verdict.promote else "reject"
    return GateDecision(True, f"force_promote requested by operator; the gate alone would {would}: "
                              f"{verdict.reason}", forced=True)


def leakage_problem(bundle: ModelBundle, split_date: dt.date) -> str | None:
    """Why a model may not be evaluated on split_date's events, or None: its training window reaches them."""
    if bundle.train_until is None:
        return (f"leakage guard: the model does not record its training window, so it may have seen "
                f"{split_date}'s events that the temporal split evaluates")
    if bundle.train_until >= split_date:
        return (f"leakage guard: the model was trained on events up to {bundle.train_until}, which includes "
                f"{split_date}, the day the temporal split evaluates")
    return None


def health_problem(bundle: ModelBundle, sample: ScoringInput, top_n: int, device: str = "cpu") -> str | None:
    """Why the model must not serve, or None: non-finite item representations or scores (any item, any
    sampled user), or an output of the serving path that breaks a publishing rule."""
    import pyarrow as pa
    import torch

    from pipeline.publish import PublishValidationError, validate
    from pipeline.recsys.data import left_pad
    from pipeline.recsys.score import score_users

    model = bundle.model.eval()
    with torch.no_grad():
        items = model.item_representations()[1:]  # (N, D), padding excluded
        bad_items = (~torch.isfinite(items).all(dim=1)).nonzero().flatten()
        if len(bad_items):
            return (f"health: {len(bad_items)} of {len(items)} item representations are not finite, e.g. item "
                    f"{bundle.item_ids[int(bad_items[0])]!r}")
        encoded = [seq for seq in (bundle.encode(list(h)) for h in sample.histories) if len(seq)]
        if encoded:
            device_of = next(model.parameters()).device
            seqs = left_pad(encoded, model.config.max_len).to(device_of)  # (B, L)
            scores = model.user_states(seqs) @ model.item_representations()[1:].T  # (B, N)
            n_bad = int((~torch.isfinite(scores)).sum())
            if n_bad:
                return (f"health: {n_bad} of {scores.numel()} scores (sampled users x items) are NaN or "
                        "infinite")
    table = score_users(bundle, sample, top_n, device=device)
    seen = pa.table({"user_id": pa.array([u for u, s in zip(sample.user_ids, sample.seen, strict=True)
                                          for _ in s], pa.string()),
                     "item_id": pa.array([i for s in sample.seen for i in s], pa.string())})
    try:
        validate(table, list(sample.user_ids), seen, sorted(sample.catalog_ids), top_n)
    except PublishValidationError as err:
        return f"health: the serving path's output breaks the publishing rules: {err}"
    return None


def sample_users(data: ScoringInput, n: int, seed: int = 0) -> ScoringInput:
    """A deterministic sample of at most n users of the night's scoring input (the catalog and popularity
    list unchanged)."""
    import random

    from pipeline.recsys.score import ScoringInput, as_lists

    n_users = len(data.user_ids)
    picked = sorted(random.Random(seed).sample(range(n_users), min(n, n_users)))
    return ScoringInput(as_lists(data.user_ids, picked), as_lists(data.histories, picked),
                        as_lists(data.seen, picked), data.catalog_ids, data.popular)
