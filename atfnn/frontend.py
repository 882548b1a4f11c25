"""Normalisation of the log-Mel segments, and one file's model input: the step every consumer shares.

The feature cache (atfnn.features) normalises the segments of a corpus, prediction, explanation, the ONNX path and
any server normalise the segments of one file (`extract_features`); both use the statistics and the one in-place
operation defined here, so a file's segments are the same in training and at prediction time.

frontend.norm:
    none       the paper: raw log-Mel.
    utterance  per-band mean and std of the utterance's own frames.
    speaker    per-band statistics pooled over every utterance of the speaker (transductive); a prediction has no
               speaker group and falls back to the file's own statistics.
    global     per-band statistics of the frames of a fold's TRAINING split (`fit_global_stats`, never validation or
               test utterances), saved with the model (ModelCard.norm_stats, the ONNX file's metadata) and applied
               unchanged to every file the model sees.
std is the population std, floored at STD_FLOOR.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import torch

from atfnn.audio import AudioInput, segment, segment_starts, spectrogram, waveform
from atfnn.config import FrontEndConfig
from atfnn.errors import ATFNNError, ConfigError

if TYPE_CHECKING:
    from atfnn.features import FeatureStore

STD_FLOOR = 1e-5
NORM_MODES = ("none", "utterance", "speaker", "global")


# ----------------------------------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class NormStats:
    """Per-band mean and std, each (n_mels, 1) float32, and the number of frames they summarise."""

    mean: np.ndarray
    std: np.ndarray
    n_frames: int = 0

    def to_dict(self) -> dict:
        return {"mean": self.mean[:, 0].tolist(), "std": self.std[:, 0].tolist(), "n_frames": int(self.n_frames)}

    @classmethod
    def from_dict(cls, data: object, source: str | Path = "<stats>") -> NormStats:
        """The inverse of to_dict; ATFNNError naming `source` when the values are unusable."""
        try:
            mean = np.asarray(data["mean"], dtype=np.float32)[:, None]  # type: ignore[index]
            std = np.asarray(data["std"], dtype=np.float32)[:, None]  # type: ignore[index]
            n_frames = int(data.get("n_frames", 0))  # type: ignore[union-attr]
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise ATFNNError(f"{source}: normalisation statistics are unreadable ({e})") from e
        if mean.shape != std.shape or not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ATFNNError(f"{source}: normalisation statistics must be finite, std > 0, mean and std of one size")
        return cls(mean, std, n_frames)


@dataclass
class Moments:
    """Count, per-band mean and sum of squared deviations in float64: poolable without keeping the frames."""

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def of(cls, logmel: np.ndarray | torch.Tensor) -> Moments:
        # C-contiguous float64 whatever the layout given: the cache's transposed view and a fresh tensor then sum
        # in the same order, so training and prediction get the same bits.
        x = np.ascontiguousarray(logmel, dtype=np.float64)
        mean = x.mean(axis=1)
        return cls(x.shape[1], mean, np.square(x - mean[:, None]).sum(axis=1))

    def combine(self, other: Moments) -> Moments:
        """Chan et al.'s pairwise update."""
        n = self.count + other.count
        delta = other.mean - self.mean
        return Moments(
            n, self.mean + delta * other.count / n, self.m2 + other.m2 + np.square(delta) * self.count * other.count / n
        )

    def finish(self) -> NormStats:
        std = np.maximum(np.sqrt(self.m2 / self.count), STD_FLOOR)
        return NormStats(self.mean.astype(np.float32)[:, None], std.astype(np.float32)[:, None], self.count)


def pooled_stats(logmels: Iterable[np.ndarray | torch.Tensor]) -> NormStats | None:
    """Statistics over all frames of the given (n_mels, n_frames) arrays; None when there are none."""
    total: Moments | None = None
    for logmel in logmels:
        moments = Moments.of(logmel)
        total = moments if total is None else total.combine(moments)
    return None if total is None else total.finish()


def utterance_stats(logmel: np.ndarray | torch.Tensor) -> NormStats:
    return Moments.of(logmel).finish()


def fit_global_stats(features: FeatureStore, utterance_ids: Sequence[str]) -> NormStats:
    """frontend.norm="global": per-band statistics over every frame of `utterance_ids` in the feature store.

    Training code passes the fold's TRAINING split only, so neither the validation utterances nor the test speaker
    shape the statistics the model is trained, selected and deployed with.
    """
    unique = list(dict.fromkeys(utterance_ids))
    missing = [uid for uid in unique if uid not in features]
    if missing:
        raise ATFNNError(f"fit_global_stats: {len(missing)} utterance(s) not in {features.path}, e.g. {missing[0]}")
    stats = pooled_stats(features.logmel(uid) for uid in unique)
    if stats is None:
        raise ATFNNError("fit_global_stats: no utterance to compute the normalisation statistics from")
    return stats


