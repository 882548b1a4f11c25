"""Self-describing trained models: a directory with safetensors weights and a JSON of everything needed to use them.

    MODEL_DIR/model.safetensors   weights (never pickle)
    MODEL_DIR/model.json          {"format": "atfnn-model", "version": 1, "labels": [...], "model": ModelConfig,
                                   "frontend": FrontEndConfig, "info": {corpus, fold, seed, epoch, ...},
                                   "norm_stats": {"mean": [...], "std": [...], "n_frames": n} (norm=global only)}

The card's model.n_mels and model.frames (the network's input size) repeat the front end's n_mels and
segment_frames; a card without them takes the front end's, a card where they differ is rejected. Every way a
directory can be broken (missing, unreadable, truncated or zeroed files, a card that is not an object, lacks a
section or does not fit the weights) is a ModelFileError that names the file.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from atfnn.atomic import atomic_directory
from atfnn.config import FrontEndConfig, ModelConfig, from_dict
from atfnn.errors import ConfigError, ModelFileError
from atfnn.frontend import NormStats
from atfnn.model import ATFNN, build_model

FORMAT, VERSION = "atfnn-model", 1
WEIGHTS, META = "model.safetensors", "model.json"
SECTIONS = ("labels", "model", "frontend")
AGAIN = "save or copy the model again"
SHOWN = 3  # names listed per kind of weight mismatch


@dataclass
class ModelCard:
    labels: list[str]
    model: ModelConfig
    frontend: FrontEndConfig
    info: dict[str, Any] = field(default_factory=dict)
    norm_stats: NormStats | None = None  # frontend.norm="global": the training split's per-band statistics


def save_model(
    model: ATFNN, labels: Sequence[str], frontend: FrontEndConfig, directory: str | Path, info: dict | None = None,
    norm_stats: NormStats | None = None,
) -> Path:
    """Write the model directory atomically (a temporary sibling renamed into place, fsynced)."""
    directory = Path(directory)
    if (model.config.n_mels, model.config.frames) != (frontend.n_mels, frontend.segment_frames):
        raise ConfigError(
            f"{directory}: the network takes {model.config.n_mels} x {model.config.frames} segments but the front end "
            f"makes {frontend.n_mels} x {frontend.segment_frames} (frontend.n_mels x frontend.segment_frames)"
        )
    if frontend.norm == "global" and norm_stats is None:
        raise ConfigError(f"{directory}: frontend.norm=global needs the training split's statistics (norm_stats) "
                          "saved with the model; without them it could not predict")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "labels": list(labels),
        "model": asdict(model.config),
        "frontend": asdict(frontend),
        "info": info or {},
    }
    if norm_stats is not None:
        meta["norm_stats"] = norm_stats.to_dict()
    with atomic_directory(directory) as tmp:
        save_file(state, str(tmp / WEIGHTS))
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def card_from_meta(meta: Any, source: str | Path) -> ModelCard:
    """A ModelCard from a card's parsed JSON (model.json, or an ONNX file's metadata); `source` names it in errors."""
    if not isinstance(meta, dict):
        raise ModelFileError(f"{source}: expected a JSON object with {', '.join(SECTIONS)}, got {type(meta).__name__}")
    missing = [name for name in SECTIONS if name not in meta]
    if missing:
        raise ModelFileError(f"{source}: lacks the {', '.join(missing)} section(s); {AGAIN}")
    labels, info = meta["labels"], meta.get("info", {})
    if not (isinstance(labels, list) and labels and all(isinstance(x, str) and x for x in labels)):
        raise ModelFileError(f"{source}: 'labels' must be a non-empty list of class names, got {labels!r}")
    if len(set(labels)) != len(labels):
        raise ModelFileError(f"{source}: 'labels' repeats a class name: {labels}")
    if not isinstance(info, dict):
        raise ModelFileError(f"{source}: 'info' must be a JSON object, got {type(info).__name__}")
    try:
        # Read as one experiment config, so the model's sizes are checked against (or taken from) the front end's.
        config = from_dict({"model": meta["model"], "frontend": meta["frontend"]})
    except ConfigError as e:
        raise ModelFileError(f"{source}: {e}") from e
    stats = NormStats.from_dict(meta["norm_stats"], source) if meta.get("norm_stats") else None
    return ModelCard(labels=list(labels), model=config.model, frontend=config.frontend, info=info, norm_stats=stats)


def read_card(directory: str | Path) -> ModelCard:
    """The card (model.json) of a model directory, checked; a missing, unreadable or corrupt one is a ModelFileError."""
    directory = Path(directory)
    meta_path = directory / META
    if not directory.is_dir():
        what = "is a file" if directory.exists() else "does not exist"
        raise ModelFileError(f"{directory}: {what}; pass a model directory (a fold's 'model' folder) or an .onnx file")
    if not meta_path.is_file():
        raise ModelFileError(f"{directory}: not an atfnn model directory (no {META}); pass a fold's 'model' directory")
    try:
        meta = json.loads(meta_path.read_bytes())
    except OSError as e:
        raise ModelFileError(f"{meta_path}: cannot be read ({e.strerror or e})") from e
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise ModelFileError(f"{meta_path}: not valid JSON ({e}); the file is truncated or corrupt, {AGAIN}") from e
    if isinstance(meta, dict) and (meta.get("format"), meta.get("version")) != (FORMAT, VERSION):
        raise ModelFileError(f"{meta_path}: unsupported model format {meta.get('format')!r} v{meta.get('version')}; "
                             f"this atfnn reads {FORMAT!r} v{VERSION}")
    return card_from_meta(meta, meta_path)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing, unreadable or corrupt file is a ModelFileError naming it."""
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, not a safetensors file; {AGAIN}")
    if not path.is_file():
        raise ModelFileError(f"{path}: missing; the model directory is incomplete, {AGAIN}")
    try:
        with open(path, "rb"):  # so that a permission problem is reported as one
            pass
        return load_file(str(path))
    except OSError as e:
        raise ModelFileError(f"{path}: cannot be read ({e.strerror or e})") from e
    except SafetensorError as e:
        raise ModelFileError(f"{path}: not a valid safetensors file ({e}); it is truncated or corrupt, {AGAIN}") from e


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[ATFNN, ModelCard]:
    """Rebuild the network from model.json and load its weights; returned in eval mode."""
    directory = Path(directory)
    card = read_card(directory)
    model = build_model(card.model, len(card.labels))
    weights = directory / WEIGHTS
    state = read_weights(weights)
    _check_weights(state, model.state_dict(), weights)
    model.load_state_dict(state)
    return model.to(device).eval(), card


def _check_weights(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path) -> None:
    """The weights must be the tensors of the network the card describes, finite."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{label}: {', '.join(items[:SHOWN])}{' ...' if len(items) > SHOWN else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape in file != card", shapes))
        if items
    ]
    if problems:
        raise ModelFileError(f"{path}: the weights do not fit the network {META} describes ({'; '.join(problems)}); "
                             f"the card and the weights come from different models")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ModelFileError(f"{path}: weights hold NaN or infinite values ({', '.join(bad[:SHOWN])}); {AGAIN}")
