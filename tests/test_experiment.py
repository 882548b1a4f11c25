"""A complete tiny experiment on the synthetic corpus: artefacts, agreement with predictions, resume, refusal."""
from __future__ import annotations

import csv
import json
import shutil
import statistics
import time
from pathlib import Path

import pytest

from atfnn import training
from atfnn.cli import main
from atfnn.config import ModelConfig, load_config
from atfnn.errors import ConfigError
from atfnn.experiment import (
    LOCK, WorkerCall, _in_workers, check_run_dir, final_epochs, rescore_run, run_experiment, run_lock,
    t_encoder_precision,
)
from atfnn.metrics import uar, war
from atfnn.model import build_model

TINY = [
    "model.lstm_hidden=8",
    "model.lstm_layers=1",
    "train.batch_size=16",
    "train.epochs=2",
    "frontend.segment_hop=128",
    "train.threads=2",
]


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


def is_possible_uar(value: float) -> bool:
    """A test speaker of the tiny corpus has 3 utterances of each of 4 classes: UAR = 100 * (correct) / 12."""
    return abs(value * 12 / 100 - round(value * 12 / 100)) < 1e-6


def assert_results_agree_with_predictions(out: Path, results: dict) -> None:
    y_true, y_pred = [], []
    for path in sorted(out.glob("seed-0/*/predictions.csv")):
        rows = read_rows(path)
        y_true += [r["label"] for r in rows]
        y_pred += [r["pred"] for r in rows]
    assert len(y_true) == results["n"] == 36
    assert results["uar"] == pytest.approx(uar(y_true, y_pred, results["labels"]))
    assert results["war"] == pytest.approx(war(y_true, y_pred))


@pytest.mark.parametrize(("variant", "expected"), [("afnn", None), ("atnn", "fp32"), ("atfnn", "fp32")])
def test_done_json_names_a_bi_lstm_precision_only_for_networks_with_one(variant, expected):
    model = build_model(ModelConfig(variant=variant, lstm_hidden=8), 4)
    assert t_encoder_precision(model, "fp32") == expected


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
        done = json.loads((d / "done.json").read_text())
        assert len(read_rows(d / "log.csv")) == done["epochs"]
        assert done["t_encoder_precision"] == "fp32"  # what the Bi-LSTM ran in, beside the config's precision
        y_true += [r["label"] for r in rows]
        y_pred += [r["pred"] for r in rows]
    saved = json.loads((out / "results.json").read_text())
    assert saved["n"] == len(y_true) == 3 * 4 * 3
    assert saved["war"] == pytest.approx(war(y_true, y_pred))
    assert saved["uar"] == pytest.approx(uar(y_true, y_pred, saved["labels"]))
    assert sum(map(sum, saved["confusion"])) == saved["n"]
    assert saved["config"]["model"]["lstm_hidden"] == 8
    assert "| synthetic | Leave-one-speaker-out (3 folds) | ATFNN" in (out / "report.md").read_text()
    kept = []
    for fold in folds:
        curve = [float(r["val_uar"]) for r in read_rows(out / "seed-0" / fold / "log.csv")]
        best = curve.index(max(curve)) + 1  # the first epoch of the best validation UAR
        assert json.loads((out / "seed-0" / fold / "done.json").read_text())["best_epoch"] == best, fold
        kept.append(best)
    assert final_epochs(out) == max(1, round(statistics.median(kept)))
    assert saved["selection"] == {"kind": "split", "trainings": 3, "seconds": pytest.approx(
        sum(json.loads((out / "seed-0" / f / "done.json").read_text())["seconds"] for f in folds), abs=0.2)}
    assert "Selection: split" in (out / "report.md").read_text()


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


def finish_a_fold(out: Path) -> None:
    """What ties a run directory to its configuration: a finished fold."""
    (out / "seed-0" / "spk01").mkdir(parents=True)
    (out / "seed-0" / "spk01" / "done.json").write_text("{}")


def test_changed_config_is_refused(corpus, tmp_path):
    out = tmp_path / "run"
    check_run_dir(out, tiny_config(corpus, tmp_path / "cache"))
    finish_a_fold(out)
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
    finish_a_fold(out)
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
        assert len(test_uar) == 2 and all(is_possible_uar(v) for v in test_uar)
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
    assert_results_agree_with_predictions(out, results)
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
    assert_results_agree_with_predictions(out, results)
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


# --- no test-speaker data reaches training or selection ------------------------------------------------------------

