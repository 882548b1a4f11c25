"""Attention maps (Fig. 6) of one file and F-Attention profiles of a corpus, with tiny random-init models."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

import atfnn
from atfnn.checkpoint import save_model
from atfnn.config import FrontEndConfig, ModelConfig
from atfnn.corpora.base import Utterance
from atfnn.errors import ATFNNError
from atfnn.explain import (
    DPI, FIGSIZE, HIGH_BAND, PANELS, CorpusProfile, attention_maps, band_frequency, explain, explain_corpus_main,
    plot_explanation, select_per_class, stitch,
)

LABELS = ["happy", "sad"]
SR = 16000


def tone(seconds: float, f0: float = 150.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    wave = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 10)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return (0.1 * wave + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


def model_dir(root: Path, variant: str = "atfnn") -> Path:
    torch.manual_seed(0)
    model = atfnn.build_model(ModelConfig(variant=variant, lstm_hidden=16, lstm_layers=1), len(LABELS))
    return save_model(model, LABELS, FrontEndConfig(), root / variant)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {v: model_dir(root, v) for v in ("atfnn", "tfnn", "atnn")}


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    sf.write(path, tone(3.0), SR)
    return path


def panels(fig) -> dict:
    return {ax.get_label(): ax for ax in fig.axes if ax.get_label() in PANELS}


def dashed_at(ax, y: float) -> bool:
    return any(
        line.get_linestyle() == "--" and np.allclose(line.get_ydata(), y) and line.get_color() in ("black", "k")
        for line in ax.get_lines()
    )


def test_stitch_averages_overlaps_and_crops_padding():
    maps = np.stack([np.full((2, 4), 1.0), np.full((2, 4), 3.0), np.full((2, 4), 5.0)])
    out = stitch(maps, [0, 2, 3], n_frames=7)
    np.testing.assert_allclose(out[0], [1, 1, 2, 3, 4, 4, 5])  # frame 3: (1 + 3 + 5) / 3
    assert stitch(maps[:1], [0], n_frames=3).shape == (2, 3)  # a padded short file keeps its own frames
    with pytest.raises(ValueError, match="cover"):
        stitch(maps[:1], [0], n_frames=6)


def test_attention_maps_cover_the_file_and_match_the_segments(models, wav):
    predictor = atfnn.load(models["atfnn"], device="cpu")
    explanation = attention_maps(predictor, wav)
    feats = predictor.features(wav)
    n_frames = 1 + 3 * SR // 160
    assert explanation.logmel.shape == (80, n_frames) and set(explanation.maps) == {"f", "t"}
    for key in ("f", "t"):
        assert explanation.maps[key].shape == (80, n_frames)
    # Frames only the first segment covers equal that segment's map; the prediction equals predict()'s.
    with torch.no_grad():
        _, maps = predictor.model.forward_with_attention(feats.segments)
    np.testing.assert_allclose(explanation.maps["f"][:, :feats.starts[1]], maps["f"][0, :, :feats.starts[1]], atol=1e-6)
    assert explanation.prediction.probs == pytest.approx(predictor.predict(wav).probs, abs=1e-6)


def test_figure_has_three_panels_over_the_file(models, wav):
    fig = plot_explanation(attention_maps(atfnn.load(models["atfnn"], device="cpu"), wav))
    axes = panels(fig)
    assert list(axes) == list(PANELS)
    n_frames = 1 + 3 * SR // 160
    for ax in axes.values():
        assert ax.get_ylim() == (0, 80) and ax.get_xlim() == (0, n_frames)
        assert dashed_at(ax, HIGH_BAND)
        image = ax.get_images()[0]
        assert image.get_array().shape == (80, n_frames) and image.origin == "lower"
    label = fig.get_suptitle()
    assert "speech.wav" in label and any(x in label for x in LABELS) and "p = " in label


@pytest.mark.parametrize("variant,missing", [("tfnn", {"f_attention", "t_attention"}), ("atnn", {"f_attention"})])
def test_panels_missing_from_a_variant_say_so(models, wav, variant, missing):
    fig = plot_explanation(attention_maps(atfnn.load(models[variant], device="cpu"), wav))
    for name, ax in panels(fig).items():
        texts = " ".join(t.get_text() for t in ax.texts)
        assert ("not in this variant" in texts) == (name in missing)
        assert bool(ax.get_images()) == (name not in missing)
        assert dashed_at(ax, HIGH_BAND)


def test_explain_writes_a_png_of_the_figure_size(models, wav, tmp_path):
    path, explanation = explain(models["atfnn"], wav, tmp_path / "fig" / "out.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert (width, height) == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))
    assert explanation.prediction.label in LABELS


def test_explain_rejects_an_onnx_predictor(models, wav):
    predictor = atfnn.load(models["atfnn"], device="cpu")
    predictor.model = None  # what an ONNX-backed Predictor has
    with pytest.raises(ATFNNError, match="PyTorch model"):
        attention_maps(predictor, wav)


def test_band_50_is_about_2_5_khz():
    assert 2300 < band_frequency(FrontEndConfig()) < 2800


def test_select_per_class_takes_speakers_in_turn():
    utts = [Utterance(Path(f"{s}{i}.wav"), label, s) for label in LABELS for s in ("a", "b") for i in range(3)]
    chosen = select_per_class(utts, 3)
    assert [u.path.name for u in chosen] == ["a0.wav", "b0.wav", "a1.wav"] * 2
    assert [u.label for u in chosen] == ["happy"] * 3 + ["sad"] * 3
    assert select_per_class(utts, None) == utts


def test_ratio_is_the_mean_weight_from_band_50_up_over_the_mean_below():
    step = np.array([1.0] * 50 + [3.0] * 30)  # bands 0-49 weigh 1, bands 50-79 weigh 3
    ramp = np.arange(80.0)  # mean of 50..79 is 64.5, of 0..49 is 24.5
    profile = CorpusProfile({"happy": step, "sad": ramp[::-1].copy()}, {"happy": 1, "sad": 1})
    ratios = profile.ratios()
    assert ratios["happy"] == pytest.approx(3.0)
    assert ratios["sad"] == pytest.approx(14.5 / 54.5)  # reversed ramp: 29..0 above, 79..30 below
    assert CorpusProfile({"x": ramp}, {"x": 1}).ratios()["x"] == pytest.approx(64.5 / 24.5)


def test_explain_corpus_writes_profiles_and_ratios(models, tmp_path, capsys):
    rows = ["path,label,speaker"]
    for i in range(3):
        for label, f0 in (("happy", 260.0), ("sad", 110.0)):
            name = f"{label}{i}.wav"
            sf.write(tmp_path / name, tone(1.5 + 0.3 * i, f0, seed=i), SR)
            rows.append(f"{name},{label},s{i % 2}")
    (tmp_path / "silent.wav").write_bytes(b"")
    rows.append("silent.wav,sad,s0")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({"corpus": {"name": "manifest", "root": str(tmp_path / "manifest.csv")}}))

    out = tmp_path / "out"
    assert explain_corpus_main(str(models["atfnn"]), str(config), str(out), limit_per_class=2) == 0
    profiles = json.loads((out / "profiles.json").read_text())
    assert set(profiles) == {"happy", "sad"} and all(len(v) == 80 for v in profiles.values())
    summary = json.loads((out / "ratios.json").read_text())
    assert summary["counts"] == {"happy": 2, "sad": 2}
    # limit 2 takes speakers in turn: utterances 0 (s0) and 1 (s1) of each emotion. Each one's profile is its
    # F-Attention map averaged over frames; an emotion's profile is the mean of its two.
    predictor = atfnn.load(models["atfnn"], device="cpu")
    for label, values in profiles.items():
        per_file = [attention_maps(predictor, tmp_path / f"{label}{i}.wav").maps["f"].mean(axis=1) for i in (0, 1)]
        np.testing.assert_allclose(values, (per_file[0] + per_file[1]) / 2, atol=2e-6)
        above, below = sum(values[50:80]) / 30, sum(values[0:50]) / 50
        assert summary["ratio_above_below"][label] == pytest.approx(above / below, rel=1e-4)
    assert summary["happy_gt_sad"] == (summary["ratio_above_below"]["happy"] > summary["ratio_above_below"]["sad"])
    assert (out / "profiles.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr()
    assert f"happy > sad: {'yes' if summary['happy_gt_sad'] else 'no'}" in printed.out
    for label, ratio in summary["ratio_above_below"].items():
        assert f"{label:<12}{2:>6}{ratio:>26.4f}" in printed.out
    assert "silent.wav" in printed.err  # the empty file is reported, not fatal

    one = tmp_path / "one"
    assert explain_corpus_main(str(models["atfnn"]), str(config), str(one), speakers=["s1"]) == 0
    assert json.loads((one / "ratios.json").read_text())["counts"] == {"happy": 1, "sad": 1}  # i = 1 only
    assert explain_corpus_main(str(models["atfnn"]), str(config), str(one), speakers=["nobody"]) == 2
    assert "no utterance of speaker(s) ['nobody']" in capsys.readouterr().err


def test_explain_corpus_needs_f_attention(models, tmp_path, capsys):
    config = tmp_path / "exp.yaml"
    (tmp_path / "manifest.csv").write_text("path,label,speaker\n")
    config.write_text(yaml.safe_dump({"corpus": {"name": "manifest", "root": str(tmp_path / "manifest.csv")}}))
    assert explain_corpus_main(str(models["tfnn"]), str(config), str(tmp_path / "out")) == 2
    assert "no F-Attention" in capsys.readouterr().err
