"""Training of one fold: epochs over shuffled segments, model selection on the fold's validation utterances,
early stopping, and a checkpoint after every epoch so an interrupted fold resumes where it stopped.

Loss, optimiser and schedule live here, not in the model (model.forward returns logits), and so do the training-only
options beyond the paper: augmentations, weight averaging and the speaker adversary.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atfnn.aggregate import aggregate
from atfnn.config import ModelConfig, TrainConfig
from atfnn.errors import ConfigError
from atfnn.metrics import uar, war
from atfnn.model import ATFNN, build_model
from atfnn.runtime import resolve_device  # noqa: F401  (the one device resolver; experiment.py imports it from here)

CHECKPOINT = "last.pt"
LOG = "log.csv"
LOG_FIELDS = (
    "epoch", "train_loss", "val_loss", "val_war", "val_uar", "seconds", "test_war", "test_uar", "speaker_loss",
)
EVAL_BATCH = 256
ADVERSARY_HIDDEN = 128


@dataclass
class SplitData:
    """Segments of one split: x (N, F, T) on the training device, y (N,) class indices, utt (N,) utterance index,
    spk (N,) speaker index within the split (needed by the speaker adversary and model.embedding_norm="speaker")."""

    x: Tensor
    y: Tensor
    utt: np.ndarray
    uids: list[str]  # utterance uid per utterance index
    utt_labels: list[str]  # utterance label per utterance index
    spk: Tensor | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass
class FoldResult:
    model: ATFNN
    best_epoch: int
    epochs: int
    history: list[dict] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast of the whole network (fp16 only on CUDA, where it is supported), or nothing for fp32 and
    for bf16-lstm, whose autocast is the T-Encoder's own (TEncoder.autocast_dtype, set by train_fold)."""
    if precision in ("fp32", "bf16-lstm"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("train.precision=fp16 needs CUDA; use bf16 or fp32 on the CPU")
    return torch.autocast(device_type=device.type, dtype=dtype)


def class_weights(y: Tensor, n_classes: int) -> Tensor:
    """Inverse-frequency weights over training segments, normalised to mean 1 over present classes."""
    counts = torch.bincount(y.cpu(), minlength=n_classes).double()
    weights = torch.where(counts > 0, counts.sum() / (counts.clamp(min=1) * (counts > 0).sum()), torch.zeros_like(counts))
    return weights.float()


def spec_augment(x: Tensor, generator: torch.Generator, max_bands: int = 8, max_frames: int = 16) -> Tensor:
    """SpecAugment-style masking (one band block and one frame block per segment) with the segment's minimum."""
    b, f, t = x.shape
    dev = x.device
    fw = torch.randint(0, max_bands + 1, (b, 1), generator=generator).to(dev)
    f0 = (torch.rand((b, 1), generator=generator).to(dev) * (f - fw)).long()
    tw = torch.randint(0, max_frames + 1, (b, 1), generator=generator).to(dev)
    t0 = (torch.rand((b, 1), generator=generator).to(dev) * (t - tw)).long()
    bands = torch.arange(f, device=dev).unsqueeze(0)
    frames = torch.arange(t, device=dev).unsqueeze(0)
    band_mask = ((bands >= f0) & (bands < f0 + fw)).unsqueeze(2)
    frame_mask = ((frames >= t0) & (frames < t0 + tw)).unsqueeze(1)
    fill = x.amin(dim=(1, 2), keepdim=True)
    return torch.where(band_mask | frame_mask, fill, x)


def warp_bands(x: Tensor, alpha: Tensor) -> Tensor:
    """Stretch the band axis of each segment by its factor: band i of the output reads band i / alpha of the input.

    x (B, F, T), alpha (B,). alpha > 1 moves energy to higher bands (a shorter vocal tract, a higher voice), as in
    vocal tract length perturbation; bands read from beyond the top repeat the top band. Linear interpolation.
    """
    b, f, t = x.shape
    src = (torch.arange(f, device=x.device, dtype=x.dtype).unsqueeze(0) / alpha.to(x).unsqueeze(1)).clamp(max=f - 1)
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=f - 1)
    w = (src - lo).unsqueeze(2)  # (B, F, 1)
    x_lo = x.gather(1, lo.unsqueeze(2).expand(b, f, t))
    x_hi = x.gather(1, hi.unsqueeze(2).expand(b, f, t))
    return x_lo + w * (x_hi - x_lo)


