"""Export a trained model to ONNX: the network only, log-Mel segments (batch, n_mels, frames) -> logits.

The front end (loading, resampling, log-Mel, segmenting, normalising) stays in Python and is a documented pre-step,
not a graph op: `atfnn.frontend.extract_features` runs it for both backends (`atfnn.load("model.onnx")`,
`atfnn predict --backend onnx`), with the model's frontend.norm. The file describes itself: labels, front end and
model configs are in its metadata_props (keys below), and so are the training split's normalisation statistics
when frontend.norm is "global" (KEY_NORM: {"mean": [n_mels], "std": [n_mels]}; other runtimes feed the graph
(segments - mean) / std per band), so an .onnx file alone is enough to predict.

The legacy TorchScript exporter is used (`dynamo=False`): the newer torch.export-based one needs the onnxscript
package, which atfnn does not depend on, and the legacy one exports the Bi-LSTM and nn.MultiheadAttention as is.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from atfnn.atomic import atomic_path
from atfnn.checkpoint import ModelCard, card_from_meta, load_model
from atfnn.errors import ATFNNError, ModelFileError

FORMAT, VERSION = "atfnn-onnx", 1
DEFAULT_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "logmel", "logits"
# metadata_props keys; values are strings (JSON for structured ones).
KEY_FORMAT, KEY_VERSION = "atfnn.format", "atfnn.version"
KEY_LABELS, KEY_FRONTEND, KEY_MODEL, KEY_INFO = "atfnn.labels", "atfnn.frontend", "atfnn.model", "atfnn.info"
KEY_NORM = "atfnn.norm_stats"  # frontend.norm="global" only
# Parity check run after every export, on random segments at the scale of log-Mel values.
VERIFY_ATOL = 1e-4
VERIFY_BATCH = 3


def export_onnx(model_dir: str | Path, out_path: str | Path, opset: int = DEFAULT_OPSET, verify: bool = True) -> Path:
    """Write `out_path` (.onnx) from a model directory; returns the path.

    Input "logmel" (batch, n_mels, frames) float32, output "logits" (batch, n_classes); the batch axis is dynamic.
    The front end is not in the graph: feed it the segments `atfnn.frontend.extract_features` computes.
    With `verify`, onnxruntime's logits are compared with PyTorch's (atol 1e-4) and a mismatch raises.
    """
    onnx = _require("onnx")
    out_path = Path(out_path)
    check_destination(out_path)
    model, card = load_model(model_dir, "cpu")
    example = torch.randn(VERIFY_BATCH, card.model.n_mels, card.model.frames)
    try:
        with atomic_path(out_path) as tmp:
            _trace(model, example, tmp, opset)
            proto = onnx.load(str(tmp))
            _set_metadata(proto, card)
            onnx.checker.check_model(proto)
            onnx.save(proto, str(tmp))
            if verify:
                _verify(model, tmp, card)
    except OSError as e:
        raise ATFNNError(f"{out_path}: cannot be written ({e.strerror or e})") from e
    return out_path


def check_destination(path: Path) -> None:
    """Fail before the export's work when `path` cannot become a file: a folder, or a place that cannot be written."""
    if path.is_dir():
        raise ATFNNError(f"{path}: is a folder; pass the file to write, e.g. {path / 'model.onnx'}")
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise ATFNNError(f"{path}: cannot be written ({parent} is a file, not a folder)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ATFNNError(f"{path}: cannot be written (no write permission in {parent})")


def _trace(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        # Known and harmless here: the legacy exporter's deprecation notice, tracer notes about Python bools in
        # nn.MultiheadAttention's fast-path checks, and the LSTM batch-size note (parity is checked on other sizes).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*LSTM.*")
        torch.onnx.export(
            model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=opset, dynamo=False,
        )


def _set_metadata(proto, card: ModelCard) -> None:
    values = {
        KEY_FORMAT: FORMAT,
        KEY_VERSION: str(VERSION),
        KEY_LABELS: json.dumps(card.labels, ensure_ascii=False),
        KEY_FRONTEND: json.dumps(asdict(card.frontend)),
        KEY_MODEL: json.dumps(asdict(card.model)),
        KEY_INFO: json.dumps(card.info, ensure_ascii=False, default=str),
    }
    if card.norm_stats is not None:
        values[KEY_NORM] = json.dumps(card.norm_stats.to_dict())
    del proto.metadata_props[:]
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (
        f"atfnn {card.model.variant}: log-Mel segments ({INPUT_NAME}: batch x {card.model.n_mels} x "
        f"{card.model.frames}) -> {OUTPUT_NAME} over {', '.join(card.labels)}; the front end is not included."
    )


def _verify(model: torch.nn.Module, path: Path, card: ModelCard) -> None:
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(VERIFY_BATCH + 2, card.model.n_mels, card.model.frames) * 3 - 6  # log-Mel-like range
    with torch.inference_mode():
        expected = model(x).numpy()
    got = session.run(None, {INPUT_NAME: x.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if not diff <= VERIFY_ATOL:
        raise ATFNNError(
            f"{path}: ONNX logits differ from PyTorch's by {diff:.2e} (> {VERIFY_ATOL}); try another opset"
        )


def card_from_metadata(metadata: dict[str, str], source: str | Path = "<onnx>") -> ModelCard:
    """The ModelCard stored in an exported file's metadata_props (as onnxruntime's custom_metadata_map gives it)."""
    if metadata.get(KEY_FORMAT) != FORMAT:
        raise ModelFileError(
            f"{source}: not an atfnn ONNX export (no {KEY_FORMAT} metadata); write it with atfnn export"
        )
    if metadata.get(KEY_VERSION) != str(VERSION):
        found = metadata.get(KEY_VERSION)
        raise ModelFileError(f"{source}: atfnn ONNX metadata version {found}; this atfnn reads version {VERSION}")
    keys = {"labels": KEY_LABELS, "model": KEY_MODEL, "frontend": KEY_FRONTEND, "info": KEY_INFO,
            "norm_stats": KEY_NORM}
    try:
        meta = {name: json.loads(metadata[key]) for name, key in keys.items() if key in metadata}
    except ValueError as e:
        raise ModelFileError(f"{source}: atfnn metadata is not valid JSON ({e}); export the model again") from e
    return card_from_meta(meta, source)


def read_metadata(path: str | Path) -> ModelCard:
    """The labels, front end and model config of an exported .onnx file."""
    onnx = _require("onnx")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot be read ({e.strerror or e})") from e
    except Exception as e:  # protobuf's DecodeError and onnx's own errors for a corrupt file
        raise ModelFileError(f"{path}: not a valid ONNX file ({e})") from e
    return card_from_metadata({p.key: p.value for p in proto.metadata_props}, path)


def _require(name: str):
    try:
        return __import__(name)
    except ImportError as e:
        raise ATFNNError(f"ONNX export needs {name}: pip install 'atfnn[export]'") from e
