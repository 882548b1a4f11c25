"""benchmarks/run.py runs from a clean checkout and writes what docs/performance.md reads."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import load_script


def _bench():
    return load_script("benchmarks/run.py")


@pytest.mark.slow
def test_frontend_benchmark_writes_json_and_markdown(tmp_path, monkeypatch):
    bench = _bench()
    monkeypatch.setattr(bench, "FRONTEND_SECONDS", 5.0)
    monkeypatch.setattr(bench, "FRONTEND_REPEATS", 2)
    monkeypatch.setattr(bench, "CASIA_FILES", 3)
    results = bench.main(["--only", "frontend", "--repeats", "1", "--malloc", "default", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["frontend"]["synthetic_60s"]["max_abs_diff_log"] < 1e-3, "torch log-Mel must match librosa"
    for name in ("atfnn", "librosa"):
        assert saved["frontend"]["synthetic_60s"][name]["audio_s_per_s"] > 0
    assert saved["machine"]["torch_threads"] >= 1 and results["repeats"] == 1
    assert "## Front end" in (tmp_path / "results.md").read_text()


def test_unknown_parts_and_variants_are_refused(tmp_path, capsys):
    bench = _bench()
    with pytest.raises(SystemExit) as refused:
        bench.main(["--only", "warp-drive", "--out", str(tmp_path)])
    assert refused.value.code == 2 and "unknown --only part(s) ['warp-drive']; available:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        bench.main(["--variants", "atfnn,resnet", "--out", str(tmp_path)])
    assert refused.value.code == 2 and "unknown variant(s) ['resnet']; available: atfnn" in capsys.readouterr().err
    assert not list(tmp_path.iterdir()), "a refused command writes nothing"


@pytest.mark.slow
def test_autocast_benchmark_reports_ratios_against_the_reference(tmp_path, monkeypatch):
    bench = _bench()
    small = bench.batch
    monkeypatch.setattr(bench, "BATCH", 4)
    monkeypatch.setattr(bench, "batch", lambda size=4, seed=0: small(size, seed))
    bench.main(["--only", "autocast", "--repeats", "1", "--malloc", "default", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())["autocast"]
    assert saved["optimised_fp32"]["per_s"] > 0 and saved["reference_fp32"]["per_s"] > 0
    ratio = saved["ratio_optimised_fp32_to_reference_fp32"]
    assert ratio == round(saved["optimised_fp32"]["per_s"] / saved["reference_fp32"]["per_s"], 2)
    assert f"optimised fp32 to reference fp32: x{ratio}" in (tmp_path / "results.md").read_text()
    # train.precision=bf16-lstm must run on any CPU (in fp32 where it has no bf16 LSTM kernel: atfnn.fast).
    lstm = saved["optimised_bf16_lstm"]
    assert "error" not in lstm and lstm["per_s"] > 0, lstm
    reference = saved["reference_fp32"]["per_s"]
    assert saved["ratio_optimised_bf16_lstm_to_reference_fp32"] == round(lstm["per_s"] / reference, 2)


def test_profile_step_writes_a_table_per_precision(tmp_path):
    module = load_script("benchmarks/profile_step.py")
    threads = torch.get_num_threads()
    try:
        written = module.main(["--precision", "fp32", "--batch", "2", "--rows", "5", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)  # the script sets its own; later tests keep theirs
    assert written == [tmp_path / "profile-fp32.txt"]
    text = written[0].read_text()
    assert text.startswith("fp32, 1 thread(s), batch 2") and "Self CPU" in text


def test_the_reference_is_the_same_weights_on_the_plain_layers():
    model, reference = _bench().model_pair("atfnn")
    assert model.f_encoder.use_fast and not reference.f_encoder.use_fast
    assert model.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())
    assert reference.f_encoder is not model.f_encoder  # switching one off must leave the other on
