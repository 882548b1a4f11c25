"""scripts/speaker_probe.py: the linear speaker probe finds what is there and nothing that is not."""
import numpy as np
from conftest import load_script


def test_probe_reads_a_speaker_code_and_is_at_chance_without_one():
    probe = load_script("scripts/speaker_probe.py")
    rng = np.random.default_rng(0)
    utterances, per_utt = 60, 3
    # Segments interleaved (utterance 0, 1, ..., 59, 0, 1, ...), as shuffled training data would be.
    groups = np.tile(np.arange(utterances), per_utt)
    speakers = groups % 3
    coded = rng.normal(size=(len(groups), 8))
    coded[:, 0] += 4.0 * speakers
    assert probe.probe_accuracy(coded, speakers, groups) > 95
    # Each utterance has its own random vector and no speaker code: a probe that let an utterance's segments
    # straddle its folds could memorise them; grouped by utterance it must stay near chance (33 %).
    per_utterance = rng.normal(size=(utterances, 40))[groups]
    per_utterance += 0.01 * rng.normal(size=per_utterance.shape)
    assert probe.probe_accuracy(per_utterance, speakers, groups) < 55
