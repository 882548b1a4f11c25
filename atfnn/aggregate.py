"""From segment posteriors to utterance scores: the model sees fixed-length segments, the metrics see utterances."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from atfnn.errors import ConfigError

METHODS = ("mean", "vote", "max")
# Weight of the mean posterior in "vote" scores: breaks vote ties without reordering different vote counts
# (any weight <= 1 keeps the order), and small enough that the scores stay within 1e-3 of the vote fractions.
VOTE_TIE_WEIGHT = 1e-3


def aggregate(
    segment_probs: np.ndarray, segment_utt: Sequence[str], method: str = "mean"
) -> tuple[list[str], np.ndarray]:
    """Utterance uids (in order of first appearance) and their scores (n_utts, n_classes); each row sums to 1.

    "mean": mean of the segment posteriors. "vote": fraction of segments whose argmax is each class; a tie is
    broken by the summed posteriors (a weight of VOTE_TIE_WEIGHT is mixed in, so argmax gives the tie-broken
    winner). "max": per-class maximum posterior over the segments, renormalised.
    """
    if method not in METHODS:
        raise ConfigError(f"Unknown aggregation method '{method}'; available: {', '.join(METHODS)}")
    probs = _check_probs(segment_probs, segment_utt)
    uids, index = _utterance_index(segment_utt)
    n_utts, n_classes = len(uids), probs.shape[1]
    counts = np.bincount(index, minlength=n_utts).astype(float)[:, None]  # (U, 1)
    mean = np.zeros((n_utts, n_classes))
    np.add.at(mean, index, probs)
    mean /= counts
    if method == "mean":
        return uids, mean
    if method == "vote":
        votes = np.zeros((n_utts, n_classes))
        np.add.at(votes, (index, probs.argmax(axis=1)), 1.0)
        # Rows sum to (n + w) / (n + w) = 1 since the votes sum to n and the mean posterior to 1.
        return uids, (votes + VOTE_TIE_WEIGHT * mean) / (counts + VOTE_TIE_WEIGHT)
    peak = np.zeros((n_utts, n_classes))
    np.maximum.at(peak, index, probs)
    totals = peak.sum(axis=1, keepdims=True)
    return uids, np.divide(peak, totals, out=np.zeros_like(peak), where=totals > 0)


def _check_probs(segment_probs: np.ndarray, segment_utt: Sequence[str]) -> np.ndarray:
    probs = np.asarray(segment_probs, dtype=float)
    if probs.ndim != 2:
        raise ValueError(f"segment_probs must be (n_segments, n_classes), got shape {probs.shape}")
    if len(segment_utt) != probs.shape[0]:
        raise ValueError(f"{probs.shape[0]} segment rows but {len(segment_utt)} segment uids; pass one uid per segment")
    if not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise ValueError("segment_probs must be finite, non-negative posteriors (apply softmax to logits first)")
    return probs


def _utterance_index(segment_utt: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Uids in order of first appearance, and each segment's row in that order."""
    if len(segment_utt) == 0:
        return [], np.zeros(0, dtype=int)
    unique, first, inverse = np.unique(np.asarray(segment_utt, dtype=str), return_index=True, return_inverse=True)
    order = np.argsort(first)  # sorted-unique position -> appearance rank
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return [str(u) for u in unique[order]], rank[inverse.reshape(-1)]
