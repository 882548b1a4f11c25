"""CASIA Chinese emotional speech, the public 1200-utterance subset: 4 speakers x 6 emotions x 50 sentences.

Two layouts are accepted under the root:
- as distributed: `<speaker>/<emotion>/<NNN>.wav` (the .lab/.peak/.tag files and the GBK sentence list are ignored);
- the flat mirror: `<emotion>/<NNN>-<emotion>-<speaker>.wav`.
`text` is the sentence id ("201".."250"): the same 50 sentences are spoken in every emotion.
"""
from __future__ import annotations

import re
from pathlib import Path

from atfnn.corpora._scan import ReportBuilder, audio_files, require_dir
from atfnn.corpora.base import CorpusReport, Utterance

NAME = "casia"
LABELS = ("angry", "fear", "happy", "neutral", "sad", "surprise")  # alphabetical, as in the paper's Table I
LAYOUT = "<speaker>/<emotion>/<NNN>.wav or <emotion>/<NNN>-<emotion>-<speaker>.wav"

# The README only says "2 female, 2 male"; the assignment below was checked on the data: the median F0 of the
# neutral utterances is about 240 Hz for liuchanhg and zhaoquanyin and about 110 Hz for wangzhe and ZhaoZuoxiang.
GENDERS = {"liuchanhg": "F", "wangzhe": "M", "zhaoquanyin": "F", "ZhaoZuoxiang": "M"}
_CANONICAL_SPEAKER = {name.lower(): name for name in GENDERS}  # mirrors lower-case the names

_SENTENCE = re.compile(r"^(\d{3})$")
_FLAT = re.compile(r"^(\d{3})-([a-z]+)-(\w+)$", re.IGNORECASE)


def load(root: str | Path, *, check_audio: bool = True) -> CorpusReport:
    """All CASIA utterances under `root`; `check_audio` reads each header to skip unreadable files."""
    base = require_dir(root, NAME, LAYOUT)
    builder = ReportBuilder(NAME, base, LAYOUT, probe=check_audio)
    for path in audio_files(base):
        parsed = _parse(path.relative_to(base))
        if isinstance(parsed, str):
            builder.skip(path, parsed)
            continue
        speaker, label, sentence = parsed
        builder.add(Utterance(path, label, speaker, gender=GENDERS.get(speaker), text=sentence))
    return builder.build()


def _parse(relative: Path) -> tuple[str, str, str] | str:
    """(speaker, label, sentence id) from a path relative to the root, or the reason it is not a CASIA file."""
    parts = relative.parts
    if len(parts) == 3:
        speaker, emotion, stem = parts[0], parts[1], relative.stem
        if not _SENTENCE.match(stem):
            return f"file name is not a 3-digit sentence id; expected {LAYOUT}"
        sentence = stem
    elif len(parts) == 2 and (match := _FLAT.match(relative.stem)):
        sentence, emotion, speaker = match.groups()
        if emotion.lower() != parts[0].lower():
            return f"emotion '{emotion}' in the name differs from its folder '{parts[0]}'"
    else:
        return f"not in the layout {LAYOUT}"
    label = emotion.lower()
    if label not in LABELS:
        return f"unknown emotion '{emotion}'; expected one of {', '.join(LABELS)}"
    return _CANONICAL_SPEAKER.get(speaker.lower(), speaker), label, sentence
