"""Training loop for SeqRecModel: AdamW, linear warm-up + cosine decay, early stopping on validation NDCG@10.

Every prefix position of a user's training sequence predicts its next item (full-softmax cross-entropy,
Klenitskiy & Vasilev 2023). Batches group sequences of similar length (shuffled within chunks) and are cut
to their longest member, which on short-sequence data (Amazon) saves most of the attention work.

With `TrainConfig.processes` > 1 the same loop runs in that many DistributedDataParallel workers
(`pipeline.recsys.distributed`), each on its rows of every global batch; with 1 it runs here, no process group.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.config import ModelSettings, Settings, TrainingSettings
from pipeline.device import resolve_device
from pipeline.recsys import distributed
from pipeline.recsys.data import left_pad
from pipeline.recsys.distributed import Shard
from pipeline.recsys.evaluate import evaluate_model
from pipeline.recsys.model import ModelConfig, SeqRecModel
from pipeline.recsys.schedule import Schedule, epochs_allowed

log = logging.getLogger(__name__)

_TRAINING, _MODEL = TrainingSettings(), ModelSettings()  # the settings' defaults are TrainConfig's defaults


@dataclass
class TrainConfig:
    max_epochs: int = _TRAINING.max_epochs  # upper bound; early stopping usually ends training sooner
    batch_size: int = 128                   # sequences per step
    lr: float = 1e-3                        # peak AdamW learning rate
    weight_decay: float = 0.1               # AdamW decoupled weight decay on matrices and embeddings
    warmup_epochs: int = 2                  # linear warm-up length, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.1               # floor of the cosine schedule (fraction of lr)
    patience: int = 10                      # epochs without a better validation NDCG@10 before stopping
    eval_every: int = 1                     # validate every N epochs
    grad_clip: float = 1.0                  # max global gradient norm; 0 = off
    seed: int = _TRAINING.seed              # seeds torch and numpy; same seed on CPU => identical run
    time_budget_s: float | None = _TRAINING.time_budget_minutes * 60  # stop after this, keeping the best epoch
    device: str = _MODEL.device             # auto | cpu | cuda[:N] (auto = cuda if available else cpu)
    bf16: bool | None = None                # bf16 autocast; None = on for cuda, off for cpu (not faster there)
    valid_max_users: int | None = 20_000    # validate on at most this many users (fixed random subset)
    windows_per_user: int = 1               # non-overlapping max_len windows per user, newest first (0 = all)
    budget_schedule: bool = False           # bind the cosine horizon to the epochs the budget allows (measured: hurt)
    processes: int = _TRAINING.train_processes  # data-parallel workers (DDP); 1 = this process, no process group
    warm_lr_scale: float = _TRAINING.warm_start_lr_scale  # a warm start's peak learning rate is lr x this

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> TrainConfig:
        """The night's training config: epochs, seed, time budget and device from the settings."""
        training = settings.training
        values = {"max_epochs": training.max_epochs, "seed": training.seed,
                  "time_budget_s": training.time_budget_minutes * 60, "device": settings.model.device,
                  "processes": training.train_processes, "warm_lr_scale": training.warm_start_lr_scale}
        return cls(**{**values, **overrides})


