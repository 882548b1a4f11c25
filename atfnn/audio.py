"""Audio loading and the log-Mel front end of section III-C, cut into 128-frame segments.

load_audio -> log_mel_spectrogram -> segment. The STFT runs in torch (batched, any device); the mel filterbank is
librosa's (Slaney scale and norm, its defaults), so the features equal `librosa.feature.melspectrogram` + log.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from atfnn.config import FrontEndConfig
from atfnn.errors import AudioError

SAMPLE_RATE = 16000
WIN_LENGTH = 320  # 20 ms
HOP_LENGTH = 160  # 10 ms, 50% overlap
N_FFT = 512
N_MELS = 80
SEGMENT_FRAMES = 128

AudioInput = str | Path | np.ndarray | torch.Tensor


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read any file soundfile reads (wav, flac, ogg, ...), downmix to mono, resample: float32 (n_samples,)."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found")
    if path.stat().st_size == 0:
        raise AudioError(path, "file is empty (0 bytes)")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(path, f"cannot be decoded as audio ({e})") from e
    return prepare_waveform(data, rate, sample_rate, source=path)


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
        data = soxr.resample(data, rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    return data


@lru_cache(maxsize=8)
def mel_filters(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> torch.Tensor:
    """librosa's Slaney mel filterbank, (n_mels, n_fft // 2 + 1)."""
    import librosa

    return torch.from_numpy(librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax))


def log_mel_spectrogram(
    audio: AudioInput, config: FrontEndConfig | None = None, source: str | Path = "<array>"
) -> torch.Tensor:
    """Log-Mel power spectrogram. A path is loaded; arrays are waveforms already at `config.sample_rate`.

    audio (..., n_samples) -> (..., n_mels, n_frames), n_frames = 1 + n_samples // hop_length.
    """
    cfg = config or FrontEndConfig()
    if isinstance(audio, (str, Path)):
        source = audio
        audio = load_audio(audio, cfg.sample_rate)
    wave = torch.as_tensor(audio, dtype=torch.float32)
    if wave.shape[-1] < cfg.win_length:
        seconds = wave.shape[-1] / cfg.sample_rate
        raise AudioError(source, f"{seconds:.4f} s of audio is shorter than one {cfg.win_length}-sample analysis window")
    window = torch.hamming_window(cfg.win_length, periodic=True, device=wave.device)
    # center=True with zero padding is librosa's default framing, so frame k is centred on sample k * hop.
    spec = torch.stft(
        wave.reshape(-1, wave.shape[-1]), cfg.n_fft, cfg.hop_length, cfg.win_length, window,
        center=True, pad_mode="constant", return_complex=True,
    )  # (B, n_fft // 2 + 1, n_frames)
    power = spec.real.square() + spec.imag.square()
    filters = mel_filters(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax).to(wave.device)
    mel = torch.matmul(filters, power)  # (B, n_mels, n_frames)
    logmel = torch.log(torch.clamp(mel, min=cfg.log_floor))
    return logmel.reshape(*wave.shape[:-1], cfg.n_mels, -1)


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


def segment(
    logmel: torch.Tensor, config: FrontEndConfig | None = None, source: str | Path = "<array>"
) -> torch.Tensor:
    """Cut (n_mels, n_frames) into (n_segments, n_mels, segment_frames); see `segment_starts` for the count."""
    cfg = config or FrontEndConfig()
    n_mels, n_frames = logmel.shape
    length = cfg.segment_frames
    starts = segment_starts(n_frames, length, cfg.segment_hop, cfg.pad_short)
    if not starts:
        raise AudioError(
            source,
            f"{n_frames * cfg.hop_length / cfg.sample_rate:.2f} s of audio is shorter than one {length}-frame segment "
            f"({length * cfg.hop_length / cfg.sample_rate:.2f} s); set frontend.pad_short=silence or repeat to keep it",
        )
    if n_frames < length:
        if cfg.pad_short == "repeat":
            reps = -(-length // n_frames)
            logmel = logmel.repeat(1, reps)[:, :length]
        else:
            fill = float(np.log(cfg.log_floor))
            logmel = torch.cat([logmel, logmel.new_full((n_mels, length - n_frames), fill)], dim=1)
        return logmel.unsqueeze(0)
    return torch.stack([logmel[:, s : s + length] for s in starts])


def features(audio: AudioInput, config: FrontEndConfig | None = None, sample_rate: int | None = None) -> torch.Tensor:
    """Audio (path, or array at `sample_rate`, default the front end's) -> segments (n_segments, n_mels, frames)."""
    cfg = config or FrontEndConfig()
    source: str | Path = "<array>"
    if isinstance(audio, (str, Path)):
        source = audio
        wave = load_audio(audio, cfg.sample_rate)
    else:
        wave = prepare_waveform(audio, sample_rate or cfg.sample_rate, cfg.sample_rate)
    return segment(log_mel_spectrogram(wave, cfg, source), cfg, source)
