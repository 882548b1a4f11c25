"""Helpers every corpus loader shares: resolving the root, checking audio cheaply, collecting what was skipped."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from atfnn.corpora.base import CorpusReport, Utterance
from atfnn.errors import CorpusError

AUDIO_SUFFIXES = (".wav",)
MAX_REASONS_IN_ERROR = 3


def require_dir(root: str | Path, corpus: str, layout: str) -> Path:
    """The absolute corpus root; a CorpusError naming the expected layout when it is not a directory."""
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise CorpusError(f"{path}: {corpus} root not found or not a directory; expected layout {layout}")
    return path


def audio_files(directory: Path) -> list[Path]:
    """Every .wav file under `directory` (any case), sorted; AppleDouble '._x.wav' companions are not audio."""
    return sorted(
        p for p in directory.rglob("*")
        if p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith("._") and p.is_file()
    )


def audio_problem(path: Path, probe: bool = True) -> str | None:
    """Why `path` cannot be used as audio, or None. Reads the header only (soundfile.info), never the samples."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "file not found"
    except OSError as e:
        return f"cannot access file ({e.strerror})"
    if size == 0:
        return "empty file (0 bytes)"
    if not probe:
        return None
    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError) as e:
        return f"unreadable audio ({e})"
    if info.frames == 0:
        return "no audio frames"
    return None


@dataclass
class ReportBuilder:
    """Accumulates utterances and skips for one corpus root; `build` sorts them and refuses an empty corpus."""

    corpus: str
    root: Path
    layout: str
    probe: bool = True
    utterances: list[Utterance] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def add(self, utterance: Utterance) -> None:
        """Keep the utterance if its audio is usable, otherwise record it as skipped with the reason."""
        problem = audio_problem(utterance.path, self.probe)
        if problem is None:
            self.utterances.append(utterance)
        else:
            self.skip(utterance.path, problem)

    def skip(self, path: str | Path, reason: str) -> None:
        self.skipped.append((str(path), reason))

    def build(self) -> CorpusReport:
        if not self.utterances:
            raise CorpusError(self._empty_message())
        return CorpusReport(
            utterances=sorted(self.utterances, key=lambda u: str(u.path)),
            skipped=sorted(self.skipped),
        )

    def _empty_message(self) -> str:
        message = f"{self.root}: no usable {self.corpus} utterances found; expected layout {self.layout}"
        if self.skipped:
            examples = "; ".join(f"{p}: {r}" for p, r in sorted(self.skipped)[:MAX_REASONS_IN_ERROR])
            message += f" ({len(self.skipped)} files skipped, e.g. {examples})"
        return message