def freq_warp(x: Tensor, generator: torch.Generator, max_warp: float) -> Tensor:
    """VTLP-style augmentation: each segment's band axis stretched by a factor drawn from [1 - max_warp, 1 + max_warp]."""
    alpha = 1.0 + (torch.rand(x.shape[0], generator=generator) * 2.0 - 1.0) * max_warp
    return warp_bands(x, alpha.to(x.device))


class GradientReversal(torch.autograd.Function):
    """Identity forward; the backward pass multiplies the gradient by -scale (Ganin & Lempitsky, 2015)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.scale * grad, None


class SpeakerAdversary(nn.Module):
    """Speaker classifier on h' behind a gradient reversal: it learns the training speakers, the network unlearns them."""

    def __init__(self, features: int, speakers: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, ADVERSARY_HIDDEN), nn.ReLU(), nn.Linear(ADVERSARY_HIDDEN, speakers))

    def forward(self, h: Tensor, scale: float) -> Tensor:
        return self.net(GradientReversal.apply(h, scale))


def adversarial_scale(weight: float, progress: float) -> float:
    """DANN's schedule: 0 at the start, rising to `weight` as training progress (0..1) goes on."""
    return weight * (2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0)


def _speaker_adversary(model: ATFNN, data: SplitData, weight: float, device: torch.device) -> SpeakerAdversary | None:
    if weight <= 0:
        return None
    speakers = int(data.spk.max()) + 1 if data.spk is not None and len(data.spk) else 0
    if speakers < 2:
        raise ConfigError(
            f"train.speaker_adversarial={weight} needs training segments of at least 2 speakers with their speaker "
            f"index (SplitData.spk); got {speakers}. Set train.speaker_adversarial=0"
        )
    return SpeakerAdversary(model.embedding_size, speakers).to(device)


@torch.inference_mode()
def predict_segments(
    model: ATFNN, x: Tensor, device: torch.device, precision: str = "fp32", speakers: Tensor | None = None
) -> np.ndarray:
    """Softmax posteriors (N, n_classes) of segments, in batches. With model.embedding_norm="speaker", `speakers`
    (N,) groups the segments, and each group's h' is standardised with the statistics of all its segments."""
    model.eval()
    if x.shape[0] == 0:
        return np.zeros((0, model.num_classes), dtype=np.float32)
    grouped = getattr(model, "speaker_norm", None) is not None and speakers is not None
    out = []
    for start in range(0, x.shape[0], EVAL_BATCH):
        batch = x[start : start + EVAL_BATCH].to(device, non_blocking=True)
        with autocast(device, precision):
            out.append(model.embed(batch)[0].float() if grouped else model(batch).float())
    logits = model.classify(torch.cat(out), speakers.to(device)) if grouped else torch.cat(out)
    return torch.softmax(logits.float(), dim=1).cpu().numpy()


def evaluate(
    model: ATFNN, split: SplitData, labels: Sequence[str], device: torch.device, precision: str = "fp32",
    method: str = "mean",
) -> dict:
    """Utterance-level scores from aggregated segment posteriors, plus the segment-level loss and accuracy."""
    probs = predict_segments(model, split.x, device, precision, split.spk)
    seg_uids = [split.uids[i] for i in split.utt]
    uids, utt_probs = aggregate(probs, seg_uids, method)
    index = {uid: i for i, uid in enumerate(split.uids)}
    y_true = [split.utt_labels[index[u]] for u in uids]
    y_pred = [labels[k] for k in utt_probs.argmax(axis=1)]
    y = split.y.cpu().numpy()
    loss = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())
    return {
        "loss": loss,
        "war": war(y_true, y_pred),
        "uar": uar(y_true, y_pred, labels),
        "segment_war": float((probs.argmax(axis=1) == y).mean() * 100),
        "uids": uids,
        "probs": utt_probs,
        "y_true": y_true,
        "y_pred": y_pred,
    }


