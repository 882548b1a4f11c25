"""Airplane Behaviour Corpus (ABC): German, 8 speakers, 6 emotions (430 utterances in the paper). Not public.

Because its distribution varies, ABC is read from a CSV manifest: `abc.csv` in the root by default (or `manifest=`,
relative to the root unless absolute) with columns path,label,speaker[,gender]; audio paths are relative to the
manifest's folder. Labels must be the paper's six classes ('intoxicate', the paper's spelling, is accepted).
"""
from __future__ import annotations

from pathlib import Path

from atfnn.corpora import manifest as manifest_format
from atfnn.corpora._scan import ReportBuilder
from atfnn.corpora.base import CorpusReport
from atfnn.errors import CorpusError

NAME = "abc"
LABELS = ("aggressive", "cheerful", "intoxicated", "nervous", "neutral", "tired")  # alphabetical, as in Table I
SPELLINGS = {label: label for label in LABELS} | {"intoxicate": "intoxicated"}
DEFAULT_MANIFEST = "abc.csv"
LAYOUT = f"{DEFAULT_MANIFEST} with columns path,label,speaker[,gender] and labels {', '.join(LABELS)}"


def load(root: str | Path, *, manifest: str | Path = DEFAULT_MANIFEST, check_audio: bool = True) -> CorpusReport:
    """The ABC utterances listed in `root/manifest` (or in `root` itself when it is the CSV file)."""
    base = Path(root).expanduser().resolve()
    path = base if base.is_file() else base / Path(manifest).expanduser()
    if not path.is_file():
        raise CorpusError(f"{path}: ABC manifest not found; expected {LAYOUT}")
    builder = ReportBuilder(NAME, path, LAYOUT, probe=check_audio)
    manifest_format.collect(path, builder, SPELLINGS)
    return builder.build()
