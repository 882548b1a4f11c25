"""The synthetic corpus: layout, determinism, reuse, atomicity, and that its emotions behave like emotional speech."""
from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from atfnn.corpora import synthetic
from atfnn.corpora.synthetic import SyntheticSpec
from atfnn.errors import ConfigError, CorpusError

SR = 16000
TINY = SyntheticSpec(speakers=2, utterances_per_class=2, min_seconds=0.6, max_seconds=0.8, seed=3)


def read_manifest(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def corpus_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.wav"))}


def median_f0(audio: np.ndarray) -> float:
    """Median YIN pitch over the loud frames (the voiced nuclei)."""
    import librosa

    f0 = librosa.yin(audio, fmin=60, fmax=500, sr=SR, frame_length=1024, hop_length=400)
    rms = librosa.feature.rms(y=audio, frame_length=1024, hop_length=400)[0][: len(f0)]
    return float(np.median(f0[rms > 0.3 * rms.max()]))


def hf_ratio(audio: np.ndarray, cutoff_hz: float = 2700.0) -> float:
    power = np.abs(np.fft.rfft(audio)) ** 2
    return float(power[np.fft.rfftfreq(len(audio), 1 / SR) > cutoff_hz].sum() / power.sum())


def utterances(speaker, emotion: str, count: int = 4) -> list[np.ndarray]:
    return [synthetic.synthesize_utterance(np.random.default_rng([7, i, synthetic.EMOTION_IDS[emotion]]),
                                           speaker, emotion, SR, seconds=1.5) for i in range(count)]


def test_manifest_lists_every_file_with_its_label_and_speaker(tmp_path):
    root = tmp_path / "syn"
    manifest = synthetic.generate(root, TINY)
    assert manifest == root / "manifest.csv"
    rows = read_manifest(manifest)
    assert list(rows[0]) == ["path", "label", "speaker", "gender"]
    assert len(rows) == TINY.speakers * len(TINY.emotions) * TINY.utterances_per_class
    assert {r["path"] for r in rows} == {str(p.relative_to(root).as_posix()) for p in root.rglob("*.wav")}
    assert {(r["speaker"], r["gender"]) for r in rows} == {("spk01", "M"), ("spk02", "F")}
    for r in rows:
        assert r["path"].startswith(f"{r['speaker']}/{r['label']}_")
        info = sf.info(root / r["path"])
        assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
        assert TINY.min_seconds - 0.01 <= info.duration <= TINY.max_seconds + 0.01
    for label in synthetic.LABELS:
        assert sum(r["label"] == label for r in rows) == TINY.speakers * TINY.utterances_per_class
    assert not list(tmp_path.glob(".syn.*")), "temporary folders left behind"


def test_generation_is_deterministic_by_seed(tmp_path):
    synthetic.generate(tmp_path / "a", TINY)
    synthetic.generate(tmp_path / "b", TINY)
    synthetic.generate(tmp_path / "c", replace(TINY, seed=TINY.seed + 1))
    a, b, c = (corpus_bytes(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)

    speaker = synthetic.make_speakers(TINY)[0]
    x = synthetic.synthesize_utterance(np.random.default_rng(5), speaker, "angry", SR)
    y = synthetic.synthesize_utterance(np.random.default_rng(5), speaker, "angry", SR)
    z = synthetic.synthesize_utterance(np.random.default_rng(6), speaker, "angry", SR)
    assert x.dtype == np.float32 and np.abs(x).max() <= 1.0 and np.abs(x).max() > 0.01
    np.testing.assert_array_equal(x, y)
    assert len(x) != len(z) or not np.array_equal(x, z)


def test_matching_corpus_is_reused_and_a_changed_spec_regenerates(tmp_path):
    root = tmp_path / "syn"
    synthetic.generate(root, TINY)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    synthetic.generate(root, replace(TINY, emotions=list(TINY.emotions)))  # equal, not identical
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before

    bigger = replace(TINY, utterances_per_class=3)
    rows = read_manifest(synthetic.generate(root, bigger))
    assert len(rows) == TINY.speakers * len(TINY.emotions) * 3
    assert all((root / r["path"]).is_file() for r in rows)
    assert not list(tmp_path.glob(".syn.*")), "temporary or old folders left behind"


def test_interrupted_generation_leaves_no_corpus(tmp_path, monkeypatch):
    real = synthetic.synthesize_utterance
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "synthesize_utterance", failing)
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate(tmp_path / "syn", TINY)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_a_folder_that_is_not_a_synthetic_corpus(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(CorpusError, match="not a synthetic corpus"):
        synthetic.generate(tmp_path, TINY)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_invalid_specs_are_rejected_with_the_choices():
    with pytest.raises(ConfigError, match="available: angry"):
        SyntheticSpec(emotions=("angry", "bored"))
    with pytest.raises(ConfigError, match="min_seconds"):
        SyntheticSpec(min_seconds=3.0, max_seconds=2.0)
    with pytest.raises(ConfigError, match="available"):
        synthetic.synthesize_utterance(np.random.default_rng(0), synthetic.make_speakers(TINY)[0], "bored", SR)


def test_speakers_differ_in_pitch_and_emotions_shift_it_the_right_way():
    speakers = synthetic.make_speakers(SyntheticSpec())
    mean_f0 = {(s.name, e): np.mean([median_f0(a) for a in utterances(s, e)])
               for s in speakers for e in synthetic.LABELS}
    neutral = sorted(mean_f0[s.name, "neutral"] for s in speakers)
    assert all(high / low > 1.05 for low, high in zip(neutral, neutral[1:])), neutral
    for s in speakers:
        base = mean_f0[s.name, "neutral"]
        assert 0.85 < base / s.f0_hz < 1.2, (s.name, base, s.f0_hz)
        assert mean_f0[s.name, "happy"] > base * 1.1, s.name
        assert mean_f0[s.name, "angry"] > base * 1.1, s.name
        assert mean_f0[s.name, "sad"] < base * 0.95, s.name
    males = [mean_f0[s.name, "neutral"] for s in speakers if s.gender == "M"]
    females = [mean_f0[s.name, "neutral"] for s in speakers if s.gender == "F"]
    assert max(males) < 140 < 180 < min(females)


def test_sad_has_less_high_frequency_energy_than_happy():
    for speaker in synthetic.make_speakers(SyntheticSpec()):
        sad = np.mean([hf_ratio(a) for a in utterances(speaker, "sad")])
        happy = np.mean([hf_ratio(a) for a in utterances(speaker, "happy")])
        assert sad < 0.45 * happy, (speaker.name, sad, happy)  # measured 0.19-0.30; 0.5-0.65 with equal tilt


def test_load_reads_the_manifest(tmp_path):
    with pytest.raises(CorpusError, match="generate"):
        synthetic.load(tmp_path / "missing")
    root = tmp_path / "syn"
    synthetic.generate(root, TINY)
    report = synthetic.load(root)
    assert len(report.utterances) == TINY.speakers * len(TINY.emotions) * TINY.utterances_per_class
    assert {u.label for u in report.utterances} == set(synthetic.LABELS)
    assert {(u.speaker, u.gender) for u in report.utterances} == {("spk01", "M"), ("spk02", "F")}
    assert all(Path(u.path).is_file() for u in report.utterances)


@pytest.mark.slow
def test_emotion_is_learnable_speaker_independently_but_not_trivially(tmp_path):
    """Log-Mel mean/std + logistic regression, leave one speaker out, on the default corpus."""
    import librosa
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    root = tmp_path / "syn"
    rows = read_manifest(synthetic.generate(root))
    features = []
    for r in rows:
        audio, sr = sf.read(root / r["path"], dtype="float32")
        mel = librosa.feature.melspectrogram(y=audio, sr=sr, n_fft=512, win_length=320, hop_length=160,
                                             n_mels=80, window="hamming")
        log_mel = np.log(mel + 1e-10)
        features.append(np.concatenate([log_mel.mean(axis=1), log_mel.std(axis=1)]))
    x = np.array(features)
    labels = np.array([r["label"] for r in rows])
    speakers = np.array([r["speaker"] for r in rows])
    accuracies = []
    for held_out in sorted(set(speakers)):
        train = speakers != held_out
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[train], labels[train])
        accuracies.append(float(np.mean(model.predict(x[~train]) == labels[~train])))
    assert np.mean(accuracies) > 0.45, accuracies
    assert min(accuracies) < 1.0 and np.mean(accuracies) < 0.95, accuracies
