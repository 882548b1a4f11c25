"""atfnn: attentive time-frequency neural network for speech emotion recognition.

    import atfnn
    result = atfnn.load().predict("speech.wav")              # the default packaged model, CASIA (atfnn/packaged)
    result = atfnn.load(packaged="emodb-atfnn").predict("speech.wav")   # another packaged model, by name
    result = atfnn.load("runs/casia/seed-0/liuchanhg/model").predict("speech.wav")
    print(result.label, result.probs)
"""
__version__ = "0.1.0"

from pathlib import Path

import torch

from atfnn.audio import load_audio, log_mel_spectrogram
from atfnn.errors import ATFNNError
from atfnn.inference import Failure, Prediction, Predictor, Segment
from atfnn.inference import load as _load_path
from atfnn.model import ATFNN, build_model


def load(
    path: str | Path | None = None, device: str | torch.device | None = None, backend: str | None = None,
    *, packaged: str | None = None,
) -> Predictor:
    """A Predictor for a model directory or .onnx file (atfnn.inference.load); without a path, the packaged model
    named `packaged` (default: atfnn.packaged.DEFAULT; `atfnn models` lists them). A name is never read as a path."""
    if path is None:
        from atfnn.packaged import packaged_model_dir

        path = packaged_model_dir(packaged)
    elif packaged is not None:
        raise ATFNNError(f"atfnn.load: both a path ({path}) and packaged={packaged!r} name the model; give one")
    return _load_path(path, device=device, backend=backend)


__all__ = [
    "ATFNN",
    "Failure",
    "Prediction",
    "Predictor",
    "Segment",
    "__version__",
    "build_model",
    "load",
    "load_audio",
    "log_mel_spectrogram",
]
