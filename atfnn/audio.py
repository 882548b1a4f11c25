"""The front end of section III-C, the one path from audio to model input for training and inference alike.

load_audio -> log_mel_spectrogram (trimmed, floored) -> segment_starts / gather_segments -> (atfnn.frontend)
normalise. The feature cache (atfnn.features) stores the log-Mel of whole utterances and cuts them with
`gather_segments`; prediction, explanation and the ONNX path (atfnn.inference) cut one file with the same function,
so the segments of a file are the same wherever they are computed. The STFT runs in torch (batched, any device); the
mel filterbank is librosa's, so the features equal `librosa.feature.melspectrogram` + log.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from atfnn.config import FrontEndConfig
from atfnn.errors import AudioError, ConfigError

SAMPLE_RATE = 16000  # "16000" Hz for every corpus (Table I)
WIN_LENGTH = 320  # "20 ms Hamming window"
HOP_LENGTH = 160  # "50% frame overlapping": a 10 ms hop
N_FFT = 512  # "512-point FFT"
N_MELS = 80  # "the number of Mel-filter bands is set as 80"
SEGMENT_FRAMES = 128  # "segments with 128 frames"

MEL_SCALES = ("slaney", "htk")
PAD_MODES = ("silence", "repeat", "drop")
SPLITS = ("train", "evaluation")  # training segments use frontend.train_segment_hop, the rest segment_hop
# Resampling may lengthen a file at most this many times (8 kHz and 1 kHz recordings pass at 16 kHz); a lower rate is
# an error, not hundreds of megabytes of interpolated samples from a header that claims 1 Hz.
MAX_UPSAMPLE = 16
GATHER_CHUNK = 2048  # segments gathered at a time: bounds the temporary copy to ~80 MB at 80 x 128 float32
_TRUNCATED = re.compile(r"data\s*:\s*(\d+)\s*\(should be (\d+)\)")

AudioInput = str | Path | np.ndarray | torch.Tensor


class TruncatedAudioWarning(UserWarning):
    """An audio file holds less data than its header declares; it is used as far as it goes."""


# ----------------------------------------------------------------------------------------------------- loading
def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read any file soundfile reads (wav, flac, ogg, ...), downmix to mono, resample: float32 (n_samples,)."""
    path = Path(path)
    data, rate = _read(path)
    return prepare_waveform(data, rate, sample_rate, source=path)


def _read(path: Path) -> tuple[np.ndarray, int]:
    """(samples, channels) float32 and the file's rate; AudioError with the reason the file cannot be used."""
    if not path.is_file():
        raise AudioError(path, "file not found")
    try:
        if path.stat().st_size == 0:
            raise AudioError(path, "file is empty (0 bytes)")
        with path.open("rb"):  # libsndfile reports a permission error as "System error": ask the OS first
            pass
    except OSError as e:
        raise AudioError(path, f"cannot be read ({e.strerror or e})") from e
    try:
        with sf.SoundFile(str(path)) as handle:
            data = handle.read(dtype="float32", always_2d=True)
            rate, info = handle.samplerate, handle.extra_info
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(path, f"cannot be decoded as audio ({e})") from e
    truncated = _TRUNCATED.search(info)
    if truncated and int(truncated.group(2)) < int(truncated.group(1)):
        declared, present = int(truncated.group(1)), int(truncated.group(2))
        warnings.warn(
            f"{path}: truncated: its header declares {declared} bytes of audio but it holds {present} "
            f"({len(data) / max(rate, 1):.2f} s); using what is there",
            TruncatedAudioWarning, stacklevel=3,
        )
    return data, rate


