"""EMOVO, Italian emotional speech: 6 actors (f1-f3 female, m1-m3 male), 7 emotions, 14 sentences.

Layout: `<speaker>/<emo>-<speaker>-<sentence>.wav`, e.g. `f1/gio-f1-b1.wav`. Emotion codes (Italian):
dis disgust, gio happy (gioia), neu neutral, pau fear (paura), rab angry (rabbia), sor surprise, tri sad (tristezza).
`text` is the sentence code (b1, d2, l3, n5, ...).
"""
from __future__ import annotations

import re
from pathlib import Path

from atfnn.corpora._scan import ReportBuilder, audio_files, require_dir
from atfnn.corpora.base import CorpusReport, Utterance

NAME = "emovo"
LABELS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")  # alphabetical
LAYOUT = "<speaker>/<emo>-<speaker>-<sentence>.wav, e.g. f1/gio-f1-b1.wav"

SPEAKERS = ("f1", "f2", "f3", "m1", "m2", "m3")
CODES = {
    "dis": "disgust", "gio": "happy", "neu": "neutral", "pau": "fear",
    "rab": "angry", "sor": "surprise", "tri": "sad",
}

_NAME = re.compile(r"^([a-z]+)-([a-z]\d)-(\w+)$", re.IGNORECASE)


def load(root: str | Path, *, check_audio: bool = True) -> CorpusReport:
    """All EMOVO utterances under `root`; `check_audio` reads each header to skip unreadable files."""
    base = require_dir(root, NAME, LAYOUT)
    builder = ReportBuilder(NAME, base, LAYOUT, probe=check_audio)
    for path in audio_files(base):
        match = _NAME.match(path.stem)
        code, speaker, sentence = (g.lower() for g in match.groups()) if match else ("", "", "")
        if speaker not in SPEAKERS:
            builder.skip(path, f"file name does not follow {LAYOUT}")
        elif code not in CODES:
            builder.skip(path, f"unknown emotion code '{code}'; expected one of {', '.join(CODES)}")
        else:
            builder.add(Utterance(path, CODES[code], speaker, gender=speaker[0].upper(), text=sentence))
    return builder.build()