def _training_pairs(
    train_seqs: list[np.ndarray], max_len: int, windows_per_user: int = 1, loss_from: list[int] | None = None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per user: inputs = seq[:-1], targets = seq[1:], cut into windows of max_len positions from the end
    (the newest window first; at most windows_per_user of them, 0 = all). With `loss_from`, the targets of a
    sequence before that position are 0 (ignored) and windows left without a target are dropped."""
    inputs, targets = [], []
    for u, s in enumerate(train_seqs):
        s = np.asarray(s, dtype=np.int64)
        first = 1 if loss_from is None else max(1, loss_from[u])
        end, n = len(s) - 1, 0
        while end >= first and (windows_per_user == 0 or n < windows_per_user):
            start = max(0, end - max_len)
            target = s[start + 1 : end + 1].copy()
            target[: max(0, first - start - 1)] = 0
            inputs.append(s[start:end])
            targets.append(target)
            end, n = start, n + 1
    return inputs, targets


def _batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle, sort by length within chunks of 50 batches, split, shuffle the batch order."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def item_counts_from(train_seqs: list[np.ndarray], n_items: int) -> torch.Tensor:
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in train_seqs]) if train_seqs else np.zeros(0, np.int64)
    assert flat.size == 0 or (flat.min() >= 0 and flat.max() <= n_items), (
        f"training item indices must lie in 0..n_items={n_items}, got {flat.min()}..{flat.max()}"
    )
    counts = np.bincount(flat, minlength=n_items + 1).astype(np.float32)
    counts[0] = 0.0
    return torch.from_numpy(counts)


def _optimizer(model: SeqRecModel, cfg: TrainConfig, fused_ok: bool) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), fused=fused_ok or None)


@dataclass
class _Best:
    """Early-stopping state: the best validation epoch so far, its record and its weights (on the CPU)."""

    ndcg: float = -1.0
    epoch: int = 0
    record: dict[str, float] = field(default_factory=dict)
    state: dict[str, torch.Tensor] | None = None
    bad_evals: int = 0

    def update(self, model: SeqRecModel, record: dict[str, float], epoch: int) -> None:
        if record["valid_ndcg@10"] > self.ndcg:
            self.ndcg, self.epoch, self.bad_evals = record["valid_ndcg@10"], epoch, 0
            self.record = record.copy()
            self.state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        else:
            self.bad_evals += 1


def _build_model(
    model_config: ModelConfig, train_seqs: list[np.ndarray], text_emb: np.ndarray | None, init_state: dict | None
) -> SeqRecModel:
    """A fresh model, item counts from the training sequences, weights from init_state where shapes match."""
    text_t = None
    if text_emb is not None and model_config.item_repr != "id":
        text_t = torch.as_tensor(np.asarray(text_emb, dtype=np.float32))
    whitening = None
    if init_state is not None and "text_shift" in init_state and "text_map" in init_state:
        whitening = (init_state["text_shift"], init_state["text_map"])  # keep the champion's text space
    model = SeqRecModel(model_config, text_emb=text_t, item_counts=item_counts_from(train_seqs, model_config.n_items),
                        text_whitening=whitening)
    if init_state is not None:
        own = model.state_dict()
        usable = {k: v for k, v in init_state.items() if k in own and own[k].shape == v.shape and k != "item_counts"}
        model.load_state_dict(usable, strict=False)
        log.info("warm start: %d of %d tensors loaded from init_state", len(usable), len(own))
    return model


def _validation_subset(
    valid_inputs: list[np.ndarray], valid_targets: np.ndarray, cfg: TrainConfig
) -> tuple[list[np.ndarray], np.ndarray]:
    """At most cfg.valid_max_users validation users, a fixed random subset (seeded)."""
    valid_idx = np.arange(len(valid_targets))
    if cfg.valid_max_users and len(valid_idx) > cfg.valid_max_users:
        valid_idx = np.sort(np.random.default_rng(cfg.seed).choice(len(valid_idx), cfg.valid_max_users, replace=False))
    return [valid_inputs[i] for i in valid_idx], np.asarray(valid_targets)[valid_idx]


def _run_epoch(
    model: torch.nn.Module, opt: torch.optim.Optimizer, inputs: list[np.ndarray], targets: list[np.ndarray],
    batches: list[np.ndarray], cfg: TrainConfig, lr_factors: Iterator[float], device: torch.device, use_bf16: bool,
    shard: Shard | None = None, tokens: np.ndarray | None = None, deadline: float | None = None,
) -> float:
    """One pass over the batches; returns the mean training loss (of the global batches, with a shard).
    A `deadline` (perf_counter seconds; one process only) ends the pass early: on a large night one epoch can
    outlast the whole time budget, and the budget must hold anyway.

    With a shard, each rank trains on its rows of every global batch (tokens: target positions per row) and
    weighs its mean loss by its share of the batch's targets times the world size, so that DDP's averaged
    gradient is the gradient of the global batch's mean loss, as in one process."""
    model.train()
    total_loss, done = 0.0, 0
    for batch in batches:
        if deadline is not None and done and time.perf_counter() >= deadline:
            log.info("time budget reached after %d of %d steps of the epoch", done, len(batches))
            break
        rows, share = (batch, 1.0) if shard is None else shard.part(batch, tokens)
        seq = left_pad([inputs[i] for i in rows]).to(device)  # (B, L)
        tgt = left_pad([targets[i] for i in rows]).to(device)  # (B, L)
        lr = cfg.lr * next(lr_factors)
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            _, loss = model(seq, tgt)
        opt.zero_grad(set_to_none=True)
        (loss if shard is None else loss * (share * shard.world)).backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        total_loss += loss.item() * share
        done += 1
    if shard is not None:
        total_loss = shard.sum(total_loss)
    return total_loss / done


def _should_stop(cfg: TrainConfig, best: _Best, epoch: int, started: float) -> bool:
    if best.bad_evals * cfg.eval_every >= cfg.patience:
        log.info("early stop at epoch %d (best %d, valid ndcg@10 %.4f)", epoch, best.epoch, best.ndcg)
        return True
    if cfg.time_budget_s is not None and time.perf_counter() - started >= cfg.time_budget_s:
        log.info("time budget %.0f s reached at epoch %d", cfg.time_budget_s, epoch)
        return True
    return False


@dataclass
class _Outcome:
    """What a training loop ends with: the best epoch (and its weights), the history, the epochs run."""

    best: _Best
    history: list[dict[str, float]]
    epochs: int
    n_params: int


def _fit(
    model: SeqRecModel, trainee: torch.nn.Module, model_config: ModelConfig, cfg: TrainConfig,
    train_seqs: list[np.ndarray], valid_inputs: list[np.ndarray], valid_targets: np.ndarray, device: torch.device,
    on_epoch: Callable[[int, dict[str, float]], None] | None, shard: Shard | None = None,
    loss_from: list[int] | None = None,
) -> _Outcome:
    """The epoch loop. `trainee` is the module the steps run through: the model itself, or its DDP replica with
    a shard (then rank 0 alone validates, keeps the best state, reports and decides when every rank stops)."""
    rng = np.random.default_rng(cfg.seed)  # the same batches on every rank
    use_bf16 = cfg.bf16 if cfg.bf16 is not None else device.type == "cuda"
    inputs, targets = _training_pairs(train_seqs, model_config.max_len, cfg.windows_per_user, loss_from)
    assert inputs, "no training sequence has at least 2 items"
    lengths = np.array([len(s) for s in inputs])
    tokens = lengths if loss_from is None else np.array([np.count_nonzero(t) for t in targets])
    steps_per_epoch = math.ceil(len(inputs) / cfg.batch_size)
    warmup_steps, total_steps = max(1, steps_per_epoch * cfg.warmup_epochs), steps_per_epoch * cfg.max_epochs
    lr_factors = Schedule(warmup_steps, total_steps, cfg.min_lr_ratio)
    opt = _optimizer(model, cfg, fused_ok=device.type == "cuda")
    lead = shard is None or shard.lead
    v_inputs, v_targets = _validation_subset(valid_inputs, valid_targets, cfg) if lead else ([], np.zeros(0))

    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "training %s: %d sequences, %d steps/epoch, %d params, device=%s, bf16=%s, processes=%d",
        model_config.item_repr, len(inputs), steps_per_epoch, n_params, device, use_bf16, cfg.processes,
    )
    history: list[dict[str, float]] = []
    best, epoch, start = _Best(), 0, time.perf_counter()
    bar = tqdm(range(1, cfg.max_epochs + 1), desc=f"train {model_config.item_repr}",
               disable=not (lead and sys.stderr.isatty()))
    for epoch in bar:
        t0 = time.perf_counter()
        deadline = start + cfg.time_budget_s if cfg.time_budget_s and shard is None else None
        loss = _run_epoch(trainee, opt, inputs, targets, _batches(lengths, cfg.batch_size, rng), cfg, lr_factors,
                          device, use_bf16, shard, tokens, deadline)
        stop = False
        if lead:
            record: dict[str, float] = {"epoch": epoch, "loss": loss, "seconds": time.perf_counter() - t0,
                                        "lr": opt.param_groups[0]["lr"]}
            if len(v_targets) and (epoch % cfg.eval_every == 0 or epoch == cfg.max_epochs):
                valid = evaluate_model(model, v_inputs, v_targets, ks=(10,))
                record.update({"valid_ndcg@10": valid["ndcg@10"], "valid_hr@10": valid["hr@10"]})
                best.update(model, record, epoch)
            history.append(record)
            valid_ndcg = record.get("valid_ndcg@10", float("nan"))
            bar.set_postfix(loss=f"{loss:.4f}", ndcg=f"{valid_ndcg:.4f}")
            log.info("%s epoch %d/%d: loss %.4f, valid ndcg@10 %.4f, %.1f s, lr %.2e", model_config.item_repr,
                     epoch, cfg.max_epochs, loss, valid_ndcg, record["seconds"], record["lr"])
            if on_epoch is not None:
                on_epoch(epoch, record)
            stop = _should_stop(cfg, best, epoch, start)
        if shard is not None:
            stop = shard.agree(stop)
        if stop:
            break
        if cfg.time_budget_s and cfg.budget_schedule:
            lr_factors.fit_budget(epochs_allowed(cfg.time_budget_s, time.perf_counter() - start, epoch, shard),
                                  steps_per_epoch)
    bar.close()
    if lead and not len(v_targets):
        log.warning("no validation users: kept the last epoch's weights (no early stopping)")
        best.epoch = epoch
    return _Outcome(best, history, epoch, n_params)


