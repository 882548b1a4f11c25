"""Every bad setting or broken model file is one clear error: exit code 2, the key or file named, no traceback.

Each case is generated in a temporary folder and run through the CLI (`atfnn.cli.main`) as a user would.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile as sf
import torch

from atfnn import checkpoint
from atfnn.checkpoint import META, WEIGHTS, load_model, read_card, save_model
from atfnn.cli import EXIT_ERROR, main
from atfnn.config import FrontEndConfig, ModelConfig
from atfnn.errors import ConfigError, ModelFileError
from atfnn.model import build_model

LABELS = ["angry", "happy", "sad"]


def run(capsys, argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


@pytest.fixture
def model_dir(tmp_path) -> Path:
    torch.manual_seed(0)
    model = build_model(ModelConfig(lstm_hidden=8, lstm_layers=1), len(LABELS))
    return save_model(model, LABELS, FrontEndConfig(), tmp_path / "model")


@pytest.fixture
def wav(tmp_path) -> Path:
    path = tmp_path / "a.wav"
    sf.write(path, (0.1 * np.random.default_rng(0).standard_normal(24000)).astype(np.float32), 16000)
    return path


# ----------------------------------------------------------------------------------------------- bad settings
@pytest.fixture
def no_corpus_config(tmp_path) -> Path:
    """A config whose corpus does not exist: a setting that is checked first fails before the corpus is looked at."""
    path = tmp_path / "exp.yaml"
    path.write_text(f"corpus:\n  name: casia\n  root: {tmp_path / 'no-corpus'}\n")
    return path


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.epochs=0", "train.epochs=0 is out of range; allowed: >= 1"),
        ("train.epochs=-3", "train.epochs=-3 is out of range; allowed: >= 1"),
        ("train.patience=0", "train.patience=0 is out of range; allowed: >= 1"),
        ("train.batch_size=0", "train.batch_size=0 is out of range; allowed: >= 1"),
        ("train.batch_size=-1", "train.batch_size=-1 is out of range; allowed: >= 1"),
        ("train.lr=-0.001", "train.lr=-0.001 is out of range; allowed: > 0"),
        ("train.lr=nan", "train.lr='nan' is out of range; allowed: a finite number"),
        ("model.lstm_layers=0", "model.lstm_layers=0 is out of range; allowed: >= 1"),
        ("frontend.sample_rate=0", "frontend.sample_rate=0 is out of range; allowed: >= 1"),
        ("frontend.hop_length=0", "frontend.hop_length=0 is out of range; allowed: >= 1"),
        ("model.encoder_dropout=1", "model.encoder_dropout=1.0 is out of range; allowed: [0, 1)"),
        ("protocol.val_fraction=0", "protocol.val_fraction=0.0 is out of range; allowed: (0, 1)"),
        ("train.precision=fp8", "train.precision='fp8' is not one of fp32, bf16, bf16-lstm, fp16"),
        ("frontend.n_mels=64", "model.f_group=5 must divide frontend.n_mels=64"),
        ("frontend.segment_frames=100", "model.t_group=8 must divide frontend.segment_frames=100"),
        ("model.frames=64", "model.frames=64 disagrees with frontend.segment_frames=128"),
    ],
)
@pytest.mark.parametrize("command", ["train", "prepare"])
def test_a_bad_setting_fails_at_once_naming_the_key(command, setting, message, no_corpus_config, tmp_path, capsys):
    out = ["--out", str(tmp_path / "run")] if command == "train" else []
    code, err = run(capsys, [command, str(no_corpus_config), "--set", setting, *out])
    assert code == EXIT_ERROR and message in err
    assert "no-corpus" not in err and not (tmp_path / "run").exists()  # stopped before the corpus and the run folder


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"exp.yaml": "base: exp.yaml\n"}, "circular 'base:' chain"),
        ({"exp.yaml": "base: b.yaml\n", "b.yaml": "base: exp.yaml\n"}, "circular 'base:' chain"),
        ({"exp.yaml": "train: [epochs: 3\n"}, "exp.yaml: not valid YAML"),
        ({"exp.yaml": "- a\n- b\n"}, "exp.yaml: expected a mapping at the top level, got list"),
        ({"exp.yaml": "base: gone.yaml\n"}, "gone.yaml not found (the base of"),
        ({"exp.yaml": "base: 3\n"}, "'base:' must name a YAML file"),
        ({}, "exp.yaml not found"),
    ],
)
def test_a_bad_config_file_is_one_clear_error(files, message, tmp_path, capsys):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    code, err = run(capsys, ["prepare", str(tmp_path / "exp.yaml")])
    assert code == EXIT_ERROR and message in err


# ----------------------------------------------------------------------------------------------- broken models
def _edit_card(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def corrupt(model: Path) -> None:
        card = json.loads((model / META).read_text())
        edit(card)
        (model / META).write_text(json.dumps(card))

    return corrupt


def _drop(section: str) -> Callable[[dict], None]:
    return lambda card: card.pop(section)


def _set(section: str, key: str, value) -> Callable[[dict], None]:
    return lambda card: card[section].__setitem__(key, value)


def _truncate(model: Path) -> None:
    data = (model / WEIGHTS).read_bytes()
    (model / WEIGHTS).write_bytes(data[: len(data) // 2])


def _zero(model: Path) -> None:
    (model / WEIGHTS).write_bytes(bytes((model / WEIGHTS).stat().st_size))


CORRUPTIONS = {
    "truncated weights": (_truncate, WEIGHTS, "not a valid safetensors file"),
    "zeroed weights": (_zero, WEIGHTS, "not a valid safetensors file"),
    "empty weights": (lambda m: (m / WEIGHTS).write_bytes(b""), WEIGHTS, "not a valid safetensors file"),
    "missing weights": (lambda m: (m / WEIGHTS).unlink(), WEIGHTS, "missing"),
    "weights are a folder": (lambda m: ((m / WEIGHTS).unlink(), (m / WEIGHTS).mkdir()), WEIGHTS, "is a folder"),
    "garbage card": (lambda m: (m / META).write_bytes(b"\x00\xffnot json{"), META, "not valid JSON"),
    "empty card": (lambda m: (m / META).write_text(""), META, "not valid JSON"),
    "card is a list": (lambda m: (m / META).write_text("[1, 2]"), META, "expected a JSON object"),
    "card lacks model": (_edit_card(_drop("model")), META, "lacks the model section"),
    "card lacks labels": (_edit_card(_drop("labels")), META, "lacks the labels section"),
    "card sizes disagree with the weights": (_edit_card(_set("model", "lstm_hidden", 16)), WEIGHTS,
                                             "do not fit the network model.json describes"),
    "card has other classes": (_edit_card(_set("model", "head", "mlp")), WEIGHTS, "missing: classifier"),
    "card model size != front end": (_edit_card(_set("model", "n_mels", 40)), META,
                                     "model.n_mels=40 disagrees with frontend.n_mels=80"),
    "card has a bad value": (_edit_card(_set("model", "lstm_layers", 0)), META, "model.lstm_layers=0 is out of range"),
    "card has a bad label list": (_edit_card(lambda c: c.__setitem__("labels", "angry")), META, "'labels' must be"),
    "card of another format": (_edit_card(lambda c: c.__setitem__("version", 9)), META, "unsupported model format"),
}


def _command(name: str, model: Path, wav: Path, tmp_path: Path) -> list[str]:
    if name == "predict":
        return ["predict", str(model), str(wav)]
    if name == "explain":
        return ["explain", str(model), str(wav), "--out", str(tmp_path / "fig.png")]
    pytest.importorskip("onnx")
    return ["export", str(model), "--onnx", str(tmp_path / "m.onnx")]


@pytest.mark.parametrize("case", CORRUPTIONS)
@pytest.mark.parametrize("command", ["predict", "explain", "export"])
def test_a_broken_model_directory_is_one_error_naming_the_file(command, case, model_dir, wav, tmp_path, capsys):
    corrupt, culprit, problem = CORRUPTIONS[case]
    corrupt(model_dir)
    code, err = run(capsys, _command(command, model_dir, wav, tmp_path))
    assert code == EXIT_ERROR
    assert str(model_dir / culprit) in err and problem in err, err


def test_an_unreadable_weights_file_is_reported_as_unreadable(model_dir, monkeypatch):
    real_open = open

    def guarded(path, *args, **kwargs):
        if str(path).endswith(WEIGHTS):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "open", guarded, raising=False)
    with pytest.raises(ModelFileError, match=f"{WEIGHTS}: cannot be read \\(Permission denied\\)"):
        load_model(model_dir)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_weights_file_without_read_permission_is_reported_as_unreadable(model_dir):
    (model_dir / WEIGHTS).chmod(0)
    with pytest.raises(ModelFileError, match="cannot be read \\(Permission denied\\)"):
        load_model(model_dir)


def test_nan_weights_are_rejected(model_dir):
    model, card = load_model(model_dir)
    next(iter(model.parameters())).data.fill_(float("nan"))
    save_model(model, card.labels, card.frontend, model_dir)
    with pytest.raises(ModelFileError, match="NaN or infinite"):
        load_model(model_dir)


# ----------------------------------------------------------------------------------------------- old cards
def test_an_old_card_with_the_model_sizes_loads(model_dir):
    card = json.loads((model_dir / META).read_text())
    assert (card["model"]["n_mels"], card["model"]["frames"]) == (80, 128)  # what every saved card holds
    assert read_card(model_dir).model.n_mels == 80


def test_a_card_without_the_model_sizes_takes_the_front_ends(tmp_path):
    torch.manual_seed(0)
    frontend = FrontEndConfig(n_mels=40, segment_frames=64, segment_hop=32)
    model = build_model(ModelConfig(n_mels=40, frames=64, lstm_hidden=8, lstm_layers=1), len(LABELS))
    directory = save_model(model, LABELS, frontend, tmp_path / "m")
    _edit_card(lambda c: (c["model"].pop("n_mels"), c["model"].pop("frames")))(directory)
    loaded, card = load_model(directory)
    assert (card.model.n_mels, card.model.frames) == (40, 64) and loaded(torch.randn(2, 40, 64)).shape == (2, 3)


def test_saving_a_network_that_does_not_fit_its_front_end_is_refused(tmp_path):
    model = build_model(ModelConfig(lstm_hidden=8, lstm_layers=1), len(LABELS))
    with pytest.raises(ConfigError, match="frontend.n_mels x frontend.segment_frames"):
        save_model(model, LABELS, FrontEndConfig(n_mels=40), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_saving_a_globally_normalised_model_without_its_statistics_is_refused(tmp_path):
    """Without them the saved model could not predict a single file."""
    model = build_model(ModelConfig(lstm_hidden=8, lstm_layers=1), len(LABELS))
    with pytest.raises(ConfigError, match="m: frontend.norm=global needs the training split's statistics"):
        save_model(model, LABELS, FrontEndConfig(norm="global"), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_saving_over_a_model_replaces_it_and_leaves_no_temporary(model_dir):
    model, card = load_model(model_dir)
    save_model(model, ["x", "y", "z"], card.frontend, model_dir)
    assert read_card(model_dir).labels == ["x", "y", "z"]
    assert sorted(p.name for p in model_dir.parent.iterdir() if p.name.startswith(".")) == []


# ----------------------------------------------------------------------------------------------- explain
def test_explain_of_an_onnx_file_names_the_fix_without_a_missing_option(tmp_path, wav, capsys):
    fake = tmp_path / "m.onnx"
    fake.write_bytes(b"onnx")
    code, err = run(capsys, ["explain", str(fake), str(wav), "--out", str(tmp_path / "f.png")])
    assert code == EXIT_ERROR and "model directory" in err and "--backend" not in err
