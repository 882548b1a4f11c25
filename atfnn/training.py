"""Training of one fold: epochs over shuffled segments, model selection on the fold's validation utterances,
early stopping, and a checkpoint after every epoch so an interrupted fold resumes where it stopped.

`train_fold` drives a `Trainer` (model, optimiser, learning-rate `Schedule`, shuffling generator, weight average and
the `Objective`, which holds the loss and the speaker options) through epochs, keeping what selection and resuming need
in a `FoldState`. Loss, optimiser and schedule live here, not in the model (model.forward returns logits), and so do
the training-only options beyond the paper: augmentations, weight averaging and the speaker adversary.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import math
import random
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atfnn.aggregate import aggregate
from atfnn.atomic import atomic_path, atomic_write_text
from atfnn.config import ModelConfig, TrainConfig
from atfnn.distributed import ddp
from atfnn.errors import ConfigError, TrainingError
from atfnn.metrics import uar, war
from atfnn.model import ATFNN, build_model

CHECKPOINT = "last.pt"
TEMPORARY = ".last."  # prefix of a checkpoint being written
LOG = "log.csv"
LOG_FIELDS = (
    "epoch", "step", "train_loss", "val_loss", "val_war", "val_uar", "seconds", "test_war", "test_uar", "speaker_loss",
)
EVAL_BATCH = 256
ADVERSARY_HIDDEN = 128
# train.lr_schedule=plateau: the rate is multiplied by PLATEAU_FACTOR after PLATEAU_PATIENCE epochs without a
# better score.
PLATEAU_FACTOR, PLATEAU_PATIENCE = 0.5, 3


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
    steps: int = 0  # optimizer steps taken
    seconds: float = 0.0  # wall time of the training, over every sitting of a resumed fold
    sitting_seconds: float = 0.0  # the part of `seconds` spent in this call


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


@dataclass
class FoldState:
    """Where a fold's training stands after an epoch: what early stopping, the kept weights, the schedule and the log
    need. Saved in last.pt with the weights, so a resumed fold goes on exactly as if it had not stopped."""

    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer steps taken
    best_epoch: int = 0
    best_score: float = -math.inf
    bad_epochs: int = 0
    best_state: dict | None = None  # the kept weights (the scored model's) of best_epoch
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0  # wall time spent on this fold in all sittings so far
    schedule: dict = field(default_factory=dict)  # the learning-rate schedule's own state (plateau)


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
    *,
    stop_early: bool = True,
    log: Callable[[str], None] | None = None,
) -> FoldResult:
    """Train one fold, resuming from fold_dir/last.pt if present. Without validation, train `epochs` epochs
    and keep the last weights (used for the final model on all speakers). `monitor` (the test split, with
    train.monitor_test) is scored after each epoch into the log only: it never takes part in selection.
    stop_early=False scores the validation split every epoch up to the cap (a curve for inner selection).
    An unreadable last.pt is reported through `log` and the fold starts again from scratch."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    max_epochs = epochs or train_cfg.epochs
    trainer = Trainer(model_cfg, train_cfg, labels, train, seed, device, max_epochs, progress)
    state = trainer.resume(fold_dir / CHECKPOINT, log or _stderr) or FoldState()
    sitting, already = time.perf_counter(), state.seconds
    while state.epoch < max_epochs:
        if validation is not None and stop_early and state.bad_epochs >= train_cfg.patience:
            break
        began = time.perf_counter()
        row = trainer.epoch(state)
        if validation is not None:
            scores = evaluate(trainer.scored, validation, labels, device, train_cfg.precision, train_cfg.aggregate)
            _select(trainer, state, ddp.agreed(scores), row)
        else:
            state.best_epoch, state.best_state = state.epoch, None
        row["seconds"] = round(time.perf_counter() - began, 3)
        trainer.schedule.epoch_end(state, row)
        if monitor is not None:
            # After the timing, so log.csv's seconds stay comparable with unmonitored runs; eval mode draws no
            # random numbers, so training is the same with or without monitoring.
            watched = evaluate(trainer.scored, monitor, labels, device, train_cfg.precision, train_cfg.aggregate)
            row.update(test_war=watched["war"], test_uar=watched["uar"])
        state.history.append(row)
        state.seconds = already + time.perf_counter() - sitting
        if ddp.is_main():  # under torchrun every process holds the same state; one writes it
            _write_log(fold_dir / LOG, state.history)
            _save_checkpoint(fold_dir / CHECKPOINT, trainer, state)
    result = trainer.result(state)
    result.sitting_seconds = state.seconds - already
    return result


