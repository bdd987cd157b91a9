"""Data-parallel training on one machine: N spawned worker processes in one process group, each holding a
DistributedDataParallel replica (gloo on the CPU, NCCL with one GPU per rank), the way `torchrun` runs them.

This module knows nothing about the model or the training loop. `run_workers` starts the workers, relays what
they report (epoch records, log records) to the caller while they run, and raises as soon as one fails; the
`Shard` a worker receives says which part of each global batch is its own, and does the few collectives the
training loop needs (summing a loss, agreeing to stop). The rendezvous is a FileStore in a private temporary
folder, so no port has to be reserved, and every collective times out after `PROCESS_GROUP_TIMEOUT`.
"""

from __future__ import annotations

import datetime as dt
import logging
import logging.handlers
import queue
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from pipeline.device import resolve_device

log = logging.getLogger(__name__)

# Bounds every collective, including ranks > 0 waiting while rank 0 validates; a dead worker is noticed sooner
# by the parent, which watches the processes themselves.
PROCESS_GROUP_TIMEOUT = dt.timedelta(minutes=30)
_POLL_S = 0.2       # how often the parent checks the workers and relays their messages
_GRACE_S = 5.0      # after a failure, how long the other workers get to exit before SIGTERM (then SIGKILL)


@dataclass
class Shard:
    """One worker's place in the process group: its rank, the group's size and its device."""

    rank: int
    world: int
    device: torch.device
    messages: Any  # a multiprocessing queue to the parent

    @property
    def lead(self) -> bool:
        """Rank 0 validates, keeps the best state, reports epochs and decides when to stop."""
        return self.rank == 0

    def part(self, batch: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, float]:
        """This rank's rows of a global batch (every world-th row, so that length-sorted batches split evenly)
        and its share of the batch's target tokens. A batch with fewer rows than ranks leaves some ranks one
        row of weight 0: every rank must run the backward pass for DDP's gradient all-reduce."""
        rows = batch[self.rank :: self.world]
        if len(rows) == 0:
            return batch[:1], 0.0
        return rows, float(tokens[rows].sum() / tokens[batch].sum())

    def sum(self, value: float) -> float:
        """The sum of `value` over all ranks."""
        total = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return float(total.item())

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag` on every rank (so that all stop at the same epoch)."""
        value = torch.tensor([int(flag)], dtype=torch.int32, device=self.device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def report(self, epoch: int, record: dict[str, float]) -> None:
        """Send an epoch record to the parent, which hands it to the caller's on_epoch."""
        self.messages.put(("epoch", epoch, dict(record)))


def wrap(model: torch.nn.Module, shard: Shard) -> DistributedDataParallel:
    """The DDP replica of `model` (already on shard.device). Buffers (item counts, text embeddings) are built
    identically on every rank and never change: synced once at construction, not before every step."""
    device_ids = [shard.device.index] if shard.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)


def rank_devices(device_setting: str, processes: int) -> list[torch.device]:
    """One device per rank: the CPU for all, or cuda:0..N-1 (one GPU each). Raises when that cannot be."""
    device = resolve_device(device_setting)
    if device.type == "cpu":
        return [device] * processes
    if device.type != "cuda":
        raise ValueError(f"train_processes={processes} runs on the CPU or CUDA GPUs, not on device {device}")
    if device.index is not None:
        raise ValueError(f"train_processes={processes} uses one GPU per rank (cuda:0..{processes - 1}): set the "
                         f"device to 'cuda' or 'auto', not {device_setting!r}")
    if torch.cuda.device_count() < processes:
        raise ValueError(f"train_processes={processes} needs {processes} GPUs, this machine has "
                         f"{torch.cuda.device_count()}")
    return [torch.device("cuda", rank) for rank in range(processes)]


def run_workers(
    fn: Callable[..., None],
    args: tuple[Any, ...],
    processes: int,
    device_setting: str,
    folder: Path,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    timeout: dt.timedelta = PROCESS_GROUP_TIMEOUT,
) -> None:
    """Run `fn(shard, *args)` in `processes` spawned workers forming one process group (rendezvous in
    `folder`, an empty private folder); returns when all have finished. Epoch records that rank 0 reports go to
    `on_epoch` and the workers' log records to this process's loggers, as they arrive. Raises RuntimeError as
    soon as a worker raises or exits non-zero (the others are stopped), naming its rank and the cause.

    `fn` must be importable (a module-level function) and `args` picklable: spawned workers start a fresh
    interpreter. Each worker gets max(1, torch threads here // processes) threads, so that the workers do not
    oversubscribe the cores this process was given."""
    devices = rank_devices(device_setting, processes)
    threads = max(1, torch.get_num_threads() // processes)
    messages = mp.get_context("spawn").Queue()
    log_level = logging.getLogger("pipeline").getEffectiveLevel()
    store = str(Path(folder, "rendezvous").resolve())
    log.info("data-parallel training: %d processes on %s, %d threads each, backend %s", processes,
             devices[0].type, threads, _backend(devices[0]))
    context = mp.start_processes(
        _worker_main, args=(fn, args, processes, devices, store, timeout, threads, messages, log_level),
        nprocs=processes, join=False, start_method="spawn",
    )
    try:
        finished = False
        while not finished:
            finished = context.join(timeout=_POLL_S, grace_period=_GRACE_S)
            _relay(messages, on_epoch)
    except mp.ProcessRaisedException as exc:
        raise RuntimeError(f"data-parallel training: worker rank {exc.error_index} failed:{exc}") from exc
    except mp.ProcessExitedException as exc:
        raise RuntimeError(f"data-parallel training: worker rank {exc.error_index} (pid {exc.error_pid}) exited "
                           f"with code {exc.exit_code}{f' ({exc.signal_name})' if exc.signal_name else ''}; the "
                           "other workers were stopped") from exc
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join()
        messages.close()


def _relay(messages: Any, on_epoch: Callable[[int, dict[str, float]], None] | None) -> None:
    """Hand every queued message to its receiver: log records to their logger, epoch records to on_epoch."""
    while True:
        try:
            message = messages.get_nowait()
        except queue.Empty:
            return
        if isinstance(message, logging.LogRecord):
            logging.getLogger(message.name).handle(message)
        elif on_epoch is not None:
            _, epoch, record = message
            on_epoch(epoch, record)


def _backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def _worker_main(
    rank: int, fn: Callable[..., None], args: tuple[Any, ...], world: int, devices: list[torch.device],
    store: str, timeout: dt.timedelta, threads: int, messages: Any, log_level: int,
) -> None:
    """A spawned worker: logging to the parent, threads, process group, then fn(shard, *args)."""
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(messages)]
    root.setLevel(log_level if rank == 0 else max(log_level, logging.WARNING))  # ranks > 0: problems only
    torch.set_num_threads(threads)
    device = devices[rank]
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(_backend(device), init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timeout)
    try:
        fn(Shard(rank, world, device, messages), *args)
    finally:
        dist.destroy_process_group()
