"""Run summaries from prediction files: pooled figures, seeds still training, compare over dirs and result files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from atfnn.errors import ATFNNError
from atfnn.reports import compare, compare_speakers, finalise_run, write_predictions

LABELS = ["angry", "sad"]


def fake_fold(run: Path, seed: int, fold: str, pairs: list[tuple[str, str]]) -> None:
    """A finished fold: predictions (label, pred) and its done.json."""
    d = run / f"seed-{seed}" / fold
    rows = [
        {"uid": f"{fold}/{i}", "speaker": fold, "label": t, "pred": p, "probs": [1.0 if p == "angry" else 0.0, 1.0 if p == "sad" else 0.0]}
        for i, (t, p) in enumerate(pairs)
    ]
    write_predictions(d / "predictions.csv", rows, LABELS)
    (d / "done.json").write_text(json.dumps({"fold": fold, "seed": seed, "best_epoch": 1, "epochs": 1}))


@pytest.fixture
def run(tmp_path) -> Path:
    """Classes and folds of unequal sizes, so that pooled WAR (micro), UAR (macro) and the means over folds differ."""
    run = tmp_path / "run"
    # seed 0, fold a: 3 of 3 right.  Fold b: the angry one called sad, 2 of 3 sad right (WAR 2/4, UAR (0 + 2/3) / 2).
    # Pooled: angry 1 of 2 right, sad 4 of 5: WAR 5/7 = 71.43, UAR (1/2 + 4/5) / 2 = 65.00.
    fake_fold(run, 0, "a", [("angry", "angry"), ("sad", "sad"), ("sad", "sad")])
    fake_fold(run, 0, "b", [("angry", "sad"), ("sad", "sad"), ("sad", "angry"), ("sad", "sad")])
    # seed 1 has only fold a so far (all wrong): it must not count yet
    fake_fold(run, 1, "a", [("angry", "sad"), ("sad", "angry")])
    return run


def test_a_seed_still_training_is_left_out_of_the_headline(run):
    config = {"corpus": {"name": "casia"}, "model": {"variant": "atfnn"}}
    results = finalise_run(run, LABELS, config)
    assert results["partial_seeds"] == [1]
    assert [s["seed"] for s in results["seeds"]] == [0]
    assert results["war"] == pytest.approx(100 * 5 / 7) and results["uar"] == pytest.approx(65.0)
    assert results["confusion"] == [[1, 1], [1, 4]]
    assert [(f["test"], f["n"]) for f in results["folds"]] == [("a", 3), ("b", 4)]
    assert [f["war"] for f in results["folds"]] == pytest.approx([100.0, 50.0])
    assert [f["uar"] for f in results["folds"]] == pytest.approx([100.0, 100 / 3])
    assert results["war_fold_mean"] == pytest.approx(75.0) and results["uar_fold_mean"] == pytest.approx(200 / 3)
    report = (run / "report.md").read_text()
    assert "| ATFNN (ours, 1 seed) | 71.43 | 65.00 |" in report and "Seed(s) 1 still training" in report
    fake_fold(run, 1, "b", [("sad", "sad"), ("sad", "sad")])
    results = finalise_run(run, LABELS, config)
    assert results["partial_seeds"] == [] and len(results["seeds"]) == 2
    # seed 1: 2 of 4 right; angry 0 of 1, sad 2 of 3
    assert results["seeds"][1]["war"] == pytest.approx(50.0) and results["seeds"][1]["uar"] == pytest.approx(100 / 3)
    assert results["war"] == pytest.approx((100 * 5 / 7 + 50.0) / 2)
    assert results["uar"] == pytest.approx((65.0 + 100 / 3) / 2)


def test_a_run_with_unfinished_folds_is_flagged_incomplete(tmp_path):
    run = tmp_path / "run"
    (run / "folds").mkdir(parents=True)
    (run / "folds" / "folds.json").write_text(json.dumps({"folds": [{"name": n, "labels": {}} for n in "abc"]}))
    fake_fold(run, 0, "a", [("angry", "angry"), ("sad", "sad")])
    fake_fold(run, 0, "b", [("angry", "sad"), ("sad", "sad")])
    results = finalise_run(run, LABELS, {"corpus": {"name": "casia"}, "model": {"variant": "atfnn"}})
    assert results["complete"] is False and results["folds_expected"] == 3
    assert results["war"] == pytest.approx(75.0)  # over the two finished folds, flagged rather than hidden
    report = (run / "report.md").read_text()
    assert "Incomplete run: 2 of its 3 folds" in report and "(2 of 3 folds, provisional)" in report
    assert "| run (incomplete: 2 of 3 folds) |" in compare([run])
    fake_fold(run, 0, "c", [("sad", "sad")])
    results = finalise_run(run, LABELS, {"corpus": {"name": "casia"}, "model": {"variant": "atfnn"}})
    assert results["complete"] is True and "Incomplete" not in (run / "report.md").read_text()


def test_compare_takes_run_dirs_and_results_files(run, tmp_path):
    finalise_run(run, LABELS, {"corpus": {"name": "casia"}, "model": {"variant": "atfnn"}})
    kept = tmp_path / "casia-egemaps.json"
    kept.write_text((run / "results.json").read_text().replace('"variant": "atfnn"', '"variant": "svm"'))
    table = compare([run, kept]).splitlines()
    assert table[2].startswith("| run | casia | atfnn | loso | 1 | 71.43 | 65.00 | 48.75 | 48.75 |")
    assert table[3].startswith("| casia-egemaps | casia | svm |")
    with pytest.raises(ATFNNError, match="no results.json"):
        compare([tmp_path / "missing"])


# ---------------------------------------------------------------------------------------------------------------
# Run layouts: a run made before fold sets (folds/ with absolute uids) and the exported layout (foldset.json, the
# shared folds/ store, relative uids) give the same report and the same compare row.


def old_layout_run(root: Path, run: Path) -> Path:
    """A run directory as `atfnn train` wrote it before fold sets, with absolute uids throughout."""
    from atfnn.config import load_config, save_config
    from atfnn.corpora.base import Utterance
    from atfnn.protocols import make_folds, write_folds

    utts = [Utterance(root / s / label / f"{i}.wav", label, s) for s in "abc" for label in LABELS for i in range(2)]
    folds = make_folds(utts)
    write_folds(folds, utts, run)
    save_config(load_config(None, ["corpus.name=synthetic", f"corpus.root={root}"]), run / "config.yaml")
    (run / "run.json").write_text("{}")
    for fold in folds:
        pairs = [(Path(uid).parent.name, "angry") for uid in fold.test]
        fake_fold(run, 0, fold.name, pairs)
        rows = [{"uid": uid, "speaker": fold.name, "label": t, "pred": p} for uid, (t, p) in zip(fold.test, pairs)]
        write_predictions(run / "seed-0" / fold.name / "predictions.csv", rows, LABELS)
    return run


def test_report_and_compare_read_the_old_layout_and_its_export(tmp_path, capsys):
    from atfnn.cli import main

    root = tmp_path / "corpus"
    old = old_layout_run(root, tmp_path / "runs" / "old")
    assert main(["report", str(old), "--export", str(tmp_path / "results" / "new")]) == 0
    new = tmp_path / "results" / "new"
    assert (new / "foldset.json").is_file() and not (new / "folds").exists()
    assert len(list((tmp_path / "results" / "folds").glob("*/folds.json"))) == 1
    exported = (new / "results.json").read_text()
    assert main(["report", str(new)]) == 0, "the exported copy reports from its fold set alone"
    before, after = json.loads(exported), json.loads((new / "results.json").read_text())
    assert after == before and after["uar"] == pytest.approx(50.0) and after["folds_expected"] == 3
    rows = compare([old, new]).splitlines()[2:]
    assert rows[0].removeprefix("| old ") == rows[1].removeprefix("| new ")
    text = "".join(p.read_text() for p in (tmp_path / "results").rglob("*.*") if p.suffix in (".csv", ".jsonl"))
    assert str(root) not in text, "no machine path in the exported predictions and fold files"
    capsys.readouterr()


def test_a_folder_without_folds_is_not_a_run(tmp_path):
    from atfnn.reports import run_labels

    with pytest.raises(ATFNNError, match="foldset.json"):
        run_labels(tmp_path)


def test_the_report_gives_each_test_speakers_share_of_predicted_classes(run):
    """A speaker whose predictions collapse onto one class must be visible: fold b predicts sad for 3 of its 4."""
    results = finalise_run(run, LABELS, {"corpus": {"name": "casia"}, "model": {"variant": "atfnn"}})
    shares = {f["test"]: f["pred_share"] for f in results["folds"]}
    assert shares["a"] == pytest.approx({"angry": 100 / 3, "sad": 200 / 3})
    assert shares["b"] == pytest.approx({"angry": 25.0, "sad": 75.0})
    report = (run / "report.md").read_text()
    assert "| 0 | b | 25.0 | 75.0 | 75.0 |" in report and "| 0 | a | 33.3 | 66.7 | 66.7 |" in report


def test_compare_speakers_gives_each_test_speakers_uar_and_largest_class(run):
    fake_fold(run, 1, "b", [("angry", "angry"), ("sad", "angry"), ("sad", "angry"), ("sad", "angry")])
    results = finalise_run(run, LABELS, {"corpus": {"name": "casia"}, "model": {"variant": "atfnn"}})
    # fold b: seed 0 UAR 33.3 with sad 75 %, seed 1 UAR 50 with angry 100 %: means 41.67, angry 62.5 % (sad 37.5)
    table = compare_speakers([run]).splitlines()
    assert table[0] == "| Run | Seeds | UAR (%) | a | b | kept epochs |"
    assert table[2].startswith(f"| run | 2 | {results['uar']:.2f} ± {results['uar_std_seeds']:.2f} |")
    assert "| 41.67 (angry 62 %) |" in table[2] and table[2].endswith("| 1-1 |")
    only_0 = compare_speakers([run], seed=0).splitlines()[2]
    assert only_0.startswith("| run | 1 | 65.00 | 100.00 (sad 67 %) | 33.33 (sad 75 %) |")


def test_compare_speakers_reads_the_shares_of_an_export_made_before_they_were_recorded(run):
    finalise_run(run, LABELS, {"corpus": {"name": "casia"}, "model": {"variant": "atfnn"}})
    saved = json.loads((run / "results.json").read_text())
    for fold in saved["folds"]:
        del fold["pred_share"]
    (run / "results.json").write_text(json.dumps(saved))
    assert "| 33.33 (sad 75 %) |" in compare_speakers([run], seed=0)
