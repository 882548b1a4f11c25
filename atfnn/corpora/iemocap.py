"""IEMOCAP (official release): 5 sessions of dyadic dialogues, 10 speakers (one female, one male per session).

Layout: `IEMOCAP_full_release/Session{1..5}/dialog/EmoEvaluation/<dialog>.txt` (labels),
`.../sentences/wav/<dialog>/<utterance>.wav` (audio), `.../dialog/transcriptions/<dialog>.txt` (text, optional).
The root may be `IEMOCAP_full_release` or its parent. The default selection is the paper's: improvised dialogues,
classes angry, happy, neutral, sad (2280 utterances in the real corpus).
"""
from __future__ import annotations

import re
from pathlib import Path

from atfnn.corpora._scan import ReportBuilder, require_dir
from atfnn.corpora.base import CorpusReport, Utterance
from atfnn.errors import CorpusError

NAME = "iemocap"
LABELS = ("angry", "happy", "neutral", "sad")  # alphabetical, as in the paper's Table I
LAYOUT = (
    "[IEMOCAP_full_release/]Session{1..5}/dialog/EmoEvaluation/*.txt and Session{1..5}/sentences/wav/<dialog>/<utt>.wav"
)
RELEASE_DIR = "IEMOCAP_full_release"
SESSIONS = tuple(f"Session{n}" for n in range(1, 6))

CODES = {"ang": "angry", "hap": "happy", "neu": "neutral", "sad": "sad"}
EXCITED = "exc"

# `[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]`; evaluator lines (C-E1:, A-F2:) don't match.
_LABEL_LINE = re.compile(r"^\[[\d.]+\s*-\s*[\d.]+\]\s+(Ses\S+)\s+(\S+)\s+\[")
# `Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.`
_TRANSCRIPT_LINE = re.compile(r"^(Ses\S+)\s+\[[^\]]*\]:\s*(.*)$")
# The utterance name ends with the speaker's gender letter and a 3-digit index: Ses01F_impro01_M012.
_UTTERANCE = re.compile(r"^(Ses\d{2})[FM]_(.+)_([FM])\d{3}$")


def load(
    root: str | Path, *, scripted: bool = False, merge_excited: bool = False, check_audio: bool = True
) -> CorpusReport:
    """The labelled IEMOCAP utterances: improvised only unless `scripted`; `merge_excited` counts 'exc' as happy."""
    release = _release_dir(require_dir(root, NAME, LAYOUT))
    builder = ReportBuilder(NAME, release, LAYOUT, probe=check_audio)
    for session in SESSIONS:
        session_dir = release / session
        if session_dir.is_dir():
            _load_session(session_dir, builder, scripted, merge_excited)
    return builder.build()


def _release_dir(base: Path) -> Path:
    for candidate in (base, base / RELEASE_DIR):
        if any((candidate / s).is_dir() for s in SESSIONS):
            return candidate
    raise CorpusError(f"{base}: no Session1..Session5 folders here or in {RELEASE_DIR}/; expected layout {LAYOUT}")


def _load_session(session_dir: Path, builder: ReportBuilder, scripted: bool, merge_excited: bool) -> None:
    codes = dict(CODES, **({EXCITED: "happy"} if merge_excited else {}))
    # Copies made on a Mac carry '._<dialog>.txt' AppleDouble files beside the real ones: not label files.
    evaluation_dir = session_dir / "dialog" / "EmoEvaluation"
    for label_file in sorted(p for p in evaluation_dir.glob("*.txt") if not p.name.startswith(".")):
        dialog = label_file.stem
        transcript = _transcript(session_dir / "dialog" / "transcriptions" / f"{dialog}.txt")
        for name, code in _labels(label_file):
            path = session_dir / "sentences" / "wav" / dialog / f"{name}.wav"
            match = _UTTERANCE.match(name)
            if match is None:
                builder.skip(path, f"utterance name '{name}' in {label_file} does not end in _F### or _M###")
            elif "impro" not in match.group(2) and not scripted:
                builder.skip(path, "scripted dialogue (pass scripted=True to include)")
            elif code not in codes:
                builder.skip(path, f"label '{code}' is not one of the selected classes ({', '.join(sorted(codes))})")
            else:
                session, gender = match.group(1), match.group(3)
                builder.add(Utterance(path, codes[code], session + gender, session, gender, transcript.get(name)))


def _labels(label_file: Path) -> list[tuple[str, str]]:
    """(utterance name, category code) for every utterance line of one EmoEvaluation file."""
    text = label_file.read_text(encoding="utf-8", errors="replace")
    return [m.groups() for line in text.splitlines() if (m := _LABEL_LINE.match(line))]


def _transcript(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8", errors="replace")
    return {m.group(1): m.group(2).strip() for line in text.splitlines() if (m := _TRANSCRIPT_LINE.match(line))}