@pytest.fixture
def trainer_spy(monkeypatch):
    """Every training the experiment starts: its folder, the uids it trains and validates on, its epoch count."""
    import atfnn.experiment as experiment

    calls = []
    real = experiment.train_fold

    def spy(model_cfg, train_cfg, labels, train, validation, fold_dir, *args, **kwargs):
        calls.append({"dir": Path(fold_dir), "train": set(train.uids),
                      "validation": set(validation.uids) if validation is not None else set(),
                      "epochs": args[2] if len(args) > 2 else kwargs.get("epochs")})
        return real(model_cfg, train_cfg, labels, train, validation, fold_dir, *args, **kwargs)

    monkeypatch.setattr(experiment, "train_fold", spy)
    return calls


@pytest.fixture(scope="module")
def session_corpus(corpus, tmp_path_factory) -> Path:
    """The tiny corpus as a manifest with sessions: spk01 alone in S1, spk02 and spk03 in S2."""
    manifest = tmp_path_factory.mktemp("sessions") / "manifest.csv"
    lines = ["path,label,speaker,session"]
    for wav in sorted(corpus.glob("spk*/*.wav")):
        session = "S1" if wav.parent.name == "spk01" else "S2"
        lines.append(f"{wav},{wav.stem.rsplit('_', 1)[0]},{wav.parent.name},{session}")
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


LEAK_CASES = {
    "loso": [],
    "validation-speaker": ["protocol.validation=speaker"],
    "loso-session": ["protocol.kind=loso_session"],
    "inner-loso": ["protocol.selection=inner-loso"],
}


@pytest.mark.parametrize("case", list(LEAK_CASES))
def test_no_test_utterance_reaches_any_training_or_selection(case, corpus, session_corpus, tmp_path, trainer_spy):
    from atfnn.corpora import load_corpus

    extra = [*LEAK_CASES[case], "train.epochs=2"]
    if case == "loso-session":
        extra += ["corpus.name=manifest", f"corpus.root={session_corpus}"]
    config = tiny_config(corpus, tmp_path / "cache", *extra)
    out = tmp_path / "run"
    run_experiment(config, out, progress=False, log=lambda m: None)
    utterances = load_corpus(config.corpus.name, config.corpus.root).utterances
    group = (lambda u: u.session) if case == "loso-session" else (lambda u: u.speaker)
    folds = sorted({group(u) for u in utterances})
    for fold in folds:
        test = {u.uid for u in utterances if group(u) == fold}
        rest = {u.uid for u in utterances} - test
        mine = [c for c in trainer_spy if (out / "seed-0" / fold) in (c["dir"], *c["dir"].parents)]
        assert len(mine) == (1 + len({u.speaker for u in utterances if u.uid in rest}) if case == "inner-loso" else 1)
        for call in mine:
            assert not (call["train"] | call["validation"]) & test, f"fold {fold}: a test utterance reached training"
        outer = next(c for c in mine if c["dir"] == out / "seed-0" / fold)
        assert outer["train"] | outer["validation"] == rest, "every other utterance is used"
    if case == "inner-loso":
        check_inner_selection(out, folds)


def check_inner_selection(out: Path, folds: list[str]) -> None:
    """The chosen epoch count is the argmax of the mean of the inner folds' validation curves, and the outer fold
    trains exactly that many epochs with no validation split."""
    for fold in folds:
        fold_dir = out / "seed-0" / fold
        inner_dirs = sorted((fold_dir / "inner").iterdir())
        curves = [[float(r["val_uar"]) for r in read_rows(d / "log.csv")] for d in inner_dirs]
        assert len(curves) == 2 and all(len(c) == 2 for c in curves), "inner folds run to train.epochs"
        mean = [sum(values) / len(values) for values in zip(*curves)]
        chosen = mean.index(max(mean)) + 1
        selection = json.loads((fold_dir / "selection.json").read_text())
        assert selection["epochs"] == chosen and selection["curve"] == pytest.approx(mean)
        done = json.loads((fold_dir / "done.json").read_text())
        assert (done["selected_epochs"], done["epochs"], done["trainings"]) == (chosen, chosen, 3)
        assert [r["val_uar"] for r in read_rows(fold_dir / "log.csv")] == [""] * chosen
    results = json.loads((out / "results.json").read_text())
    assert results["selection"]["kind"] == "inner-loso" and results["selection"]["trainings"] == 9
    assert "Selection: inner-loso" in (out / "report.md").read_text()


