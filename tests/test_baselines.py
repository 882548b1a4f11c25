"""openSMILE + linear SVM baseline: run layout, fold reuse, resume, feature cache and speaker normalisation."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import require_extra

require_extra("opensmile", "baselines")

from atfnn import baselines  # noqa: E402
from atfnn.config import load_config  # noqa: E402
from atfnn.corpora import load_corpus  # noqa: E402
from atfnn.errors import ConfigError  # noqa: E402
from atfnn.metrics import uar, war  # noqa: E402
from atfnn.foldsets import read_run_folds  # noqa: E402
from atfnn.protocols import make_folds  # noqa: E402

SR = 16000
SPEAKERS = ("s1", "s2", "s3")
PITCH = {"low": 150.0, "high": 400.0}  # the class decides the pitch: a linear SVM separates them easily
PER_CLASS = 4
FAST = {"progress": False, "workers": 1, "c_grid": (1e-2, 1.0)}  # two C values keep the grid search quick


def _tone(freq: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    # Harmonics and an amplitude envelope make it voice-like enough for openSMILE's F0 and loudness.
    wave = sum(np.sin(2 * np.pi * k * freq * t) / k for k in range(1, 5))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * t / seconds))
    return (0.2 * envelope * wave + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def _write_corpus(root: Path) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir()
    lines = ["path,label,speaker"]
    for s, speaker in enumerate(SPEAKERS):
        for label, freq in PITCH.items():
            for k in range(PER_CLASS):
                name = f"{speaker}_{label}_{k}.wav"
                sf.write(root / name, _tone(freq * (1 + 0.05 * s + 0.02 * k), 0.6, rng), SR)
                lines.append(f"{name},{label},{speaker}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def shared_corpus(tmp_path_factory) -> Path:
    """Read-only corpus shared by the tests of this module (tests that edit files use `tiny_corpus`)."""
    return _write_corpus(tmp_path_factory.mktemp("baselines") / "corpus")


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One feature cache for the run tests, so openSMILE runs once per module rather than once per test."""
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    return _write_corpus(tmp_path / "corpus")


@pytest.fixture
def no_plot(monkeypatch):
    """Skip drawing confusion.png (matplotlib is the slowest part of a tiny run); one test keeps it."""
    import atfnn.reports

    monkeypatch.setattr(atfnn.reports, "plot_confusion", lambda *args, **kwargs: None)


@pytest.fixture
def config(shared_corpus: Path, shared_cache: Path):
    return load_config(None, ["corpus.name=manifest", f"corpus.root={shared_corpus}", f"cache_dir={shared_cache}"])


def _predictions(run: Path) -> dict[str, list[dict[str, str]]]:
    out = {}
    for path in sorted(run.glob("seed-0/*/predictions.csv")):
        with open(path, newline="") as f:
            out[path.parent.name] = list(csv.DictReader(f))
    return out


def test_run_writes_results_that_agree_with_predictions(config, tmp_path):
    run = tmp_path / "run"
    results = baselines.run_baseline(config, "eGeMAPSv02", run, **FAST)

    saved = json.loads((run / "results.json").read_text())
    assert saved["war"] == pytest.approx(results["war"])
    assert {f["test"] for f in saved["folds"]} == set(SPEAKERS)
    predictions = _predictions(run)
    assert set(predictions) == set(SPEAKERS)
    rows = [r for fold in predictions.values() for r in fold]
    assert len(rows) == len(SPEAKERS) * len(PITCH) * PER_CLASS
    y_true, y_pred = [r["label"] for r in rows], [r["pred"] for r in rows]
    assert saved["war"] == pytest.approx(war(y_true, y_pred))
    assert saved["uar"] == pytest.approx(uar(y_true, y_pred, sorted(PITCH)))
    assert saved["uar"] >= 75.0  # pitch separates the classes; a broken pipeline sits near chance (50)
    assert saved["config"]["method"] == "egemaps-svm"
    assert saved["config"]["corpus"]["name"] == "manifest"
    done = json.loads((run / "seed-0" / "s1" / "done.json").read_text())
    assert done["C"] in FAST["c_grid"] and done["n_test"] == len(PITCH) * PER_CLASS
    assert "baseline" in (run / "config.yaml").read_text()
    assert "EGEMAPS-SVM" in (run / "report.md").read_text()

    (run / "results.json").unlink()  # `atfnn report` path: rebuilt from config.yaml and the fold files alone
    assert baselines.finalise_baseline(run) == saved