def _metrics(outcome: _Outcome, train_seconds: float) -> dict[str, float]:
    best, history = outcome.best, outcome.history
    return {
        "best_epoch": float(best.epoch),
        "epochs": float(outcome.epochs),
        "train_seconds": train_seconds,
        "seconds_per_epoch": sum(h["seconds"] for h in history) / max(1, outcome.epochs),
        "valid_ndcg@10": best.record.get("valid_ndcg@10", 0.0),
        "valid_hr@10": best.record.get("valid_hr@10", 0.0),
        "final_loss": history[-1]["loss"] if history else float("nan"),
        "n_params": float(outcome.n_params),
    }


def train_model(
    model_config: ModelConfig,
    train_config: TrainConfig,
    train_seqs: list[np.ndarray],
    valid_inputs: list[np.ndarray],
    valid_targets: np.ndarray,
    text_emb: np.ndarray | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    init_state: dict | None = None,
    loss_from: list[int] | None = None,
) -> tuple[SeqRecModel, dict[str, float], list[dict[str, float]]]:
    """Train from scratch (or from init_state where shapes match); returns (best model on CPU in eval mode,
    final metrics, per-epoch history). `loss_from`: per sequence, the first position whose target counts
    (an incremental night's changed users). With train_config.processes > 1, data-parallel workers train it
    (`_train_data_parallel`); otherwise this process does, with no process group."""
    cfg = train_config
    if cfg.processes > 1:
        return _train_data_parallel(model_config, cfg, train_seqs, valid_inputs, valid_targets, text_emb, on_epoch,
                                    init_state, loss_from)
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model = _build_model(model_config, train_seqs, text_emb, init_state).to(device)
    outcome = _fit(model, model, model_config, cfg, train_seqs, valid_inputs, valid_targets, device, on_epoch,
                   loss_from=loss_from)
    model = model.cpu()
    if outcome.best.state is not None:
        model.load_state_dict(outcome.best.state)
    model.eval()
    metrics = _metrics(outcome, time.perf_counter() - started)
    log.info("trained %s: %s", model_config.item_repr, {k: round(v, 4) for k, v in metrics.items()})
    return model, metrics, outcome.history