def check_norm(frontend: FrontEndConfig) -> str:
    if frontend.norm not in NORM_MODES:
        raise ConfigError(f"frontend.norm={frontend.norm!r} is not one of {', '.join(NORM_MODES)}")
    return frontend.norm


# ----------------------------------------------------------------------------------------------------- applying
def normalise_(x: torch.Tensor, mean: torch.Tensor | np.ndarray, std: torch.Tensor | np.ndarray) -> torch.Tensor:
    """x = (x - mean) / std in place, mean and std broadcast over x (n_mels, 1) or (N, n_mels, 1); returns x.

    The one normalising operation: the cache's segments, a fold's splits and every prediction go through it.
    """
    mean, std = torch.as_tensor(mean).to(x.device), torch.as_tensor(std).to(x.device)
    return x.sub_(mean).div_(std)


def apply_stats(x: torch.Tensor, stats: NormStats | None) -> torch.Tensor:
    """Segments (N, n_mels, frames) normalised in place by one set of statistics (None: unchanged)."""
    return x if stats is None else normalise_(x, stats.mean, stats.std)


def file_stats(logmel: torch.Tensor, frontend: FrontEndConfig, stats: NormStats | None = None) -> NormStats | None:
    """The statistics a model trained with `frontend` normalises one file with; `stats` are the model's own."""
    mode = check_norm(frontend)
    if mode == "none":
        return None
    if mode == "global":
        if stats is None:
            raise ATFNNError("frontend.norm=global needs the training statistics saved with the model; none given")
        return stats
    return utterance_stats(logmel)  # "speaker" has no group at prediction time: the file is its own


# ----------------------------------------------------------------------------------------------------- one file
@dataclass
class Features:
    """What the model sees of one file: normalised segments and where they sit in the file."""

    segments: torch.Tensor  # (n_segments, n_mels, segment_frames), normalised as frontend.norm says
    starts: list[int]  # first frame of each segment in `logmel`
    logmel: torch.Tensor  # (n_mels, n_frames) before normalisation (after silence trimming), for plots
    duration: float  # seconds of audio at the model's sample rate
    first_frame: int = 0  # frames trimmed from the start of the file (frontend.trim_db)

    @property
    def n_frames(self) -> int:
        return int(self.logmel.shape[1])


def extract_features(
    audio: AudioInput,
    frontend: FrontEndConfig,
    sample_rate: int | None = None,
    source: str | Path | None = None,
    stats: NormStats | None = None,
) -> Features:
    """Audio -> segments exactly as training builds them (atfnn.features), at the evaluation hop.

    `audio` is a path (any rate and channel count soundfile reads) or an array/tensor (samples,) or
    (samples, channels) or (channels, samples) at `sample_rate`, which is then required. `stats` are the model's
    saved statistics (frontend.norm="global").
    """
    if isinstance(audio, (str, Path)) and sample_rate is not None:
        raise ValueError("sample_rate applies to arrays only; a file's rate is read from its header")
    if not isinstance(audio, (str, Path)) and sample_rate is None:
        raise ValueError("pass sample_rate= with an array, e.g. predict(wave, sample_rate=16000)")
    wave, source = waveform(audio, frontend, sample_rate, source)
    spec = spectrogram(wave, frontend, source)
    segments = segment(spec.logmel, frontend, source)
    starts = segment_starts(spec.logmel.shape[1], frontend.segment_frames, frontend.segment_hop, frontend.pad_short)
    # Cut first, then normalise: "silence" padding is the floor normalised like the real frames, as in training.
    apply_stats(segments, file_stats(spec.logmel, frontend, stats))
    return Features(segments.contiguous(), starts, spec.logmel, len(wave) / frontend.sample_rate, spec.first_frame)


def timeline_bounds(
    starts: Sequence[int], frontend: FrontEndConfig, duration: float, first_frame: int = 0
) -> list[tuple[float, float]]:
    """(start, end) seconds of each segment in the file; the last end is clipped to the duration."""
    step = frontend.hop_length / frontend.sample_rate
    return [
        ((first_frame + s) * step, min((first_frame + s + frontend.segment_frames) * step, duration)) for s in starts
    ]


__all__ = [
    "Features", "Moments", "NormStats", "NORM_MODES", "STD_FLOOR", "apply_stats", "check_norm", "extract_features",
    "file_stats", "fit_global_stats", "normalise_", "pooled_stats", "timeline_bounds", "utterance_stats",
]
