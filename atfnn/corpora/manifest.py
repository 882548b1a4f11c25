"""A corpus described by a CSV or TSV manifest: one row per utterance, with a header.

Required columns: path, label, speaker; optional: session, gender, text (other columns are ignored). Relative paths
are relative to the manifest's folder. `load(root)` takes the manifest file, or a folder holding exactly one of
manifest.csv / manifest.tsv. Row problems (missing audio, empty cells, repeated paths) are reported in `skipped`.
"""
from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from pathlib import Path

from atfnn.corpora._scan import ReportBuilder
from atfnn.corpora.base import CorpusReport, Utterance
from atfnn.errors import CorpusError

NAME = "manifest"
LABELS: tuple[str, ...] = ()  # the labels are whatever the manifest says
LAYOUT = "a manifest.csv or manifest.tsv with columns path,label,speaker[,session,gender,text]"
DEFAULT_NAMES = ("manifest.csv", "manifest.tsv")
REQUIRED = ("path", "label", "speaker")
OPTIONAL = ("session", "gender", "text")
DELIMITERS = {".csv": ",", ".tsv": "\t"}
GENDERS = {"f": "F", "female": "F", "m": "M", "male": "M"}


def load(root: str | Path, *, check_audio: bool = True) -> CorpusReport:
    """The utterances listed in the manifest `root` (a file, or a folder with one manifest.csv/.tsv)."""
    path = find_manifest(root)
    builder = ReportBuilder(NAME, path, LAYOUT, probe=check_audio)
    collect(path, builder)
    return builder.build()


def collect(path: Path, builder: ReportBuilder, labels: Mapping[str, str] | None = None) -> None:
    """Add every row of the manifest `path` to `builder`, or skip it with the reason.

    `labels` maps lower-case spellings to canonical labels (rows with any other label are skipped); None keeps
    the labels as written.
    """
    seen: set[Path] = set()
    for line, row in read_rows(path, REQUIRED):
        audio = resolve_audio(path, row["path"]) if row["path"] else None
        missing = [c for c in REQUIRED if not row[c]]
        label = row["label"] if labels is None else labels.get(row["label"].lower())
        if missing:
            builder.skip(audio or f"{path}:{line}", f"manifest line {line}: empty {', '.join(missing)}")
        elif label is None:
            expected = ", ".join(sorted(set(labels.values())))
            builder.skip(audio, f"unknown label '{row['label']}'; expected one of {expected}")
        elif audio in seen:
            builder.skip(audio, "path repeats an earlier manifest row")
        else:
            seen.add(audio)
            builder.add(_utterance(path, line, row, audio, label))


def find_manifest(root: str | Path, names: tuple[str, ...] = DEFAULT_NAMES) -> Path:
    """`root` itself when it is a file, else the single file among `names` inside it."""
    path = Path(root).expanduser().resolve()
    if path.is_file():
        return path
    if not path.is_dir():
        raise CorpusError(f"{path}: manifest not found; expected {LAYOUT}")
    found = [path / n for n in names if (path / n).is_file()]
    if len(found) != 1:
        what = "none" if not found else " and ".join(p.name for p in found)
        raise CorpusError(f"{path}: expected exactly one of {', '.join(names)} in this folder, found {what}")
    return found[0]


def read_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) pairs with lower-case column names and stripped cells; CorpusError on missing columns."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f, delimiter=_delimiter(path)))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CorpusError(f"{path}: cannot read manifest ({e})") from e
    if not rows:
        raise CorpusError(f"{path}: manifest is empty; expected a header with columns {', '.join(required)}")
    header = [c.strip().lower() for c in rows[0]]
    missing = [c for c in required if c not in header]
    if missing:
        raise CorpusError(
            f"{path}: manifest lacks column(s) {', '.join(missing)}; found {', '.join(header) or 'none'}"
        )
    for line, cells in enumerate(rows[1:], start=2):
        if any(c.strip() for c in cells):
            yield line, {name: (cells[i].strip() if i < len(cells) else "") for i, name in enumerate(header)}


def resolve_audio(manifest: Path, cell: str) -> Path:
    """An audio path from a manifest cell: absolute as given, relative to the manifest's folder otherwise."""
    audio = Path(cell).expanduser()
    return audio if audio.is_absolute() else manifest.parent / audio


def _utterance(manifest: Path, line: int, row: dict[str, str], audio: Path, label: str) -> Utterance:
    """The Utterance of one row, with its label already normalised; empty optional cells become None."""
    return Utterance(
        path=audio,
        label=label,
        speaker=row["speaker"],
        session=row.get("session") or None,
        gender=_gender(manifest, line, row.get("gender", "")),
        text=row.get("text") or None,
    )


def _gender(manifest: Path, line: int, cell: str) -> str | None:
    if not cell:
        return None
    if cell.lower() not in GENDERS:
        raise CorpusError(f"{manifest} line {line}: gender '{cell}' is not one of F, M, female, male (or empty)")
    return GENDERS[cell.lower()]


def _delimiter(path: Path) -> str:
    if path.suffix.lower() in DELIMITERS:
        return DELIMITERS[path.suffix.lower()]
    with path.open(newline="", encoding="utf-8-sig") as f:
        first = f.readline()
    try:
        return csv.Sniffer().sniff(first, delimiters=",\t;").delimiter
    except csv.Error as e:
        raise CorpusError(f"{path}: cannot tell the delimiter of the header line; name the file .csv or .tsv") from e
