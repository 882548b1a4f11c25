"""A readable summary of a loaded corpus: the class x speaker table of the paper's Table I, durations, skipped files."""
from __future__ import annotations

from collections import Counter

import soundfile as sf

from atfnn.corpora.base import CorpusReport

MAX_LINES = 20
TOTAL = "total"


def count_table(report: CorpusReport) -> dict[str, dict[str, int]]:
    """{label: {speaker: count}} over every label and speaker of the report (zeros included), both sorted."""
    counts = Counter((u.label, u.speaker) for u in report.utterances)
    return {label: {s: counts[label, s] for s in _speakers(report)} for label in _labels(report)}


def describe(report: CorpusReport, durations: bool = True) -> str:
    """The count table with totals, the number of utterances, durations (from file headers) and the skipped files."""
    speakers, labels = _speakers(report), _labels(report)
    lines = [f"Utterances: {len(report.utterances)} ({len(speakers)} speakers, {len(labels)} classes)", ""]
    lines += _table(count_table(report), speakers)
    if durations:
        lines += ["", _durations(report)]
    lines += ["", *_skipped(report.skipped)]
    return "\n".join(lines)


def _speakers(report: CorpusReport) -> list[str]:
    return sorted({u.speaker for u in report.utterances}, key=lambda s: (s.lower(), s))


def _labels(report: CorpusReport) -> list[str]:
    return sorted({u.label for u in report.utterances})


def _table(table: dict[str, dict[str, int]], speakers: list[str]) -> list[str]:
    rows = [["label", *speakers, TOTAL]]
    for label, per_speaker in table.items():
        rows.append([label, *(str(per_speaker[s]) for s in speakers), str(sum(per_speaker.values()))])
    column_totals = [sum(table[label][s] for label in table) for s in speakers]
    rows.append([TOTAL, *(str(n) for n in column_totals), str(sum(column_totals))])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            for row in rows]


def _durations(report: CorpusReport) -> str:
    seconds, unreadable = [], 0
    for utterance in report.utterances:
        try:
            seconds.append(sf.info(str(utterance.path)).duration)
        except (RuntimeError, sf.LibsndfileError):
            unreadable += 1
    if not seconds:
        return f"Duration: unavailable ({unreadable} files unreadable)"
    line = (f"Duration: {sum(seconds) / 3600:.2f} h; mean {sum(seconds) / len(seconds):.2f} s, "
            f"min {min(seconds):.2f} s, max {max(seconds):.2f} s")
    return line + (f" ({unreadable} files unreadable, not counted)" if unreadable else "")


def _skipped(skipped: list[tuple[str, str]]) -> list[str]:
    if not skipped:
        return ["Skipped: none"]
    lines = [f"Skipped: {len(skipped)} files", "  by reason:"]
    reasons = Counter(reason for _, reason in skipped).most_common()
    lines += _truncate([f"    {n:>6}  {reason}" for reason, n in reasons])
    lines += ["  files:", *_truncate([f"    {path}: {reason}" for path, reason in skipped])]
    return lines


def _truncate(lines: list[str]) -> list[str]:
    if len(lines) <= MAX_LINES:
        return lines
    return lines[:MAX_LINES] + [f"    ... and {len(lines) - MAX_LINES} more"]
