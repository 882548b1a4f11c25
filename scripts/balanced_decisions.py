#!/usr/bin/env python
"""Class-balanced utterance decisions per test speaker, from finished runs' posteriors (analysis only).

    .venv/bin/python scripts/balanced_decisions.py results/casia-atfnn results/casia-atnn \
        --json results/balanced-decisions.json

Each fold's predictions.csv holds the utterance posteriors of its test speaker. The plain decision is each
utterance's argmax. The balanced decision first rescales the speaker's posterior matrix (Sinkhorn iterations: each
class column to the training class frequency times the utterance count, each row back to 1), then takes the argmax,
so that one speaker's decisions follow the class mix of the training speakers instead of the network's bias for
that voice. Transductive (all of a test speaker's utterances, no labels), like the baselines' speaker normalisation;
it assumes each speaker has the training class mix, which CASIA has by design (50 utterances per emotion and
speaker) and IEMOCAP or EmoDB do not. Nothing is retrained or reselected; the rows answer how much of a run's error
is a per-speaker shift of its class decisions.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, recall_score

from atfnn.foldsets import fold_summary

SINKHORN_ITERATIONS = 1000
SINKHORN_TOLERANCE = 1e-9
FLOOR = 1e-12  # posteriors of exactly 0 would pin a class out of the rescaling


def sinkhorn(posteriors: np.ndarray, column_totals: np.ndarray) -> np.ndarray:
    """Rows of `posteriors` (N, K) rescaled per column so that the columns sum to `column_totals` and rows to 1."""
    q = np.maximum(posteriors, FLOOR)
    q = q / q.sum(axis=1, keepdims=True)
    for _ in range(SINKHORN_ITERATIONS):
        q = q * (column_totals / q.sum(axis=0))[None, :]
        q = q / q.sum(axis=1, keepdims=True)
        if np.abs(q.sum(axis=0) - column_totals).max() < SINKHORN_TOLERANCE * len(q):
            break
    return q


def balanced_decisions(posteriors: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Class indices for the utterances of one speaker whose decisions should follow `prior` (K,)."""
    return sinkhorn(posteriors, prior / prior.sum() * len(posteriors)).argmax(axis=1)


def _read_fold(path: Path, labels: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    probs = np.array([[float(r[f"p_{label}"]) for label in labels] for r in rows])
    truth = np.array([labels.index(r["label"]) for r in rows])
    return probs, truth, [r["speaker"] for r in rows]


def score_run(run_dir: Path) -> dict:
    folds = fold_summary(run_dir)  # either layout: RUN_DIR/foldset.json or an older run's folds/
    labels = sorted(folds[0]["labels"]["train"])
    seeds = {}
    for seed_dir in sorted(run_dir.glob("seed-*")):
        truth, plain, balanced, per_fold = [], [], [], {}
        for fold in folds:
            path = seed_dir / fold["name"] / "predictions.csv"
            if not path.is_file():
                continue
            probs, y, speakers = _read_fold(path, labels)
            prior = np.array([fold["labels"]["train"][label] for label in labels], dtype=float)
            fold_balanced = np.empty_like(y)
            for speaker in sorted(set(speakers)):  # one test speaker per fold, or several (leave-one-session-out)
                rows = np.array([s == speaker for s in speakers])
                fold_balanced[rows] = balanced_decisions(probs[rows], prior)
            truth.append(y), plain.append(probs.argmax(axis=1)), balanced.append(fold_balanced)
            per_fold[fold["name"]] = {"uar": _uar(y, probs.argmax(axis=1)), "uar_balanced": _uar(y, fold_balanced)}
        if len(per_fold) != len(folds):
            continue  # an unfinished seed would not be the protocol's figure
        y, p, b = np.concatenate(truth), np.concatenate(plain), np.concatenate(balanced)
        seeds[seed_dir.name] = {"uar": _uar(y, p), "war": round(100 * accuracy_score(y, p), 2),
                                "uar_balanced": _uar(y, b), "war_balanced": round(100 * accuracy_score(y, b), 2),
                                "folds": per_fold}
    if not seeds:
        raise SystemExit(f"{run_dir}: no seed with every fold's predictions.csv")
    summary = {}
    for key in ("uar", "uar_balanced"):
        values = [s[key] for s in seeds.values()]
        summary[key] = {"mean": round(statistics.mean(values), 2),
                        "std": round(statistics.stdev(values), 2) if len(values) > 1 else None}
    return {"run": str(run_dir), "labels": labels, "seeds": seeds, **summary}


def _uar(truth: np.ndarray, pred: np.ndarray) -> float:
    return round(100 * recall_score(truth, pred, average="macro", zero_division=0), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (runs/<name> or results/<name>)")
    parser.add_argument("--json", type=Path, help="write every figure (per seed and fold) here")
    args = parser.parse_args()
    scored = [score_run(run) for run in args.runs]
    print("| Run | seeds | UAR, argmax | UAR, balanced per test speaker | change |")
    print("|---|---|---|---|---|")
    for s in scored:
        plain, balanced = s["uar"]["mean"], s["uar_balanced"]["mean"]
        print(f"| {Path(s['run']).name} | {len(s['seeds'])} | {plain:.2f} | {balanced:.2f} | {balanced - plain:+.2f} |")
    if args.json:
        args.json.write_text(json.dumps(scored, indent=2) + "\n")


if __name__ == "__main__":
    main()
