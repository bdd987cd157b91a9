"""Training loop for SeqRecModel: AdamW, linear warm-up + cosine decay, early stopping on validation NDCG@10.

Every prefix position of a user's training sequence predicts its next item (full-softmax cross-entropy,
Klenitskiy & Vasilev 2023). Batches group sequences of similar length (shuffled within chunks) and are cut
to their longest member, which on short-sequence data (Amazon) saves most of the attention work.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from pipeline.recsys.evaluate import evaluate_model
from pipeline.recsys.model import ModelConfig, SeqRecModel

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    max_epochs: int = 200                   # upper bound; early stopping usually ends training sooner
    batch_size: int = 128                   # sequences per step
    lr: float = 1e-3                        # peak AdamW learning rate
    weight_decay: float = 0.1               # AdamW decoupled weight decay on matrices and embeddings
    warmup_epochs: int = 2                  # linear warm-up length, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.1               # floor of the cosine schedule (fraction of lr)
    patience: int = 10                      # epochs without a better validation NDCG@10 before stopping
    eval_every: int = 1                     # validate every N epochs
    grad_clip: float = 1.0                  # max global gradient norm; 0 = off
    seed: int = 42                          # seeds torch and numpy; same seed on CPU => identical run
    time_budget_s: float | None = None      # stop after this many seconds, keeping the best epoch
    device: str | None = None               # None = cuda if available else cpu
    bf16: bool | None = None                # bf16 autocast; None = on for cuda, off for cpu (not faster there)
    valid_max_users: int | None = 20_000    # validate on at most this many users (fixed random subset)
    windows_per_user: int = 1               # non-overlapping max_len windows per user, newest first (0 = all)


def _training_pairs(
    train_seqs: list[np.ndarray], max_len: int, windows_per_user: int = 1
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per user: inputs = seq[:-1], targets = seq[1:], cut into windows of max_len positions from the end
    (the newest window first; at most windows_per_user of them, 0 = all)."""
    inputs, targets = [], []
    for s in train_seqs:
        s = np.asarray(s, dtype=np.int64)
        end, n = len(s) - 1, 0
        while end >= 1 and (windows_per_user == 0 or n < windows_per_user):
            start = max(0, end - max_len)
            inputs.append(s[start:end])
            targets.append(s[start + 1 : end + 1])
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


def _pad_batch(seqs: list[np.ndarray]) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, width - len(s) :] = s
    return torch.from_numpy(out)


def item_counts_from(train_seqs: list[np.ndarray], n_items: int) -> torch.Tensor:
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in train_seqs]) if train_seqs else np.zeros(0, np.int64)
    assert flat.size == 0 or (flat.min() >= 0 and flat.max() <= n_items), (
        f"training item indices must lie in 0..n_items={n_items}, got {flat.min()}..{flat.max()}"
    )
    counts = np.bincount(flat, minlength=n_items + 1).astype(np.float32)
    counts[0] = 0.0
    return torch.from_numpy(counts)


def _lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _optimizer(model: SeqRecModel, cfg: TrainConfig, fused_ok: bool) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), fused=fused_ok or None)