def test_inner_loso_picks_the_argmax_of_the_mean_curve_and_can_reuse_it_across_seeds(
    corpus, tmp_path, trainer_spy, monkeypatch
):
    import atfnn.experiment as experiment

    # Each inner fold's own best epoch (2 and 3) differs from the best of their mean (3: 45 > 35 > 15).
    scripted = {"spk02": [10.0, 50.0, 30.0], "spk03": [20.0, 20.0, 60.0]}
    monkeypatch.setattr(experiment, "_inner_curve", lambda config, corpus, outer, inner, *a: {
        "curve": scripted[inner.name], "steps": 0, "seconds": 5.0})
    config = tiny_config(corpus, tmp_path / "cache", "protocol.selection=inner-loso", "protocol.inner_seeds=1",
                         "train.epochs=4")
    out = tmp_path / "run"
    results = run_experiment(config, out, folds=["spk01"], seeds=2, progress=False, log=lambda m: None)
    assert [(c["dir"].relative_to(out).as_posix(), c["epochs"], c["validation"]) for c in trainer_spy] == [
        ("seed-0/spk01", 3, set()), ("seed-1/spk01", 3, set())]
    reused = json.loads((out / "seed-1" / "spk01" / "done.json").read_text())
    assert reused["selection_reused_from_seed"] == 0 and reused["trainings"] == 1
    assert not (out / "seed-1" / "spk01" / "inner").exists()
    assert results["selection"]["trainings"] == 2 + 1 + 1 and results["selection"]["reused"] == 1
    assert "reused by the others" in (out / "report.md").read_text()


def test_parallel_inner_loso_trains_the_inner_folds_side_by_side_and_matches_the_serial_run(corpus, tmp_path):
    config = tiny_config(corpus, tmp_path / "cache", "protocol.selection=inner-loso", "protocol.inner_seeds=1",
                         "train.epochs=2")
    run_experiment(config, tmp_path / "serial", folds=["spk01"], seeds=2, progress=False, log=lambda m: None)
    messages = []
    run_experiment(config, tmp_path / "parallel", folds=["spk01"], seeds=2, progress=False, jobs=2,
                   log=messages.append)
    assert any(m.startswith("2 inner fold(s) to train, 2 at a time") for m in messages), messages
    # The second seed reuses the first seed's choice, so both outer trainings run together after the inner folds.
    assert any(m.startswith("2 fold(s) to train, 2 at a time") for m in messages), messages
    for seed in ("seed-0", "seed-1"):
        ours, theirs = (json.loads((tmp_path / run / seed / "spk01" / "done.json").read_text())
                        for run in ("parallel", "serial"))
        assert (ours["selected_epochs"], ours["trainings"]) == (theirs["selected_epochs"], theirs["trainings"])
        assert ours["uar"] == pytest.approx(theirs["uar"])
    curves = [json.loads((tmp_path / run / "seed-0" / "spk01" / "inner" / "spk03" / "curve.json").read_text())
              for run in ("parallel", "serial")]
    assert curves[0]["curve"] == pytest.approx(curves[1]["curve"], abs=1e-4)


def mark_or_fail(marker: str, fail: bool, seconds: float = 1.5) -> str:
    """A worker job for _in_workers (module level, so a spawned worker can import it): fail at once, or take
    `seconds` and leave a marker file."""
    if fail:
        raise RuntimeError(f"{Path(marker).name} failed")
    time.sleep(seconds)
    Path(marker).touch()
    return marker


def test_a_failing_worker_job_is_raised_and_no_more_work_is_handed_out(tmp_path):
    calls = [WorkerCall((i,), mark_or_fail, (str(tmp_path / f"job-{i}"), i == 0)) for i in range(8)]
    finished = []
    with pytest.raises(RuntimeError, match="job-0 failed"):
        for key, _ in _in_workers(1, calls):
            finished.append(key)
    assert finished == [], "the failure is raised before any later job's result is yielded"
    ran = sorted(p.name for p in tmp_path.glob("job-*"))
    # The executor may already have passed a call or two to the worker; of the seven, the rest are cancelled.
    assert len(ran) <= 3, f"work was still handed out after the first failure: {ran}"


def test_a_call_handed_out_when_its_dependency_ends_runs_beside_a_slower_one(tmp_path):
    """With two workers, "after" waits for "quick" alone, not for the slow call still running beside it."""
    def job(name: str, seconds: float) -> WorkerCall:
        return WorkerCall((name,), mark_or_fail, (str(tmp_path / name), False, seconds))

    handed_out = []

    def then(key: tuple) -> list[WorkerCall]:
        handed_out.append(key)
        return [job("after", 0.1)] if key == ("quick",) else []

    order = [key[0] for key, _ in _in_workers(2, [job("slow", 6.0), job("quick", 0.1)], then=then)]
    assert order == ["quick", "after", "slow"]
    assert handed_out == [("quick",), ("after",), ("slow",)]