def prepare_waveform(
    data: np.ndarray | torch.Tensor, rate: int, sample_rate: int = SAMPLE_RATE, source: str | Path = "<array>"
) -> np.ndarray:
    """Validate, downmix (samples, channels) or (samples,) to mono, and resample to `sample_rate` with soxr."""
    data = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    if data.ndim not in (1, 2):
        raise AudioError(source, f"expected mono (samples,) or (samples, channels) audio, got shape {data.shape}")
    if data.size == 0:
        raise AudioError(source, "contains no samples (zero-length audio)")
    if data.ndim == 2:
        # Channels are the short axis: soundfile gives (samples, channels), users often pass (channels, samples).
        data = data.mean(axis=1 if data.shape[0] >= data.shape[1] else 0)
    if not np.isfinite(data).all():
        raise AudioError(source, "contains NaN or infinite samples")
    if not np.any(data):
        raise AudioError(source, "is digital silence (every sample is zero): no speech to classify")
    if rate <= 0:
        raise AudioError(source, f"invalid sample rate {rate}")
    data = data.astype(np.float32, copy=False)
    if rate != sample_rate:
        if sample_rate > rate * MAX_UPSAMPLE:
            raise AudioError(
                source,
                f"sample rate {rate} Hz is too low to resample to {sample_rate} Hz (it would grow "
                f"{sample_rate / rate:.0f}-fold; at most {MAX_UPSAMPLE}-fold, i.e. {sample_rate / MAX_UPSAMPLE:g} Hz "
                "or more); is the header's rate right?",
            )
        data = soxr.resample(data, rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    return data


# ----------------------------------------------------------------------------------------------------- log-Mel
def check_frontend(cfg: FrontEndConfig) -> None:
    """ConfigError naming the key for a front-end value this module cannot use."""
    if cfg.mel_scale not in MEL_SCALES:
        raise ConfigError(f"frontend.mel_scale={cfg.mel_scale!r} is not one of {', '.join(MEL_SCALES)}")
    if cfg.pad_short not in PAD_MODES:
        raise ConfigError(f"frontend.pad_short={cfg.pad_short!r} is not one of {', '.join(PAD_MODES)}")
    for key in ("trim_db", "floor_db"):
        value = getattr(cfg, key)
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"frontend.{key}={value!r} must be 0 (off) or a positive number of dB")
    if not 0 <= cfg.train_segment_hop <= cfg.segment_frames:
        raise ConfigError(
            f"frontend.train_segment_hop={cfg.train_segment_hop} must be 0 (= segment_hop) or in 1..{cfg.segment_frames}"
        )


@lru_cache(maxsize=8)
def mel_filters(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None, htk: bool = False
) -> torch.Tensor:
    """librosa's mel filterbank (Slaney area norm), Slaney or HTK scale: (n_mels, n_fft // 2 + 1)."""
    import librosa

    return torch.from_numpy(
        librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk)
    )


def filterbank(cfg: FrontEndConfig) -> torch.Tensor:
    check_frontend(cfg)
    return mel_filters(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax, cfg.mel_scale == "htk")


def band_centres(cfg: FrontEndConfig) -> np.ndarray:
    """Centre frequency (Hz) of each mel band of the front end's filterbank, (n_mels,)."""
    import librosa

    check_frontend(cfg)
    fmax = cfg.fmax or cfg.sample_rate / 2
    edges = librosa.mel_frequencies(cfg.n_mels + 2, fmin=cfg.fmin, fmax=fmax, htk=cfg.mel_scale == "htk")
    return edges[1:-1]


@dataclass
class Spectrogram:
    """The log-Mel of one waveform and where it starts in the file (frames trimmed by frontend.trim_db)."""

    logmel: torch.Tensor  # (n_mels, n_frames)
    first_frame: int = 0


def log_mel_spectrogram(
    audio: AudioInput, config: FrontEndConfig | None = None, source: str | Path = "<array>"
) -> torch.Tensor:
    """Log-Mel power spectrogram. A path is loaded; arrays are waveforms already at `config.sample_rate`.

    audio (..., n_samples) -> (..., n_mels, n_frames), n_frames = 1 + n_samples // hop_length (fewer when
    frontend.trim_db trims silence, which takes one waveform at a time).
    """
    cfg = config or FrontEndConfig()
    if isinstance(audio, (str, Path)):
        source = audio
        audio = load_audio(audio, cfg.sample_rate)
    wave = torch.as_tensor(audio, dtype=torch.float32)
    if cfg.trim_db:
        if wave.dim() != 1:
            raise ValueError(f"frontend.trim_db trims one waveform at a time, got shape {tuple(wave.shape)}")
        return spectrogram(wave, cfg, source).logmel
    power = _mel_power(wave.reshape(-1, wave.shape[-1]), cfg, source)
    return _log(power, cfg).reshape(*wave.shape[:-1], cfg.n_mels, -1)