def _select(trainer: "Trainer", state: FoldState, scores: dict, row: dict) -> None:
    """Model selection after an epoch: keep the scored model's weights when the validation score is the best yet."""
    cfg = trainer.cfg
    row.update(val_loss=scores["loss"], val_war=scores["war"], val_uar=scores["uar"])
    score = -scores["loss"] if cfg.select_metric == "loss" else scores[cfg.select_metric]
    if score > state.best_score:
        state.best_score, state.best_epoch, state.bad_epochs = score, state.epoch, 0
        state.best_state = copy.deepcopy(trainer.scored.state_dict())
    else:
        state.bad_epochs += 1
    if trainer.progress:
        print(f"  epoch {state.epoch}: loss {row['train_loss']:.4f}  val UAR {scores['uar']:.2f}  "
              f"val WAR {scores['war']:.2f}  (best epoch {state.best_epoch})", flush=True)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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


class Objective:
    """The loss of a batch: cross-entropy on the emotions (class-weighted with train.class_weighting), plus, with the
    speaker adversary, its speaker loss behind the gradient reversal. With model.embedding_norm="speaker" the batch's
    speaker index groups h' before the classifier. model(x) is classify(embed(x)), so one path serves every option."""

    def __init__(self, model: ATFNN, data: SplitData, cfg: TrainConfig, n_classes: int, device: torch.device):
        self.adversary = _speaker_adversary(model, data, cfg.speaker_adversarial, device)
        if model.speaker_norm is not None and data.spk is None:
            raise ConfigError(
                "model.embedding_norm='speaker' needs the training segments' speaker index (SplitData.spk); "
                "set model.embedding_norm=none"
            )
        self.weight = class_weights(data.y, n_classes).to(device) if cfg.class_weighting else None
        self.group_speakers = model.speaker_norm is not None
        self.adversarial = cfg.speaker_adversarial

    def __call__(self, model: ATFNN, x: Tensor, y: Tensor, spk: Tensor | None, progress: float,
                 precision: str) -> tuple[Tensor, Tensor | None]:
        """The emotion loss and the speaker loss (None without the adversary); `progress` (0..1) ramps the reversal."""
        with autocast(x.device, precision):
            h, _ = model.embed(x)
            logits = model.classify(h, spk if self.group_speakers else None)
            if self.adversary is not None:
                speaker_logits = self.adversary(h, adversarial_scale(self.adversarial, progress))
        loss = F.cross_entropy(logits.float(), y, weight=self.weight)
        if self.adversary is None:
            return loss, None
        return loss, F.cross_entropy(speaker_logits.float(), spk)


class Schedule:
    """train.lr_schedule: "constant" (the paper's fixed rate), "cosine" (from train.lr down to train.min_lr over the
    epoch cap) or "plateau" (halved, not below train.min_lr, after PLATEAU_PATIENCE epochs without a better
    validation score, or training loss without validation); train.warmup_epochs ramps the rate up linearly first."""

    def __init__(self, cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, max_epochs: int):
        if cfg.warmup_epochs < 0 or not 0.0 <= cfg.min_lr < cfg.lr:
            raise ConfigError(f"train.warmup_epochs={cfg.warmup_epochs} must be 0 or more and train.min_lr={cfg.min_lr} "
                              f"in [0, train.lr={cfg.lr})")
        self.cfg, self.optimizer = cfg, optimizer
        self.base = [group["lr"] for group in optimizer.param_groups]
        self.warmup = cfg.warmup_epochs * steps_per_epoch
        self.total = max_epochs * steps_per_epoch
        self.active = cfg.lr_schedule != "constant" or self.warmup > 0

    def before_step(self, state: FoldState) -> None:
        if not self.active:
            return  # the paper's constant rate: the optimiser's own lr, untouched
        factor = min(1.0, (state.step + 1) / self.warmup) if state.step < self.warmup else 1.0
        if self.cfg.lr_schedule == "cosine" and state.step >= self.warmup:
            done = (state.step - self.warmup) / max(self.total - self.warmup, 1)
            factor = 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))
        factor *= state.schedule.get("scale", 1.0)
        for group, base in zip(self.optimizer.param_groups, self.base):
            group["lr"] = self.cfg.min_lr + (base - self.cfg.min_lr) * factor if base > self.cfg.min_lr else base

    def epoch_end(self, state: FoldState, row: dict) -> None:
        if self.cfg.lr_schedule != "plateau":
            return
        if row["val_loss"] == "":
            score = -row["train_loss"]
        elif self.cfg.select_metric == "loss":
            score = -row["val_loss"]
        else:
            score = row["val_" + self.cfg.select_metric]
        s = state.schedule
        if score > s.get("best", -math.inf):
            s["best"], s["bad"] = score, 0
        else:
            s["bad"] = s.get("bad", 0) + 1
            if s["bad"] >= PLATEAU_PATIENCE:
                s["scale"], s["bad"] = s.get("scale", 1.0) * PLATEAU_FACTOR, 0