def test_folds_are_those_of_the_neural_runs(config, tmp_path, no_plot):
    run = tmp_path / "run"
    baselines.run_baseline(config, "eGeMAPSv02", run, **FAST)
    report = load_corpus(config.corpus.name, config.corpus.root)
    p = config.protocol
    assert read_run_folds(run) == make_folds(report.utterances, p)


def test_test_speaker_never_trains(config, tmp_path, monkeypatch, no_plot):
    seen = []
    fit = baselines.fit_fold

    def spy(x, y, groups, *args, **kwargs):
        seen.append(set(groups))
        return fit(x, y, groups, *args, **kwargs)

    monkeypatch.setattr(baselines, "fit_fold", spy)
    baselines.run_baseline(config, "eGeMAPSv02", tmp_path / "run", **FAST)
    assert seen == [set(SPEAKERS) - {s} for s in sorted(SPEAKERS)]


def test_rerun_skips_finished_folds(config, tmp_path, monkeypatch, no_plot):
    run = tmp_path / "run"
    baselines.run_baseline(config, "eGeMAPSv02", run, folds=["s1", "s2"], **FAST)
    before = (run / "seed-0" / "s1" / "predictions.csv").read_text()
    calls = []
    fit = baselines.fit_fold

    def only_s3(x, y, groups, *args, **kwargs):
        calls.append(set(groups))
        if set(groups) != {"s1", "s2"}:
            raise AssertionError("a finished fold was fitted again")
        return fit(x, y, groups, *args, **kwargs)

    monkeypatch.setattr(baselines, "fit_fold", only_s3)
    results = baselines.run_baseline(config, "eGeMAPSv02", run, **FAST)
    assert calls == [{"s1", "s2"}]
    assert (run / "seed-0" / "s1" / "predictions.csv").read_text() == before
    assert {f["test"] for f in results["folds"]} == set(SPEAKERS)


def test_rerun_with_other_settings_is_refused(config, tmp_path, no_plot):
    run = tmp_path / "run"
    baselines.run_baseline(config, "eGeMAPSv02", run, folds=["s1"], **FAST)
    with pytest.raises(ConfigError, match="another configuration"):
        baselines.run_baseline(config, "eGeMAPSv02", run, speaker_norm=True, folds=["s1"], **FAST)


def test_feature_cache_is_reused(shared_corpus, tmp_path, monkeypatch):
    paths = sorted(shared_corpus.glob("*.wav"))[:4]
    first, failures = baselines.extract_features(paths, "eGeMAPSv02", tmp_path, progress=False, workers=1)
    assert first.shape == (len(paths), 88) and not failures
    assert (tmp_path / "opensmile-eGeMAPSv02" / "index.json").is_file()

    def no_extraction(job):
        raise AssertionError(f"{job[0]} was extracted again instead of read from the cache")

    monkeypatch.setattr(baselines, "_extract_one", no_extraction)
    again, _ = baselines.extract_features(paths[::-1], "eGeMAPSv02", tmp_path, progress=False, workers=1)
    np.testing.assert_array_equal(again, first[::-1])
    assert len(list((tmp_path / "opensmile-eGeMAPSv02").glob("*.npy"))) == 1


