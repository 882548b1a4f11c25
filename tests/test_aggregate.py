"""Segment posteriors to utterance scores, for each method, on hand-made cases."""
from __future__ import annotations

import numpy as np
import pytest

from atfnn.aggregate import aggregate
from atfnn.errors import ConfigError

# Utterance "u2" comes first, "u1" second: output follows first appearance, not sorted order.
PROBS = np.array(
    [
        [0.6, 0.3, 0.1],  # u2
        [0.2, 0.7, 0.1],  # u1
        [0.5, 0.4, 0.1],  # u2
        [0.1, 0.2, 0.7],  # u2
        [0.3, 0.6, 0.1],  # u1
    ]
)
UTTS = ["u2", "u1", "u2", "u2", "u1"]


def test_mean_of_posteriors_in_first_appearance_order():
    uids, scores = aggregate(PROBS, UTTS, "mean")
    assert uids == ["u2", "u1"]
    np.testing.assert_allclose(scores, [[0.4, 0.3, 0.3], [0.25, 0.65, 0.1]])


def test_mean_is_the_default():
    np.testing.assert_allclose(aggregate(PROBS, UTTS)[1], aggregate(PROBS, UTTS, "mean")[1])


def test_vote_fractions():
    uids, scores = aggregate(PROBS, UTTS, "vote")
    assert uids == ["u2", "u1"]
    np.testing.assert_allclose(scores, [[2 / 3, 0, 1 / 3], [0, 1, 0]], atol=1e-3)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0)
    assert scores.argmax(axis=1).tolist() == [0, 1]


def test_vote_tie_is_broken_by_summed_posteriors():
    # One vote each for class 0 and class 1; class 1 has the larger summed posterior (0.45+0.9 > 0.55+0.1).
    probs = np.array([[0.55, 0.45, 0.0], [0.1, 0.9, 0.0]])
    _, scores = aggregate(probs, ["u", "u"], "vote")
    np.testing.assert_allclose(scores, [[0.5, 0.5, 0.0]], atol=1e-3)
    assert scores[0, 1] > scores[0, 0]
    assert scores.argmax(axis=1).tolist() == [1]


def test_vote_tie_break_never_overturns_a_majority():
    # Two weak votes for class 0 beat one confident vote for class 1 despite a larger class-1 posterior sum.
    probs = np.array([[0.34, 0.33, 0.33], [0.34, 0.33, 0.33], [0.0, 1.0, 0.0]])
    _, scores = aggregate(probs, ["u"] * 3, "vote")
    assert scores.argmax(axis=1).tolist() == [0]


def test_max_renormalised():
    uids, scores = aggregate(PROBS, UTTS, "max")
    assert uids == ["u2", "u1"]
    np.testing.assert_allclose(scores, [np.array([0.6, 0.4, 0.7]) / 1.7, np.array([0.3, 0.7, 0.1]) / 1.1])


def test_unknown_method_lists_the_methods():
    with pytest.raises(ConfigError, match="mean, vote, max"):
        aggregate(PROBS, UTTS, "median")


def test_shape_mismatch_and_negative_values_are_rejected():
    with pytest.raises(ValueError, match="one uid per segment"):
        aggregate(PROBS, UTTS[:-1])
    with pytest.raises(ValueError, match="softmax"):
        aggregate(-PROBS, UTTS)


def test_many_segments_match_a_loop():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=500)
    utts = [f"u{i}" for i in rng.integers(0, 40, size=500)]
    uids, scores = aggregate(probs, utts, "mean")
    assert uids == list(dict.fromkeys(utts))
    for row, uid in zip(scores, uids):
        mask = np.array(utts) == uid
        np.testing.assert_allclose(row, probs[mask].mean(axis=0))
