"""atfnn.load / Predictor on a tiny random-init model saved with save_model (the predict command: test_cli.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

import atfnn
from conftest import speechlike, tiny_model_dir
from atfnn.audio import features as audio_features
from atfnn.audio import segment_starts
from atfnn.checkpoint import save_model
from atfnn.config import FrontEndConfig, ModelConfig
from atfnn.corpora.base import Utterance
from atfnn.errors import ATFNNError
from atfnn.features import build_segments, prepare
from atfnn.inference import Failure, Prediction
from atfnn.model import build_model

LABELS = ["angry", "happy", "neutral", "sad"]
SR = 16000


def make_model_dir(root: Path, norm: str = "none", variant: str = "atfnn", seed: int = 0) -> Path:
    return tiny_model_dir(root / f"model-{variant}-{norm}", LABELS, FrontEndConfig(norm=norm), variant, seed,
                          {"note": "test"})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def wav3(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "three.wav"
    sf.write(path, speechlike(3.0), SR)
    return path


def manual_probs(model_dir: Path, segments: torch.Tensor) -> np.ndarray:
    model, _ = atfnn.checkpoint.load_model(model_dir)
    with torch.no_grad():
        return torch.softmax(model(segments), dim=1).mean(dim=0).numpy()


def test_predict_round_trip_matches_a_manual_forward(model_dir, predictor, wav3):
    result = predictor.predict(wav3)
    assert result.label in LABELS and list(result.probs) == LABELS
    assert sum(result.probs.values()) == pytest.approx(1.0, abs=1e-6)
    assert result.label == max(result.probs, key=result.probs.get)
    assert result.path == str(wav3) and result.duration == pytest.approx(3.0)
    expected = manual_probs(model_dir, audio_features(wav3, FrontEndConfig()))
    np.testing.assert_allclose(list(result.probs.values()), expected, atol=1e-5)
    # The utterance decision is the mean of the segment posteriors.
    seg = np.array([list(s.probs.values()) for s in result.timeline])
    np.testing.assert_allclose(seg.mean(axis=0), list(result.probs.values()), atol=1e-9)


def test_public_api_is_reexported():
    for name in ("load", "Predictor", "Prediction", "Segment", "Failure", "ATFNN", "build_model", "load_audio",
                 "log_mel_spectrogram", "__version__"):
        assert hasattr(atfnn, name), name


def test_long_file_timeline_covers_it_exactly(tmp_path, predictor):
    path = tmp_path / "long.flac"
    sf.write(path, speechlike(60.0), SR)
    result = predictor.predict(path)
    timeline = result.timeline
    fe = predictor.frontend
    assert len(timeline) == len(segment_starts(1 + 60 * SR // fe.hop_length, fe.segment_frames, fe.segment_hop))
    assert timeline[0].start == 0.0
    assert timeline[-1].end == 60.0
    seconds = fe.segment_frames * fe.hop_length / SR
    for prev, cur in zip(timeline, timeline[1:]):
        assert prev.start < cur.start <= prev.end  # increasing, contiguous or overlapping: no gap
        assert cur.end - cur.start <= seconds + 1e-9
    # Regular segments start every segment_hop frames (0.64 s by default) and last 1.28 s.
    assert timeline[1].start == pytest.approx(fe.segment_hop * fe.hop_length / SR)
    assert timeline[0].end == pytest.approx(seconds)


def test_short_file_is_one_segment_of_its_duration(tmp_path, predictor):
    path = tmp_path / "short.wav"
    sf.write(path, speechlike(0.5), SR)
    result = predictor.predict(path)
    assert [(s.start, s.end) for s in result.timeline] == [(0.0, 0.5)]


def test_any_sample_rate_and_channel_count(tmp_path, predictor):
    stereo = speechlike(2.5, rate=44100, channels=2)
    path = tmp_path / "stereo44k.wav"
    sf.write(path, stereo, 44100)
    from_file = predictor.predict(path)
    from_array = predictor.predict(stereo, sample_rate=44100)
    channels_first = predictor.predict(torch.from_numpy(stereo.T.copy()), sample_rate=44100)
    assert from_array.path is None and from_array.duration == pytest.approx(2.5)
    for other in (from_array, channels_first):
        np.testing.assert_allclose(list(other.probs.values()), list(from_file.probs.values()), atol=1e-4)
    # Same as downmixing and resampling by hand to the model's rate.
    mono16k = soxr.resample(stereo.mean(axis=1), 44100, SR, quality="HQ")
    by_hand = predictor.predict(mono16k, sample_rate=SR)
    np.testing.assert_allclose(list(by_hand.probs.values()), list(from_file.probs.values()), atol=1e-4)


def test_array_needs_its_sample_rate_and_a_file_does_not(predictor, wav3):
    with pytest.raises(ValueError, match="sample_rate"):
        predictor.predict(speechlike(1.0))
    with pytest.raises(ValueError, match="arrays only"):
        predictor.predict(wav3, sample_rate=16000)


@pytest.mark.parametrize("norm", ["utterance", "speaker"])
def test_normalised_features_equal_the_training_ones_for_one_file(tmp_path, wav3, norm):
    """A prediction's segments equal atfnn.features' for the same file; "speaker" falls back to the file itself."""
    predictor = atfnn.load(make_model_dir(tmp_path, norm=norm), device="cpu")
    fe = predictor.frontend
    store = prepare([Utterance(wav3, "happy", "s1")], fe, tmp_path / "cache", progress=False)
    training = build_segments(store, [Utterance(wav3, "happy", "s1")], fe)
    got = predictor.features(wav3).segments
    assert torch.equal(got, training.x)
    assert got.mean(dim=(0, 2)).abs().max() < 0.5  # normalised, not raw log-Mel (around -5)
    raw = atfnn.load(make_model_dir(tmp_path, norm="none"), device="cpu").features(wav3).segments
    assert not torch.allclose(got, raw)


def test_predict_many_batches_across_files_and_reports_failures(tmp_path, predictor):
    paths = []
    for i, seconds in enumerate([1.0, 3.0, 0.7, 2.2]):
        paths.append(tmp_path / f"ok{i}.wav")
        sf.write(paths[-1], speechlike(seconds, seed=i), SR)
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF not really a wave file" * 10)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(SR, dtype=np.float32), SR)
    order = [paths[0], bad, paths[1], silent, paths[2], tmp_path / "missing.wav", paths[3]]
    results = predictor.predict_many(order, batch_size=3)  # batches of 3 segments straddle files
    assert [type(r).__name__ for r in results] == ["Prediction", "Failure"] * 3 + ["Prediction"]
    assert [r.path for r in results] == [str(p) for p in order]
    assert "decoded" in results[1].reason and "silence" in results[3].reason and "not found" in results[5].reason
    for result, path in zip([results[0], results[2], results[4], results[6]], paths):
        alone = predictor.predict(path)
        np.testing.assert_allclose(list(result.probs.values()), list(alone.probs.values()), atol=1e-5)
        assert [(s.start, s.end) for s in result.timeline] == [(s.start, s.end) for s in alone.timeline]


def test_load_rejects_a_wrong_backend(model_dir, tmp_path):
    with pytest.raises(ATFNNError, match="Unknown backend"):
        atfnn.load(model_dir, backend="tflite")
    fake = tmp_path / "m.onnx"
    fake.write_bytes(b"x")
    with pytest.raises(ATFNNError, match="backend='onnx'"):
        atfnn.load(fake, backend="torch")


def test_result_types():
    assert Failure("a.wav", "why").to_dict() == {"path": "a.wav", "error": "why"}
    p = Prediction("sad", {"happy": 0.25, "sad": 0.75}, [], "x.wav", 1.0)
    assert p.confidence == 0.75 and "timeline" not in p.to_dict(timeline=False)


# ----------------------------------------------------------------------------------------------------- one front end
def save_with(root: Path, frontend: FrontEndConfig, stats=None, name: str = "m") -> Path:
    torch.manual_seed(0)
    model = build_model(ModelConfig(lstm_hidden=16, lstm_layers=1), len(LABELS))
    return save_model(model, LABELS, frontend, root / name, {"note": "test"}, norm_stats=stats)


FRONT_ENDS = {
    "paper": {},
    "utterance": {"norm": "utterance"},
    "global": {"norm": "global"},
    "silence": {"trim_db": 50.0, "floor_db": 80.0, "norm": "utterance"},
    "htk-repeat": {"mel_scale": "htk", "pad_short": "repeat", "train_segment_hop": 16},
}


@pytest.mark.parametrize("name", FRONT_ENDS)
def test_predict_computes_the_segments_training_uses_for_the_same_file(tmp_path, name):
    """Bit for bit: the cache + build_segments (+ a fold's global statistics) against predict's front end."""
    from atfnn.frontend import apply_stats, fit_global_stats

    fe = FrontEndConfig(**FRONT_ENDS[name])
    files = {}
    for i, seconds in enumerate([3.0, 0.9, 2.0]):  # 0.9 s is shorter than one segment: padded
        files[f"f{i}"] = tmp_path / f"f{i}.wav"
        wave = np.concatenate([np.zeros(4000, np.float32), speechlike(seconds, seed=i), np.zeros(2000, np.float32)])
        sf.write(files[f"f{i}"], wave, SR)
    utts = [Utterance(p, "happy", "s1") for p in files.values()]
    store = prepare(utts, fe, tmp_path / "cache", progress=False)
    stats = fit_global_stats(store, [utts[2].uid]) if fe.norm == "global" else None
    predictor = atfnn.load(save_with(tmp_path, fe, stats), device="cpu")
    for utt in utts[:2]:
        training = build_segments(store, [utt], fe)  # evaluation segments, normalised as the fold would
        apply_stats(training.x, stats)
        got = predictor.features(utt.path)
        assert torch.equal(got.segments, training.x), name
        assert torch.equal(got.logmel, torch.from_numpy(store.logmel(utt.uid).copy()))
    if fe.trim_db:
        assert got.first_frame > 0 and predictor.predict(utt.path).timeline[0].start == got.first_frame * 0.01


def test_a_global_model_carries_its_statistics_and_needs_them(tmp_path, wav3):
    from atfnn.checkpoint import read_card
    from atfnn.frontend import NormStats

    stats = NormStats(np.full((80, 1), -5.0, np.float32), np.full((80, 1), 2.0, np.float32), 1000)
    card = read_card(save_with(tmp_path, FrontEndConfig(norm="global"), stats, "with"))
    assert np.array_equal(card.norm_stats.mean, stats.mean) and card.norm_stats.n_frames == 1000
    raw = atfnn.load(save_with(tmp_path, FrontEndConfig(), name="raw"), device="cpu").features(wav3).segments
    got = atfnn.load(save_with(tmp_path, FrontEndConfig(norm="global"), stats, "with"), device="cpu").features(wav3)
    torch.testing.assert_close(got.segments, (raw + 5) / 2)
    # Saving refuses a global model without them; a model.json that lost them is an error at prediction.
    stripped = save_with(tmp_path, FrontEndConfig(norm="global"), stats, "without")
    meta = json.loads((stripped / "model.json").read_text())
    del meta["norm_stats"]
    (stripped / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ATFNNError, match="norm=global needs the training statistics"):
        atfnn.load(stripped, device="cpu").predict(wav3)
    assert read_card(save_with(tmp_path, FrontEndConfig(), name="plain")).norm_stats is None


def test_onnx_export_carries_the_global_statistics(tmp_path, wav3):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from atfnn.export import export_onnx
    from atfnn.frontend import NormStats

    rng = np.random.default_rng(0)
    stats = NormStats(rng.normal(-5, 1, (80, 1)).astype(np.float32), rng.uniform(1, 3, (80, 1)).astype(np.float32), 9)
    model_dir = save_with(tmp_path, FrontEndConfig(norm="global"), stats)
    onnx_path = export_onnx(model_dir, tmp_path / "m.onnx")
    onnx_predictor = atfnn.load(onnx_path, device="cpu")
    assert np.array_equal(onnx_predictor.card.norm_stats.std, stats.std)
    torch_result = atfnn.load(model_dir, device="cpu").predict(wav3)
    onnx_result = onnx_predictor.predict(wav3)
    np.testing.assert_allclose(list(onnx_result.probs.values()), list(torch_result.probs.values()), atol=1e-5)
