"""The feature cache (prepare / FeatureStore), normalisation and segment tensors."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from atfnn import features
from atfnn.audio import load_audio, log_mel_spectrogram, segment, segment_starts
from atfnn.config import FrontEndConfig, ProtocolConfig
from atfnn.corpora.base import Utterance
from atfnn.features import build_segments, normalise_stats, prepare, write_store

HOP = 160
LENGTHS = (1, 127, 128, 129, 1000)


def samples_for(n_frames: int) -> int:
    """Waveform length that gives n_frames log-Mel frames (n_frames = 1 + n_samples // 160)."""
    return (n_frames - 1) * HOP


def write_wav(path: Path, n_frames: int, seed: int = 0, rate: int = 16000) -> Path:
    wave = 0.1 * np.random.default_rng(seed).standard_normal(samples_for(n_frames) * rate // 16000)
    sf.write(path, wave.astype(np.float32), rate)
    return path


def make_corpus(root: Path, frames: dict[str, tuple[int, str]]) -> list[Utterance]:
    """name -> (n_frames, speaker): one noise wav each, in a fresh folder."""
    root.mkdir(parents=True, exist_ok=True)
    return [
        Utterance(write_wav(root / f"{name}.wav", n, seed=i), "neutral", speaker)
        for i, (name, (n, speaker)) in enumerate(frames.items())
    ]


class DecodeCounter:
    """Stands in for atfnn.features.load_audio: counts decodes, optionally fails on the n-th."""

    def __init__(self, fail_at: int | None = None):
        self.paths: list[str] = []
        self.fail_at = fail_at

    def __call__(self, path, sample_rate=16000):
        self.paths.append(str(path))
        if self.fail_at is not None and len(self.paths) == self.fail_at:
            raise RuntimeError("simulated crash in the middle of prepare")
        return load_audio(path, sample_rate)


@pytest.fixture
def counter(monkeypatch) -> DecodeCounter:
    c = DecodeCounter()
    monkeypatch.setattr(features, "load_audio", c)
    return c


def complete_packs(cache: Path) -> list[Path]:
    return sorted(p.parent for p in cache.glob("logmel-*/pack-*/complete"))


def leftovers(cache: Path) -> list[Path]:
    """Temporary dirs and packs without their completion marker."""
    tmp = list(cache.glob("logmel-*/.tmp-*"))
    return tmp + [p for p in cache.glob("logmel-*/pack-*") if not (p / "complete").exists()]


def bump_mtime(path: Path, seconds: int = 10) -> None:
    # Explicit: a rewrite within the filesystem's timestamp granularity must not hide the change from the test.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


# ----------------------------------------------------------------------------------------------------- segments
@pytest.mark.parametrize("pad_short", ["silence", "repeat", "drop"])
def test_segments_equal_audio_segment(tmp_path, pad_short):
    rng = np.random.default_rng(0)
    logmels = {f"u{n}": rng.normal(-5, 3, (80, n)).astype(np.float32) for n in LENGTHS}
    store = write_store(logmels, tmp_path / "pack")
    utts = [Utterance(Path(uid), "x", "s") for uid in logmels]
    cfg = FrontEndConfig(pad_short=pad_short)
    seg = build_segments(store, utts, cfg)

    assert seg.x.dtype == torch.float32 and seg.x.is_contiguous() and seg.utt.dtype == np.int64
    assert seg.utterance_uids == [u.uid for u in utts]
    dropped = {uid for uid, _ in seg.dropped}
    for i, (uid, logmel) in enumerate(logmels.items()):
        mine = seg.x[torch.from_numpy(seg.utt == i)]
        n = logmel.shape[1]
        if pad_short == "drop" and n < 128:
            assert uid in dropped and len(mine) == 0
            continue
        expected = segment(torch.from_numpy(logmel), cfg)
        assert len(mine) == len(segment_starts(n, 128, 64, pad_short)) == len(expected)
        assert torch.equal(mine, expected)
    counts = np.bincount(seg.utt, minlength=len(utts))
    assert counts.tolist() == ([0, 0] if pad_short == "drop" else [1, 1]) + [1, 2, 15]
    if pad_short == "drop":
        assert all("shorter than one 128-frame segment" in reason for _, reason in seg.dropped)


def test_segments_follow_hop_and_frames_without_new_features(tmp_path):
    logmel = np.random.default_rng(1).normal(size=(80, 300)).astype(np.float32)
    store = write_store({"a": logmel}, tmp_path / "pack")
    cfg = FrontEndConfig(segment_frames=64, segment_hop=16)
    seg = build_segments(store, [Utterance(Path("a"), "x", "s")], cfg)
    assert torch.equal(seg.x, segment(torch.from_numpy(logmel), cfg))
    assert seg.x.shape == (len(segment_starts(300, 64, 16)), 80, 64)


def test_prepared_features_equal_log_mel_of_the_file(tmp_path, counter):
    utts = make_corpus(tmp_path / "wav", {f"f{n}": (n, "s") for n in (3, 127, 128, 129, 1000)})
    store = prepare(utts, FrontEndConfig(), tmp_path / "cache", progress=False)
    assert store.uids == [u.uid for u in utts] and not store.skipped
    for utt, n in zip(utts, (3, 127, 128, 129, 1000)):
        assert store.n_frames(utt.uid) == n
        np.testing.assert_array_equal(store.logmel(utt.uid), log_mel_spectrogram(utt.path).numpy())
    assert isinstance(store.data, np.memmap) and not store.logmel(utts[0].uid).flags.writeable
    assert len(counter.paths) == 5


def test_store_pickles_without_copying_the_features(tmp_path):
    store = write_store({"a": np.ones((4, 5)), "b": np.zeros((4, 2))}, tmp_path / "pack")
    copy = pickle.loads(pickle.dumps(store))
    assert len(pickle.dumps(store)) < 2000
    np.testing.assert_array_equal(copy.logmel("a"), np.ones((4, 5)))
    assert "b" in copy and "c" not in copy


# ----------------------------------------------------------------------------------------------------- caching
def test_rerun_reuses_the_pack_without_decoding(tmp_path, monkeypatch):
    utts = make_corpus(tmp_path / "wav", {"a": (200, "s"), "b": (50, "s")})
    first = prepare(utts, FrontEndConfig(), tmp_path / "cache", progress=False)

    def no_decoding(*_):
        raise AssertionError("audio decoded although the cache holds it")

    monkeypatch.setattr(features, "load_audio", no_decoding)
    # Segmenting and normalisation are outside the cache key: changing them reuses the same pack.
    second = prepare(utts, FrontEndConfig(segment_hop=32, norm="speaker", pad_short="drop"), tmp_path / "cache", False)
    assert second.path == first.path and second.uids == first.uids
    np.testing.assert_array_equal(second.logmel(utts[0].uid), first.logmel(utts[0].uid))
    assert len(complete_packs(tmp_path / "cache")) == 1


def test_changed_or_added_file_recomputes_only_that_file(tmp_path, counter):
    utts = make_corpus(tmp_path / "wav", {"a": (200, "s"), "b": (300, "s"), "c": (150, "t")})
    cache = tmp_path / "cache"
    first = prepare(utts, FrontEndConfig(), cache, progress=False)
    before = {u.uid: np.array(first.logmel(u.uid)) for u in utts}
    counter.paths.clear()

    write_wav(utts[1].path, 400, seed=99)
    bump_mtime(utts[1].path)
    second = prepare(utts, FrontEndConfig(), cache, progress=False)
    assert counter.paths == [str(utts[1].path)]
    assert second.path != first.path
    assert second.n_frames(utts[1].uid) == 400
    for u in (utts[0], utts[2]):
        np.testing.assert_array_equal(second.logmel(u.uid), before[u.uid])

    counter.paths.clear()
    new = make_corpus(tmp_path / "more", {"d": (130, "t")})
    third = prepare(utts + new, FrontEndConfig(), cache, progress=False)
    assert counter.paths == [str(new[0].path)]
    assert third.uids == [u.uid for u in utts + new]


def test_logmel_config_change_uses_a_new_directory(tmp_path, counter):
    utts = make_corpus(tmp_path / "wav", {"a": (200, "s")})
    a = prepare(utts, FrontEndConfig(), tmp_path / "cache", progress=False)
    b = prepare(utts, FrontEndConfig(n_mels=40), tmp_path / "cache", progress=False)
    assert a.path.parent != b.path.parent and b.logmel(utts[0].uid).shape == (40, 200)
    assert len(counter.paths) == 2
    assert features.config_hash(FrontEndConfig()) == features.config_hash(FrontEndConfig(segment_hop=1, norm="speaker"))
    assert features.config_hash(FrontEndConfig()) != features.config_hash(FrontEndConfig(log_floor=1e-8))


def test_interrupted_prepare_leaves_no_complete_pack(tmp_path, monkeypatch):
    utts = make_corpus(tmp_path / "wav", {f"u{i}": (100 + i, "s") for i in range(5)})
    cache = tmp_path / "cache"
    monkeypatch.setattr(features, "load_audio", DecodeCounter(fail_at=3))
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare(utts, FrontEndConfig(), cache, progress=False)
    assert complete_packs(cache) == [] and leftovers(cache) == []

    # A prepare killed outright leaves its temporary dir behind: the next run removes it (its pid is dead).
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = next(cache.glob("logmel-*")) / f".tmp-pack-0123-{int(dead.stdout)}-abc"
    (stale / "sub").mkdir(parents=True)
    counter = DecodeCounter()
    monkeypatch.setattr(features, "load_audio", counter)
    store = prepare(utts, FrontEndConfig(), cache, progress=False)
    assert len(store) == 5 and len(counter.paths) == 5
    assert not stale.exists() and leftovers(cache) == []


def test_pack_without_complete_marker_is_rebuilt(tmp_path, counter):
    utts = make_corpus(tmp_path / "wav", {"a": (200, "s"), "b": (210, "s")})
    store = prepare(utts, FrontEndConfig(), tmp_path / "cache", progress=False)
    (store.path / "complete").unlink()
    (store.path / "features.npy").write_bytes(b"truncated")
    counter.paths.clear()
    again = prepare(utts, FrontEndConfig(), tmp_path / "cache", progress=False)
    assert len(counter.paths) == 2  # the unmarked pack is not trusted, not even as a source to copy from
    assert again.path == store.path and (again.path / "complete").exists()
    np.testing.assert_array_equal(again.logmel(utts[0].uid), log_mel_spectrogram(utts[0].path).numpy())


def test_bad_files_are_skipped_with_their_reason(tmp_path, counter):
    utts = make_corpus(tmp_path / "wav", {"good1": (200, "s"), "good2": (300, "t")})
    empty = tmp_path / "wav" / "empty.wav"
    empty.write_bytes(b"")
    nan = tmp_path / "wav" / "nan.wav"
    wave = np.zeros(8000, dtype=np.float32)
    wave[100] = np.nan
    sf.write(nan, wave, 16000, subtype="FLOAT")
    short = tmp_path / "wav" / "short.wav"
    sf.write(short, np.full(100, 0.1, dtype=np.float32), 16000)
    garbage = tmp_path / "wav" / "garbage.wav"
    garbage.write_bytes(b"RIFF this is not audio" * 10)
    bad = [empty, nan, short, garbage, tmp_path / "wav" / "missing.wav"]
    all_utts = utts[:1] + [Utterance(p, "x", "s") for p in bad] + utts[1:]

    store = prepare(all_utts, FrontEndConfig(), tmp_path / "cache", progress=False)
    assert store.uids == [utts[0].uid, utts[1].uid]
    reasons = dict(store.skipped)
    assert list(reasons) == [str(p) for p in bad]
    assert "empty" in reasons[str(empty)] and "NaN" in reasons[str(nan)]
    assert "shorter than one 320-sample analysis window" in reasons[str(short)]
    assert "cannot be decoded" in reasons[str(garbage)] and "No such file" in reasons[str(bad[-1])]

    counter.paths.clear()
    again = prepare(all_utts, FrontEndConfig(), tmp_path / "cache", progress=False)
    assert counter.paths == [] and again.skipped == store.skipped  # bad files are remembered, not re-decoded

    seg = build_segments(again, all_utts, FrontEndConfig())
    assert set(np.unique(seg.utt)) == {0, len(all_utts) - 1}
    assert dict(seg.dropped) == reasons


def test_utterance_missing_from_store_is_an_error(tmp_path):
    store = write_store({"a": np.zeros((80, 130))}, tmp_path / "pack")
    with pytest.raises(features.ATFNNError, match="pass every utterance to prepare"):
        build_segments(store, [Utterance(Path("b"), "x", "s")], FrontEndConfig())
    with pytest.raises(features.ATFNNError, match="holds 80 mel bands but frontend.n_mels=40"):
        build_segments(store, [Utterance(Path("a"), "x", "s")], FrontEndConfig(n_mels=40))


def test_prepare_restores_torch_threads(tmp_path):
    utts = make_corpus(tmp_path / "wav", {"a": (200, "s")})
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # prepare runs single-threaded, then must give the caller its setting back
    try:
        prepare(utts, FrontEndConfig(), tmp_path / "cache", progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------------- normalising
def test_utterance_normalisation_gives_zero_mean_unit_std_per_band(tmp_path):
    rng = np.random.default_rng(2)
    logmels = {"a": rng.normal(-4, 2, (80, 1000)), "b": rng.normal(3, 0.5, (80, 500))}
    logmels["a"][7] = -13.8  # a constant band: std floored, no division by zero
    store = write_store(logmels, tmp_path / "pack")
    utts = [Utterance(Path(uid), "x", "s") for uid in logmels]
    stats = normalise_stats(store, utts, "utterance")
    for uid, logmel in logmels.items():
        mean, std = stats[uid].mean, stats[uid].std
        assert mean.shape == std.shape == (80, 1)
        z = (store.logmel(uid) - mean) / std
        np.testing.assert_allclose(z.mean(axis=1), 0, atol=1e-4)
        expected_std = np.where(np.arange(80) == 7, 0, 1) if uid == "a" else np.ones(80)
        np.testing.assert_allclose(z.std(axis=1), expected_std, atol=1e-4)
    assert normalise_stats(store, utts, "none") == {} == normalise_stats(store, utts, "global")
    with pytest.raises(features.ATFNNError, match="frontend.norm='band'.*not one of"):
        normalise_stats(store, utts, "band")


def test_speaker_stats_pool_only_that_speakers_frames(tmp_path):
    rng = np.random.default_rng(3)
    logmels = {
        "s1a": rng.normal(0, 1, (80, 300)), "s1b": rng.normal(5, 2, (80, 200)), "s2a": rng.normal(-3, 4, (80, 150)),
    }
    utts = [Utterance(Path(uid), "x", uid[:2]) for uid in logmels]
    stats = normalise_stats(write_store(logmels, tmp_path / "p1"), utts, "speaker")
    pooled = np.concatenate([logmels["s1a"], logmels["s1b"]], axis=1)
    for uid in ("s1a", "s1b"):
        np.testing.assert_allclose(stats[uid].mean[:, 0], pooled.mean(axis=1), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(stats[uid].std[:, 0], pooled.std(axis=1), rtol=1e-5)
    np.testing.assert_allclose(stats["s2a"].std[:, 0], logmels["s2a"].std(axis=1), rtol=1e-5)

    # Another speaker's audio must not move speaker s1's statistics.
    logmels["s2a"] = logmels["s2a"] * 10 + 7
    other = normalise_stats(write_store(logmels, tmp_path / "p2"), utts, "speaker")
    np.testing.assert_array_equal(other["s1a"].mean, stats["s1a"].mean)


def test_normalised_segments(tmp_path):
    rng = np.random.default_rng(4)
    logmels = {"long": rng.normal(-5, 3, (80, 400)), "short": rng.normal(-2, 1, (80, 60))}
    store = write_store(logmels, tmp_path / "pack")
    utts = [Utterance(Path(uid), "x", "s") for uid in logmels]
    cfg = FrontEndConfig(norm="utterance")
    seg = build_segments(store, utts, cfg)
    stats = normalise_stats(store, utts, "utterance")
    for i, uid in enumerate(logmels):
        mean, std = torch.from_numpy(stats[uid].mean), torch.from_numpy(stats[uid].std)
        raw = segment(torch.from_numpy(store.logmel(uid).copy()), cfg)
        torch.testing.assert_close(seg.x[torch.from_numpy(seg.utt == i)], (raw - mean) / std)
    # Silence padding is the log floor normalised like the real frames, not a raw -13.8 among z-scores.
    mean, std = stats["short"].mean, stats["short"].std
    pad = seg.x[seg.utt == 1][0, :, 60:]
    torch.testing.assert_close(pad, torch.from_numpy((np.log(1e-6) - mean) / std).expand(80, 68).float())

    # Speaker stats computed over a larger set apply to a subset's segments.
    everyone = normalise_stats(store, utts, "speaker")
    subset = build_segments(store, utts[1:], FrontEndConfig(norm="speaker"), stats=everyone)
    assert subset.utt.tolist() == [0] and subset.utterance_uids == ["short"]


# ----------------------------------------------------------------------------------------------------- real data
@pytest.mark.corpus
def test_casia_smoke(casia_root, tmp_path):
    wavs = sorted(casia_root.glob("*/*/*.wav"))[::200][:6]
    assert len(wavs) == 6, f"expected CASIA wavs under {casia_root}"
    utts = [Utterance(p, p.parent.name, p.parts[-3]) for p in wavs]
    cfg = FrontEndConfig(norm="speaker")
    store = prepare(utts, cfg, tmp_path / "cache", progress=False)
    assert not store.skipped and len(store) == 6
    for p in wavs:
        assert store.n_frames(str(p)) == 1 + sf.info(p).frames // HOP
        assert np.isfinite(store.logmel(str(p))).all()
    seg = build_segments(store, utts, cfg)
    expected = sum(len(segment_starts(store.n_frames(str(p)))) for p in wavs)
    assert seg.x.shape == (expected, 80, 128) and torch.isfinite(seg.x).all()


# ----------------------------------------------------------------------------------------------------- front-end options
def test_new_options_at_their_defaults_keep_the_cache_directory():
    # The hashes of today's configurations before mel_scale, trim_db and floor_db existed: old caches stay valid.
    assert features.config_hash(FrontEndConfig()) == "e96d3464bdcefb9d"
    assert features.config_hash(FrontEndConfig(n_mels=64, fmax=7600.0)) == "d2e156592ae56849"
    same = FrontEndConfig(norm="global", train_segment_hop=32, segment_hop=16, pad_short="repeat")
    assert features.config_hash(same) == "e96d3464bdcefb9d"  # applied after the cache
    changed = {features.config_hash(FrontEndConfig(**{k: v})) for k, v in
               [("mel_scale", "htk"), ("trim_db", 40.0), ("floor_db", 80.0)]}
    assert len(changed) == 3 and "e96d3464bdcefb9d" not in changed


def test_only_the_training_split_uses_the_training_hop(tmp_path):
    logmels = {"a": np.zeros((80, 400), np.float32), "b": np.ones((80, 129), np.float32)}
    store = write_store(logmels, tmp_path / "pack")
    utts = [Utterance(Path(uid), "x", "s") for uid in logmels]
    cfg = FrontEndConfig(train_segment_hop=16)
    train = build_segments(store, utts, cfg, split="train")
    evaluation = build_segments(store, utts, cfg)
    assert np.bincount(train.utt).tolist() == [len(segment_starts(400, 128, 16)), len(segment_starts(129, 128, 16))]
    assert np.bincount(evaluation.utt).tolist() == [len(segment_starts(400, 128, 64)), 2]
    # 0 = the evaluation hop: the two splits are cut alike.
    assert torch.equal(build_segments(store, utts, FrontEndConfig(), split="train").x, evaluation.x)
    with pytest.raises(ValueError, match="split 'test'"):
        build_segments(store, utts, cfg, split="test")


def tiny_corpus_config(tmp_path: Path, *overrides: str):
    from atfnn.config import load_config
    from atfnn.corpora.synthetic import SyntheticSpec, generate

    root = tmp_path / "corpus"
    generate(root, SyntheticSpec(speakers=3, utterances_per_class=3, seed=1))
    base = ["corpus.name=synthetic", f"corpus.root={root}", f"cache_dir={tmp_path / 'cache'}"]
    return load_config(None, [*base, "model.lstm_hidden=8", "model.lstm_layers=1", *overrides])


class StopFold(Exception):
    pass


def folds_seen_by_training(tmp_path, monkeypatch, *overrides: str):
    """Run every LOSO fold up to train_fold (stubbed): (fold, ids given to fit_global_stats, train/val/test splits)."""
    from atfnn import experiment, frontend

    config = tiny_corpus_config(tmp_path, *overrides)
    corpus = experiment.prepare_corpus(config, progress=False, log=lambda m: None)
    fitted: list[list[str]] = []
    splits: list[tuple] = []

    def spy(store, utterance_ids):
        fitted.append(list(utterance_ids))
        return frontend.fit_global_stats(store, utterance_ids)

    def stop(model_config, train_config, labels, train, validation, *args, monitor=None, **kwargs):
        splits.append((train, validation, monitor))
        raise StopFold

    monkeypatch.setattr(experiment, "fit_global_stats", spy)
    monkeypatch.setattr(experiment, "train_fold", stop)
    seen = []
    for fold in experiment.make_folds(corpus.utterances, ProtocolConfig(val_fraction=0.2)):
        with pytest.raises(StopFold):
            experiment.run_fold(config, corpus, fold, tmp_path / fold.name, 0, torch.device("cpu"), progress=False)
        seen.append((fold, fitted[-1] if fitted else None, splits[-1]))
    return corpus, seen


def test_global_stats_see_only_the_training_split_of_each_loso_fold(tmp_path, monkeypatch):
    corpus, seen = folds_seen_by_training(tmp_path, monkeypatch, "frontend.norm=global", "train.monitor_test=true")
    by_uid = {u.uid: u for u in corpus.utterances}
    assert len(seen) == 3
    for fold, fitted, (train, validation, test) in seen:
        assert fitted is not None and set(fitted) == set(fold.train)
        assert fold.validation and not set(fitted) & set(fold.validation), "validation utterances reached the stats"
        assert not {by_uid[uid].speaker for uid in fitted} & {by_uid[uid].speaker for uid in fold.test}
        # The training split is normalised by its own statistics; the others by the same ones, not their own.
        assert train.x.mean(dim=(0, 2)).abs().max() < 0.2
        assert set(test.uids) == set(fold.test) and torch.isfinite(test.x).all()


def test_global_stats_are_not_fitted_for_other_modes(tmp_path, monkeypatch):
    _, seen = folds_seen_by_training(tmp_path, monkeypatch, "frontend.norm=none")
    assert all(fitted is None for _, fitted, _ in seen)


def test_training_code_asks_for_training_segments_by_name(tmp_path, monkeypatch):
    corpus, seen = folds_seen_by_training(tmp_path, monkeypatch, "frontend.train_segment_hop=16", "train.monitor_test=true")
    n_frames = {uid: corpus.store.n_frames(uid) for uid in corpus.store.uids}
    for fold, _, (train, validation, test) in seen:
        assert len(train) == sum(len(segment_starts(n_frames[u], 128, 16)) for u in fold.train)
        for split, uids in ((validation, fold.validation), (test, fold.test)):
            assert len(split) == sum(len(segment_starts(n_frames[u], 128, 64)) for u in uids)


# ----------------------------------------------------------------------------------------------------- corruption
def corrupt_truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])


def corrupt_empty(path: Path) -> None:
    path.write_bytes(b"")


def corrupt_same_size(path: Path) -> None:
    data = bytearray(path.read_bytes())
    values = np.frombuffer(bytes(data[-4000:]), dtype="<f4") + 1.0  # finite, other values, same size
    data[-4000:] = values.astype("<f4").tobytes()
    path.write_bytes(bytes(data))


def corrupt_nan(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(-400, os.SEEK_END)
        f.write(np.full(10, np.nan, dtype="<f4").tobytes())


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [(corrupt_truncate, "truncated"), (corrupt_empty, "cannot be read"), (corrupt_same_size, "sha256 mismatch"),
     (corrupt_nan, "NaN")],
)
def test_a_corrupt_feature_file_is_detected_named_and_rebuilt(tmp_path, counter, capsys, corrupt, message):
    utts = make_corpus(tmp_path / "wav", {"a": (200, "s"), "b": (210, "s")})
    store = prepare(utts, FrontEndConfig(), tmp_path / "cache", progress=False)
    expected = {u.uid: store.logmel(u.uid).copy() for u in utts}
    assert capsys.readouterr().err == ""
    corrupt(store.path / "features.npy")
    counter.paths.clear()
    again = prepare(utts, FrontEndConfig(), tmp_path / "cache", progress=False)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(store.path / "features.npy") in lines[0] and message in lines[0]
    assert "rebuilding" in lines[0]
    assert len(counter.paths) == 2 and again.path == store.path
    for uid, logmel in expected.items():
        np.testing.assert_array_equal(again.logmel(uid), logmel)
    prepare(utts, FrontEndConfig(), tmp_path / "cache", progress=False)
    assert capsys.readouterr().err == "" and len(counter.paths) == 2, "the rebuilt pack is trusted"


def test_a_corrupt_older_pack_is_not_copied_from(tmp_path, counter, capsys):
    utts = make_corpus(tmp_path / "wav", {"a": (200, "s"), "b": (210, "s")})
    first = prepare(utts[:1], FrontEndConfig(), tmp_path / "cache", progress=False)
    corrupt_nan(first.path / "features.npy")
    counter.paths.clear()
    store = prepare(utts, FrontEndConfig(), tmp_path / "cache", progress=False)  # a new pack, "a" not reusable
    assert sorted(counter.paths) == sorted(str(u.path) for u in utts)
    assert "NaN" in capsys.readouterr().err and np.isfinite(store.data).all()


@pytest.mark.parametrize("content", ["{not json", "[]", '{"version": 1}'])
def test_a_bad_index_is_named_and_rebuilt(tmp_path, counter, capsys, content):
    utts = make_corpus(tmp_path / "wav", {"a": (200, "s")})
    store = prepare(utts, FrontEndConfig(), tmp_path / "cache", progress=False)
    (store.path / "index.json").write_text(content)
    counter.paths.clear()
    again = prepare(utts, FrontEndConfig(), tmp_path / "cache", progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(store.path / "index.json") in err[0] and len(again) == 1
