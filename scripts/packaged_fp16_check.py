"""Do fp16-rounded weights of a model make the same decisions as its fp32 weights on every file of its corpus?

Run before storing packaged weights in fp16, on the fp32 model (default: the default packaged model's folder):
    .venv/bin/python scripts/packaged_fp16_check.py ../shared/data/casia
    .venv/bin/python scripts/packaged_fp16_check.py ../shared/data/emodb runs/packaged-emodb/final/model \
        --save tests/data/packaged_emodb_fp32_decisions.json --every 5
Prints the file count, the number of equal decisions and the largest probability difference. --save writes the fp32
decisions of every --every-th file (sorted order, paths relative to the corpus root), which a test compares the
shipped fp16 model with.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import atfnn
from atfnn.checkpoint import load_model, save_model
from atfnn.packaged import packaged_model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default="../shared/data/casia", help="the corpus root")
    parser.add_argument("model", nargs="?", type=Path, help="the fp32 model (default: the default packaged model)")
    parser.add_argument("--save", type=Path, help="write the fp32 decisions of every --every-th file here (JSON)")
    parser.add_argument("--every", type=int, default=6)
    args = parser.parse_args()
    if args.every < 1:
        parser.error("--every must be at least 1")
    root, model_dir = Path(args.data), args.model or packaged_model_dir()
    files = sorted(root.rglob("*.wav"))
    model, card = load_model(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model.half().float(), card.labels, card.frontend, Path(tmp) / "fp16", info=card.info,
                   norm_stats=card.norm_stats)
        rounded = atfnn.load(Path(tmp) / "fp16", device="cpu").predict_many(files, 64)
    full = atfnn.load(model_dir, device="cpu").predict_many(files, 64)
    same = sum(a.label == b.label for a, b in zip(full, rounded))
    diff = max(abs(a.probs[k] - b.probs[k]) for a, b in zip(full, rounded) for k in a.probs)
    summary = f"{len(files)} files, {same} equal decisions, largest probability difference {diff:.4f}"
    print(summary)
    if args.save:
        kept = {f.relative_to(root).as_posix(): r.label for f, r in list(zip(files, full))[::args.every]}
        about = (f"decisions of {model_dir} ({card.info.get('corpus')}) with its fp32 weights, before they were "
                 f"stored in fp16, every {args.every}th file of the corpus in sorted order; fp16 against fp32: "
                 f"{summary}")
        args.save.write_text(json.dumps({"about": about, "decisions": kept}, indent=1, ensure_ascii=False) + "\n")
        print(f"{len(kept)} decisions written to {args.save}")


if __name__ == "__main__":
    main()
