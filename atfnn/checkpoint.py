"""Self-describing trained models: a directory with safetensors weights and a JSON of everything needed to use them.

    MODEL_DIR/model.safetensors   weights (never pickle)
    MODEL_DIR/model.json          {"format": "atfnn-model", "version": 1, "labels": [...], "model": ModelConfig,
                                   "frontend": FrontEndConfig, "info": {corpus, fold, seed, epoch, ...},
                                   "norm_stats": {"mean": [...], "std": [...], "n_frames": n} (norm=global only)}
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file

from atfnn.config import FrontEndConfig, ModelConfig, _from_dict
from atfnn.errors import ATFNNError
from atfnn.frontend import NormStats
from atfnn.model import ATFNN, build_model

FORMAT, VERSION = "atfnn-model", 1
WEIGHTS, META = "model.safetensors", "model.json"


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
    """Write the model directory atomically (a temporary sibling renamed into place)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS))
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
    (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


def read_card(directory: str | Path) -> ModelCard:
    directory = Path(directory)
    meta_path = directory / META
    if not meta_path.is_file():
        raise ATFNNError(f"{directory}: not an atfnn model directory (no {META}); pass a fold's 'model' directory")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ATFNNError(f"{meta_path}: unsupported model format {meta.get('format')!r} v{meta.get('version')}")
    return ModelCard(
        labels=list(meta["labels"]),
        model=_from_dict(ModelConfig, meta["model"], "model"),
        frontend=_from_dict(FrontEndConfig, meta["frontend"], "frontend"),
        info=meta.get("info", {}),
        norm_stats=NormStats.from_dict(meta["norm_stats"], meta_path) if meta.get("norm_stats") else None,
    )


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[ATFNN, ModelCard]:
    """Rebuild the network from model.json and load its weights; returned in eval mode."""
    directory = Path(directory)
    card = read_card(directory)
    model = build_model(card.model, len(card.labels))
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise ATFNNError(f"{directory}: {WEIGHTS} is missing")
    model.load_state_dict(load_file(str(weights)))
    return model.to(device).eval(), card