def test_changed_file_is_extracted_again(tiny_corpus, tmp_path):
    paths = sorted(tiny_corpus.glob("*.wav"))[:2]  # files edited below: a private copy of the corpus
    first, _ = baselines.extract_features(paths, "eGeMAPSv02", tmp_path, progress=False, workers=1)
    data, rate = sf.read(paths[0])
    sf.write(paths[0], data[: len(data) // 2] * 0.1, rate)  # new size and mtime -> new cache key
    second, _ = baselines.extract_features(paths, "eGeMAPSv02", tmp_path, progress=False, workers=1)
    assert not np.allclose(second[0], first[0])
    np.testing.assert_array_equal(second[1], first[1])


def test_cache_keeps_sample_rates_apart(shared_corpus, tmp_path):
    path = sorted(shared_corpus.glob("*.wav"))[:1]
    at_16k, _ = baselines.extract_features(path, "eGeMAPSv02", tmp_path, sample_rate=16000, progress=False, workers=1)
    at_8k, _ = baselines.extract_features(path, "eGeMAPSv02", tmp_path, sample_rate=8000, progress=False, workers=1)
    again, _ = baselines.extract_features(path, "eGeMAPSv02", tmp_path, sample_rate=16000, progress=False, workers=1)
    assert not np.allclose(at_8k, at_16k)
    np.testing.assert_array_equal(again, at_16k)


def test_failed_audio_is_reported_and_excluded(config, shared_corpus, tmp_path, capsys, no_plot):
    # A manifest naming the shared (cached) files plus one broken file, which only extraction can detect.
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wave file")
    lines = (shared_corpus / "manifest.csv").read_text().splitlines()
    rows = [lines[0]] + [f"{shared_corpus / line.split(',')[0]},{line.split(',', 1)[1]}" for line in lines[1:]]
    rows.append(f"{broken},low,s1")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    config.corpus.root = str(tmp_path)
    config.corpus.options = {"check_audio": False}

    results = baselines.run_baseline(config, "eGeMAPSv02", tmp_path / "run", folds=["s1"], **FAST)
    printed = capsys.readouterr().out
    assert "1 audio file(s) failed" in printed and "broken.wav" in printed and "cannot be decoded" in printed
    assert [e["path"] for e in results["config"]["excluded"]] == [str(broken)]
    done = json.loads((tmp_path / "run" / "seed-0" / "s1" / "done.json").read_text())
    assert done["excluded_test"] == [str(broken)] and done["n_test"] == len(PITCH) * PER_CLASS
    assert str(broken) not in (tmp_path / "run" / "seed-0" / "s1" / "predictions.csv").read_text()


def test_speaker_normalise_uses_each_speakers_own_statistics():
    rng = np.random.default_rng(1)
    speakers = np.array(["a"] * 5 + ["b"] * 7 + ["test"] * 4)
    x = rng.normal(size=(16, 3)) * [1, 10, 100] + [5, -3, 50]
    x[speakers == "test"] += 1000.0  # a far-off test speaker: pooled statistics would not centre it
    x[:, 2][speakers == "b"] = 7.0  # constant within a speaker -> 0, not NaN
    z = baselines.speaker_normalise(x, speakers)
    for s in ("a", "test"):
        np.testing.assert_allclose(z[speakers == s].mean(axis=0), 0, atol=1e-9)
        np.testing.assert_allclose(z[speakers == s].std(axis=0), 1, atol=1e-9)
    test_rows = x[speakers == "test"]
    np.testing.assert_allclose(z[speakers == "test"], (test_rows - test_rows.mean(0)) / test_rows.std(0))
    assert np.all(z[speakers == "b", 2] == 0)


def test_speaker_norm_run_is_labelled_transductive(config, tmp_path, no_plot):
    results = baselines.run_baseline(
        config, "eGeMAPSv02", tmp_path / "run", speaker_norm=True, folds=["s2"], **FAST
    )
    assert results["config"]["method"] == "egemaps-svm+spknorm"
    assert results["config"]["speaker_norm"] is True
    assert "transductive" in results["config"]["note"]


def test_unknown_feature_set_names_the_choices(config, tmp_path):
    with pytest.raises(ConfigError, match="eGeMAPSv02, ComParE_2016"):
        baselines.run_baseline(config, "MFCC", tmp_path / "run", progress=False)
