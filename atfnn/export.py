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
import sys
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from atfnn.checkpoint import ModelCard, load_model
from atfnn.config import FrontEndConfig, ModelConfig, _from_dict
from atfnn.errors import ATFNNError
from atfnn.frontend import NormStats

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
    model, card = load_model(model_dir, "cpu")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(VERIFY_BATCH, card.model.n_mels, card.model.frames)
    fd, tmp_name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _trace(model, example, tmp, opset)
        proto = onnx.load(str(tmp))
        _set_metadata(proto, card)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        if verify:
            _verify(model, tmp, card)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


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
        raise ATFNNError(f"{source}: not an atfnn ONNX export (no {KEY_FORMAT} metadata); write it with atfnn export")
    if metadata.get(KEY_VERSION) != str(VERSION):
        found = metadata.get(KEY_VERSION)
        raise ATFNNError(f"{source}: atfnn ONNX metadata version {found}; this atfnn reads version {VERSION}")
    try:
        return ModelCard(
            labels=list(json.loads(metadata[KEY_LABELS])),
            model=_from_dict(ModelConfig, json.loads(metadata[KEY_MODEL]), "model"),
            frontend=_from_dict(FrontEndConfig, json.loads(metadata[KEY_FRONTEND]), "frontend"),
            info=json.loads(metadata.get(KEY_INFO, "{}")),
            norm_stats=NormStats.from_dict(json.loads(metadata[KEY_NORM]), source) if KEY_NORM in metadata else None,
        )
    except (KeyError, ValueError) as e:
        raise ATFNNError(f"{source}: atfnn metadata is incomplete or invalid ({e}); export the model again") from e


def read_metadata(path: str | Path) -> ModelCard:
    """The labels, front end and model config of an exported .onnx file."""
    onnx = _require("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    return card_from_metadata({p.key: p.value for p in proto.metadata_props}, path)


def _require(name: str):
    try:
        return __import__(name)
    except ImportError as e:
        raise ATFNNError(f"ONNX export needs {name}: pip install 'atfnn[export]'") from e


def export_main(model_dir: str, out: str, opset: int = DEFAULT_OPSET) -> int:
    """`atfnn export MODEL_DIR OUT.onnx`: 0 on success, 2 with the reason on stderr."""
    try:
        path = export_onnx(model_dir, out, opset)
    except (ATFNNError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} (network only: the log-Mel front end runs in Python, see atfnn.inference)")
    return 0
