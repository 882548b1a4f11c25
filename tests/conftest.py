"""Shared fixtures: where the real corpora are, and skipping (or failing, in CI) when they are missing; importing a
repository script (benchmarks/, scripts/) that is not part of the package."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ATFNN_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")).resolve()


def corpus_root(name: str) -> Path:
    """The root of a real corpus under ../shared/data; skip the test when it is absent, unless CI requires it."""
    root = SHARED_DATA / name
    if not root.is_dir():
        reason = f"corpus '{name}' not found at {root} (set ATFNN_SHARED_DATA or place ../shared/data beside the checkout)"
        if os.environ.get("ATFNN_REQUIRE_CORPORA") == "1":
            pytest.fail(reason + "; ATFNN_REQUIRE_CORPORA=1 makes this an error")
        pytest.skip(reason)
    return root


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
