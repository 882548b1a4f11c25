"""Uploaded audio -> a waveform at the model's rate, within the server's limits, leaving nothing on disk.

The bytes go to a private temporary directory that is removed before the function returns, and are decoded by
atfnn.audio.load_audio -- the CLI's loader, so a file the CLI rejects is rejected here with the same reason. The
client's file name is only echoed in messages (sanitised) and supplies a format hint; it never names a path to read.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from atfnn.audio import load_audio
from atfnn.errors import AudioError
from atfnn.inference import AUDIO_EXTENSIONS
from atfnn.serve.errors import ApiError, from_audio_error

DEFAULT_NAME = "upload"
NAME_CHARS = re.compile(r"[^\w.\- ]+")


@dataclass(frozen=True)
class Upload:
    """One uploaded file as received: the client's name (for messages only) and its bytes."""

    name: str
    data: bytes

    @property
    def suffix(self) -> str:
        """The name's extension when it is a known audio one: libsndfile needs it for headerless formats."""
        suffix = Path(self.name).suffix.lower()
        return suffix if suffix in AUDIO_EXTENSIONS else ""


def display_name(filename: str | None) -> str:
    """The last path component of the client's name with odd characters removed, at most 100 characters."""
    name = NAME_CHARS.sub("_", (filename or "").replace("\\", "/").rsplit("/", 1)[-1]).strip()
    return name[:100] or DEFAULT_NAME


def decode(upload: Upload, sample_rate: int, max_seconds: float) -> np.ndarray:
    """Mono float32 samples at `sample_rate`; ApiError 422 for audio the CLI would reject or longer than max_seconds."""
    with tempfile.TemporaryDirectory(prefix="atfnn-serve-") as tmp:
        path = Path(tmp) / f"audio{upload.suffix}"
        path.write_bytes(upload.data)
        try:
            _check_declared_length(path, upload.name, max_seconds)
            wave = load_audio(path, sample_rate)
        except AudioError as e:
            raise from_audio_error(e, upload.name, str(path)) from None
    seconds = len(wave) / sample_rate
    if seconds > max_seconds:
        raise too_long(upload.name, seconds, max_seconds)
    return wave


def _check_declared_length(path: Path, name: str, max_seconds: float) -> None:
    """Refuse a file whose header already says it is too long, before decoding all of it."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return  # load_audio names the decoding problem
    if info.samplerate > 0 and info.frames / info.samplerate > max_seconds:
        raise too_long(name, info.frames / info.samplerate, max_seconds)


def too_long(name: str, seconds: float, max_seconds: float) -> ApiError:
    return ApiError(422, "too_long", f"{name}: {seconds:.1f} s of audio is longer than this server's limit of "
                                     f"{max_seconds:g} s (atfnn serve --max-seconds)")