def interrupt_at_the_second_inner_fold(config, out: Path, monkeypatch) -> None:
    """Run fold spk01 of an inner-loso config until the first checkpoint of its second inner fold (spk03), then
    stop it as a crash would, leaving the first inner fold finished."""
    class Stop(Exception):
        pass

    real_save = training._save_checkpoint

    def crash_on_second_inner(path, *args):
        real_save(path, *args)
        if path.parent.name == "spk03":
            raise Stop

    monkeypatch.setattr(training, "_save_checkpoint", crash_on_second_inner)
    with pytest.raises(Stop):
        run_experiment(config, out, folds=["spk01"], progress=False, log=lambda m: None)
    monkeypatch.setattr(training, "_save_checkpoint", real_save)


def test_inner_folds_resume_from_their_checkpoints(corpus, tmp_path, trainer_spy, monkeypatch):
    config = tiny_config(corpus, tmp_path / "cache", "protocol.selection=inner-loso", "train.epochs=1")
    out = tmp_path / "run"
    interrupt_at_the_second_inner_fold(config, out, monkeypatch)
    inner = out / "seed-0" / "spk01" / "inner"
    assert (inner / "spk02" / "curve.json").is_file() and (inner / "spk03" / "last.pt").is_file()
    trainer_spy.clear()
    run_experiment(config, out, folds=["spk01"], progress=False, log=lambda m: None)
    assert [c["dir"].relative_to(out).as_posix() for c in trainer_spy] == [
        "seed-0/spk01/inner/spk03", "seed-0/spk01"], "the finished inner fold is not trained again"
    assert not (inner / "spk03" / "last.pt").exists() and (inner / "spk03" / "curve.json").is_file()


def test_an_export_of_an_unfinished_inner_loso_run_resumes_without_retraining_a_finished_inner_fold(
    corpus, tmp_path, trainer_spy, monkeypatch
):
    from atfnn.reports import export_run

    config = tiny_config(corpus, tmp_path / "cache", "protocol.selection=inner-loso", "protocol.inner_seeds=1",
                         "train.epochs=1")
    out = tmp_path / "run"
    interrupt_at_the_second_inner_fold(config, out, monkeypatch)
    copy = tmp_path / "results" / "run"
    export_run(out, copy)
    assert (copy / "seed-0" / "spk01" / "inner" / "spk02" / "curve.json").is_file()
    trainer_spy.clear()
    run_experiment(config, copy, folds=["spk01"], progress=False, log=lambda m: None)
    assert [c["dir"].relative_to(copy).as_posix() for c in trainer_spy] == [
        "seed-0/spk01/inner/spk03", "seed-0/spk01"], "the finished inner fold is not trained again"
    # Exported again, the chosen epoch count travels with it: a second seed reuses it instead of choosing again.
    again = tmp_path / "results" / "again"
    export_run(copy, again)
    trainer_spy.clear()
    run_experiment(config, again, folds=["spk01"], seeds=2, progress=False, log=lambda m: None)
    assert [c["dir"].relative_to(again).as_posix() for c in trainer_spy] == ["seed-1/spk01"]


# --- train --final --------------------------------------------------------------------------------------------------

def test_train_final_trains_for_the_median_kept_epoch_under_the_run_lock(corpus, tmp_path, trainer_spy, capsys):
    from atfnn.experiment import train_final

    out = tmp_path / "run"
    for fold, best in (("spk01", 1), ("spk02", 3), ("spk03", 4)):
        (out / "seed-0" / fold).mkdir(parents=True)
        (out / "seed-0" / fold / "done.json").write_text(json.dumps({"best_epoch": best}))
    config = tmp_path / "exp.yaml"
    config.write_text(f"corpus:\n  name: synthetic\n  root: {corpus}\ncache_dir: {tmp_path / 'cache'}\n")
    args = ["train", str(config), "--out", str(out), "--final", "--no-progress", *sum([["--set", t] for t in TINY], []),
            "--set", "train.epochs=10"]
    with run_lock(out):
        with pytest.raises(ConfigError, match="in use by"):
            train_final(tiny_config(corpus, tmp_path / "cache"), out, progress=False)
        assert not (out / "final").exists()
    assert main(args) == 0
    assert [c["epochs"] for c in trainer_spy] == [3], "the median of 1, 3, 4, not the cap of 10"
    assert json.loads((out / "final" / "model" / "model.json").read_text())["info"]["epochs"] == 3
    assert len(read_rows(out / "final" / "work" / "log.csv")) == 3
    assert "for 3 epochs" in capsys.readouterr().out


# --- a run folder after failures ------------------------------------------------------------------------------------

def cli_args(config: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(config), "--out", str(out), "--no-progress", *sum([["--set", t] for t in TINY], []),
            "--set", "train.epochs=1", *extra]


