"""scripts/balanced_decisions.py: per-speaker decisions that follow the training class mix."""
import numpy as np
from conftest import load_script


def test_balanced_decisions_split_a_speaker_that_argmax_puts_in_one_class():
    script = load_script("scripts/balanced_decisions.py")
    # Argmax calls all four utterances class 0. With a 50/50 prior the two most class-0-like (posterior ratios 9
    # and 4) stay class 0 and the other two (2.33 and 1.5) become class 1.
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    assert probs.argmax(axis=1).tolist() == [0, 0, 0, 0]
    assert script.balanced_decisions(probs, np.array([1.0, 1.0])).tolist() == [0, 0, 1, 1]


def test_balanced_decisions_undo_a_speaker_bias_towards_one_class():
    script = load_script("scripts/balanced_decisions.py")
    rng = np.random.default_rng(1)
    truth = np.repeat(np.arange(6), 100)
    logits = rng.normal(size=(600, 6)) + 2.0 * np.eye(6)[truth]
    logits[:, 4] += 2.5  # this voice sounds "sad" to the network
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    plain, balanced = probs.argmax(axis=1), script.balanced_decisions(probs, np.ones(6))
    assert np.bincount(plain, minlength=6)[4] > 250
    assert np.abs(np.bincount(balanced, minlength=6) - 100).max() < 25
    assert (balanced == truth).mean() > (plain == truth).mean() + 0.1


def test_sinkhorn_meets_both_margins_and_keeps_zero_posteriors_usable():
    script = load_script("scripts/balanced_decisions.py")
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(6) * 0.3, size=300)
    probs[0] = [1, 0, 0, 0, 0, 0]
    q = script.sinkhorn(probs, np.full(6, 50.0))
    np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(q.sum(axis=0), 50.0, atol=1e-5)