def spectrogram(wave: np.ndarray | torch.Tensor, cfg: FrontEndConfig, source: str | Path = "<array>") -> Spectrogram:
    """One waveform (n_samples,) at cfg.sample_rate -> its Spectrogram, silence trimmed as frontend.trim_db says."""
    wave = torch.as_tensor(wave, dtype=torch.float32)
    power = _mel_power(wave.reshape(1, -1), cfg, source)[0]  # (n_mels, n_frames)
    first = 0
    if cfg.trim_db:
        first, end = _voiced_span(power, cfg.trim_db)
        power = power[:, first:end]
    return Spectrogram(_log(power, cfg), first)


def _mel_power(wave: torch.Tensor, cfg: FrontEndConfig, source: str | Path) -> torch.Tensor:
    """(B, n_samples) -> mel power (B, n_mels, n_frames)."""
    filters = filterbank(cfg).to(wave.device)
    if wave.shape[-1] < cfg.win_length:
        seconds = wave.shape[-1] / cfg.sample_rate
        raise AudioError(source, f"{seconds:.4f} s of audio is shorter than one {cfg.win_length}-sample analysis window")
    window = torch.hamming_window(cfg.win_length, periodic=True, device=wave.device)
    # center=True with zero padding is librosa's default framing, so frame k is centred on sample k * hop.
    spec = torch.stft(
        wave, cfg.n_fft, cfg.hop_length, cfg.win_length, window, center=True, pad_mode="constant", return_complex=True,
    )  # (B, n_fft // 2 + 1, n_frames)
    power = spec.real.square() + spec.imag.square()
    return torch.matmul(filters, power)


def _voiced_span(power: torch.Tensor, trim_db: float) -> tuple[int, int]:
    """[first, end) frames from the first to the last whose mel power is within trim_db dB of the loudest frame's."""
    level = 10 * torch.log10(power.double().sum(dim=0).clamp(min=1e-30))
    kept = torch.nonzero(level >= level.max() - trim_db).flatten()
    return int(kept[0]), int(kept[-1]) + 1


def _log(power: torch.Tensor, cfg: FrontEndConfig) -> torch.Tensor:
    if not cfg.floor_db:
        return torch.log(torch.clamp(power, min=cfg.log_floor))
    # Relative to each utterance's peak, so the floor follows the recording level instead of marking it.
    peak = power.amax(dim=(-2, -1), keepdim=True)
    floor = (peak * 10.0 ** (-cfg.floor_db / 10)).clamp(min=torch.finfo(torch.float32).tiny)
    return torch.log(torch.maximum(power, floor))


def pad_value(logmel: np.ndarray | torch.Tensor, cfg: FrontEndConfig) -> float:
    """The log-Mel value of silence for an utterance: its floor (log_floor, or its peak minus floor_db dB)."""
    if not cfg.floor_db:
        return float(np.log(cfg.log_floor))
    return float(logmel.max()) - cfg.floor_db * math.log(10) / 10


