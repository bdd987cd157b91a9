"""Incremental warm nights: which users and events a night trains on, and when a night trains in full."""

from __future__ import annotations

import datetime as dt

import numpy as np

from pipeline.config import load_settings
from pipeline.recsys.candidate import effective_train_config, incremental_plan
from pipeline.recsys.data import EPOCH, TEMPORAL, Incremental, NightData
from pipeline.recsys.train import TrainConfig, _training_pairs, train_model

D = dt.date(2026, 3, 10)


def _days(*dates: dt.date) -> np.ndarray:
    return np.array([(d - EPOCH).days for d in dates], np.int32)


def test_the_changed_users_all_train_and_a_seeded_share_of_the_others() -> None:
    seqs = [np.array([i, i + 1]) for i in range(1, 2001)]
    old, new = D - dt.timedelta(days=5), D - dt.timedelta(days=1)
    days = [_days(old, new) if i % 10 == 0 else _days(old, old) for i in range(2000)]
    plan = Incremental(since=D - dt.timedelta(days=2), replay=0.1)
    chosen, loss_from = plan.select(seqs, days, D)
    ids = {int(s[0]) for s in chosen}
    changed = {i + 1 for i in range(2000) if i % 10 == 0}
    assert changed <= ids  # every user with an event after the champion's window
    replayed = len(ids - changed)
    assert 120 <= replayed <= 240  # ~10% of the 1,800 unchanged users
    # a changed user's loss starts at its first new event; a replayed user's covers the whole sequence
    assert {start for s, start in zip(chosen, loss_from, strict=True) if int(s[0]) in changed} == {1}
    assert {start for s, start in zip(chosen, loss_from, strict=True) if int(s[0]) not in changed} == {0}
    again, _ = plan.select(seqs, days, D)
    assert [int(s[0]) for s in again] == [int(s[0]) for s in chosen]  # seeded by the date
    assert Incremental(since=D, replay=0.0).select(seqs, days, D) == ([], [])  # nothing after D, no replay
    assert len(Incremental(since=D, replay=1.0).select(seqs, days, D)[0]) == 2000


def test_a_changed_users_loss_counts_only_its_new_events() -> None:
    seq = np.arange(1, 13)  # 12 items; the last 3 are new
    inputs, targets = _training_pairs([seq], max_len=4, windows_per_user=0, loss_from=[9])
    assert [t.tolist() for t in targets] == [[0, 10, 11, 12]]  # older windows hold no new target: dropped
    assert [i.tolist() for i in inputs] == [[8, 9, 10, 11]]
    whole, _ = _training_pairs([seq], max_len=4, windows_per_user=0)
    assert len(whole) == 3  # without loss_from every window trains


def test_an_incremental_split_trains_changed_users_on_new_events_and_validates_on_its_users() -> None:
    old, new = D - dt.timedelta(days=6), D - dt.timedelta(days=1)
    before = [np.array([1, 2, 3, 4, 5]), np.array([2, 3, 4]), np.array([5, 4, 3, 2]), np.array([1, 3])]
    days = [_days(old, old, old, new, new), _days(old, old, new), _days(old, old, old, old), _days(old, old)]
    night = NightData(item_ids=[f"i{k}" for k in range(1, 6)], user_ids=["a", "b", "c", "d"], sequences=[],
                      loo_users=[], loo_train=[], loo_valid=np.zeros(0, np.int64), loo_test=np.zeros(0, np.int64),
                      text_emb=None, data_date=D, before_d=before, before_days=days)
    split = night.train_split(TEMPORAL, Incremental(since=D - dt.timedelta(days=3), replay=0.0))
    # a: its last (new) item validates, the other new one trains; b: its only new item validates, nothing left
    assert [s.tolist() for s in split.sequences] == [[1, 2, 3, 4]]
    assert split.loss_from == [3]
    assert [s.tolist() for s in split.valid_inputs] == [[1, 2, 3, 4], [2, 3]]
    assert split.valid_targets.tolist() == [5, 4]
    full = night.train_split(TEMPORAL)
    assert len(full.sequences) == 4 and full.loss_from is None and len(full.valid_targets) == 3


def test_full_nights_on_the_calendar_for_new_items_and_without_a_known_window() -> None:
    training = load_settings(env={}, incremental=True, full_retrain_every=7, incremental_max_new_items=0.05).training
    since = D - dt.timedelta(days=2)
    partial = next(d for d in (D + dt.timedelta(days=k) for k in range(7)) if d.toordinal() % 7)
    full = next(d for d in (D + dt.timedelta(days=k) for k in range(7)) if d.toordinal() % 7 == 0)
    assert incremental_plan(training, partial, since, new_item_share=0.01) == Incremental(since, 0.2)
    assert incremental_plan(training, full, since, new_item_share=0.01) is None
    assert incremental_plan(training, partial, since, new_item_share=0.2) is None
    assert incremental_plan(training, partial, None, new_item_share=0.0) is None
    off = load_settings(env={}).training
    assert incremental_plan(off, partial, since, new_item_share=0.0) is None  # off by default


def test_a_warm_start_trains_at_its_scaled_learning_rate_with_short_patience() -> None:
    settings = load_settings(env={}, warm_start_lr_scale=0.25)
    config = TrainConfig.from_settings(settings)
    warm = effective_train_config(config, warm_start=True)
    assert (warm.lr, warm.patience) == (config.lr * 0.25, 3)
    assert effective_train_config(config, warm_start=False) == config


def test_a_full_night_of_an_incremental_deployment_runs_its_whole_schedule() -> None:
    """The periodic full night re-anneals: every warm-start epoch runs (the whole cosine decay), the best kept,
    where an ordinary warm night stops three epochs after its best. With lr 0 nothing improves after epoch 1."""
    from test_train import small_config, toy_data

    train, v_in, v_tgt, _ = toy_data()
    config = TrainConfig(max_epochs=6, lr=0.0, warmup_epochs=1, device="cpu")
    full = effective_train_config(config, warm_start=True, reanneal=True)
    assert (full.patience, full.lr) == (6, config.lr)
    init = train_model(small_config(), TrainConfig(max_epochs=1, device="cpu"), train, v_in, v_tgt)[0].state_dict()
    _, stopped, _ = train_model(small_config(), effective_train_config(config, warm_start=True), train, v_in, v_tgt,
                                init_state=init)
    _, reannealed, _ = train_model(small_config(), full, train, v_in, v_tgt, init_state=init)
    assert (stopped["epochs"], reannealed["epochs"]) == (4, 6)
    assert reannealed["best_epoch"] == 1