def train_model(
    model_config: ModelConfig,
    train_config: TrainConfig,
    train_seqs: list[np.ndarray],
    valid_inputs: list[np.ndarray],
    valid_targets: np.ndarray,
    text_emb: np.ndarray | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    init_state: dict | None = None,
) -> tuple[SeqRecModel, dict[str, float], list[dict[str, float]]]:
    """Train from scratch (or from init_state where shapes match); returns (best model on CPU in eval mode,
    final metrics, per-epoch history)."""
    cfg = train_config
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    use_bf16 = cfg.bf16 if cfg.bf16 is not None else device.type == "cuda"

    text_t = None
    if text_emb is not None and model_config.item_repr != "id":
        text_t = torch.as_tensor(np.asarray(text_emb, dtype=np.float32))
    model = SeqRecModel(model_config, text_emb=text_t, item_counts=item_counts_from(train_seqs, model_config.n_items))
    if init_state is not None:
        own = model.state_dict()
        usable = {k: v for k, v in init_state.items() if k in own and own[k].shape == v.shape and k != "item_counts"}
        model.load_state_dict(usable, strict=False)
        log.info("warm start: %d of %d tensors loaded from init_state", len(usable), len(own))
    model.to(device)

    inputs, targets = _training_pairs(train_seqs, model_config.max_len, cfg.windows_per_user)
    assert inputs, "no training sequence has at least 2 items"
    lengths = np.array([len(s) for s in inputs])
    steps_per_epoch = math.ceil(len(inputs) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.max_epochs
    warmup_steps = max(1, steps_per_epoch * cfg.warmup_epochs)
    opt = _optimizer(model, cfg, fused_ok=device.type == "cuda")

    valid_idx = np.arange(len(valid_targets))
    if cfg.valid_max_users and len(valid_idx) > cfg.valid_max_users:
        valid_idx = np.sort(np.random.default_rng(cfg.seed).choice(len(valid_idx), cfg.valid_max_users, replace=False))
    v_inputs = [valid_inputs[i] for i in valid_idx]
    v_targets = np.asarray(valid_targets)[valid_idx]

    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "training %s: %d sequences, %d steps/epoch, %d params, device=%s, bf16=%s",
        model_config.item_repr, len(inputs), steps_per_epoch, n_params, device, use_bf16,
    )
    history: list[dict[str, float]] = []
    best_ndcg, best_epoch, best_state, bad_evals = -1.0, 0, None, 0
    best_valid: dict[str, float] = {}
    train_time, step, epoch = 0.0, 0, 0
    start = time.perf_counter()
    bar = tqdm(range(1, cfg.max_epochs + 1), desc=f"train {model_config.item_repr}", disable=not sys.stderr.isatty())
    for epoch in bar:
        model.train()
        t0 = time.perf_counter()
        total_loss, n_batches = 0.0, 0
        for batch in _batches(lengths, cfg.batch_size, rng):
            seq = _pad_batch([inputs[i] for i in batch]).to(device)
            tgt = _pad_batch([targets[i] for i in batch]).to(device)
            for group in opt.param_groups:
                group["lr"] = cfg.lr * _lr_factor(step, warmup_steps, total_steps, cfg.min_lr_ratio)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                _, loss = model(seq, tgt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total_loss += loss.item()
            n_batches += 1
            step += 1
        epoch_seconds = time.perf_counter() - t0
        train_time += epoch_seconds
        record: dict[str, float] = {"epoch": epoch, "loss": total_loss / n_batches, "seconds": epoch_seconds}
        if len(v_targets) and (epoch % cfg.eval_every == 0 or epoch == cfg.max_epochs):
            valid = evaluate_model(model, v_inputs, v_targets, ks=(10,))
            record.update({"valid_ndcg@10": valid["ndcg@10"], "valid_hr@10": valid["hr@10"]})
            if valid["ndcg@10"] > best_ndcg:
                best_ndcg, best_epoch, bad_evals = valid["ndcg@10"], epoch, 0
                best_valid = record.copy()
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            else:
                bad_evals += 1
        history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", ndcg=f"{record.get('valid_ndcg@10', float('nan')):.4f}")
        log.debug("epoch %d: %s", epoch, record)
        if on_epoch is not None:
            on_epoch(epoch, record)
        if bad_evals * cfg.eval_every >= cfg.patience:
            log.info("early stop at epoch %d (best %d, valid ndcg@10 %.4f)", epoch, best_epoch, best_ndcg)
            break
        if cfg.time_budget_s is not None and time.perf_counter() - start >= cfg.time_budget_s:
            log.info("time budget %.0f s reached at epoch %d", cfg.time_budget_s, epoch)
            break
    bar.close()

    if not len(v_targets):
        log.warning("no validation users: kept the last epoch's weights (no early stopping)")
        best_epoch = epoch
    model = model.cpu()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    metrics = {
        "best_epoch": float(best_epoch),
        "epochs": float(epoch),
        "train_seconds": time.perf_counter() - start,
        "seconds_per_epoch": train_time / max(1, epoch),
        "valid_ndcg@10": best_valid.get("valid_ndcg@10", 0.0),
        "valid_hr@10": best_valid.get("valid_hr@10", 0.0),
        "final_loss": history[-1]["loss"] if history else float("nan"),
        "n_params": float(n_params),
    }
    log.info("trained %s: %s", model_config.item_repr, {k: round(v, 4) for k, v in metrics.items()})
    return model, metrics, history