# ----------------------------------------------------------------------------------------------------- segmenting
def split_hop(cfg: FrontEndConfig, split: str) -> int:
    """The segment hop of a split: "train" uses frontend.train_segment_hop (0 = segment_hop), "evaluation" not."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    check_frontend(cfg)
    return (cfg.train_segment_hop or cfg.segment_hop) if split == "train" else cfg.segment_hop


def segment_starts(n_frames: int, frames: int = SEGMENT_FRAMES, hop: int = 64, pad_short: str = "silence") -> list[int]:
    """First frame of each segment: every `hop` frames, plus one aligned to the end when the hop misses the tail.

    An utterance shorter than `frames` gives one (padded) segment, or none with pad_short="drop".
    Counts with the defaults (128, hop 64): 1 -> 1, 127 -> 1, 128 -> 1, 129 -> 2, 1000 -> 15.
    """
    if n_frames < 1:
        return []
    if n_frames < frames:
        return [] if pad_short == "drop" else [0]
    starts = list(range(0, n_frames - frames + 1, hop))
    if starts[-1] + frames < n_frames:
        starts.append(n_frames - frames)
    return starts


def too_short(n_frames: int, cfg: FrontEndConfig) -> str:
    """The reason an utterance gives no segment (pad_short="drop")."""
    seconds = n_frames * cfg.hop_length / cfg.sample_rate
    needed = cfg.segment_frames * cfg.hop_length / cfg.sample_rate
    return (
        f"{seconds:.2f} s of audio is shorter than one {cfg.segment_frames}-frame segment ({needed:.2f} s); "
        "set frontend.pad_short=silence or repeat to keep it"
    )


def gather_segments(
    data: np.ndarray, base: np.ndarray, valid: np.ndarray, fill: np.ndarray, cfg: FrontEndConfig
) -> torch.Tensor:
    """Segments (N, n_mels, segment_frames) of frame rows `data` (total_frames, n_mels), e.g. the cache's memory map.

    Row j of segment i is data[base[i] + j]; past valid[i] rows (an utterance shorter than one segment) it repeats
    the utterance (pad_short="repeat") or is silence, fill[i] (see pad_value).
    """
    length, n_mels = cfg.segment_frames, data.shape[1]
    out = torch.empty((len(base), n_mels, length), dtype=torch.float32)
    j = np.arange(length)
    for lo in range(0, len(base), GATHER_CHUNK):
        b, v = base[lo : lo + GATHER_CHUNK, None], valid[lo : lo + GATHER_CHUNK, None]
        # Long utterances have valid == length, so both rules reduce to base + j there.
        rows = b + (j % v if cfg.pad_short == "repeat" else np.minimum(j, v - 1))
        block = np.asarray(data[rows], dtype=np.float32)  # (chunk, frames, n_mels)
        if cfg.pad_short == "silence":
            pad = j >= v  # (chunk, frames)
            block[pad] = np.broadcast_to(fill[lo : lo + GATHER_CHUNK, None], pad.shape)[pad][:, None]
        out[lo : lo + len(block)] = torch.from_numpy(block).transpose(1, 2)
    return out


def segment(
    logmel: torch.Tensor, config: FrontEndConfig | None = None, source: str | Path = "<array>", split: str = "evaluation"
) -> torch.Tensor:
    """Cut (n_mels, n_frames) into (n_segments, n_mels, segment_frames); see `segment_starts` for the count."""
    cfg = config or FrontEndConfig()
    n_frames = logmel.shape[1]
    starts = segment_starts(n_frames, cfg.segment_frames, split_hop(cfg, split), cfg.pad_short)
    if not starts:
        raise AudioError(source, too_short(n_frames, cfg))
    rows = logmel.detach().cpu().numpy().T
    fill = np.full(len(starts), pad_value(rows, cfg) if n_frames < cfg.segment_frames else 0.0)
    valid = np.full(len(starts), min(n_frames, cfg.segment_frames))
    return gather_segments(rows, np.asarray(starts), valid, fill, cfg)


def waveform(
    audio: AudioInput, cfg: FrontEndConfig, sample_rate: int | None = None, source: str | Path | None = None
) -> tuple[np.ndarray, str | Path]:
    """(mono waveform at cfg.sample_rate, the name errors give it) of a path, or of an array at `sample_rate`."""
    if isinstance(audio, (str, Path)):
        return load_audio(audio, cfg.sample_rate), source or audio
    source = source or "<array>"
    return prepare_waveform(audio, sample_rate or cfg.sample_rate, cfg.sample_rate, source=source), source


def features(audio: AudioInput, config: FrontEndConfig | None = None, sample_rate: int | None = None) -> torch.Tensor:
    """Audio (path, or array at `sample_rate`, default the front end's) -> segments (n_segments, n_mels, frames),
    not normalised (atfnn.frontend.extract_features normalises as the model was trained)."""
    cfg = config or FrontEndConfig()
    wave, source = waveform(audio, cfg, sample_rate)
    return segment(spectrogram(wave, cfg, source).logmel, cfg, source)
