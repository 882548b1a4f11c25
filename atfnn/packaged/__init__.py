"""The models shipped inside the package, one folder per model, named by its folder:

    atfnn/packaged/<name>/model.safetensors   fp16 weights, loaded into the fp32 network
    atfnn/packaged/<name>/model.json          atfnn.checkpoint's card; info.card holds the model card
    atfnn/packaged/<name>/README.md           the model card for people: data, licence, labels, measured UAR

`casia-atfnn` is the default, used when no model is named: `atfnn.load()`, `atfnn predict FILE`, `atfnn explain FILE
--out x.png`, `atfnn serve`. Another one is chosen by name, never by a path, so that a name cannot be mistaken for
(or shadowed by) a file: `atfnn.load(packaged="emodb-atfnn")`, `atfnn predict --packaged emodb-atfnn FILE`.
`atfnn models` lists them. Each is built by scripts/build_packaged_model.sh (CORPUS=casia|emodb).

The folder searched is ATFNN_PACKAGED_DIR when that is set (tests, or models kept outside the installation), else
this package's own folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TextIO

from atfnn.checkpoint import META, WEIGHTS, read_card
from atfnn.errors import ATFNNError
from atfnn.inference import AUDIO_EXTENSIONS

DEFAULT = "casia-atfnn"
ROOT_ENV = "ATFNN_PACKAGED_DIR"
BUILD_HINT = "scripts/build_packaged_model.sh (CORPUS=casia|emodb)"


def packaged_root() -> Path:
    """The folder holding the packaged models."""
    override = os.environ.get(ROOT_ENV)
    return Path(override) if override else Path(__file__).resolve().parent


def available() -> list[str]:
    """Names of the packaged models present: the folders of packaged_root() with both weights and card."""
    root = packaged_root()
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if (d / WEIGHTS).is_file() and (d / META).is_file())


def packaged_model_dir(name: str | None = None) -> Path:
    """The directory of the packaged model `name` (default: DEFAULT); an ATFNNError listing the models present when
    it is not one of them. Only names listed by available() are accepted, so a name never reaches outside the root."""
    name = name or DEFAULT
    names = available()
    if name in names:
        return packaged_root() / name
    present = ", ".join(names) if names else "none"
    raise ATFNNError(f"no packaged model {name!r} in this installation ({packaged_root()}; available: {present}): "
                     f"build it with {BUILD_HINT}, or name a model directory")


@dataclass(frozen=True)
class PackagedModel:
    """What `atfnn models` shows of one packaged model, from its card."""

    name: str
    corpus: str
    labels: list[str]
    uar: float | None  # the cross-validated UAR of the same configuration, %
    war: float | None
    protocol: str


def describe(name: str) -> PackagedModel:
    card = read_card(packaged_model_dir(name))
    model_card = card.info.get("card", {})
    cv = model_card.get("cross_validated", {})
    corpus = model_card.get("training_data", {}).get("corpus") or card.info.get("corpus", "unknown")
    return PackagedModel(name, corpus, card.labels, cv.get("uar"), cv.get("war"), cv.get("protocol", "not stated"))


def list_models(out: TextIO) -> int:
    """`atfnn models`: one block per packaged model; an ATFNNError when there is none."""
    names = available()
    if not names:
        raise ATFNNError(f"no packaged model in this installation ({packaged_root()}): build one with {BUILD_HINT}")
    for name in names:
        m = describe(name)
        uar = "not stated" if m.uar is None else f"{m.uar:.2f} % (WAR {m.war:.2f} %), {m.protocol}"
        default = " (default)" if name == DEFAULT else ""
        print(f"{name}{default}\n  corpus: {m.corpus}\n  labels: {', '.join(m.labels)}\n"
              f"  cross-validated UAR: {uar}", file=out)
    return 0


def is_model_argument(value: str) -> bool:
    """Whether a command's first positional names a model rather than audio: an .onnx file, a directory with a
    model.json, or a path that does not exist and does not look like audio (so that a mistyped model directory is
    reported as a bad model, not classified as a missing audio file)."""
    path = Path(value)
    if path.suffix.lower() == ".onnx" or (path / META).is_file():
        return True
    return not path.exists() and path.suffix.lower() not in AUDIO_EXTENSIONS


def split_model_argument(
    model: str | None, inputs: Sequence[str], packaged: str | None = None
) -> tuple[str, list[str]]:
    """(model, inputs) of `atfnn predict [MODEL] INPUT... [--packaged NAME]`: when the first positional is not a
    model it is an input, and the packaged model `packaged` (default: DEFAULT) is used."""
    if model is not None and is_model_argument(model):
        if packaged is not None:
            raise ATFNNError(f"{model}: a model argument and --packaged {packaged} both name the model; give one")
        return model, list(inputs)
    rest = [model, *inputs] if model is not None else list(inputs)
    return str(packaged_model_dir(packaged)), rest
