"""train_model on a tiny synthetic dataset: learns, is deterministic, keeps the best epoch, warm-starts; with
two data-parallel processes (real gloo on the CPU) it reaches the one-process result, and a failing worker
fails the training instead of hanging it."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, load_settings
from pipeline.recsys.bundle import ModelBundle, warm_start_state
from pipeline.recsys.evaluate import evaluate_model
from pipeline.recsys.model import ModelConfig
from pipeline.recsys.train import TrainConfig, train_model

N_USERS, N_ITEMS = 300, 200


def toy_data(seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """Users walk a ring of items (i -> i+1 or i+2), so the next item is predictable from the last one."""
    rng = np.random.default_rng(seed)
    train, v_in, v_tgt = [], [], []
    for _ in range(N_USERS):
        start, length = rng.integers(1, N_ITEMS + 1), rng.integers(5, 15)
        steps = rng.choice([1, 2], size=length - 1, p=[0.8, 0.2])
        seq = (start - 1 + np.concatenate([[0], np.cumsum(steps)])) % N_ITEMS + 1
        train.append(seq[:-1])
        v_in.append(seq[:-1])
        v_tgt.append(seq[-1])
    text = rng.normal(size=(N_ITEMS + 1, 8)).astype(np.float32)
    return train, v_in, np.array(v_tgt), text


def small_config(item_repr: str = "id", **kw) -> ModelConfig:
    return ModelConfig(n_items=N_ITEMS, max_len=16, d_model=32, item_repr=item_repr,
                       text_dim=0 if item_repr == "id" else 8, **kw)


def test_training_learns() -> None:
    train, v_in, v_tgt, _ = toy_data()
    model, metrics, history = train_model(
        small_config(), TrainConfig(max_epochs=8, patience=8, lr=3e-3, seed=1), train, v_in, v_tgt
    )
    assert history[-1]["loss"] < history[0]["loss"] - 0.5
    assert metrics["valid_hr@10"] > 0.3  # random would be about 10 / 200
    assert not model.training and next(model.parameters()).device.type == "cpu"
    for key in ("best_epoch", "epochs", "train_seconds", "seconds_per_epoch", "valid_ndcg@10", "valid_hr@10"):
        assert key in metrics
    # the returned model is the best epoch's: re-evaluating it reproduces the best validation score
    again = evaluate_model(model, v_in, v_tgt, ks=(10,))
    assert again["ndcg@10"] == pytest.approx(metrics["valid_ndcg@10"])
    assert metrics["valid_ndcg@10"] == pytest.approx(max(h["valid_ndcg@10"] for h in history))


def test_same_seed_same_metrics_different_seed_differs() -> None:
    train, v_in, v_tgt, text = toy_data()
    cfg = small_config("id+text")
    runs = [
        train_model(cfg, TrainConfig(max_epochs=3, seed=seed), train, v_in, v_tgt, text_emb=text)
        for seed in (7, 7, 8)
    ]
    (m1, r1, h1), (m2, r2, h2), (_, _, h3) = runs
    assert [h["loss"] for h in h1] == [h["loss"] for h in h2]
    assert r1["valid_ndcg@10"] == r2["valid_ndcg@10"]
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert [h["loss"] for h in h1] != [h["loss"] for h in h3]


def test_early_stopping_and_callback() -> None:
    train, v_in, v_tgt, _ = toy_data()
    seen: list[int] = []
    _, metrics, history = train_model(
        small_config(), TrainConfig(max_epochs=50, patience=2, lr=0.0, warmup_epochs=1), train, v_in, v_tgt,
        on_epoch=lambda epoch, record: seen.append(epoch),
    )
    assert metrics["epochs"] < 50  # lr 0: nothing improves after the first evaluation
    assert seen == [int(h["epoch"]) for h in history]


def test_warm_start_from_state() -> None:
    train, v_in, v_tgt, _ = toy_data()
    model, first, _ = train_model(small_config(), TrainConfig(max_epochs=6, lr=3e-3), train, v_in, v_tgt)
    _, warm, history = train_model(
        small_config(), TrainConfig(max_epochs=1, lr=1e-5, warmup_epochs=1), train, v_in, v_tgt,
        init_state=model.state_dict(),
    )
    assert history[0]["valid_ndcg@10"] > 0.5 * first["valid_ndcg@10"]  # starts where the first run ended


def test_text_only_model_recommends_cold_items() -> None:
    """Items 1..20 never occur in training; with text that mirrors their ring neighbours they are still found."""
    train, v_in, v_tgt, _ = toy_data()
    rng = np.random.default_rng(3)
    angle = 2 * np.pi * np.arange(N_ITEMS + 1) / N_ITEMS
    noise = rng.normal(scale=0.05, size=(6, N_ITEMS + 1))
    text = np.stack([np.cos(angle), np.sin(angle), *noise], 1).astype(np.float32)
    cold = np.arange(1, 21)
    train_warm = [s[~np.isin(s, cold)] for s in train]
    model, _, _ = train_model(small_config("text"), TrainConfig(max_epochs=15, lr=3e-3), train_warm, v_in, v_tgt,
                              text_emb=text)
    m = evaluate_model(model, v_in, v_tgt, cold_items=cold)
    assert m["n_cold_targets"] > 0
    assert m["cold_recall@10"] > max(0.2, 5 * m["random_recall@10"])


def test_every_epoch_logs_one_info_line_and_reaches_the_callback(caplog: pytest.LogCaptureFixture) -> None:
    train, v_in, v_tgt, _ = toy_data()
    seen: list[tuple[int, dict]] = []
    with caplog.at_level(logging.INFO, logger="pipeline.recsys.train"):
        _, _, history = train_model(small_config(), TrainConfig(max_epochs=3, patience=3, seed=1), train, v_in,
                                    v_tgt, on_epoch=lambda epoch, record: seen.append((epoch, dict(record))))
    lines = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage()]
    assert len(lines) == len(history) == 3
    assert all("loss" in line and "valid ndcg@10" in line and " s, lr " in line for line in lines), lines
    assert [epoch for epoch, _ in seen] == [1, 2, 3]
    assert all({"loss", "valid_ndcg@10", "seconds", "lr"} <= set(record) for _, record in seen)


def test_two_processes_reach_the_one_process_result() -> None:
    """Two ranks split every global batch of the one-process run and weigh their losses by their share of its
    targets, so the averaged gradient is the one-process gradient. Without dropout (the only randomness that
    differs per rank) the runs differ only in the order floats are summed: the losses agree to 1e-4 (relative)
    and the validation NDCG@10 to 0.01, i.e. at most a few of the 300 users' ranks move; in practice they
    agree to about 1e-6."""
    train, v_in, v_tgt, text = toy_data()
    config = small_config("id+text", dropout=0.0, id_dropout=0.0)
    runs, seen = {}, {1: [], 2: []}
    for processes in (1, 2):
        cfg = TrainConfig(max_epochs=4, patience=4, lr=3e-3, seed=1, processes=processes)
        runs[processes] = train_model(config, cfg, train, v_in, v_tgt, text_emb=text,
                                      on_epoch=lambda e, r, epochs=seen[processes]: epochs.append(e))
    assert seen == {1: [1, 2, 3, 4], 2: [1, 2, 3, 4]}  # rank 0's epochs reach the caller's callback, once each
    (_, one_metrics, one_history), (two, two_metrics, two_history) = runs[1], runs[2]
    assert [h["loss"] for h in two_history] == pytest.approx([h["loss"] for h in one_history], rel=1e-4)
    assert two_metrics["valid_ndcg@10"] == pytest.approx(one_metrics["valid_ndcg@10"], abs=0.01)
    assert two_metrics["best_epoch"] == one_metrics["best_epoch"] and two_metrics["epochs"] == 4
    assert one_metrics["valid_ndcg@10"] > 0.3  # both learned: random would be about 0.03
    # the returned model is rank 0's best state, on the CPU in eval mode
    assert not two.training and next(two.parameters()).device.type == "cpu"
    assert evaluate_model(two, v_in, v_tgt, ks=(10,))["ndcg@10"] == pytest.approx(two_metrics["valid_ndcg@10"])
    assert not multiprocessing.active_children()


def test_one_process_takes_no_process_group() -> None:
    train, v_in, v_tgt, _ = toy_data()
    during: list[tuple[bool, int]] = []
    train_model(small_config(), TrainConfig(max_epochs=1, processes=1), train, v_in, v_tgt,
                on_epoch=lambda e, r: during.append((torch.distributed.is_initialized(),
                                                     len(multiprocessing.active_children()))))
    assert during == [(False, 0)]


def _kill_a_worker(epoch: int, record: dict[str, float]) -> None:
    """on_epoch that kills one training worker (SIGKILL, as the OOM killer would) after the first epoch."""
    if epoch == 1:
        os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)


def test_a_killed_worker_fails_the_training_without_hanging() -> None:
    train, v_in, v_tgt, _ = toy_data()
    started = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"data-parallel training: worker rank [01]"):
        train_model(small_config(), TrainConfig(max_epochs=200, patience=200, processes=2), train, v_in, v_tgt,
                    on_epoch=_kill_a_worker)
    assert time.perf_counter() - started < 120  # a hang would last PROCESS_GROUP_TIMEOUT (30 min); ~20 s here
    assert not multiprocessing.active_children()  # the other worker was stopped too


def test_an_error_in_a_worker_reaches_the_caller_with_its_message() -> None:
    """Both ranks raise here; whichever the parent sees first is reported, with its traceback."""
    with pytest.raises(RuntimeError, match=r"(?s)worker rank [01] failed.*no training sequence has at least 2"):
        train_model(small_config(), TrainConfig(max_epochs=1, processes=2), [np.array([1])], [np.array([1])],
                    np.array([2]))
    assert not multiprocessing.active_children()


def test_train_processes_setting(tmp_path: Path) -> None:
    assert TrainConfig.from_settings(load_settings(env={}, home=tmp_path)).processes == 1
    settings = load_settings(env={"NIGHTLY_RECS_TRAIN_PROCESSES": "2"}, home=tmp_path)
    assert TrainConfig.from_settings(settings).processes == 2
    with pytest.raises(ConfigError, match="training.train_processes: .*greater than or equal to 1"):
        load_settings(env={"NIGHTLY_RECS_TRAIN_PROCESSES": "0"}, home=tmp_path)
    with pytest.raises(ValueError, match="one GPU per rank"):
        train_model(small_config(), TrainConfig(max_epochs=1, processes=2, device="cuda:1"), *toy_data()[:3])


def test_the_schedule_decays_within_the_epochs_the_time_budget_allows() -> None:
    from pipeline.recsys.schedule import Schedule, epochs_allowed

    schedule = Schedule(warmup=10, planned=200 * 10, min_ratio=0.1)  # 200 epochs of 10 steps
    first_epoch = [next(schedule) for _ in range(10)]
    assert first_epoch[-1] == pytest.approx(1.0)  # end of warm-up: the peak rate
    allowed = epochs_allowed(budget_s=100.0, elapsed_s=4.0, epochs_done=1, shard=None)
    assert allowed == 25  # 1 done + 96 s left at 4 s per epoch
    schedule.fit_budget(allowed, steps_per_epoch=10)
    rest = [next(schedule) for _ in range(240)]
    assert rest == sorted(rest, reverse=True)  # decaying all the way
    assert rest[-1] == pytest.approx(0.1, abs=1e-3) and next(schedule) == pytest.approx(0.1)
    # the pace changes: the horizon follows it, never beyond max_epochs
    schedule.fit_budget(epochs_allowed(100.0, elapsed_s=50.0, epochs_done=20, shard=None), steps_per_epoch=10)
    assert schedule.total == 40 * 10
    schedule.fit_budget(epochs_allowed(1e6, elapsed_s=50.0, epochs_done=20, shard=None), steps_per_epoch=10)
    assert schedule.total == 200 * 10


def test_a_budget_that_does_not_bind_leaves_the_run_unchanged() -> None:
    train, v_in, v_tgt, _ = toy_data()
    _, _, unbound = train_model(small_config(), TrainConfig(max_epochs=3, patience=10, lr=3e-3, seed=1), train,
                                v_in, v_tgt)
    _, _, bound = train_model(small_config(), TrainConfig(max_epochs=3, patience=10, lr=3e-3, seed=1,
                                                          budget_schedule=True), train, v_in, v_tgt)
    assert [h["lr"] for h in bound] == [h["lr"] for h in unbound]  # the budget (10 min) does not bind here


def test_the_time_budget_ends_an_epoch_early(caplog: pytest.LogCaptureFixture) -> None:
    """On a large night one epoch can outlast the whole budget: the budget cuts it after the first step."""
    train, v_in, v_tgt, _ = toy_data()
    with caplog.at_level(logging.INFO, logger="pipeline.recsys.train"):
        _, metrics, history = train_model(small_config(), TrainConfig(max_epochs=5, batch_size=8, time_budget_s=1e-6),
                                          train, v_in, v_tgt)
    assert len(history) == 1 and np.isfinite(history[0]["loss"])
    steps = -(-len(train) // 8)
    assert f"time budget reached after 1 of {steps} steps of the epoch" in caplog.text
    assert metrics["epochs"] == 1.0


ITEM_IDS = [f"i{i}" for i in range(1, N_ITEMS + 1)]


def test_whitened_text_keeps_the_champions_text_space_on_a_warm_start() -> None:
    train, v_in, v_tgt, text = toy_data()
    text = text @ np.diag(np.linspace(0.1, 3.0, text.shape[1])).astype(np.float32)  # anisotropic, as a real encoder
    cfg = small_config("id+text", text_whiten=True)
    champion, _, _ = train_model(cfg, TrainConfig(max_epochs=2, lr=3e-3), train, v_in, v_tgt, text_emb=text)
    white = champion.text_emb[1:] - champion.text_emb[1:].mean(0)
    cov = white.T @ white / (len(white) - 1)
    spread = torch.linalg.eigvalsh(cov)
    assert spread.max() / spread.min() < 90.0  # raw: (3.0 / 0.1)^2 = 900 (the shrinkage keeps some of it)
    shifted = text.copy()
    shifted[1:20] += 5.0  # tonight's catalog moved: a fresh fit would give another map
    warm, _, _ = train_model(cfg, TrainConfig(max_epochs=1, lr=1e-5), train, v_in, v_tgt, text_emb=shifted,
                             init_state=warm_start_state(ModelBundle(champion, ITEM_IDS), ITEM_IDS))
    assert torch.equal(warm.text_map, champion.text_map) and torch.equal(warm.text_shift, champion.text_shift)
    expected = (torch.as_tensor(shifted[5]) - champion.text_shift) @ champion.text_map
    assert torch.allclose(warm.text_emb[5], expected, atol=1e-5)
