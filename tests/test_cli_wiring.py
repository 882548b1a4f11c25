"""Each `atfnn` subcommand through main(), on a tiny run trained once on the synthetic corpus: the output must be what
its library function gives for the same arguments, so a dropped argument or a swapped flag in atfnn/cli.py fails."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import yaml

import atfnn
from atfnn.cli import main
from atfnn.corpora import available
from atfnn.corpora.synthetic import LABELS, SyntheticSpec, generate
from conftest import require_extra

SPEAKERS = ("spk01", "spk02", "spk03")
PER_CLASS = 2  # utterances of each emotion per speaker
TINY = ["model.lstm_hidden=8", "model.lstm_layers=1", "train.batch_size=16", "train.epochs=1",
        "frontend.segment_hop=128", "train.threads=2"]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wiring") / "corpus"
    generate(root, SyntheticSpec(speakers=len(SPEAKERS), utterances_per_class=PER_CLASS, min_seconds=1.2,
                                 max_seconds=1.6, seed=2))
    return root


@pytest.fixture(scope="session")
def config_file(corpus) -> Path:
    """An experiment YAML naming only the corpus and the cache; the tiny sizes come as --set overrides."""
    path = corpus.parent / "experiment.yaml"
    path.write_text(yaml.safe_dump({"corpus": {"name": "synthetic", "root": str(corpus)},
                                    "cache_dir": str(corpus.parent / "cache")}))
    return path


@pytest.fixture(scope="session")
def trained(config_file) -> tuple[Path, str]:
    """`atfnn train` of the tiny config (one epoch per fold): the run directory and what the command printed."""
    run = config_file.parent / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        overrides = [arg for item in TINY for arg in ("--set", item)]
        code = main(["train", str(config_file), "--out", str(run), "--no-progress", *overrides])
    assert code == 0
    return run, printed.getvalue()


@pytest.fixture(scope="session")
def model(trained) -> Path:
    return trained[0] / "seed-0" / SPEAKERS[0] / "model"


@pytest.fixture(scope="session")
def audio(corpus, tmp_path_factory) -> tuple[Path, Path]:
    """One wav file, and a folder holding two more (one in a subfolder) and a file that is not audio."""
    base = tmp_path_factory.mktemp("audio")
    one = base / "one.wav"
    shutil.copy(corpus / SPEAKERS[1] / "sad_000.wav", one)
    folder = base / "folder"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(corpus / SPEAKERS[2] / "angry_001.wav", folder / "a.wav")
    shutil.copy(corpus / SPEAKERS[2] / "happy_000.wav", folder / "sub" / "b.wav")
    (folder / "notes.txt").write_text("not audio")
    return one, folder


def results_of(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def test_corpus_list_prints_every_loader(capsys):
    assert main(["corpus", "list"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == available() and {"synthetic", "manifest", "casia"} <= set(printed)


def test_corpus_describe_reads_the_named_corpus_at_the_given_root(corpus, capsys):
    assert main(["corpus", "describe", "synthetic", str(corpus)]) == 0
    n = len(SPEAKERS) * len(LABELS) * PER_CLASS
    assert f"Utterances: {n} ({len(SPEAKERS)} speakers, {len(LABELS)} classes)" in capsys.readouterr().out


def test_train_applies_the_overrides_and_prints_the_results(trained):
    run, printed = trained
    saved = results_of(run)
    assert saved["config"]["model"]["lstm_hidden"] == 8 and saved["config"]["train"]["epochs"] == 1
    assert {f["test"] for f in saved["folds"]} == set(SPEAKERS) and saved["n"] == len(SPEAKERS) * 4 * PER_CLASS
    assert printed.rstrip().endswith(f"WAR {saved['war']:.2f}  UAR {saved['uar']:.2f}  ({run}/results.json)")
    assert (run / "report.md").read_text() in printed


def test_compare_lists_the_given_runs_in_order(trained, tmp_path, capsys):
    run, _ = trained
    saved = results_of(run)
    other = {**saved, "war": 12.5, "uar": 10.0, "config": {**saved["config"], "method": "svm"}}
    kept = tmp_path / "kept-svm.json"
    kept.write_text(json.dumps(other))
    assert main(["compare", str(kept), str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| Run | Corpus | Method |")
    assert lines[2] == "| kept-svm | synthetic | svm | loso | 1 | 12.50 | 10.00 |  |  |"
    assert lines[3] == f"| run | synthetic | atfnn | loso | 1 | {saved['war']:.2f} | {saved['uar']:.2f} |  |  |"


def test_report_rebuilds_a_run_and_exports_only_with_the_flag(trained, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(trained[0], run)
    expected = results_of(run)
    for name in ("results.json", "report.md", "confusion.png"):
        (run / name).unlink()
    assert main(["report", str(run)]) == 0
    printed = capsys.readouterr().out
    assert results_of(run) == expected and (run / "confusion.png").is_file()
    assert printed.startswith("# copy\n") and printed == (run / "report.md").read_text() + "\n"
    assert "exported" not in printed

    dest = tmp_path / "kept"
    assert main(["report", str(run), "--export", str(dest)]) == 0
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    shared = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "folds").rglob("*") if p.is_file())
    assert capsys.readouterr().out.endswith(f"exported {len(files) + len(shared)} files to {dest}\n")
    assert {"results.json", "report.md", "config.yaml", "foldset.json", f"seed-0/{SPEAKERS[0]}/predictions.csv",
            f"seed-0/{SPEAKERS[0]}/model/model.json"} <= set(files)
    (foldset,) = {f.split("/")[1] for f in shared if f.endswith("/folds.json")}  # the fold set goes once into the shared folds/ beside the run
    assert f"folds/{foldset}/folds.json" in shared and json.loads((dest / "foldset.json").read_text())["foldset"] == foldset
    assert not [f for f in files if f.endswith(".safetensors")], "weights are not exported"


def test_baseline_passes_features_normalisation_and_folds(config_file, tmp_path, capsys):
    require_extra("opensmile", "baselines")
    out = tmp_path / "baseline"
    args = ["baseline", str(config_file), "--out", str(out), "--features", "ComParE_2016", "--speaker-norm",
            "--folds", SPEAKERS[1], "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    saved = results_of(out)
    assert saved["config"]["method"] == "compare-svm+spknorm" and saved["config"]["speaker_norm"] is True
    assert [f["test"] for f in saved["folds"]] == [SPEAKERS[1]]
    assert sorted(p.name for p in (out / "seed-0").iterdir()) == [SPEAKERS[1]]
    summary = f"WAR {saved['war']:.2f}  UAR {saved['uar']:.2f}  ({out}/results.json)"
    assert printed == (out / "report.md").read_text() + f"\n{summary}\n", "only the report and the summary line"

    (out / "results.json").unlink()  # `atfnn report` on a baseline run goes through the baseline's own summary
    assert main(["report", str(out)]) == 0
    assert results_of(out) == saved and "COMPARE-SVM+SPKNORM" in capsys.readouterr().out


def test_predict_json_timeline_walks_folders(model, audio, capsys):
    one, folder = audio
    args = ["predict", str(model), str(one), str(folder), "--format", "json", "--timeline", "--device", "cpu"]
    assert main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in rows] == [str(one), str(folder / "a.wav"), str(folder / "sub" / "b.wav")]
    predictor = atfnn.load(model, device="cpu")
    for row in rows:
        expected = predictor.predict(row["path"])
        assert row["label"] == expected.label and row["probs"] == pytest.approx(expected.probs, abs=1e-6)
        assert len(row["timeline"]) == len(expected.timeline) >= 1


def test_predict_csv_without_timeline_reports_a_missing_file(model, audio, tmp_path, capsys):
    one, _ = audio
    missing = tmp_path / "missing.wav"
    assert main(["predict", str(model), str(one), str(missing), "--format", "csv"]) == 1  # some files failed
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["path", "segment", "start", "end", "label", *LABELS, "error"]
    by_path = {r[0]: r for r in rows[1:]}
    assert len(rows) == 3 and by_path[str(missing)][-1] == "file not found"
    assert by_path[str(one)][1] == "" and by_path[str(one)][-1] == "", "one row per file without --timeline"


def test_predict_table_is_the_default_format(model, audio, capsys):
    one, _ = audio
    assert main(["predict", str(model), str(one)]) == 0
    lines = capsys.readouterr().out.splitlines()
    label = atfnn.load(model, device="cpu").predict(one).label
    assert lines[0].split() == ["file", "label", *LABELS] and lines[1].split()[:2] == [str(one), label]


def test_predict_with_the_onnx_backend(model, audio, tmp_path, capsys):
    require_extra("onnx", "export")
    require_extra("onnxruntime", "export")
    from atfnn.export import export_onnx

    one, _ = audio
    path = export_onnx(model, tmp_path / "model.onnx")
    expected = atfnn.load(model, device="cpu").predict(one).probs
    for backend in ([], ["--backend", "onnx"]):  # the .onnx suffix picks the ONNX backend by itself
        assert main(["predict", str(path), str(one), "--format", "json", *backend]) == 0
        row = json.loads(capsys.readouterr().out)
        assert row["probs"] == pytest.approx(expected, abs=1e-4)
    assert main(["predict", str(path), str(one), "--format", "json", "--backend", "torch"]) == 2
    assert "onnx" in capsys.readouterr().err.lower()


def test_explain_one_file_writes_the_figure(model, audio, tmp_path, capsys):
    one, _ = audio
    out = tmp_path / "fig.png"
    assert main(["explain", str(model), str(one), "--out", str(out)]) == 0
    expected = atfnn.load(model, device="cpu").predict(one)
    assert capsys.readouterr().out == f"{one}: {expected.label} (p = {expected.confidence:.3f}); wrote {out}\n"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explain_needs_audio_or_a_corpus(model, tmp_path, capsys):
    assert main(["explain", str(model), "--out", str(tmp_path / "x.png")]) == 2
    assert "needs an AUDIO file, or --corpus CONFIG" in capsys.readouterr().err


def test_explain_corpus_passes_the_limit_and_the_speakers(model, config_file, tmp_path, capsys):
    limited = tmp_path / "limited"
    corpus_args = ["explain", str(model), "--corpus", str(config_file), "--out"]
    assert main([*corpus_args, str(limited), "--limit-per-class", "1"]) == 0
    assert json.loads((limited / "ratios.json").read_text())["counts"] == {label: 1 for label in LABELS}
    assert f"wrote {limited / 'profiles.json'}" in capsys.readouterr().out

    speakers = tmp_path / "speakers"
    assert main([*corpus_args, str(speakers), "--speaker", SPEAKERS[2]]) == 0
    assert json.loads((speakers / "ratios.json").read_text())["counts"] == {label: PER_CLASS for label in LABELS}
    assert main([*corpus_args, str(speakers), "--speaker", "nobody"]) == 2
    assert "no utterance of speaker(s) ['nobody']" in capsys.readouterr().err


def test_export_writes_the_named_onnx_file(model, tmp_path, capsys):
    require_extra("onnx", "export")
    from atfnn.export import read_metadata

    path = tmp_path / "sub" / "tiny.onnx"
    assert main(["export", str(model), "--onnx", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {path} (network only")
    card = read_metadata(path)
    assert card.labels == list(LABELS) and card.model.lstm_hidden == 8


def test_report_curves_draws_one_panel_per_fold_of_the_chosen_seed(trained, tmp_path, capsys):
    run = trained[0]
    png = tmp_path / "curves.png"
    assert main(["report", str(run), "--curves", str(png)]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"training curves of {', '.join(SPEAKERS)} in {png}")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["report", str(run), "--curves", str(png), "--seed", "7"]) == 2
    assert "seed-7: no fold with a log.csv" in capsys.readouterr().err