def _train_data_parallel(
    model_config: ModelConfig, cfg: TrainConfig, train_seqs: list[np.ndarray], valid_inputs: list[np.ndarray],
    valid_targets: np.ndarray, text_emb: np.ndarray | None,
    on_epoch: Callable[[int, dict[str, float]], None] | None, init_state: dict | None,
    loss_from: list[int] | None = None,
) -> tuple[SeqRecModel, dict[str, float], list[dict[str, float]]]:
    """train_model with cfg.processes DDP workers. Every global batch of the one-process run is split across
    the ranks (effective batch = cfg.batch_size, steps and learning-rate schedule unchanged). Rank 0 hands its
    best state back through a file in a private temporary folder; the caller saves the checkpoint, once.
    train_seconds includes starting the workers."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nightly-recs-ddp-") as folder:
        result_path = Path(folder) / "result.pt"
        distributed.run_workers(
            _data_parallel_worker, (model_config, cfg, train_seqs, valid_inputs, valid_targets, text_emb,
                                    init_state, str(result_path), loss_from),
            cfg.processes, cfg.device, Path(folder), on_epoch=on_epoch,
        )
        result = torch.load(result_path, weights_only=True)
    model = _build_model(model_config, train_seqs, text_emb, None)
    model.load_state_dict(result.pop("state"))
    model.eval()
    best = _Best(epoch=result["best_epoch"], record=result["best_record"])
    outcome = _Outcome(best, result["history"], result["epochs"], result["n_params"])
    metrics = _metrics(outcome, time.perf_counter() - started)
    log.info("trained %s with %d processes: %s", model_config.item_repr, cfg.processes,
             {k: round(v, 4) for k, v in metrics.items()})
    return model, metrics, outcome.history


def _data_parallel_worker(
    shard: Shard, model_config: ModelConfig, cfg: TrainConfig, train_seqs: list[np.ndarray],
    valid_inputs: list[np.ndarray], valid_targets: np.ndarray, text_emb: np.ndarray | None,
    init_state: dict | None, result_path: str, loss_from: list[int] | None = None,
) -> None:
    """One rank: the same model from the same seed, a DDP replica, the shared loop; rank 0 writes the result."""
    torch.manual_seed(cfg.seed)
    model = _build_model(model_config, train_seqs, text_emb, init_state).to(shard.device)
    torch.manual_seed(cfg.seed + shard.rank)  # dropout draws differ across ranks, as across the rows of a batch
    outcome = _fit(model, distributed.wrap(model, shard), model_config, cfg, train_seqs, valid_inputs,
                   valid_targets, shard.device, shard.report, shard, loss_from)
    if shard.lead:
        state = outcome.best.state or {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save({"state": state, "best_epoch": outcome.best.epoch, "best_record": outcome.best.record,
                    "history": outcome.history, "epochs": outcome.epochs, "n_params": outcome.n_params}, result_path)
