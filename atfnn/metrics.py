"""Evaluation metrics of speech emotion recognition: WAR (accuracy) and UAR (mean per-class recall), in percent.

Labels are strings. Values are not rounded here; round only when presenting them.
Conventions:
- UAR averages the recall of the classes that occur in y_true: a class absent from the test utterances has no
  recall (0/0) and is left out of the mean rather than counted as 0 (which would punish a fold for its data).
- Fold spread is the population standard deviation (ddof=0): the folds are all the folds, not a sample of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, recall_score

PERCENT = 100.0


@dataclass
class Scores:
    """WAR and UAR in percent, the number of scored utterances, and the confusion counts (rows: true labels)."""

    war: float
    uar: float
    n: int
    confusion: np.ndarray


def war(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    """Weighted average recall, i.e. accuracy, in percent."""
    _check_pair(y_true, y_pred)
    return float(accuracy_score(list(y_true), list(y_pred)) * PERCENT)


def uar(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted average recall in percent: the mean recall over the `labels` present in `y_true`."""
    _check_pair(y_true, y_pred, labels)
    seen = set(y_true)
    present = [label for label in labels if label in seen]
    recall = recall_score(list(y_true), list(y_pred), labels=present, average="macro", zero_division=0)
    return float(recall * PERCENT)


def confusion(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Counts (n_labels, n_labels): row = true label, column = predicted label, in the order of `labels`."""
    _check_pair(y_true, y_pred, labels)
    return confusion_matrix(list(y_true), list(y_pred), labels=list(labels))


def row_normalise(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (per-class recall on the diagonal); an all-zero row stays zero."""
    cm = np.asarray(cm, dtype=float)
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)


def score(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> Scores:
    """WAR, UAR, count and confusion counts of one set of predictions."""
    return Scores(
        war=war(y_true, y_pred),
        uar=uar(y_true, y_pred, labels),
        n=len(y_true),
        confusion=confusion(y_true, y_pred, labels),
    )


def summarise(per_fold: Sequence[tuple[str, Sequence[str], Sequence[str]]], labels: Sequence[str]) -> dict:
    """Cross-validation summary from (fold name, y_true, y_pred) triples.

    "war"/"uar" pool every test utterance of every fold (the headline numbers); "war_mean", "war_std", "uar_mean",
    "uar_std" are over folds (population std); "folds" lists each fold, "confusion" holds the pooled counts.
    """
    if not per_fold:
        raise ValueError("summarise needs at least one fold of predictions")
    folds = [{"test": name, **_fold_scores(name, t, p, labels)} for name, t, p in per_fold]
    all_true = [y for _, t, _ in per_fold for y in t]
    all_pred = [y for _, _, p in per_fold for y in p]
    pooled = score(all_true, all_pred, labels)
    wars = np.array([f["war"] for f in folds])
    uars = np.array([f["uar"] for f in folds])
    return {
        "war": pooled.war,
        "uar": pooled.uar,
        "war_mean": float(wars.mean()),
        "war_std": float(wars.std(ddof=0)),
        "uar_mean": float(uars.mean()),
        "uar_std": float(uars.std(ddof=0)),
        "folds": folds,
        "confusion": pooled.confusion.tolist(),
        "labels": list(labels),
    }


def _fold_scores(name: str, y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict:
    try:
        return {"war": war(y_true, y_pred), "uar": uar(y_true, y_pred, labels), "n": len(y_true)}
    except ValueError as e:
        raise ValueError(f"fold '{name}': {e}") from e


def _check_pair(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None) -> None:
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions; score matching pairs")
    if len(y_true) == 0:
        raise ValueError("no predictions to score")
    if labels is not None:
        # A label outside the set would silently vanish from the confusion matrix and the UAR.
        unknown = sorted(set(y_true).union(y_pred).difference(labels))
        if unknown:
            raise ValueError(f"labels {unknown} are not among the known labels {list(labels)}")