def write_config(tmp_path: Path, root: Path) -> Path:
    config = tmp_path / "exp.yaml"
    config.write_text(f"corpus:\n  name: synthetic\n  root: {root}\ncache_dir: {tmp_path / 'cache'}\n")
    return config


def test_a_failed_start_does_not_lock_the_run_folder(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(cli_args(write_config(tmp_path, tmp_path / "nowhere"), out, "--folds", "spk01")) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "Traceback" not in err
    assert main(cli_args(write_config(tmp_path, corpus), out, "--folds", "spk01")) == 0
    assert (out / "seed-0" / "spk01" / "done.json").is_file()
    assert str(corpus) in (out / "config.yaml").read_text()


def test_an_unreadable_checkpoint_restarts_its_fold_and_keeps_the_finished_ones(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    config = write_config(tmp_path, corpus)
    assert main(cli_args(config, out, "--folds", "spk01")) == 0
    finished = (out / "seed-0" / "spk01" / "done.json").stat().st_mtime_ns
    report = (out / "report.md").read_text()
    assert "without `--folds` (or with `--folds spk02,spk03`, the folds still missing)" in report
    broken = out / "seed-0" / "spk02" / "last.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"\x00" * 100)
    (broken.parent / ".last.x1y2").write_bytes(b"half")
    capsys.readouterr()
    assert main(cli_args(config, out, "--folds", "spk01,spk02")) == 0
    captured = capsys.readouterr()
    said = captured.out + captured.err
    assert f"{broken}: unreadable checkpoint" in said and "from scratch" in said
    assert "Traceback" not in captured.err + captured.out
    assert (out / "seed-0" / "spk01" / "done.json").stat().st_mtime_ns == finished
    assert (out / "seed-0" / "spk02" / "done.json").is_file() and not list(broken.parent.glob(".last.*"))


def test_a_diverging_run_names_the_epoch_and_the_fix(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(cli_args(write_config(tmp_path, corpus), out, "--folds", "spk01", "--set", "train.lr=1e30"))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "training diverged at epoch 1" in err and "lower train.lr" in err
    assert "segment_probs" not in err


def test_done_json_counts_the_time_of_every_sitting(corpus, tmp_path, monkeypatch):
    import torch

    class Stop(Exception):
        pass

    real_save = training._save_checkpoint

    def save_then_stop(path, *args):
        real_save(path, *args)
        raise Stop

    config = tiny_config(corpus, tmp_path / "cache")
    out = tmp_path / "run"
    monkeypatch.setattr(training, "_save_checkpoint", save_then_stop)
    with pytest.raises(Stop):
        run_experiment(config, out, folds=["spk01"], progress=False, log=lambda m: None)
    monkeypatch.setattr(training, "_save_checkpoint", real_save)
    checkpoint = out / "seed-0" / "spk01" / "last.pt"
    payload = torch.load(checkpoint, weights_only=True)
    payload["seconds"] = 1000.0  # as if the first sitting had trained for 1000 s
    torch.save(payload, checkpoint)
    run_experiment(config, out, folds=["spk01"], progress=False, log=lambda m: None)
    assert json.loads((out / "seed-0" / "spk01" / "done.json").read_text())["seconds"] > 1000.0


def test_config_and_fold_files_are_written_atomically_and_synced(corpus, tmp_path, monkeypatch):
    import os

    from atfnn.experiment import prepare_corpus, write_fold_set
    from atfnn.protocols import make_folds

    replaced, synced = [], []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(os, "replace", lambda src, dst: (replaced.append(Path(dst)), real_replace(src, dst))[1])
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    config = tiny_config(corpus, tmp_path / "cache")
    out = tmp_path / "run"
    check_run_dir(out, config)
    assert {out / "config.yaml", out / "run.json"} <= set(replaced)
    prepared = prepare_corpus(config, progress=False, log=lambda m: None)
    replaced.clear()
    write_fold_set(config, make_folds(prepared.utterances, config.protocol), prepared.utterances, out)
    (store,) = [p.parent for p in (out / "folds").glob("*/folds.json")]
    splits = sorted((out / "folds" / "splits").glob("*.jsonl"))
    files = [*splits, store / "folds.json"]
    assert set(replaced) == {out / "foldset.json", *files}, "the pointer and each file of the set renamed into place"
    assert len(splits) == 3 * 3, "3 folds' train, validation and test: all different with validation utterances"
    assert len(synced) >= len(files) + 2, "each file, the set's folders and the pointer are synced"
    assert not [p for p in out.rglob(".*") if p.name != ".lock"], "no temporary file is left"
