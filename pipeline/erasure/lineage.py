"""What the tombstones mean for a night: whether an erasure is still incomplete, which models saw an erased
user, and which users publishing may serve.

A training run records in its MLflow tags how many tombstones were closed when it started
(`erasure_tombstones`), whether it started from scratch because of them (`erasure_retrain`) and where its
weights came from (`warm_start_from`, "none" from scratch). A model saw an erased user when it was trained
before the last tombstone was closed (fewer closed tombstones in its tags than now; a model without the tag is
counted as trained before any). Such a model is never a warm start, and the gate compares a challenger that saw
no erased user with the baselines only, not with such a champion, so that it replaces it as soon as it passes.
"""

from __future__ import annotations

import logging

from pipeline.catalog import Catalog
from pipeline.config import Settings
from pipeline.erasure import tombstones
from pipeline.erasure.identity import Screen, screen

log = logging.getLogger(__name__)

TAG_TOMBSTONES = "erasure_tombstones"
TAG_RETRAIN = "erasure_retrain"
TAG_WARM_START = "warm_start_from"


class ErasurePendingError(RuntimeError):
    """A `forget` did not finish: some copies of an erased user may remain, so the night must not use them."""


def closed_tombstones(catalog: Catalog) -> int:
    """How many erasures are complete; ErasurePendingError while one is not (rerun `forget` to finish it)."""
    states = tombstones.tombstones(catalog.warehouse)
    pending = sum(1 for _, erased_at in states if erased_at is None)
    if pending:
        raise ErasurePendingError(
            f"{pending} erasure request(s) in {catalog.warehouse} (table tombstones, erased_at null) did not finish: "
            "rerun `nightly-recs forget` (or the forget_users DAG run) with the same user ids to complete them")
    return len(states)


def forgotten(catalog: Catalog) -> Screen:
    """Every tombstone (closed or pending) as a Screen for user ids."""
    return screen(catalog.erasure_key, [h for h, _ in tombstones.tombstones(catalog.warehouse)])


def saw_erased_user(settings: Settings, version: str, closed: int) -> bool:
    """Whether a registered model version was trained before the last of `closed` erasures was complete."""
    from pipeline import registry

    tags = registry.version_run_tags(settings, version)
    seen = int(tags.get(TAG_TOMBSTONES) or 0)
    return seen < closed


def champion_saw_erased(settings: Settings, challenger: str) -> bool:
    """Whether the gate should judge the challenger by the baselines alone: the champion saw a user erased since
    and the challenger did not."""
    from pipeline import registry

    champion = registry.champion_version(settings)
    if champion is None or champion == challenger:
        return False
    closed = sum(1 for _, erased_at in tombstones.tombstones(Catalog.of(settings).warehouse) if erased_at)
    return saw_erased_user(settings, champion, closed) and not saw_erased_user(settings, challenger, closed)


def training_tags(closed: int, warm_from: str | None, retrain: bool) -> dict[str, str]:
    """The lineage tags of a training run (see the module's docstring)."""
    return {TAG_WARM_START: warm_from or "none", TAG_TOMBSTONES: str(closed), TAG_RETRAIN: str(retrain).lower()}
