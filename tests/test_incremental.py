"""Incremental warm nights: which users a night trains on, and when a night trains in full."""

from __future__ import annotations

import datetime as dt

import numpy as np

from pipeline.config import load_settings
from pipeline.recsys.candidate import incremental_plan
from pipeline.recsys.data import Incremental

D = dt.date(2026, 3, 10)


def test_the_changed_users_all_train_and_a_seeded_share_of_the_others() -> None:
    seqs = [np.array([i, i + 1]) for i in range(1, 2001)]
    last = [D - dt.timedelta(days=1) if i % 10 == 0 else D - dt.timedelta(days=5) for i in range(2000)]
    plan = Incremental(since=D - dt.timedelta(days=2), replay=0.1)
    chosen = plan.select(seqs, last, D)
    ids = {int(s[0]) for s in chosen}
    changed = {i + 1 for i in range(2000) if i % 10 == 0}
    assert changed <= ids  # every user with an event after the champion's window
    replayed = len(ids - changed)
    assert 120 <= replayed <= 240  # ~10% of the 1,800 unchanged users
    assert [int(s[0]) for s in plan.select(seqs, last, D)] == [int(s[0]) for s in chosen]  # seeded by the date
    assert Incremental(since=D, replay=0.0).select(seqs, last, D) == []  # nothing changed after D, no replay
    assert len(Incremental(since=D, replay=1.0).select(seqs, last, D)) == 2000


def test_full_nights_on_the_calendar_for_new_items_and_without_a_known_window() -> None:
    training = load_settings(env={}, incremental=True, full_retrain_every=7, incremental_max_new_items=0.05).training
    since = D - dt.timedelta(days=2)
    partial = next(d for d in (D + dt.timedelta(days=k) for k in range(7)) if d.toordinal() % 7)
    full = next(d for d in (D + dt.timedelta(days=k) for k in range(7)) if d.toordinal() % 7 == 0)
    assert incremental_plan(training, partial, since, new_item_share=0.01) == Incremental(since, 0.1)
    assert incremental_plan(training, full, since, new_item_share=0.01) is None
    assert incremental_plan(training, partial, since, new_item_share=0.2) is None
    assert incremental_plan(training, partial, None, new_item_share=0.0) is None
    off = load_settings(env={}).training
    assert incremental_plan(off, partial, since, new_item_share=0.0) is None  # off by default
