#!/usr/bin/env python
"""How much of the training speakers' identity a run's fold models keep in h', the encoding the classifier reads.

    .venv/bin/python scripts/speaker_probe.py runs/casia-atfnn-spknorm-reg runs/casia-atfnn-spknorm-reg-adv \
        --json results/speaker-probe.json

For each finished fold of seed 0, the fold's saved model encodes the segments of its *training* speakers, and a
logistic regression (scikit-learn, standardised inputs) is scored on telling those speakers apart, with 5-fold
cross-validation grouped by utterance (no utterance's segments on both sides). The same probe on the segments'
per-band means and standard deviations over time (the model's input, 160 values) is the reference: what the input
itself gives away. Chance is 1 / (number of training speakers). Analysis only: no training, no test speaker.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from atfnn.checkpoint import load_model
from atfnn.experiment import DONE, load_run_config, prepare_corpus, split_data
from atfnn.foldsets import read_run_folds as read_folds  # either run layout

BATCH = 256
CV_FOLDS = 5


@torch.inference_mode()
def encode(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    model.eval()
    return torch.cat([model.embed(x[i : i + BATCH])[0] for i in range(0, len(x), BATCH)]).numpy()


def probe_accuracy(features: np.ndarray, speakers: np.ndarray, groups: np.ndarray) -> float:
    """Mean cross-validated accuracy (%) of a linear speaker classifier, grouped so utterances never straddle folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    scores = cross_val_score(probe, features, speakers, groups=groups, cv=GroupKFold(n_splits=CV_FOLDS))
    return float(scores.mean() * 100)


def probe_run(run_dir: Path, seed: int) -> list[dict]:
    config = load_run_config(run_dir)
    corpus = prepare_corpus(config, progress=False, log=lambda message: None)
    folds = {fold.name: fold for fold in read_folds(run_dir)}
    rows = []
    for done in sorted(run_dir.glob(f"seed-{seed}/*/{DONE}")):
        fold = folds[done.parent.name]
        data = split_data(corpus, fold.train)
        model, _ = load_model(done.parent / "model", torch.device("cpu"))
        speakers, groups = data.spk.numpy(), data.utt
        inputs = torch.cat([data.x.mean(dim=2), data.x.std(dim=2)], dim=1).numpy()
        rows.append({
            "run": run_dir.name, "seed": seed, "test_speaker": fold.name, "segments": len(data),
            "chance": 100.0 / (int(speakers.max()) + 1),
            "input_probe": probe_accuracy(inputs, speakers, groups),
            "embedding_probe": probe_accuracy(encode(model, data.x), speakers, groups),
        })
        print(f"| {run_dir.name} | {fold.name} | {rows[-1]['chance']:.1f} | {rows[-1]['input_probe']:.1f} | "
              f"{rows[-1]['embedding_probe']:.1f} |", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    print("| Run | Test speaker (not probed) | chance (%) | input statistics (%) | h' (%) |")
    print("|---|---|---|---|---|")
    rows = [row for run_dir in args.run_dirs for row in probe_run(run_dir, args.seed)]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
