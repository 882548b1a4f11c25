"""Shared fixtures: where the real corpora are, and skipping (or failing, in CI) when they or the optional packages
are missing; importing a repository script (benchmarks/, scripts/) that is not part of the package; the tiny
synthetic corpus of the experiment tests; speech-like audio, tiny random-init model directories and their predictor."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import numpy as np
import pytest
import soundfile as sf
import torch

import atfnn
from atfnn.checkpoint import save_model
from atfnn.config import FrontEndConfig, ModelConfig
from atfnn.corpora.synthetic import SyntheticSpec, generate
from atfnn.frontend import NormStats
from atfnn.model import build_model

# The suite tests the fused kernels wherever they build, also on CPUs where the default (auto) would not use them
# (atfnn.kernels reads the switch at its first use); tests/test_kernels.py checks the default's choice.
os.environ.setdefault("ATFNN_KERNELS", "on")
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ATFNN_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")).resolve()


def skip_unless_required(reason: str, flag: str) -> NoReturn:
    """Skip (a test, or a whole module at import) for `reason`; fail instead when the environment sets `flag`=1, as
    CI does, so that a missing corpus or package cannot pass there as a skip."""
    if os.environ.get(flag) == "1":
        pytest.fail(f"{reason}; {flag}=1 makes this an error", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def corpus_root(name: str) -> Path:
    """The root of a real corpus under ../shared/data; skip the test when it is absent, unless CI requires it."""
    root = SHARED_DATA / name
    if not root.is_dir():
        skip_unless_required(
            f"corpus '{name}' not found at {root} (set ATFNN_SHARED_DATA or place ../shared/data beside the checkout)",
            "ATFNN_REQUIRE_CORPORA",
        )
    return root


def require_extra(module: str, extra: str) -> ModuleType:
    """Import an optional dependency of a test module (at its top); skip the module without it, unless
    ATFNN_REQUIRE_EXTRAS=1 (CI), where its absence fails the run."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        reason = f"{module} is not importable ({e}); it comes with pip install 'atfnn[{extra}]'"
    skip_unless_required(reason, "ATFNN_REQUIRE_EXTRAS")


@pytest.fixture
def casia_root() -> Path:
    return corpus_root("casia")


@pytest.fixture
def emodb_root() -> Path:
    return corpus_root("emodb")


def load_script(relative: str) -> ModuleType:
    """Import a script of the repository by its path from the root, e.g. "benchmarks/run.py"."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location("atfnn_script_" + path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The synthetic corpus of the experiment tests: 3 speakers, 3 utterances per emotion each (one per module; a
    module that needs another corpus defines its own `corpus`)."""
    root = tmp_path_factory.mktemp("synthetic") / "corpus"
    generate(root, SyntheticSpec(speakers=3, utterances_per_class=3, seed=1))
    return root


@pytest.fixture(scope="module")
def predictor(model_dir):
    """The module's own `model_dir` fixture, loaded for the CPU."""
    return atfnn.load(model_dir, device="cpu")


def speechlike(seconds: float, rate: int = 16000, seed: int = 0, channels: int = 1) -> np.ndarray:
    """A harmonic tone with a syllable-rate envelope plus a little noise: (samples,) or (samples, channels)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)
    wave = 0.1 * wave + 0.005 * rng.standard_normal(len(t))
    if channels > 1:
        wave = np.stack([wave * (1 + 0.1 * c) for c in range(channels)], axis=1)
    return wave.astype(np.float32)


def tiny_model_dir(path: Path, labels: list[str], frontend: FrontEndConfig | None = None, variant: str = "atfnn",
                   seed: int = 0, info: dict | None = None) -> Path:
    """A random-init model (16 LSTM units, one layer) for `labels`, saved with save_model into `path`; with
    frontend.norm=global, with made-up training statistics (mean -5, std 2 in every band)."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(variant=variant, lstm_hidden=16, lstm_layers=1), len(labels))
    frontend = frontend or FrontEndConfig()
    stats = None
    if frontend.norm == "global":
        ones = np.ones((frontend.n_mels, 1), dtype=np.float32)
        stats = NormStats(-5 * ones, 2 * ones, 1000)
    return save_model(model, labels, frontend, path, info, norm_stats=stats)


@pytest.fixture
def wav(tmp_path) -> Path:
    """A 2-s 16 kHz tone with a 3 Hz amplitude envelope: speech-like enough for predict and explain."""
    t = np.arange(32000) / 16000
    path = tmp_path / "speech.wav"
    sf.write(path, (0.1 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32), 16000)
    return path
