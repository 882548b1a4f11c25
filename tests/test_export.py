"""ONNX export: a valid, self-describing graph whose logits match PyTorch's (atol 1e-4), and the onnx backend."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import atfnn
from atfnn.checkpoint import load_model, save_model
from atfnn.config import FrontEndConfig, ModelConfig
from atfnn.errors import ATFNNError
from atfnn.cli import EXIT_ERROR, main, predict_main
from conftest import require_extra

onnx = require_extra("onnx", "export")
ort = require_extra("onnxruntime", "export")

from atfnn.export import INPUT_NAME, VERIFY_ATOL, export_onnx, read_metadata  # noqa: E402

LABELS = ["angry", "fear", "happy", "neutral", "sad", "surprise"]
ATOL = 1e-4  # float32 logits of two runtimes
CASIA_FILES = 3


def save(root: Path, config: ModelConfig, frontend: FrontEndConfig | None = None, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = atfnn.build_model(config, len(LABELS))
    return save_model(model, LABELS, frontend or FrontEndConfig(), root / config.variant, {"corpus": "test"})


def session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("export")
    model_dir = save(root, ModelConfig(lstm_hidden=16, lstm_layers=1), FrontEndConfig(norm="utterance"))
    return model_dir, export_onnx(model_dir, root / "out" / "tiny.onnx")


def test_export_is_valid_and_self_describing(tiny):
    model_dir, path = tiny
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    card = read_metadata(path)
    assert card.labels == LABELS and card.frontend == FrontEndConfig(norm="utterance")
    assert card.model == ModelConfig(lstm_hidden=16, lstm_layers=1) and card.info == {"corpus": "test"}
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["atfnn.labels"]) == LABELS
    (graph_input,) = proto.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == INPUT_NAME and dims[0].dim_param and [d.dim_value for d in dims[1:]] == [80, 128]
    assert not list(path.parent.glob(".*.tmp"))  # the temporary file was renamed into place


def test_batch_axis_is_dynamic(tiny):
    model_dir, path = tiny
    model, _ = load_model(model_dir)
    runner = session(path)
    x = torch.randn(7, 80, 128) * 3 - 6
    with torch.no_grad():
        expected = model(x).numpy()
    for lo, hi in [(0, 1), (0, 7), (2, 4)]:
        got = runner.run(None, {INPUT_NAME: x[lo:hi].numpy()})[0]
        np.testing.assert_allclose(got, expected[lo:hi], atol=ATOL)


def test_onnx_backend_predicts_like_torch(tiny, tmp_path):
    model_dir, path = tiny
    wav = tmp_path / "a.wav"
    rng = np.random.default_rng(0)
    sf.write(wav, (0.1 * rng.standard_normal(40000)).astype(np.float32), 16000)
    by_torch = atfnn.load(model_dir, device="cpu").predict(wav)
    by_onnx = atfnn.load(path, device="cpu").predict(wav)  # backend inferred from the suffix
    assert by_onnx.label == by_torch.label
    np.testing.assert_allclose(list(by_onnx.probs.values()), list(by_torch.probs.values()), atol=1e-5)
    assert [(s.start, s.end) for s in by_onnx.timeline] == [(s.start, s.end) for s in by_torch.timeline]

    out, err = io.StringIO(), io.StringIO()
    code = predict_main(str(path), [str(wav)], format="json", out=out, err=err)  # no backend: the suffix says onnx
    assert code == 0, err.getvalue()
    row = json.loads(out.getvalue())
    assert row["label"] == by_torch.label and row["probs"] == pytest.approx(by_torch.probs, abs=1e-5)


def test_predict_command_picks_the_onnx_backend_from_the_suffix(tiny, tmp_path, capsys):
    _, path = tiny
    wav = tmp_path / "a.wav"
    sf.write(wav, (0.1 * np.random.default_rng(1).standard_normal(24000)).astype(np.float32), 16000)
    assert main(["predict", str(path), str(wav), "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["label"] in LABELS and err == ""
    assert main(["predict", str(path), str(wav), "--backend", "torch"]) == EXIT_ERROR
    assert "is an ONNX file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("destination", "message"),
    [
        (lambda tmp: tmp, "is a folder; pass the file to write"),
        (lambda tmp: tmp / "notes.txt" / "m.onnx", "notes.txt is a file, not a folder"),
    ],
)
def test_export_to_a_bad_destination_is_one_error(tiny, tmp_path, destination, message, capsys):
    (tmp_path / "notes.txt").write_text("a file")
    target = destination(tmp_path)
    assert main(["export", str(tiny[0]), "--onnx", str(target)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert f"{target}: " in err and message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing written, no temporary left


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_export_into_a_read_only_folder_is_one_error(tiny, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    assert main(["export", str(tiny[0]), "--onnx", str(locked / "m.onnx")]) == EXIT_ERROR
    assert "no write permission" in capsys.readouterr().err


def test_a_write_failure_during_export_names_the_file(tiny, tmp_path, monkeypatch, capsys):
    """A disk that fills or a folder that vanishes mid-export: the OSError becomes one message, no temporary left."""
    from atfnn import export

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_trace", full_disk)
    target = tmp_path / "m.onnx"
    assert main(["export", str(tiny[0]), "--onnx", str(target)]) == EXIT_ERROR
    assert f"{target}: cannot be written (No space left on device)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_onnx_file_is_one_error(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00" * 64)
    assert main(["predict", str(bad), str(tmp_path / "a.wav")]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err


def test_onnx_file_without_atfnn_metadata_is_rejected(tiny, tmp_path):
    _, path = tiny
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ATFNNError, match="not an atfnn ONNX export"):
        atfnn.load(bare)
    out, err = io.StringIO(), io.StringIO()
    assert predict_main(str(tiny[0]), ["x.wav"], backend="onnx", out=out, err=err) == EXIT_ERROR
    assert "ONNX file" in err.getvalue()


def casia_segments(root: Path, n_files: int = CASIA_FILES) -> torch.Tensor:
    """Raw log-Mel segments of a few real CASIA files (different speakers and emotions)."""
    from atfnn.audio import features

    every = sorted(root.rglob("*.wav"))
    assert every, f"no wav files under {root}"
    files = every[:: max(1, len(every) // n_files)][:n_files]
    return torch.cat([features(f) for f in files])


@pytest.mark.corpus
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["atfnn", "tfnn", "afnn", "atnn"])
def test_parity_on_casia_default_size(variant, casia_root, tmp_path):
    """The paper-size network of each Table III variant: ONNX logits within 1e-4 of PyTorch's on real segments."""
    x = casia_segments(casia_root)
    model_dir = save(tmp_path, ModelConfig(variant=variant), seed=1)
    path = export_onnx(model_dir, tmp_path / f"{variant}.onnx", verify=False)
    onnx.checker.check_model(onnx.load(str(path)))
    model, _ = load_model(model_dir)
    with torch.no_grad():
        expected = model(x).numpy()
    got = session(path).run(None, {INPUT_NAME: x.numpy()})[0]
    assert got.shape == (len(x), len(LABELS))
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    assert np.abs(expected).max() > 10 * ATOL  # the logits are not all ~0, so the tolerance means something
    assert VERIFY_ATOL == ATOL


