"""Do fp16-rounded weights of a model make the same decisions as its fp32 weights on every file of its corpus?

Run before storing packaged weights in fp16, on the fp32 model (default: the default packaged model's folder):
    .venv/bin/python scripts/packaged_fp16_check.py ../shared/data/casia
    .venv/bin/python scripts/packaged_fp16_check.py ../shared/data/emodb runs/packaged-emodb/final/model
Prints the file count, the number of equal decisions and the largest probability difference.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atfnn
from atfnn.checkpoint import load_model, save_model
from atfnn.packaged import packaged_model_dir


def main(data: str, model_dir: Path) -> None:
    files = sorted(Path(data).rglob("*.wav"))
    model, card = load_model(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model.half().float(), card.labels, card.frontend, Path(tmp) / "fp16", info=card.info)
        rounded = atfnn.load(Path(tmp) / "fp16", device="cpu").predict_many(files, 64)
    full = atfnn.load(model_dir, device="cpu").predict_many(files, 64)
    same = sum(a.label == b.label for a, b in zip(full, rounded))
    diff = max(abs(a.probs[k] - b.probs[k]) for a, b in zip(full, rounded) for k in a.probs)
    print(f"{len(files)} files, {same} equal decisions, largest probability difference {diff:.4f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/casia",
         Path(sys.argv[2]) if len(sys.argv) > 2 else packaged_model_dir())
