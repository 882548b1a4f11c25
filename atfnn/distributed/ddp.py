"""One model on several processes: `torchrun --nproc_per_node N -m atfnn train CONFIG --final` trains with
DistributedDataParallel (gloo on CPU, nccl on CUDA); without --final the folds are trained one after another, each
by all the processes together (for folds too big for one).

Every process draws the same shuffled batch of train.batch_size segments (same seed, same generator) and computes
the loss of its strided share of it; each share's loss is scaled so that DDP's gradient average equals the gradient
of the whole batch's mean loss. So N processes take the steps one process would take with the same batch, up to
floating-point summation order (and dropout masks and augmentations, which each process draws for its own share).
Rank 0 alone writes the checkpoint, the log and the model.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from atfnn.errors import ConfigError


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """Whether torchrun (or torch.distributed.run) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str) -> str:
    """Join the process group torchrun describes in the environment; returns this process's device."""
    cuda = str(device).startswith("cuda")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (filling the feature cache), the others after it, reading what it wrote."""
    if world_size() > 1 and not is_main():
        dist.barrier()
    yield
    if world_size() > 1 and is_main():
        dist.barrier()


def agreed(scores: dict) -> dict:
    """Rank 0's validation scores on every process, so that all keep the same epoch and stop at the same one."""
    if world_size() == 1:
        return scores
    box = [scores if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@dataclass
class Share:
    """This process's part of a batch: its rows, and the factor that makes DDP's mean gradient the batch's."""

    idx: Tensor
    scale: float
    rows: int  # rows that count (0 when the batch has fewer rows than processes and this one pads with a row)


def shard(idx: Tensor) -> Share:
    size = world_size()
    mine = idx[rank()::size]
    if len(mine) == 0:  # every process must take part in the step; a zero weight keeps its row out of the gradient
        return Share(idx[:1], 0.0, 0)
    return Share(mine, len(mine) * size / len(idx), len(mine))


def batch_mean(loss: Tensor, share: Share, batch: int) -> float:
    """The whole batch's mean loss from every process's share of it."""
    total = (loss.detach().float() * share.rows).reshape(1)
    dist.all_reduce(total)
    return float(total.item()) / batch


class _Step(nn.Module):
    """The model and the objective as one forward, so that DDP sees (and synchronises) every trained parameter."""

    def __init__(self, model: nn.Module, objective):
        super().__init__()
        self.model = model
        self.adversary = objective.adversary
        self.objective = objective

    def forward(self, x: Tensor, y: Tensor, spk: Tensor | None, progress: float, precision: str):
        return self.objective(self.model, x, y, spk, progress, precision)


def wrap(model: nn.Module, objective, device: torch.device) -> nn.Module | None:
    """The DDP wrapper of one training step, or None when this process trains alone."""
    if world_size() == 1:
        return None
    from torch.nn.parallel import DistributedDataParallel

    if objective.group_speakers:
        raise ConfigError("model.embedding_norm='speaker' groups a batch by speaker; it cannot be split over "
                          "processes (set model.embedding_norm=none or train in one process)")
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(_Step(model, objective), device_ids=ids, find_unused_parameters=True)


def finish() -> None:
    """Leave the process group at the end of a torchrun training."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
