"""Surrey Audio-Visual Expressed Emotion (SAVEE), audio: four male speakers (DC, JE, JK, KL), 7 emotions, 480 files.

Layouts: `<speaker>/<code><NN>.wav` (e.g. `DC/sa01.wav`) or the flat `<speaker>_<code><NN>.wav` (e.g. `DC_a01.wav`).
Codes: a angry, d disgust, f fear, h happy, n neutral, sa sad, su surprise.
"""
from __future__ import annotations

import re
from pathlib import Path

from atfnn.corpora._scan import ReportBuilder, audio_files, require_dir
from atfnn.corpora.base import CorpusReport, Utterance

NAME = "savee"
LABELS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")  # alphabetical
LAYOUT = "<speaker>/<code><NN>.wav or <speaker>_<code><NN>.wav, speakers DC JE JK KL, codes a d f h n sa su"

SPEAKERS = ("DC", "JE", "JK", "KL")  # all male
CODES = {"a": "angry", "d": "disgust", "f": "fear", "h": "happy", "n": "neutral", "sa": "sad", "su": "surprise"}

_CODE = re.compile(r"^([a-z]{1,2})(\d{2})$")


def load(root: str | Path, *, check_audio: bool = True) -> CorpusReport:
    """All SAVEE utterances under `root`; `check_audio` reads each header to skip unreadable files."""
    base = require_dir(root, NAME, LAYOUT)
    builder = ReportBuilder(NAME, base, LAYOUT, probe=check_audio)
    for path in audio_files(base):
        speaker, code = _split(path)
        match = _CODE.match(code.lower())
        if speaker not in SPEAKERS or match is None:
            builder.skip(path, f"not in the layout {LAYOUT}")
        elif match.group(1) not in CODES:
            builder.skip(path, f"unknown emotion code '{match.group(1)}'; expected one of {', '.join(CODES)}")
        else:
            builder.add(Utterance(path, CODES[match.group(1)], speaker, gender="M"))
    return builder.build()


def _split(path: Path) -> tuple[str, str]:
    """(speaker, emotion code + number) from `DC_a01.wav` or `DC/a01.wav`."""
    speaker, sep, code = path.stem.partition("_")
    if sep:
        return speaker.upper(), code
    return path.parent.name.upper(), path.stem