class Trainer:
    """One fold's training: the model, its optimiser and schedule, the shuffling generator, the weight average and
    the objective. epoch() runs one pass over the shuffled training segments, step() one optimizer step."""

    def __init__(self, model_cfg: ModelConfig, cfg: TrainConfig, labels: Sequence[str], data: SplitData, seed: int,
                 device: torch.device, max_epochs: int, progress: bool = False):
        seed_everything(seed)
        self.cfg, self.data, self.device, self.max_epochs, self.progress = cfg, data, device, max_epochs, progress
        self.model = build_model(model_cfg, len(labels)).to(device)
        if cfg.precision == "bf16-lstm" and self.model.t_encoder is not None:
            self.model.t_encoder.autocast_dtype = torch.bfloat16
        self.objective = Objective(self.model, data, cfg, len(labels), device)
        self.optimizer = _optimizer(self.model, cfg, self.objective.adversary)
        self.generator = torch.Generator().manual_seed(seed)
        self.steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
        self.averaged = _averaged_model(self.model, cfg.ema_epochs, self.steps_per_epoch)
        self.schedule = Schedule(cfg, self.optimizer, self.steps_per_epoch, max_epochs)
        self.distributed = ddp.wrap(self.model, self.objective, device)  # None unless launched by torchrun

    @property
    def scored(self) -> nn.Module:
        """What validation, selection, monitoring and the kept weights use: the average when there is one."""
        return self.averaged.module if self.averaged is not None else self.model

    def epoch(self, state: FoldState) -> dict:
        """One pass over the shuffled segments; returns the epoch's log row (mean emotion and speaker losses)."""
        from tqdm.auto import tqdm

        self.model.train()
        order = torch.randperm(len(self.data), generator=self.generator)
        batches = [order[i : i + self.cfg.batch_size] for i in range(0, len(order), self.cfg.batch_size)]
        total, speaker_total, count = 0.0, 0.0, 0
        bar = tqdm(batches, desc=f"epoch {state.epoch + 1}/{self.max_epochs}", leave=False,
                   disable=not self.progress, unit="batch")
        for k, idx in enumerate(bar):
            loss, speaker_loss = self.step(idx, state, (state.epoch + k / len(batches)) / self.max_epochs)
            total += loss * len(idx)
            speaker_total += (speaker_loss or 0.0) * len(idx)
            count += len(idx)
            bar.set_postfix(loss=f"{total / count:.4f}")
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise TrainingError(f"training diverged at epoch {state.epoch + 1} (weights not finite); lower train.lr "
                                f"(now {self.cfg.lr})")
        state.epoch += 1
        row = {"epoch": state.epoch, "step": state.step, "train_loss": total / max(count, 1),
               "val_loss": "", "val_war": "", "val_uar": ""}
        if self.objective.adversary is not None:
            row["speaker_loss"] = speaker_total / max(count, 1)
        return row

    def step(self, idx: Tensor, state: FoldState, progress: float) -> tuple[float, float | None]:
        """One optimizer step on the segments `idx`; a loss that is no longer finite stops training."""
        data, device, cfg = self.data, self.device, self.cfg
        batch = len(idx)
        share = ddp.shard(idx) if self.distributed is not None else None
        idx = share.idx if share is not None else idx
        x, y = data.x[idx].to(device, non_blocking=True), data.y[idx].to(device, non_blocking=True)
        if cfg.freq_warp > 0:
            x = freq_warp(x, self.generator, cfg.freq_warp)
        if cfg.spec_augment:
            x = spec_augment(x, self.generator)
        spk = data.spk[idx].to(device, non_blocking=True) if data.spk is not None else None
        if share is None:
            loss, speaker_loss = self.objective(self.model, x, y, spk, progress, cfg.precision)
            value = loss.item()
        else:
            loss, speaker_loss = self.distributed(x, y, spk, progress, cfg.precision)
            value = ddp.batch_mean(loss, share, batch)
        if not math.isfinite(value):
            raise TrainingError(f"training diverged at epoch {state.epoch + 1} (loss {value}); lower train.lr "
                                f"(now {cfg.lr})")
        self.schedule.before_step(state)
        self.optimizer.zero_grad(set_to_none=True)
        objective = loss if speaker_loss is None else loss + speaker_loss
        (objective if share is None else objective * share.scale).backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        state.step += 1
        if self.averaged is not None:
            self.averaged.update_parameters(self.model)
        return value, (speaker_loss.item() if speaker_loss is not None else None)

    def result(self, state: FoldState) -> FoldResult:
        """The kept model: the best epoch's weights, else (no validation) the average of the last epochs or the last."""
        if state.best_state is not None:
            self.model.load_state_dict(state.best_state)
        elif self.averaged is not None:
            self.model.load_state_dict(self.averaged.module.state_dict())
        return FoldResult(model=self.model, best_epoch=state.best_epoch, epochs=len(state.history),
                          history=state.history, steps=state.step, seconds=state.seconds)

    def resume(self, path: Path, log: Callable[[str], None]) -> FoldState | None:
        """Load last.pt into this trainer and return its state; None (start from scratch) when there is none, or
        when it cannot be read, which is reported with the file's name and the file removed."""
        _remove_temporaries(path.parent)
        if not path.is_file():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(payload, dict) or "model" not in payload:
                raise ValueError("not an atfnn training checkpoint")
        except Exception as e:  # truncated, empty or garbage: any of torch's, pickle's or zipfile's errors
            log(f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "this fold starts again from scratch")
            path.unlink()
            return None
        self._check_parts(path, payload)
        return self._load(payload)

    def _check_parts(self, path: Path, payload: dict) -> None:
        # Checked before anything loads: the optimiser's state would fail on the adversary's parameters with a less
        # helpful message.
        parts = (("train.ema_epochs", "averaged", self.averaged),
                 ("train.speaker_adversarial", "adversary", self.objective.adversary))
        for option, key, part in parts:
            if (part is None) != (payload.get(key) is None):
                written = "without" if part is not None else "with"
                raise ConfigError(
                    f"{path} was written {written} {option}; resume it with the same config or start a new --out"
                )

    def _load(self, payload: dict) -> FoldState:
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.averaged is not None:
            self.averaged.load_state_dict(payload["averaged"])
        if self.objective.adversary is not None:
            self.objective.adversary.load_state_dict(payload["adversary"])
        self.generator.set_state(payload["generator"])
        torch.set_rng_state(payload["torch_rng"])
        if payload["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["cuda_rng"])
        names = {f.name for f in fields(FoldState)}
        state = FoldState(**{k: v for k, v in payload.items() if k in names})
        if "step" not in payload:  # written before steps were counted: every epoch took the same number
            state.step = state.epoch * self.steps_per_epoch
        return state


def _save_checkpoint(path: Path, trainer: Trainer, state: FoldState) -> None:
    """Everything needed to continue exactly: weights, optimiser, RNG states and the FoldState (atomic, fsynced)."""
    payload = {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "averaged": trainer.averaged.state_dict() if trainer.averaged is not None else None,
        "adversary": trainer.objective.adversary.state_dict() if trainer.objective.adversary is not None else None,
        "generator": trainer.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        **{f.name: getattr(state, f.name) for f in fields(FoldState)},
    }
    with atomic_path(path) as tmp:  # its temporary name starts with TEMPORARY, so a killed write is found
        torch.save(payload, tmp)


def _remove_temporaries(directory: Path) -> None:
    """Checkpoints a killed process was writing (never renamed into place, so never the fold's state)."""
    for leftover in directory.glob(TEMPORARY + "*"):
        leftover.unlink(missing_ok=True)


def _write_log(path: Path, history: list[dict]) -> None:
    """The learning curves as CSV, rewritten from the checkpointed history so a resumed fold has no duplicate rows."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_FIELDS)
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())
