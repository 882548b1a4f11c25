"""Shared fixtures: where the real corpora are, and skipping (or failing, in CI) when they or the optional packages
are missing; importing a repository script (benchmarks/, scripts/) that is not part of the package."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

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
