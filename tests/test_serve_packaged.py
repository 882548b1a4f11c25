"""The packaged model: `atfnn.load()` and the CLI without a model argument. One test loads the real packaged model and
predicts a CASIA file; the others point the packaged location at a tiny random-init model."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import atfnn
import atfnn.packaged as packaged
from atfnn.checkpoint import WEIGHTS, read_card, save_model
from atfnn.cli import main
from atfnn.config import FrontEndConfig, ModelConfig
from atfnn.errors import ATFNNError
from atfnn.model import build_model

REPO = Path(__file__).resolve().parents[1]
CASIA_LABELS = ["angry", "fear", "happy", "neutral", "sad", "surprise"]


EMODB_LABELS = ["angry", "bored", "disgust", "fear", "happy", "neutral", "sad"]


@dataclass(frozen=True)
class Shipped:
    """A packaged model in the repository and what its card must agree with."""

    name: str
    corpus: str  # the corpus fixture's name
    labels: list[str]
    example: str  # a file of its corpus, relative to the root
    licence: str  # words its licence terms must contain
    other: str  # the other packaged model, named in not_included
    decisions: str  # tests/data file of its fp32 decisions (scripts/packaged_fp16_check.py --save)


SHIPPED = [
    Shipped("casia-atfnn", "casia_root", CASIA_LABELS, "wangzhe/angry/201.wav", "Institute of Automation", "EmoDB",
            "packaged_fp32_decisions.json"),
    Shipped("emodb-atfnn", "emodb_root", EMODB_LABELS, "wav/03a01Fa.wav", "Technische Universität Berlin",
            "casia-atfnn", "packaged_emodb_fp32_decisions.json"),
]
BY_NAME = pytest.mark.parametrize("shipped", SHIPPED, ids=[s.name for s in SHIPPED])


@BY_NAME
def test_a_packaged_model_loads_and_predicts_a_file_of_its_corpus(shipped, request):
    root = request.getfixturevalue(shipped.corpus)
    predictor = atfnn.load(packaged=shipped.name, device="cpu")
    assert predictor.labels == shipped.labels and predictor.card.model.variant == "atfnn"
    weights = load_file(str(packaged.packaged_model_dir(shipped.name) / WEIGHTS))
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float16}  # shipped in fp16
    assert {p.dtype for p in predictor.model.parameters()} == {torch.float32}  # and run in fp32
    result = predictor.predict(root / shipped.example)
    assert result.label in shipped.labels and sum(result.probs.values()) == pytest.approx(1.0)
    assert result.duration > 1.0 and len(result.timeline) >= 1


@BY_NAME
def test_the_fp16_packaged_weights_make_the_fp32_decisions(shipped, request):
    root = request.getfixturevalue(shipped.corpus)
    expected = json.loads((REPO / "tests" / "data" / shipped.decisions).read_text())["decisions"]
    results = atfnn.load(packaged=shipped.name, device="cpu").predict_many([root / name for name in expected], 64)
    assert {name: r.label for name, r in zip(expected, results)} == expected


@BY_NAME
def test_the_packaged_card_states_data_licence_labels_and_the_cross_validated_uar(shipped):
    card = read_card(packaged.packaged_model_dir(shipped.name)).info["card"]
    cv = json.loads((REPO / "results" / shipped.name / "results.json").read_text())
    assert card["cross_validated"]["uar"] == round(cv["uar"], 2)
    assert card["cross_validated"]["labels"] == shipped.labels == cv["labels"]
    assert shipped.licence in card["licence"] and "research" in card["licence"]
    assert shipped.other in card["not_included"] and "once" not in card["not_included"]
    assert card["training_data"]["speakers"] == sorted({f["test"] for f in cv["folds"]})
    readme = (packaged.packaged_model_dir(shipped.name) / "README.md").read_text()
    assert f"{round(cv['uar'], 2):.2f}" in readme and ", ".join(shipped.labels) in readme


# ----------------------------------------------------------------------------------------------------- no argument
@pytest.fixture
def tiny_packaged(tmp_path, monkeypatch) -> Path:
    """Make a tiny random-init model the default packaged one for this test."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(lstm_hidden=16, lstm_layers=1), len(CASIA_LABELS))
    directory = save_model(model, CASIA_LABELS, FrontEndConfig(), tmp_path / "packaged" / packaged.DEFAULT,
                           {"name": "tiny"})
    monkeypatch.setenv(packaged.ROOT_ENV, str(directory.parent))
    return directory


def test_load_without_a_path_is_the_packaged_model(tiny_packaged, wav):
    assert atfnn.load(device="cpu").predict(wav).probs == atfnn.load(tiny_packaged, device="cpu").predict(wav).probs


def test_predict_without_a_model_argument_uses_the_packaged_model(tiny_packaged, wav, capsys):
    assert main(["predict", str(wav), str(wav), "--format", "json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in lines] == [str(wav), str(wav)] and set(lines[0]["probs"]) == set(CASIA_LABELS)
    assert main(["predict", str(tiny_packaged), str(wav), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["probs"] == lines[0]["probs"]


def test_explain_without_a_model_argument_uses_the_packaged_model(tiny_packaged, wav, tmp_path, capsys):
    out = tmp_path / "fig.png"
    assert main(["explain", str(wav), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG" and "speech.wav" in capsys.readouterr().out


def test_a_mistyped_model_is_reported_as_a_model_not_as_audio(tiny_packaged, wav, tmp_path, capsys):
    assert main(["predict", str(tmp_path / "runs" / "typo" / "model"), str(wav)]) == 2
    assert "model: does not exist; pass a model directory" in capsys.readouterr().err
    assert packaged.is_model_argument("missing.onnx") and not packaged.is_model_argument("missing.wav")
    assert not packaged.is_model_argument(str(tmp_path))  # an existing folder without model.json holds audio


def test_a_missing_packaged_model_names_the_build_command(tmp_path, monkeypatch):
    monkeypatch.setenv(packaged.ROOT_ENV, str(tmp_path / "absent"))
    with pytest.raises(ATFNNError, match="scripts/build_packaged_model.sh"):
        atfnn.load()
