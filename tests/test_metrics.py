"""WAR, UAR, confusion counts and the cross-validation summary on hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest

from atfnn.metrics import Scores, confusion, row_normalise, score, summarise, uar, war

LABELS = ["a", "b", "c"]


def test_war_and_uar_hand_computed():
    y_true, y_pred = ["a", "a", "a", "b"], ["a", "a", "b", "b"]
    assert war(y_true, y_pred) == pytest.approx(75.0)
    assert uar(y_true, y_pred, ["a", "b"]) == pytest.approx((2 / 3 + 1) / 2 * 100)


def test_uar_leaves_out_a_class_absent_from_y_true():
    # "c" is a known label but no test utterance has it: the mean is over a and b only, not (2/3 + 1 + 0) / 3.
    assert uar(["a", "a", "a", "b"], ["a", "a", "c", "b"], LABELS) == pytest.approx((2 / 3 + 1) / 2 * 100)


def test_confusion_counts_rows_true_columns_predicted():
    cm = confusion(["a", "a", "a", "b"], ["a", "a", "b", "b"], LABELS)
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 1, 0], [0, 0, 0]])


def test_row_normalise_keeps_zero_rows_zero():
    out = row_normalise(np.array([[2, 1, 1], [0, 0, 0], [0, 3, 1]]))
    np.testing.assert_allclose(out, [[0.5, 0.25, 0.25], [0, 0, 0], [0, 0.75, 0.25]])


def test_score_bundles_everything():
    s = score(["a", "b", "b", "c"], ["a", "b", "c", "c"], LABELS)
    assert isinstance(s, Scores)
    assert s.n == 4
    assert s.war == pytest.approx(75.0)
    assert s.uar == pytest.approx((1 + 0.5 + 1) / 3 * 100)
    assert s.confusion.sum() == 4


def test_unknown_label_and_length_mismatch_are_rejected():
    with pytest.raises(ValueError, match="'z'"):
        uar(["a", "z"], ["a", "a"], LABELS)
    with pytest.raises(ValueError, match="predictions"):
        war(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        war([], [])


def test_summarise_pooled_differs_from_mean_over_folds():
    per_fold = [
        ("s1", ["a", "a", "a", "b"], ["a", "a", "b", "b"]),  # WAR 75, UAR 83.33
        ("s2", ["b", "b"], ["a", "a"]),  # WAR 0, UAR 0
    ]
    out = summarise(per_fold, ["a", "b"])
    # Pooled: 3 of 6 right; recall a = 2/3, recall b = 1/3.
    assert out["war"] == pytest.approx(50.0)
    assert out["uar"] == pytest.approx((2 / 3 + 1 / 3) / 2 * 100)
    assert out["war_mean"] == pytest.approx(37.5)
    assert out["war_std"] == pytest.approx(37.5)  # population std of (75, 0)
    assert out["uar_mean"] == pytest.approx((2 / 3 + 1) / 2 * 100 / 2)
    assert out["uar_std"] == pytest.approx((2 / 3 + 1) / 2 * 100 / 2)
    assert [f["test"] for f in out["folds"]] == ["s1", "s2"]
    assert [f["n"] for f in out["folds"]] == [4, 2]
    assert out["folds"][0]["uar"] == pytest.approx(83.3333, abs=1e-3)
    assert out["confusion"] == [[2, 1], [2, 1]]
    assert out["labels"] == ["a", "b"]


def test_summarise_names_the_bad_fold():
    with pytest.raises(ValueError, match="fold 's2'"):
        summarise([("s1", ["a"], ["a"]), ("s2", ["a", "b"], ["a"])], ["a", "b"])