def test_export_of_a_speaker_normalised_model_applies_its_running_estimates(tmp_path):
    config = ModelConfig(lstm_hidden=16, lstm_layers=1, embedding_norm="speaker")
    torch.manual_seed(0)
    model = atfnn.build_model(config, len(LABELS)).eval()
    model.speaker_norm.running_mean.uniform_(-1, 1)
    model.speaker_norm.running_var.uniform_(0.5, 2)
    model_dir = save_model(model, LABELS, FrontEndConfig(), tmp_path / "m", {"corpus": "test"})
    path = export_onnx(model_dir, tmp_path / "m.onnx")  # verifies against PyTorch itself
    x = torch.randn(4, 80, 128) * 3 - 6
    with torch.no_grad():
        expected = model(x).numpy()
        identity = model.classifier(model.embed(x)[0]).numpy()
    np.testing.assert_allclose(session(path).run(None, {INPUT_NAME: x.numpy()})[0], expected, atol=ATOL)
    assert not np.allclose(expected, identity, atol=1e-3)  # the estimates do change the logits


@pytest.mark.parametrize("source", ["x", "encoding"])
def test_export_computes_t_attention_from_the_input_the_config_names(source, tmp_path):
    """model.t_attention_input: the exported graph matches PyTorch's logits and attention choice for both settings."""
    config = ModelConfig(lstm_hidden=16, lstm_layers=1, t_attention_input=source)
    path = export_onnx(save(tmp_path, config), tmp_path / f"{source}.onnx")  # verifies against PyTorch itself
    assert read_metadata(path).model.t_attention_input == source
    x = torch.randn(2, 80, 128) * 3 - 6
    model, _ = load_model(tmp_path / config.variant)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(session(path).run(None, {INPUT_NAME: x.numpy()})[0], expected, atol=ATOL)
