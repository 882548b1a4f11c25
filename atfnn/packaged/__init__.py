"""The model shipped inside the package, used when no model is named: `atfnn.load()`, `atfnn predict FILE`,
`atfnn explain FILE --out x.png`, `atfnn serve`.

    atfnn/packaged/casia-atfnn/model.safetensors   fp32 weights
    atfnn/packaged/casia-atfnn/model.json          atfnn.checkpoint's card; info.card holds the model card
    atfnn/packaged/casia-atfnn/README.md           the model card for people: data, licence, labels, measured UAR

Built by scripts/build_packaged_model.sh (training, then `python -m atfnn.packaged.build`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from atfnn.checkpoint import META, WEIGHTS
from atfnn.errors import ATFNNError
from atfnn.inference import AUDIO_EXTENSIONS

NAME = "casia-atfnn"
PACKAGED_DIR = Path(__file__).resolve().parent / NAME


def packaged_model_dir() -> Path:
    """The packaged model's directory; an ATFNNError naming the build command when this installation lacks it."""
    if not (PACKAGED_DIR / WEIGHTS).is_file() or not (PACKAGED_DIR / META).is_file():
        raise ATFNNError(f"no packaged model in this installation ({PACKAGED_DIR / WEIGHTS} is missing): build it with "
                         "scripts/build_packaged_model.sh, or name a model directory")
    return PACKAGED_DIR


def is_model_argument(value: str) -> bool:
    """Whether a command's first positional names a model rather than audio: an .onnx file, a directory with a
    model.json, or a path that does not exist and does not look like audio (so that a mistyped model directory is
    reported as a bad model, not classified as a missing audio file)."""
    path = Path(value)
    if path.suffix.lower() == ".onnx" or (path / META).is_file():
        return True
    return not path.exists() and path.suffix.lower() not in AUDIO_EXTENSIONS


def split_model_argument(model: str | None, inputs: Sequence[str]) -> tuple[str, list[str]]:
    """(model, inputs) of `atfnn predict [MODEL] INPUT...`: when the first positional is not a model it is an input,
    and the packaged model is used."""
    if model is not None and is_model_argument(model):
        return model, list(inputs)
    rest = [model, *inputs] if model is not None else list(inputs)
    return str(packaged_model_dir()), rest
