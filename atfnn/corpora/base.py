"""The corpus interface: a loader turns a corpus root into a list of labelled, speaker-tagged utterances."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Utterance:
    """One labelled recording. `speaker` is unique within its corpus; optional fields are None when unknown."""

    path: Path
    label: str
    speaker: str
    session: str | None = None
    gender: str | None = None  # "F" or "M"
    text: str | None = None

    @property
    def uid(self) -> str:
        """A stable identifier: the path as given (absolute paths keep runs portable across working directories)."""
        return str(self.path)


@dataclass
class CorpusReport:
    """What a loader found and what it skipped, and why; nothing is dropped silently."""

    utterances: list[Utterance] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