def train_fold(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    labels: Sequence[str],
    train: SplitData,
    validation: SplitData | None,
    fold_dir: Path,
    seed: int,
    device: torch.device,
    epochs: int | None = None,
    progress: bool = True,
    monitor: SplitData | None = None,
) -> FoldResult:
    """Train one fold, resuming from fold_dir/last.pt if present. Without validation, train `epochs` epochs
    and keep the last weights (used for the final model on all speakers). `monitor` (the test split, with
    train.monitor_test) is scored after each epoch into the log only: it never takes part in selection."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    model = build_model(model_cfg, len(labels)).to(device)
    if train_cfg.precision == "bf16-lstm" and model.t_encoder is not None:
        model.t_encoder.autocast_dtype = torch.bfloat16
    adversary = _speaker_adversary(model, train, train_cfg.speaker_adversarial, device)
    if model.speaker_norm is not None and train.spk is None:
        raise ConfigError(
            "model.embedding_norm='speaker' needs the training segments' speaker index (SplitData.spk); "
            "set model.embedding_norm=none"
        )
    optimizer = _optimizer(model, train_cfg, adversary)
    generator = torch.Generator().manual_seed(seed)
    weight = class_weights(train.y, len(labels)).to(device) if train_cfg.class_weighting else None
    max_epochs = epochs or train_cfg.epochs
    steps_per_epoch = math.ceil(len(train) / train_cfg.batch_size)
    averaged = _averaged_model(model, train_cfg.ema_epochs, steps_per_epoch)
    # Validation, selection, monitoring and the kept weights all use the average when there is one.
    scored = averaged.module if averaged is not None else model
    state = _resume(fold_dir / CHECKPOINT, model, optimizer, generator, averaged, adversary)
    start, best_epoch, best_score, bad_epochs, best_state, history = (
        state if state else (0, 0, -math.inf, 0, None, [])
    )
    for epoch in range(start, max_epochs):
        if validation is not None and bad_epochs >= train_cfg.patience:
            break
        began = time.perf_counter()
        train_loss, speaker_loss = _train_epoch(
            model, optimizer, train, generator, weight, train_cfg, device, epoch, max_epochs, progress, averaged,
            adversary,
        )
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": "", "val_war": "", "val_uar": ""}
        if adversary is not None:
            row["speaker_loss"] = speaker_loss
        if validation is not None:
            scores = evaluate(scored, validation, labels, device, train_cfg.precision, train_cfg.aggregate)
            row.update(val_loss=scores["loss"], val_war=scores["war"], val_uar=scores["uar"])
            score = -scores["loss"] if train_cfg.select_metric == "loss" else scores[train_cfg.select_metric]
            if score > best_score:
                best_score, best_epoch, bad_epochs = score, epoch + 1, 0
                best_state = copy.deepcopy(scored.state_dict())
            else:
                bad_epochs += 1
            if progress:
                print(f"  epoch {epoch + 1}: loss {train_loss:.4f}  val UAR {scores['uar']:.2f}  val WAR {scores['war']:.2f}"
                      f"  (best epoch {best_epoch})", flush=True)
        else:
            best_epoch, best_state = epoch + 1, None
        row["seconds"] = round(time.perf_counter() - began, 3)
        if monitor is not None:
            # After the timing, so log.csv's seconds stay comparable with unmonitored runs; eval mode draws no
            # random numbers, so training is the same with or without monitoring.
            watched = evaluate(scored, monitor, labels, device, train_cfg.precision, train_cfg.aggregate)
            row.update(test_war=watched["war"], test_uar=watched["uar"])
        history.append(row)
        _write_log(fold_dir / LOG, history)
        _save_checkpoint(
            fold_dir / CHECKPOINT, model, optimizer, generator, averaged, adversary,
            (epoch + 1, best_epoch, best_score, bad_epochs, best_state, history),
        )
    if best_state is not None:
        model.load_state_dict(best_state)
    elif averaged is not None:  # no validation: keep the average of the last epochs, not the raw weights
        model.load_state_dict(averaged.module.state_dict())
    return FoldResult(model=model, best_epoch=best_epoch, epochs=len(history), history=history)


def _averaged_model(model: ATFNN, ema_epochs: float, steps_per_epoch: int) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of the weights with a horizon of `ema_epochs` epochs (decay 1 - 1/steps)."""
    if ema_epochs <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    decay = 1.0 - 1.0 / max(ema_epochs * steps_per_epoch, 1.0)
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _optimizer(model: ATFNN, cfg: TrainConfig, adversary: nn.Module | None = None) -> torch.optim.Optimizer:
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    groups = [{"params": list(model.parameters())}]
    if adversary is not None:
        groups.append({"params": list(adversary.parameters()), "lr": cfg.adversary_lr or cfg.lr})
    return cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _train_epoch(
    model: ATFNN, optimizer: torch.optim.Optimizer, data: SplitData, generator: torch.Generator, weight: Tensor | None,
    cfg: TrainConfig, device: torch.device, epoch: int, max_epochs: int, progress: bool,
    averaged: torch.optim.swa_utils.AveragedModel | None = None, adversary: SpeakerAdversary | None = None,
) -> tuple[float, float]:
    """One pass over the shuffled segments; returns the mean emotion loss and the adversary's mean speaker loss."""
    from tqdm.auto import tqdm

    model.train()
    order = torch.randperm(len(data), generator=generator)
    batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    total, speaker_total, count = 0.0, 0.0, 0
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{max_epochs}", leave=False, disable=not progress, unit="batch")
    for step, idx in enumerate(bar):
        x, y = data.x[idx].to(device, non_blocking=True), data.y[idx].to(device, non_blocking=True)
        if cfg.freq_warp > 0:
            x = freq_warp(x, generator, cfg.freq_warp)
        if cfg.spec_augment:
            x = spec_augment(x, generator)
        speaker_loss = None
        with autocast(device, cfg.precision):
            if adversary is None and model.speaker_norm is None:
                logits = model(x)
            else:
                h, _ = model.embed(x)
                speakers = data.spk[idx].to(device, non_blocking=True) if model.speaker_norm is not None else None
                logits = model.classify(h, speakers)
                if adversary is not None:
                    progress_now = (epoch + step / len(batches)) / max_epochs
                    speaker_logits = adversary(h, adversarial_scale(cfg.speaker_adversarial, progress_now))
        loss = F.cross_entropy(logits.float(), y, weight=weight)
        if adversary is not None:
            speaker_loss = F.cross_entropy(speaker_logits.float(), data.spk[idx].to(device, non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        (loss if speaker_loss is None else loss + speaker_loss).backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if averaged is not None:
            averaged.update_parameters(model)
        total += loss.item() * len(idx)
        if speaker_loss is not None:
            speaker_total += speaker_loss.item() * len(idx)
        count += len(idx)
        bar.set_postfix(loss=f"{total / count:.4f}")
    return total / max(count, 1), speaker_total / max(count, 1)


def _save_checkpoint(path: Path, model, optimizer, generator, averaged, adversary, state: tuple) -> None:
    """Everything needed to continue exactly: weights, optimiser, RNG states, early-stopping state (atomic write)."""
    epoch, best_epoch, best_score, bad_epochs, best_state, history = state
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "averaged": averaged.state_dict() if averaged is not None else None,
        "adversary": adversary.state_dict() if adversary is not None else None,
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "epoch": epoch,
        "best_epoch": best_epoch,
        "best_score": best_score,
        "bad_epochs": bad_epochs,
        "best_state": best_state,
        "history": history,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".last.")
    with os.fdopen(fd, "wb") as f:
        torch.save(payload, f)
    os.replace(tmp, path)


def _resume(path: Path, model, optimizer, generator, averaged=None, adversary=None) -> tuple | None:
    if not path.is_file():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    # Checked before anything loads: the optimiser's state would fail on the adversary's parameters with a less
    # helpful message.
    parts = (("train.ema_epochs", "averaged", averaged), ("train.speaker_adversarial", "adversary", adversary))
    for option, key, part in parts:
        if (part is None) != (payload.get(key) is None):
            written = "without" if part is not None else "with"
            raise ConfigError(
                f"{path} was written {written} {option}; resume it with the same config or start a new --out"
            )
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if averaged is not None:
        averaged.load_state_dict(payload["averaged"])
    if adversary is not None:
        adversary.load_state_dict(payload["adversary"])
    generator.set_state(payload["generator"])
    torch.set_rng_state(payload["torch_rng"])
    if payload["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    return (
        payload["epoch"], payload["best_epoch"], payload["best_score"], payload["bad_epochs"],
        payload["best_state"], payload["history"],
    )


def _write_log(path: Path, history: list[dict]) -> None:
    """The learning curves as CSV, rewritten from the checkpointed history so a resumed fold has no duplicate rows."""
    from atfnn.reports import atomic_write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_FIELDS)
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())
