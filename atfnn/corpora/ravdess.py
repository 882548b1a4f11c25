"""RAVDESS, speech part: 24 actors (12 female, 12 male), 8 emotions, 2 statements.

Layout: `Actor_XX/MM-VV-EE-II-SS-RR-AA.wav` anywhere under the root (modality, vocal channel, emotion, intensity,
statement, repetition, actor). Only audio-only speech (modality 03, channel 01) belongs to this corpus; song files
(channel 02) are skipped with the reason "song, not speech". Odd actors are male, even actors female.
"""
from __future__ import annotations

import re
from pathlib import Path

from atfnn.corpora._scan import ReportBuilder, audio_files, require_dir
from atfnn.corpora.base import CorpusReport, Utterance

NAME = "ravdess"
LABELS = ("angry", "calm", "disgust", "fear", "happy", "neutral", "sad", "surprise")  # alphabetical
LAYOUT = "Actor_XX/03-01-EE-II-SS-RR-XX.wav"

AUDIO_ONLY = "03"
SPEECH, SONG = "01", "02"
EMOTIONS = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fear", "07": "disgust", "08": "surprise",
}
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}

_NAME = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")


def load(root: str | Path, *, check_audio: bool = True) -> CorpusReport:
    """All RAVDESS speech utterances under `root`; `check_audio` reads each header to skip unreadable files."""
    base = require_dir(root, NAME, LAYOUT)
    builder = ReportBuilder(NAME, base, LAYOUT, probe=check_audio)
    for path in audio_files(base):
        match = _NAME.match(path.stem)
        if match is None:
            builder.skip(path, f"file name does not follow {LAYOUT}")
            continue
        modality, channel, emotion, _intensity, statement, _repetition, actor = match.groups()
        if channel == SONG:
            builder.skip(path, "song, not speech")
        elif modality != AUDIO_ONLY or channel != SPEECH:
            builder.skip(path, f"modality {modality}, vocal channel {channel} is not audio-only speech (03-01)")
        elif emotion not in EMOTIONS:
            builder.skip(path, f"unknown emotion code '{emotion}'; expected 01-08")
        else:
            gender = "M" if int(actor) % 2 else "F"
            builder.add(Utterance(path, EMOTIONS[emotion], f"Actor_{actor}", gender=gender,
                                  text=STATEMENTS.get(statement)))
    return builder.build()
