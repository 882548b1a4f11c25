"""Toronto Emotional Speech Set (TESS): two female speakers (OAF, aged 64; YAF, aged 26), 200 words x 7 emotions.

Layout: `<speaker>_<word>_<emotion>.wav` anywhere under the root (usually in folders such as `OAF_angry/`), e.g.
`OAF_back_angry.wav`, `YAF_dog_ps.wav`; 'ps' (pleasant surprise) is the class surprise. `text` is the word.
"""
from __future__ import annotations

import re
from pathlib import Path

from atfnn.corpora._scan import ReportBuilder, audio_files, require_dir
from atfnn.corpora.base import CorpusReport, Utterance

NAME = "tess"
LABELS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")  # alphabetical
LAYOUT = "[<speaker>_<emotion>/]<OAF|YAF>_<word>_<emotion>.wav, e.g. OAF_back_angry.wav"

SPEAKERS = ("OAF", "YAF")  # both female
# The distributed set misnames one file OA_bite_neutral.wav (in OAF_neutral/); without this it would be a third speaker.
SPEAKER_SPELLINGS = {"OAF": "OAF", "YAF": "YAF", "OA": "OAF"}
EMOTIONS = {label: label for label in LABELS} | {"ps": "surprise"}

_NAME = re.compile(r"^([A-Za-z]+)_(.+)_([A-Za-z]+)$")


def load(root: str | Path, *, check_audio: bool = True) -> CorpusReport:
    """All TESS utterances under `root`; `check_audio` reads each header to skip unreadable files."""
    base = require_dir(root, NAME, LAYOUT)
    builder = ReportBuilder(NAME, base, LAYOUT, probe=check_audio)
    for path in audio_files(base):
        match = _NAME.match(path.stem)
        speaker, word, emotion = match.groups() if match else ("", "", "")
        if speaker.upper() not in SPEAKER_SPELLINGS:
            builder.skip(path, f"file name does not follow {LAYOUT}")
        elif emotion.lower() not in EMOTIONS:
            builder.skip(path, f"unknown emotion '{emotion}'; expected one of {', '.join(EMOTIONS)}")
        else:
            label, speaker = EMOTIONS[emotion.lower()], SPEAKER_SPELLINGS[speaker.upper()]
            builder.add(Utterance(path, label, speaker, gender="F", text=word.lower()))
    return builder.build()
