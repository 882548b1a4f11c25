"""The `atfnn` command: subcommands wired to the library, errors as messages with exit status 2."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from atfnn.checkpoint import save_model
from atfnn.cli import DEMO_CONFIG, EXIT_BROKEN_PIPE, EXIT_ERROR, EXIT_OK, EXIT_SOME_FAILED, main, predict_main
from atfnn.config import FrontEndConfig, ModelConfig, load_config
from atfnn.model import build_model

LABELS = ["angry", "happy", "neutral", "sad"]
SR = 16000
REPO = Path(__file__).resolve().parents[1]


def noise(seconds: float, rate: int = SR, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(ModelConfig(lstm_hidden=16, lstm_layers=1), len(LABELS))
    return save_model(model, LABELS, FrontEndConfig(), tmp_path_factory.mktemp("cli") / "model")


def test_corpus_describe_casia(casia_root, capsys):
    assert main(["corpus", "describe", "casia", str(casia_root)]) == 0
    out = capsys.readouterr().out
    assert "Utterances: 1200 (4 speakers, 6 classes)" in out and "liuchanhg" in out


def test_unknown_corpus_is_an_error_message(tmp_path, capsys):
    assert main(["corpus", "describe", "nope", str(tmp_path)]) == 2
    assert "Unknown corpus 'nope'; available:" in capsys.readouterr().err


def test_bad_override_is_reported(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("corpus:\n  name: casia\n")
    assert main(["prepare", str(cfg), "--set", "train.epochz=1"]) == 2
    assert "unknown key" in capsys.readouterr().err


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "atfnn", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("atfnn ")


def test_demo_config_is_valid_and_small():
    cfg = load_config(DEMO_CONFIG)
    assert cfg.corpus.name == "synthetic" and cfg.model.variant == "atfnn"
    assert cfg.train.epochs <= 10


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_demo_beats_chance(tmp_path, capsys):
    """The README's first command, end to end. Threshold: see docs/experiments.md (demo section)."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| synthetic | Leave-one-speaker-out (4 folds) | ATFNN" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["n"] == 4 * 4 * 12
    # Chance is 25% UAR. With 192 test utterances the accuracy of a chance-level classifier has a standard deviation
    # of about 3.1 points (binomial), so 40 is about 5 of them above chance; docs/experiments.md has the measured UAR.
    assert results["uar"] >= DEMO_MIN_UAR, results["uar"]


DEMO_MIN_UAR = 40.0


# ----------------------------------------------------------------------------------------------- predict
@pytest.fixture
def audio_dir(tmp_path) -> Path:
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    sf.write(root / "good.wav", noise(1.5), SR)
    sf.write(root / "sub" / "good2.flac", noise(2.0, rate=22050, seed=1), 22050)
    (root / "corrupt.wav").write_bytes(b"\x00\x01garbage" * 50)
    sf.write(root / "silent.wav", np.zeros(SR, dtype=np.float32), SR)
    (root / "notes.txt").write_text("not audio, not picked up by the directory walk")
    return root


def run_main(*args, **kwargs) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = predict_main(*args, out=out, err=err, **kwargs)
    return code, out.getvalue(), err.getvalue()


def test_predict_main_table_prints_good_files_and_names_failures(model_dir, audio_dir):
    code, out, err = run_main(str(model_dir), [str(audio_dir)], format="table")
    assert code == EXIT_SOME_FAILED == 1
    lines = out.strip().splitlines()
    assert lines[0].split()[:2] == ["file", "label"] and lines[0].split()[2:] == [x[:8] for x in LABELS]
    assert len(lines) == 3 and lines[1].startswith(str(audio_dir / "good.wav"))
    assert lines[2].startswith(str(audio_dir / "sub" / "good2.flac"))
    assert lines[1].split()[1] in LABELS
    assert f"{audio_dir / 'corrupt.wav'}: cannot be decoded" in err
    assert f"{audio_dir / 'silent.wav'}: is digital silence" in err
    assert "notes.txt" not in out + err


def test_predict_main_json_lines_parse_with_failures_in_band(model_dir, audio_dir):
    code, out, _ = run_main(str(model_dir), [str(audio_dir)], format="json", timeline=True)
    assert code == 1
    rows = {Path(r["path"]).name: r for r in map(json.loads, out.strip().splitlines())}
    assert set(rows) == {"good.wav", "good2.flac", "corrupt.wav", "silent.wav"}
    assert "decoded" in rows["corrupt.wav"]["error"] and "silence" in rows["silent.wav"]["error"]
    good = rows["good2.flac"]
    assert good["label"] in LABELS and sum(good["probs"].values()) == pytest.approx(1.0)
    assert good["timeline"][0]["start"] == 0.0 and good["timeline"][-1]["end"] == pytest.approx(2.0)


