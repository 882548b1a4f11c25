"""benchmarks/run.py runs from a clean checkout and writes what docs/performance.md reads."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


def _bench():
    spec = importlib.util.spec_from_file_location("atfnn_bench_run", RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_unknown_parts_and_variants_are_refused(tmp_path):
    bench = _bench()
    with pytest.raises(SystemExit):
        bench.main(["--only", "warp-drive", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        bench.main(["--variants", "atfnn,resnet", "--out", str(tmp_path)])
