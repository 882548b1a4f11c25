"""The registry of packaged models (one folder per model, ATFNN_PACKAGED_DIR), `--packaged NAME` on predict, explain
and serve, `atfnn models`, and the per-corpus cards written by atfnn.packaged.build. Tiny random-init models only;
tests/test_serve_packaged.py covers the model actually shipped."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_model_dir

import atfnn
import atfnn.explain
import atfnn.packaged as packaged
from atfnn.checkpoint import read_card
from atfnn.cli import main
from atfnn.config import FrontEndConfig
from atfnn.errors import ATFNNError
from atfnn.packaged.build import CORPORA, build

CASIA_LABELS = ["angry", "fear", "happy", "neutral", "sad", "surprise"]
EMODB_LABELS = ["angry", "bored", "disgust", "fear", "happy", "neutral", "sad"]
CV_UAR = {"casia": 37.861, "emodb": 71.234}


def cross_validated_run(path: Path, corpus: str, labels: list[str], speakers: list[str]) -> Path:
    """The results.json of an exported cross-validated run, as atfnn.packaged.build reads it."""
    folds = [{"seed": 0, "test": s, "uar": 50.0 + k, "war": 50.0} for k, s in enumerate(speakers)]
    results = {"uar": CV_UAR[corpus], "war": 70.0, "uar_std_seeds": 0.5, "labels": labels, "seeds": [{"seed": 0}],
               "n": 10 * len(speakers), "folds": folds,
               "config": {"corpus": {"name": corpus}, "train": {"precision": "fp32"}}}
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(results))
    return path


def built_model(tmp_path: Path, root: Path, corpus: str, labels: list[str], speakers: list[str],
                config: str, norm: str = "none") -> Path:
    final = tiny_model_dir(tmp_path / f"run-{corpus}" / "final" / "model", labels, FrontEndConfig(norm=norm),
                           info={"corpus": corpus, "speakers": "all", "epochs": 3, "seed": 0})
    cv = cross_validated_run(tmp_path / f"results-{corpus}", corpus, labels, speakers)
    return build(final, cv, config, root / f"{corpus}-atfnn")


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """A packaged root holding a CASIA and an EmoDB model built by atfnn.packaged.build, plus two folders that are
    not models; ATFNN_PACKAGED_DIR points at it."""
    root = tmp_path / "packaged"
    built_model(tmp_path, root, "casia", CASIA_LABELS, ["liuchanhg", "wangzhe"], "configs/casia_atfnn_v1.yaml")
    # As the shipped ones: the CASIA model of the first reading (raw log-Mel), the EmoDB one normalised.
    built_model(tmp_path, root, "emodb", EMODB_LABELS, ["03", "08", "09"], "configs/emodb_atfnn_v2.yaml", "global")
    (root / "half-built").mkdir()
    (root / "half-built" / "model.json").write_text("{}")  # no weights: not listed
    (root / "__pycache__").mkdir()
    monkeypatch.setenv(packaged.ROOT_ENV, str(root))
    return root


# ------------------------------------------------------------------------------------------------------- registry
def test_the_registry_lists_the_model_folders_of_its_root(root):
    assert packaged.available() == ["casia-atfnn", "emodb-atfnn"]
    assert packaged.packaged_model_dir() == root / packaged.DEFAULT
    assert packaged.packaged_model_dir("emodb-atfnn") == root / "emodb-atfnn"


def test_an_unknown_name_is_an_error_listing_the_names_present(root):
    with pytest.raises(ATFNNError, match=r"'savee-atfnn'.*available: casia-atfnn, emodb-atfnn.*build_packaged_model"):
        packaged.packaged_model_dir("savee-atfnn")
    with pytest.raises(ATFNNError, match="available: casia-atfnn, emodb-atfnn"):
        packaged.packaged_model_dir("half-built")


def test_a_name_is_never_read_as_a_path(root, tmp_path):
    outside = tiny_model_dir(tmp_path / "outside", CASIA_LABELS)  # a real model directory beside the root
    for name in ["../outside", str(outside)]:
        with pytest.raises(ATFNNError, match="no packaged model"):
            atfnn.load(packaged=name)
    with pytest.raises(ATFNNError, match="both a path"):
        atfnn.load(outside, packaged="emodb-atfnn")


def test_a_root_without_the_default_model_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv(packaged.ROOT_ENV, str(tmp_path / "absent"))
    with pytest.raises(ATFNNError, match=r"'casia-atfnn'.*available: none.*CORPUS=casia\|emodb"):
        atfnn.load()
    assert main(["models"]) == 2


def test_load_by_name_returns_that_model(root):
    assert atfnn.load(device="cpu").labels == CASIA_LABELS
    predictor = atfnn.load(packaged="emodb-atfnn", device="cpu")
    assert predictor.labels == EMODB_LABELS and predictor.card.info["name"] == "emodb-atfnn"


# ---------------------------------------------------------------------------------------------------------- CLI
def test_predict_packaged_uses_the_named_model(root, wav, capsys):
    assert main(["predict", "--packaged", "emodb-atfnn", str(wav), "--format", "json"]) == 0
    assert list(json.loads(capsys.readouterr().out)["probs"]) == EMODB_LABELS
    assert main(["predict", str(wav), "--format", "json"]) == 0  # without --packaged: the default
    assert list(json.loads(capsys.readouterr().out)["probs"]) == CASIA_LABELS


def test_predict_packaged_with_a_model_argument_or_an_unknown_name_is_an_error(root, wav, capsys):
    assert main(["predict", str(root / "casia-atfnn"), str(wav), "--packaged", "emodb-atfnn"]) == 2
    assert "both name the model" in capsys.readouterr().err
    assert main(["predict", "--packaged", "nope", str(wav)]) == 2
    assert "available: casia-atfnn, emodb-atfnn" in capsys.readouterr().err


def test_explain_packaged_uses_the_named_model(root, wav, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(atfnn.explain, "explain_main", lambda model, audio, out: seen.append((model, audio)) or 0)
    assert main(["explain", "--packaged", "emodb-atfnn", str(wav), "--out", str(tmp_path / "fig.png")]) == 0
    assert main(["explain", str(wav), "--out", str(tmp_path / "fig.png")]) == 0
    assert seen == [(str(root / "emodb-atfnn"), str(wav)), (str(root / "casia-atfnn"), str(wav))]


def test_serve_packaged_serves_the_named_model_and_its_card(root, monkeypatch):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import uvicorn
    from fastapi.testclient import TestClient

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: apps.append(app))
    assert main(["serve", "--packaged", "emodb-atfnn", "--port", "0"]) == 0
    with TestClient(apps[0]) as client:
        card = client.get("/api/model").json()
        assert card["labels"] == EMODB_LABELS and card["info"]["card"]["name"] == "emodb-atfnn"
        assert client.get("/healthz").json()["model"] == "packaged (emodb-atfnn)"


def test_models_lists_each_model_with_its_corpus_labels_and_uar(root, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    casia, emodb = out.split("emodb-atfnn\n")
    assert casia.startswith("casia-atfnn (default)\n") and CORPORA["casia"].title in casia
    assert "37.86 %" in casia and ", ".join(CASIA_LABELS) in casia
    assert CORPORA["emodb"].title in emodb and "71.23 %" in emodb and ", ".join(EMODB_LABELS) in emodb
    assert "half-built" not in out


# -------------------------------------------------------------------------------------------------------- build
def test_the_emodb_card_names_emodb_its_terms_labels_and_cv_numbers(root):
    card = read_card(root / "emodb-atfnn").info["card"]
    assert card["name"] == "emodb-atfnn" and card["configuration"] == "configs/emodb_atfnn_v2.yaml"
    assert card["training_data"]["corpus"].startswith("EmoDB") and card["training_data"]["language"] == "German"
    assert card["training_data"]["speakers"] == ["03", "08", "09"]
    assert "Berlin Database of Emotional Speech" in card["licence"] and "Berlin" in card["licence"]
    assert "research" in card["licence"] and "Chinese Academy" not in card["licence"]
    assert card["cross_validated"]["uar"] == 71.23 and card["cross_validated"]["labels"] == EMODB_LABELS
    assert "casia-atfnn" in card["not_included"]
    readme = (root / "emodb-atfnn" / "README.md").read_text()
    assert "all\n3 speakers of EmoDB" in readme and ", ".join(EMODB_LABELS) in readme
    assert "71.23 %" in readme and card["licence"] in readme and "66.7" in readme


def test_the_casia_card_keeps_casia_terms_and_points_to_the_emodb_model(root):
    card = read_card(root / "casia-atfnn").info["card"]
    assert "Institute of Automation" in card["licence"] and "CORPUS=emodb" in card["not_included"]
    assert "the paper reports 48.75" in (root / "casia-atfnn" / "README.md").read_text()


def test_the_build_refuses_an_unknown_corpus_and_a_cv_run_of_another_corpus(tmp_path):
    savee = tiny_model_dir(tmp_path / "savee", CASIA_LABELS, info={"corpus": "savee"})
    cv = cross_validated_run(tmp_path / "cv", "emodb", CASIA_LABELS, ["03"])
    with pytest.raises(ATFNNError, match="corpus 'savee'.*casia, emodb"):
        build(savee, cv, "configs/x.yaml", tmp_path / "out")
    casia = tiny_model_dir(tmp_path / "casia", CASIA_LABELS, info={"corpus": "casia"})
    with pytest.raises(ATFNNError, match="trained on casia, but .* cross-validated emodb"):
        build(casia, cv, "configs/x.yaml", tmp_path / "out")
    assert not (tmp_path / "out").exists()
