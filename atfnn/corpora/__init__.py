"""Corpus loaders: `load_corpus(name, root)` turns a corpus folder into labelled, speaker-tagged utterances.

Every loader module has `NAME`, `LABELS` (its classes, alphabetical) and `load(root, **options) -> CorpusReport`.
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from types import ModuleType

from atfnn.corpora import abc, casia, emodb, emovo, iemocap, manifest, ravdess, savee, tess
from atfnn.corpora.base import CorpusReport, Utterance
from atfnn.errors import CorpusError

CORPORA: dict[str, ModuleType] = {
    m.NAME: m for m in (abc, casia, emodb, emovo, iemocap, manifest, ravdess, savee, tess)
}
# Imported on demand so that a problem in one of these cannot break the other loaders.
LAZY_CORPORA = {"synthetic": "atfnn.corpora.synthetic"}

__all__ = ["CORPORA", "CorpusReport", "Utterance", "available", "get_loader", "load_corpus"]


def available() -> list[str]:
    """The names `get_loader` accepts, sorted."""
    return sorted({*CORPORA, *LAZY_CORPORA})


def get_loader(name: str) -> ModuleType:
    """The loader module of corpus `name`."""
    if name in CORPORA:
        return CORPORA[name]
    if name in LAZY_CORPORA:
        try:
            return importlib.import_module(LAZY_CORPORA[name])
        except ModuleNotFoundError as e:
            if e.name != LAZY_CORPORA[name]:
                raise
            raise CorpusError(f"Corpus '{name}' is registered but its module {e.name} is not installed") from e
    raise CorpusError(f"Unknown corpus '{name}'; available: {', '.join(available())}")


def load_corpus(name: str, root: str | Path, **options) -> CorpusReport:
    """Load corpus `name` from `root`; `options` are the loader's keyword options (e.g. scripted=True for iemocap)."""
    loader = get_loader(name)
    _check_options(name, loader, options)
    return loader.load(root, **options)


def _check_options(name: str, loader: ModuleType, options: dict) -> None:
    """A CorpusError listing the loader's options, rather than a TypeError, when an option is misspelt."""
    params = list(inspect.signature(loader.load).parameters.values())[1:]  # [0] is root
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    accepted = [p.name for p in params]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise CorpusError(
            f"Corpus '{name}' has no option {', '.join(unknown)}; its options: {', '.join(accepted) or 'none'}"
        )
