"""Guardrails of the champion/challenger gate beyond accuracy: a challenger that passes the accuracy rule is
still rejected when it would narrow the catalog the champion serves.

Coverage: a challenger may not lose more than `max_loss` (a share) of the champion's coverage@10 on the same
night's split (coverage@10: distinct items in the users' top-10 lists / catalog items). A model that wins
NDCG by recommending only bestsellers fails it. There is nothing to compare with before a first champion.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeVar

COVERAGE_METRIC = "coverage@10"

Decision = TypeVar("Decision")  # registry.GateDecision: a frozen dataclass with promote, reason, forced


def coverage_violation(
    challenger: dict[str, float], champion: dict[str, float] | None, max_loss: float
) -> str | None:
    """Why the challenger loses too much coverage@10 against the champion, or None when it does not."""
    assert 0.0 <= max_loss <= 1.0, f"max_loss must be in [0, 1], got {max_loss}"
    if champion is None or COVERAGE_METRIC not in champion:
        return None
    ours, theirs = challenger.get(COVERAGE_METRIC, math.nan), champion[COVERAGE_METRIC]
    if not math.isfinite(theirs):
        return None
    floor = theirs * (1 - max_loss)
    if not math.isfinite(ours) or ours < floor:
        return (f"coverage guardrail: challenger {COVERAGE_METRIC} {ours:.4f} below champion {theirs:.4f} "
                f"x (1 - {max_loss}) = {floor:.4f}")
    return None


def apply_guardrails(
    decision: Decision, challenger: dict[str, float], champion: dict[str, float] | None, max_loss: float
) -> Decision:
    """The gate's decision after the guardrails: a promotion becomes a rejection when one fails; rejections
    and operator-forced promotions stay as they are."""
    d: Any = decision
    if not d.promote or d.forced:
        return decision
    violation = coverage_violation(challenger, champion, max_loss)
    if violation is None:
        return decision
    return dataclasses.replace(d, promote=False, reason=f"{violation} (accuracy rule alone: {d.reason})")
