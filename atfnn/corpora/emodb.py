"""Berlin Database of Emotional Speech (EmoDB): 535 utterances, 10 actors, 7 emotions.

Layout: `<root>/wav/03a01Fa.wav` (root may also be the wav folder itself). The name encodes speaker `03`,
text `a01`, emotion letter `F` (German initial) and version `a`.
"""
from __future__ import annotations

import re
from pathlib import Path

from atfnn.corpora._scan import ReportBuilder, require_dir
from atfnn.corpora.base import CorpusReport, Utterance

NAME = "emodb"
LABELS = ("angry", "bored", "disgust", "fear", "happy", "neutral", "sad")  # alphabetical
LAYOUT = "wav/<SS><TTT><E><v>.wav, e.g. wav/03a01Fa.wav"

LETTERS = {  # Wut, Langeweile, Ekel, Angst, Freude, Trauer, Neutral
    "W": "angry", "L": "bored", "E": "disgust", "A": "fear", "F": "happy", "T": "sad", "N": "neutral",
}
GENDERS = {  # from the EmoDB documentation
    "03": "M", "10": "M", "11": "M", "12": "M", "15": "M",
    "08": "F", "09": "F", "13": "F", "14": "F", "16": "F",
}

_NAME = re.compile(r"^(\d{2})([a-z]\d{2})([A-Z])([a-z])$")


def load(root: str | Path, *, check_audio: bool = True) -> CorpusReport:
    """All EmoDB utterances in `root/wav` (or `root`); `check_audio` reads each header to skip unreadable files."""
    base = require_dir(root, NAME, LAYOUT)
    wav_dir = base / "wav" if (base / "wav").is_dir() else base
    builder = ReportBuilder(NAME, base, LAYOUT, probe=check_audio)
    for path in sorted(p for p in wav_dir.iterdir() if p.suffix.lower() == ".wav" and not p.name.startswith(".")):
        match = _NAME.match(path.stem)
        if match is None:
            builder.skip(path, f"file name does not follow {LAYOUT}")
            continue
        speaker, text, letter, _version = match.groups()
        if letter not in LETTERS:
            builder.skip(path, f"unknown emotion letter '{letter}'; expected one of {''.join(LETTERS)}")
            continue
        builder.add(Utterance(path, LETTERS[letter], speaker, gender=GENDERS.get(speaker), text=text))
    return builder.build()
