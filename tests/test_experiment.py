"""A complete tiny experiment on the synthetic corpus: artefacts, agreement with predictions, resume, refusal."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from atfnn import training
from atfnn.cli import main
from atfnn.config import load_config
from atfnn.corpora.synthetic import SyntheticSpec, generate
from atfnn.errors import ConfigError
from atfnn.experiment import LOCK, check_run_dir, final_epochs, rescore_run, run_experiment, run_lock
from atfnn.metrics import uar, war

TINY = [
    "model.lstm_hidden=8",
    "model.lstm_layers=1",
    "train.batch_size=16",
    "train.epochs=2",
    "frontend.segment_hop=128",
    "train.threads=2",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "corpus"
    generate(root, SyntheticSpec(speakers=3, utterances_per_class=3, seed=1))
    return root


@pytest.fixture(scope="module")
def tiny_run(corpus, tmp_path_factory) -> tuple[Path, dict]:
    """One complete tiny experiment, shared by the tests that only read it."""
    base = tmp_path_factory.mktemp("tiny")
    out = base / "run"
    return out, run_experiment(tiny_config(corpus, base / "cache"), out, progress=False)


def tiny_config(corpus: Path, cache: Path, *extra: str):
    return load_config(None, ["corpus.name=synthetic", f"corpus.root={corpus}", f"cache_dir={cache}", *TINY, *extra])


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_experiment_writes_every_artefact_and_agrees_with_predictions(tiny_run):
    out, results = tiny_run
    for name in ("config.yaml", "run.json", "results.json", "report.md", "confusion.png", "foldset.json"):
        assert (out / name).is_file(), name
    folds = sorted(p.name for p in (out / "seed-0").iterdir())
    assert len(folds) == 3 and len(results["folds"]) == 3
    y_true, y_pred = [], []
    for fold in folds:
        d = out / "seed-0" / fold
        for name in ("predictions.csv", "done.json", "log.csv", "model/model.safetensors", "model/model.json"):
            assert (d / name).is_file(), f"{fold}/{name}"
        assert not (d / "last.pt").exists(), "a finished fold keeps no resume checkpoint"
        rows = read_rows(d / "predictions.csv")
        assert {r["speaker"] for r in rows} == {fold}, "a fold tests exactly its held-out speaker"
        assert len(read_rows(d / "log.csv")) == json.loads((d / "done.json").read_text())["epochs"]
        y_true += [r["label"] for r in rows]
        y_pred += [r["pred"] for r in rows]
    saved = json.loads((out / "results.json").read_text())
    assert saved["n"] == len(y_true) == 3 * 4 * 3
    assert saved["war"] == pytest.approx(war(y_true, y_pred))
    assert saved["uar"] == pytest.approx(uar(y_true, y_pred, saved["labels"]))
    assert sum(map(sum, saved["confusion"])) == saved["n"]
    assert saved["config"]["model"]["lstm_hidden"] == 8
    assert "| synthetic | Leave-one-speaker-out (3 folds) | ATFNN" in (out / "report.md").read_text()
    assert final_epochs(out) in (1, 2)


def test_rescoring_with_the_runs_own_choices_reproduces_its_results(tiny_run, tmp_path):
    out, results = tiny_run
    again = rescore_run(out, log=lambda message: None)
    assert list(again) == [0]
    assert again[0]["uar"] == pytest.approx(results["uar"]) and again[0]["war"] == pytest.approx(results["war"])
    by_fold = {f["test"]: f["uar"] for f in results["folds"]}
    assert {f["test"]: f["uar"] for f in again[0]["folds"]} == pytest.approx(by_fold)
    # Another hop cuts the test utterances differently but still scores every one of them, on its own speaker.
    other = rescore_run(out, aggregate="vote", segment_hop=32, log=lambda message: None)[0]
    assert sum(map(sum, other["confusion"])) == results["n"]
    assert sorted(f["test"] for f in other["folds"]) == sorted(by_fold)
    with pytest.raises(ConfigError, match="no finished fold"):
        empty = tmp_path / "empty"
        shutil.copytree(out / "folds", empty / "folds")
        shutil.copy(out / "foldset.json", empty / "foldset.json")
        shutil.copy(out / "config.yaml", empty / "config.yaml")
        rescore_run(empty, log=lambda message: None)


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(corpus, tiny_run, tmp_path):
    cache = tmp_path / "cache"
    reference_dir, reference = tiny_run

    class Stop(Exception):
        pass

    def stop_after_first(fold, seed):
        raise Stop(fold)

    out = tmp_path / "run"
    with pytest.raises(Stop):
        run_experiment(tiny_config(corpus, cache), out, progress=False, on_fold_done=stop_after_first)
    finished = sorted(p.parent.name for p in out.glob("seed-0/*/done.json"))
    assert len(finished) == 1
    first_done = (out / "seed-0" / finished[0] / "done.json").stat().st_mtime_ns

    # Interrupt the second fold after its first epoch (the checkpoint of epoch 1 is written), then resume.
    real_save = training._save_checkpoint
    calls = []

    def crash_after_first_epoch(path, *args):
        real_save(path, *args)
        calls.append(path)
        raise Stop("killed mid-fold")

    training._save_checkpoint = crash_after_first_epoch
    try:
        with pytest.raises(Stop):
            run_experiment(tiny_config(corpus, cache), out, progress=False)
    finally:
        training._save_checkpoint = real_save
    interrupted = calls[0].parent
    assert (interrupted / "last.pt").is_file() and not (interrupted / "done.json").exists()

    trained = []
    real_train = training.train_fold

    def spy(*args, **kwargs):
        trained.append(args[5].name)
        return real_train(*args, **kwargs)

    import atfnn.experiment as experiment

    experiment.train_fold = spy
    try:
        resumed = run_experiment(tiny_config(corpus, cache), out, progress=False)
    finally:
        experiment.train_fold = real_train
    assert finished[0] not in trained and len(trained) == 2, "only the unfinished folds are trained again"
    assert (out / "seed-0" / finished[0] / "done.json").stat().st_mtime_ns == first_done
    assert len(read_rows(interrupted / "log.csv")) == 2, "the resumed fold continued from epoch 1, no duplicate rows"
    assert resumed["war"] == pytest.approx(reference["war"])
    assert resumed["uar"] == pytest.approx(reference["uar"])
    for a, b in zip(resumed["folds"], reference["folds"]):
        assert (a["test"], a["war"]) == pytest.approx((b["test"], b["war"]))
    probs = [read_rows(d / "seed-0" / interrupted.name / "predictions.csv") for d in (out, reference_dir)]
    assert probs[0] == probs[1], "resuming reproduces the uninterrupted posteriors exactly"


def test_parallel_folds_match_the_serial_run(corpus, tiny_run, tmp_path):
    reference_dir, reference = tiny_run
    out = tmp_path / "parallel"
    done = []
    results = run_experiment(
        tiny_config(corpus, tmp_path / "cache"), out, progress=False, jobs=2,
        on_fold_done=lambda fold, seed: done.append(fold), log=lambda message: None,
    )
    assert sorted(done) == sorted(f["test"] for f in reference["folds"])
    assert results["uar"] == pytest.approx(reference["uar"])
    for fold in done:
        ours, theirs = (read_rows(d / "seed-0" / fold / "predictions.csv") for d in (out, reference_dir))
        assert [r["pred"] for r in ours] == [r["pred"] for r in theirs], fold
        probs = [float(r[k]) for r in ours for k in r if k.startswith("p_")]
        assert len(probs) == len(ours) * len(reference["labels"])
        assert probs == pytest.approx(
            [float(r[k]) for r in theirs for k in r if k.startswith("p_")], abs=1e-5
        )


def test_a_second_run_on_a_directory_in_use_is_refused_and_the_lock_ends_with_the_first(corpus, tmp_path):
    out = tmp_path / "run"
    with run_lock(out):
        with pytest.raises(ConfigError, match=r"in use by atfnn train \(pid \d+"):
            run_experiment(tiny_config(corpus, tmp_path / "cache"), out, progress=False)
        assert not (out / "run.json").exists(), "the refused run must not have touched the directory"
    with run_lock(out):  # released when its holder ends
        pass
    assert (out / LOCK).is_file()


def test_jobs_must_be_positive(corpus, tmp_path):
    with pytest.raises(ConfigError, match="jobs must be at least 1"):
        run_experiment(tiny_config(corpus, tmp_path / "cache"), tmp_path / "run", progress=False, jobs=0)


def test_exported_run_has_no_weights_and_resumes_without_training(corpus, tiny_run, tmp_path):
    from atfnn.reports import export_run

    run_dir, reference = tiny_run
    copy = tmp_path / "results" / "tiny"
    copied = export_run(run_dir, copy)
    names = {p.name for p in copied}
    assert {"results.json", "run.json", "config.yaml", "done.json", "predictions.csv", "folds.json"} <= names
    assert not any(p.suffix in (".safetensors", ".pt") for p in copy.rglob("*")), "no weights, no checkpoints"
    import atfnn.experiment as experiment

    real_train = experiment.train_fold
    experiment.train_fold = lambda *a, **k: pytest.fail("a finished fold was trained again")
    try:
        resumed = run_experiment(tiny_config(corpus, tmp_path / "cache"), copy, progress=False, log=lambda m: None)
    finally:
        experiment.train_fold = real_train
    assert resumed["uar"] == pytest.approx(reference["uar"]) and resumed["n"] == reference["n"]


def test_changed_config_is_refused(corpus, tmp_path):
    out = tmp_path / "run"
    check_run_dir(out, tiny_config(corpus, tmp_path / "cache"))
    check_run_dir(out, tiny_config(corpus, tmp_path / "cache", "train.device=cpu"))  # where it runs is not the config
    with pytest.raises(ConfigError, match="another configuration"):
        check_run_dir(out, tiny_config(corpus, tmp_path / "cache", "train.lr=0.01"))
    with pytest.raises(ConfigError, match="another configuration"):
        run_experiment(tiny_config(corpus, tmp_path / "cache", "model.variant=tfnn"), out, progress=False)


def test_run_begun_before_a_new_config_field_still_resumes(corpus, tmp_path):
    """A field added to atfnn later (here monitor_test, at its default) must not lock out a run begun before it."""
    import yaml

    out = tmp_path / "run"
    config = tiny_config(corpus, tmp_path / "cache")
    check_run_dir(out, config)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    del saved["train"]["monitor_test"]
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    (out / "run.json").write_text(json.dumps({"fingerprint": "0123456789abcdef"}))  # the older hash
    check_run_dir(out, config)
    with pytest.raises(ConfigError, match="another configuration"):
        check_run_dir(out, tiny_config(corpus, tmp_path / "cache", "train.monitor_test=true"))


def test_monitored_test_curve_is_logged_but_changes_nothing(corpus, tiny_run, tmp_path):
    reference_dir, reference = tiny_run
    out = tmp_path / "monitored"
    results = run_experiment(
        tiny_config(corpus, tmp_path / "cache", "train.monitor_test=true"), out, progress=False, log=lambda m: None
    )
    assert results["uar"] == pytest.approx(reference["uar"])
    for fold in (f["test"] for f in reference["folds"]):
        ours, theirs = (read_rows(d / "seed-0" / fold / "log.csv") for d in (out, reference_dir))
        assert [r["train_loss"] for r in ours] == [r["train_loss"] for r in theirs], "same training"
        assert [r["val_uar"] for r in ours] == [r["val_uar"] for r in theirs], "same selection"
        assert all(r["test_uar"] == "" for r in theirs)
        test_uar = [float(r["test_uar"]) for r in ours]
        assert len(test_uar) == 2 and all(0 <= v <= 100 for v in test_uar)
        done = json.loads((out / "seed-0" / fold / "done.json").read_text())
        # The weights kept are the best epoch's, so their test score is that epoch's monitored one.
        assert test_uar[done["best_epoch"] - 1] == pytest.approx(done["uar"])
        row = next(f for f in results["folds"] if f["test"] == fold)
        assert row["test_uar_max"] == pytest.approx(max(test_uar)) and row["test_uar_last"] == pytest.approx(test_uar[-1])
        assert row["test_uar_max_epoch"] == test_uar.index(max(test_uar)) + 1
        assert row["val_uar"] == pytest.approx(float(read_rows(out / "seed-0" / fold / "log.csv")[done["best_epoch"] - 1]["val_uar"]))
    report = (out / "report.md").read_text()
    assert "Best test UAR (epoch)" in report and "never a result of this run" in report
    assert "Best test UAR" not in (reference_dir / "report.md").read_text(), "unmonitored runs have no such column"


def test_augmented_run_trains_on_changed_segments_and_evaluates_on_clean_ones(corpus, tiny_run, tmp_path, monkeypatch):
    """freq_warp and spec_augment touch training batches only: validation and test see the segments as cached."""
    reference_dir, reference = tiny_run
    seen = {"train": 0, "eval": 0}
    real_warp, real_predict = training.freq_warp, training.predict_segments

    def counting_warp(x, generator, max_warp):
        seen["train"] += 1
        return real_warp(x, generator, max_warp) + 1000.0  # a mark no log-Mel value reaches

    def checking_predict(model, x, *args, **kwargs):
        assert x.max() < 500.0, "an evaluated segment went through the training augmentation"
        seen["eval"] += 1
        return real_predict(model, x, *args, **kwargs)

    monkeypatch.setattr(training, "freq_warp", counting_warp)
    monkeypatch.setattr(training, "predict_segments", checking_predict)
    out = tmp_path / "augmented"
    config = tiny_config(corpus, tmp_path / "cache", "train.freq_warp=0.1", "train.spec_augment=true")
    results = run_experiment(config, out, progress=False, log=lambda m: None)
    assert seen["train"] > 0 and seen["eval"] > 0
    assert 0 <= results["uar"] <= 100
    fold = reference["folds"][0]["test"]
    ours, theirs = (read_rows(d / "seed-0" / fold / "log.csv") for d in (out, reference_dir))
    assert ours[0]["train_loss"] != theirs[0]["train_loss"], "augmentation changes what the network is trained on"


def test_split_speaker_index_names_each_segments_speaker(corpus, tmp_path):
    from atfnn.experiment import prepare_corpus, split_data

    prepared = prepare_corpus(tiny_config(corpus, tmp_path / "cache"), progress=False, log=lambda m: None)
    by_uid = {u.uid: u for u in prepared.utterances}
    speakers = sorted({u.speaker for u in prepared.utterances})
    uids = [u.uid for u in prepared.utterances if u.speaker != speakers[0]]  # a training split without one speaker
    split = split_data(prepared, uids)
    assert split.spk is not None and len(split.spk) == len(split)
    assert set(split.spk.tolist()) == {0, 1}, "indices are local to the split"
    for k in range(len(split)):
        assert speakers[1:][int(split.spk[k])] == by_uid[split.uids[split.utt[k]]].speaker


def test_speaker_adversarial_run_completes_and_logs_the_speaker_loss(corpus, tmp_path):
    out = tmp_path / "adversarial"
    config = tiny_config(corpus, tmp_path / "cache", "train.speaker_adversarial=1")
    results = run_experiment(config, out, progress=False, log=lambda m: None)
    assert 0 <= results["uar"] <= 100
    rows = read_rows(out / "seed-0" / results["folds"][0]["test"] / "log.csv")
    assert all(float(r["speaker_loss"]) > 0 for r in rows)


def test_cli_train_with_fold_subset_overrides_and_seeds(corpus, tmp_path):
    out = tmp_path / "cli"
    config = tmp_path / "exp.yaml"
    config.write_text(f"corpus:\n  name: synthetic\n  root: {corpus}\ncache_dir: {tmp_path / 'cache'}\n")
    speakers = sorted(p.name for p in corpus.iterdir() if p.is_dir())
    args = ["train", str(config), "--out", str(out), "--folds", speakers[0], "--seeds", "2", "--no-progress"]
    for item in TINY:
        args += ["--set", item]
    assert main(args + ["--set", "train.epochs=1"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [(f["seed"], f["test"]) for f in results["folds"]] == [(0, speakers[0]), (1, speakers[0])]
    assert results["config"]["train"]["epochs"] == 1
    assert len(results["seeds"]) == 2
    assert main(["train", str(config), "--out", str(out), "--folds", "nobody", "--no-progress", *sum([["--set", t] for t in TINY], []), "--set", "train.epochs=1"]) == 2


def test_trained_fold_model_predicts_explains_and_exports(tiny_run, corpus, tmp_path):
    """The artefacts of a run are usable as they are: predict, explain and export a fold's model."""
    import atfnn
    from atfnn.explain import explain
    from atfnn.export import export_onnx

    out, _ = tiny_run
    fold_dir = sorted((out / "seed-0").iterdir())[0]
    model = atfnn.load(fold_dir / "model", device="cpu")
    rows = read_rows(fold_dir / "predictions.csv")
    audio = Path(rows[0]["uid"])
    prediction = model.predict(audio)
    assert prediction.label == rows[0]["pred"], "the deployed model repeats the run's own test decision"
    assert prediction.probs[rows[0]["pred"]] == pytest.approx(float(rows[0][f"p_{rows[0]['pred']}"]), abs=1e-4)
    png, _ = explain(fold_dir / "model", audio, tmp_path / "fig.png")
    assert png.stat().st_size > 10_000
    onnx_path = export_onnx(fold_dir / "model", tmp_path / "m.onnx")
    assert atfnn.load(onnx_path).predict(audio).label == prediction.label