def test_predict_main_csv_parses(model_dir, audio_dir):
    code, out, _ = run_main(str(model_dir), [str(audio_dir)], format="csv", timeline=True)
    assert code == 1
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["path", "segment", "start", "end", "label", *LABELS, "error"]
    files = [r for r in rows if r["segment"] == "" and not r["error"]]
    segments = [r for r in rows if r["segment"] != ""]
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert len(files) == 2 and set(errors) == {"corrupt.wav", "silent.wav"}
    assert all(sum(float(r[x]) for x in LABELS) == pytest.approx(1.0, abs=1e-5) for r in files + segments)
    good = [r for r in segments if r["path"].endswith("good.wav")]
    assert [int(r["segment"]) for r in good] == list(range(len(good))) and float(good[-1]["end"]) == 1.5


def test_predict_main_exit_codes(model_dir, audio_dir, tmp_path):
    assert run_main(str(model_dir), [str(audio_dir / "good.wav")])[0] == EXIT_OK == 0
    code, out, err = run_main(str(model_dir), [str(audio_dir / "corrupt.wav"), str(tmp_path / "nope.wav")])
    assert code == EXIT_ERROR == 2 and out == "" and "nope.wav: file not found" in err
    code, _, err = run_main(str(tmp_path / "no-model"), [str(audio_dir)])
    assert code == 2 and "no-model: does not exist" in err
    code, _, err = run_main(str(model_dir), [str(audio_dir)], format="xml")
    assert code == 2 and "format" in err


def test_predict_cli_prints_the_table(model_dir, audio_dir, capsys):
    assert main(["predict", str(model_dir), str(audio_dir / "good.wav")]) == EXIT_OK
    out, err = capsys.readouterr()
    assert out.startswith("file") and str(audio_dir / "good.wav") in out and err == ""


@pytest.mark.parametrize("device", ["gpu0", "cuda:x", "tpu"])
def test_predict_unknown_device_names_the_flag_and_the_valid_values(model_dir, audio_dir, device, capsys):
    assert main(["predict", str(model_dir), str(audio_dir / "good.wav"), "--device", device]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert f"--device={device!r}" in err and "auto, cpu, cuda, cuda:N" in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_an_error_in_predict_and_train(model_dir, audio_dir, tmp_path, capsys):
    assert main(["predict", str(model_dir), str(audio_dir / "good.wav"), "--device", "cuda"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "--device='cuda'" in err and "CUDA is not available" in err
    config = tmp_path / "c.yaml"
    config.write_text(f"corpus:\n  name: casia\n  root: {tmp_path / 'no-corpus'}\n")
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--device", "cuda:1"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "--device='cuda:1'" in err and "CUDA is not available" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_train_rejects_an_unknown_device_before_reading_the_corpus(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"corpus:\n  name: casia\n  root: {tmp_path / 'no-corpus'}\n")
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--device", "gpu0"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "--device='gpu0' is not a device" in err and "auto, cpu, cuda, cuda:N" in err and "corpus" not in err
    assert not (tmp_path / "run").exists()
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--set", "train.device=gpu0"]) == EXIT_ERROR
    assert "train.device='gpu0' is not valid; allowed: auto, cpu, cuda, cuda:N" in capsys.readouterr().err


def test_predict_into_a_closed_pipe_ends_quietly(model_dir, audio_dir):
    """`atfnn predict ... | head`: the reader is gone before the first line; no BrokenPipeError traceback."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "atfnn", "predict", str(model_dir), str(audio_dir), "--timeline", "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    proc.stdout.close()  # no reader left: the first write fails with EPIPE
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_BROKEN_PIPE, err.decode()
    assert b"Traceback" not in err and b"BrokenPipe" not in err


@pytest.mark.parametrize("flag", [["--jobs", "0"], ["--seeds", "-1"], ["--epochs", "x"]])
def test_counts_on_the_command_line_must_be_positive(flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), *flag])
    assert exit_info.value.code == 2 and "expected an integer >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(("config", "message"), [(None, "cannot be read"), ("a: [", "not valid YAML"),
                                                 ("- 1\n", "expected a mapping")])
def test_report_of_a_folder_without_a_good_config_names_it(config, message, tmp_path, capsys):
    if config is not None:
        (tmp_path / "config.yaml").write_text(config)
    assert main(["report", str(tmp_path)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert f"{tmp_path / 'config.yaml'}: {message}" in err and "Traceback" not in err
