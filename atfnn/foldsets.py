"""Fold sets stored once: a corpus's folds, utterance ids relative to the corpus root, named by a fingerprint.

A store (`RUN_DIR/folds/` while a run is trained, the shared `folds/` beside the runs in results/) holds fold sets
and the split files they share:

    <store>/<corpus>-<fingerprint>/folds.json   one fold set: per fold, its counts, labels and speakers per split,
                                                and under "files" the split file each split reads
    <store>/splits/<sha12>.jsonl                one split, one utterance a line: {"uid", "label", "speaker",
                                                "session"}, the uid relative to the corpus root (the folder of a
                                                manifest), as EmoBox keeps `data/<corpus>/fold_k/`

"files" names a split file relative to folds.json (`"../splits/7493a07744b5.jsonl"`), and a split file is named by
the first 12 hex digits of the SHA-256 of its bytes, so a split is written once however many folds and sets use it
(a leave-one-speaker-out fold's validation speaker is another fold's test speaker; two protocols share test splits).
The fingerprint hashes the folds' rows, not the files, so every run split the same way names the same set, and a set,
once written, never changes (write-once): an existing set is kept, and a split file whose bytes do not match its name
is refused (it was edited). A run names its set in `RUN_DIR/foldset.json` (`atfnn report --export` copies it into
the shared store).

That is format 2 (`"format": 2` in folds.json). Format 1, the sets written before, kept each fold's splits in the set
folder (`<corpus>-<fingerprint>/<fold>/{train,validation,test}.jsonl`); such sets are read as they are, and
`upgrade_foldset` (scripts/migrate_results.py) rewrites them. Runs made before fold sets keep
`RUN_DIR/folds/folds.json` and fold files with absolute uids: they are read as they are too, and exported (or
migrated) into the store above.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from atfnn.atomic import atomic_write_bytes, atomic_write_text, fsync_dir
from atfnn.corpora.base import Utterance
from atfnn.errors import ConfigError
from atfnn.protocols import Fold, read_folds

POINTER = "foldset.json"  # RUN_DIR/foldset.json: {"foldset": id, "corpus", "fingerprint"}
STORE = "folds"  # RUN_DIR/folds/<id>/ for a run, <results>/folds/<id>/ for the runs kept in the repository
SUMMARY = "folds.json"
SPLITS = ("train", "validation", "test")
ROW_KEYS = ("uid", "label", "speaker", "session")
FINGERPRINT_CHARS = 12
FORMAT = 2  # folds.json names its split files in the store's splits/ (module docstring)
SPLIT_STORE = "splits"  # <store>/splits/<sha12>.jsonl
SPLIT_NAME = re.compile(r"\.\./" + SPLIT_STORE + r"/([0-9a-f]{" + str(FINGERPRINT_CHARS) + r"})\.jsonl")


@dataclass(frozen=True)
class FoldSet:
    """The folds of one corpus: fold name -> split -> rows ({"uid", "label", "speaker", "session"}, uid relative)."""

    corpus: str
    folds: dict[str, dict[str, list[dict[str, Any]]]]

    @property
    def fingerprint(self) -> str:
        canonical = [[name, [self.folds[name][split] for split in SPLITS]] for name in self.folds]
        text = json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:FINGERPRINT_CHARS]

    @property
    def id(self) -> str:
        return f"{self.corpus}-{self.fingerprint}"

    def summary(self) -> dict[str, Any]:
        entries = []
        for name, splits in self.folds.items():
            rows = {split: splits[split] for split in SPLITS}
            entries.append({
                "name": name,
                "counts": {s: len(r) for s, r in rows.items()},
                "labels": {s: dict(sorted(Counter(x["label"] for x in r).items())) for s, r in rows.items()},
                "speakers": {s: sorted({x["speaker"] for x in r}) for s, r in rows.items()},
                "files": {s: split_reference(split_text(r)) for s, r in rows.items()},
            })
        return {
            "format": FORMAT, "corpus": self.corpus, "fingerprint": self.fingerprint,
            "uids": "relative to the corpus root", "splits": list(SPLITS), "folds": entries,
        }

    def to_folds(self, base: str | Path) -> list[Fold]:
        """The folds with absolute uids under `base`, as the corpus loaders name utterances."""
        return [
            Fold(name=name, **{s: tuple(absolute_uid(r["uid"], base) for r in splits[s]) for s in SPLITS})
            for name, splits in self.folds.items()
        ]


# ---------------------------------------------------------------------------------------------------------------
# Utterance ids


def corpus_base(root: str | Path) -> Path:
    """The folder uids are made relative to: the corpus root, or the folder of a manifest file."""
    path = Path(root).expanduser().resolve()
    return path.parent if path.is_file() else path


def relative_uid(uid: str, base: str | Path) -> str:
    """`uid` relative to `base`, with forward slashes; a uid that is already relative is kept."""
    if not os.path.isabs(uid):
        return uid
    return Path(os.path.relpath(uid, base)).as_posix()


def absolute_uid(uid: str, base: str | Path) -> str:
    if os.path.isabs(uid):
        return uid
    return os.path.normpath(os.path.join(base, uid))


def uid_base(uids: Iterable[str], root: str | Path) -> Path:
    """The corpus root that absolute `uids` were recorded under, for a run whose config names it as `root`.

    That is `corpus_base(root)` when every uid lies under it; otherwise (a relative root read from another working
    directory, another machine) the one folder of the uids that ends with the root's own folder names.
    """
    absolute = sorted({u for u in uids if os.path.isabs(u)})
    base = corpus_base(root)
    if all(_is_under(u, base) for u in absolute):
        return base
    parts = [p for p in Path(root).parts if p not in ("..", ".", "/", "~")]
    if parts and Path(parts[-1]).suffix:  # a manifest file: its audio is relative to its folder
        parts = parts[:-1]
    needle = "/" + "/".join(parts) + "/"
    starts = {u[: u.find(needle) + len(needle) - 1] for u in absolute if needle in u}
    if parts and len(starts) == 1 and all(needle in u for u in absolute):
        return Path(starts.pop())
    raise ConfigError(
        f"cannot tell the corpus root of uids such as '{absolute[0]}' from corpus.root '{root}'; "
        "run from the directory the run was made in"
    )


def _is_under(uid: str, base: Path) -> bool:
    return os.path.commonpath([uid, str(base)]) == str(base)


# ---------------------------------------------------------------------------------------------------------------
# Building, writing and reading fold sets


def from_folds(corpus: str, folds: Sequence[Fold], utterances: Sequence[Utterance], base: str | Path) -> FoldSet:
    """The fold set of `folds` (absolute uids of `utterances`), with uids relative to `base`."""
    by_uid = {u.uid: u for u in utterances}
    sets: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for fold in folds:
        _check_fold_name(fold.name)
        sets[fold.name] = {}
        for split in SPLITS:
            missing = [uid for uid in getattr(fold, split) if uid not in by_uid]
            if missing:
                raise ConfigError(f"fold '{fold.name}': uid '{missing[0]}' is not among the corpus's utterances")
            sets[fold.name][split] = [_row(by_uid[uid], base) for uid in getattr(fold, split)]
    return FoldSet(corpus, sets)


def _row(u: Utterance, base: str | Path) -> dict[str, Any]:
    return {"uid": relative_uid(u.uid, base), "label": u.label, "speaker": u.speaker, "session": u.session}


def write_foldset(foldset: FoldSet, store: str | Path) -> Path:
    """Write `store/<id>/folds.json` once, its split files into `store/splits/` where they are not yet; returns the
    set's folder. An existing set of that id is kept (its content is the same, by the fingerprint), in either format.

    The split files are written before folds.json, each atomically, so a reader that finds folds.json finds them all.
    """
    store = Path(store)
    target = store / foldset.id
    if (target / SUMMARY).is_file():
        found = read_foldset(target)
        if found.fingerprint != foldset.fingerprint:
            raise ConfigError(f"{target}: its fold files were edited (fingerprint {found.fingerprint}); restore them")
        return target
    write_splits(foldset, store)
    target.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target / SUMMARY, summary_text(foldset))
    fsync_dir(store)
    return target


def write_splits(foldset: FoldSet, store: str | Path) -> list[Path]:
    """Write each distinct split of `foldset` once into `store/splits/`, keeping the files already there."""
    directory = Path(store) / SPLIT_STORE
    paths = []
    texts = dict.fromkeys(split_text(rows) for splits in foldset.folds.values() for rows in splits.values())
    for text in texts:
        path = directory / Path(split_reference(text)).name
        data = text.encode("utf-8")
        if not path.is_file():
            atomic_write_bytes(path, data)
        elif path.read_bytes() != data:
            raise ConfigError(
                f"{path}: holds other utterances than the split of that name being written (the file was edited); "
                "restore it, or remove it to have it written again"
            )
        paths.append(path)
    return paths


def split_text(rows: Sequence[dict[str, Any]]) -> str:
    """A split file's text: one row a line, its keys in ROW_KEYS order (the bytes its name hashes)."""
    return "".join(json.dumps(_ordered(r), ensure_ascii=False) + "\n" for r in rows)


def split_reference(text: str) -> str:
    """How folds.json names the split file holding `text`: `../splits/<sha12>.jsonl`, relative to folds.json."""
    return f"../{SPLIT_STORE}/{_content_hash(text.encode('utf-8'))}.jsonl"


def _content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:FINGERPRINT_CHARS]


def summary_text(foldset: FoldSet) -> str:
    return json.dumps(foldset.summary(), indent=2, ensure_ascii=False) + "\n"


def _ordered(row: dict[str, Any]) -> dict[str, Any]:
    return {key: row.get(key) for key in ROW_KEYS}


def read_foldset(path: str | Path) -> FoldSet:
    """Read a fold set folder of either format (or an old run's `folds/` folder: format 1, absolute uids)."""
    path = Path(path)
    summary = _load_summary(path / SUMMARY)
    version = _format(summary, path)
    folds: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for entry in summary["folds"]:
        name = entry["name"]
        files = split_files(path, entry, version)
        folds[name] = {split: _read_rows(files[split], check_name=version >= 2) for split in SPLITS}
        for split, expected in entry.get("counts", {}).items():
            if split in folds[name] and expected != len(folds[name][split]):
                raise ConfigError(
                    f"{files[split]}: {len(folds[name][split])} utterances but {path / SUMMARY} says {expected} "
                    f"for fold '{name}'; the fold files were edited or partly written"
                )
    return FoldSet(summary.get("corpus", "?"), folds)


def _format(summary: dict[str, Any], path: Path) -> int:
    version = summary.get("format", 1)  # the runs made before fold sets wrote no format
    if version not in (1, FORMAT):
        raise ConfigError(f"{path / SUMMARY}: fold set format {version!r} is not known (1 or {FORMAT}); update atfnn")
    return version


def split_files(path: str | Path, entry: dict[str, Any], version: int) -> dict[str, Path]:
    """The file each split of a fold entry of `path/folds.json` reads: format 1 in the set's folder, format 2 the
    store's splits/ file that "files" names."""
    path, name = Path(path), entry["name"]
    _check_fold_name(name)
    if version == 1:
        return {split: path / name / f"{split}.jsonl" for split in SPLITS}
    files = entry.get("files")
    found = {}
    for split in SPLITS:
        reference = files.get(split) if isinstance(files, dict) else None
        if not isinstance(reference, str) or not SPLIT_NAME.fullmatch(reference):
            raise ConfigError(
                f"{path / SUMMARY}: fold '{name}' names no split file for '{split}' (files.{split}: {reference!r}; "
                f"expected ../{SPLIT_STORE}/<{FINGERPRINT_CHARS} hex digits>.jsonl)"
            )
        found[split] = Path(os.path.normpath(path / reference))
    return found


def set_files(path: str | Path) -> list[Path]:
    """The files a fold set folder consists of: its folds.json and the split files it reads (either format)."""
    path = Path(path)
    summary = _load_summary(path / SUMMARY)
    version = _format(summary, path)
    files = {file for entry in summary["folds"] for file in split_files(path, entry, version).values()}
    return [path / SUMMARY, *sorted(files)]


def upgrade_foldset(path: str | Path) -> bool:
    """Rewrite a format-1 set of a store in format 2, in place: its split files into the store's splits/ (kept where
    they are already there), then folds.json, then the old fold folders removed; False when it is format 2 already.

    A reader meanwhile sees the one format or the other, whole, as folds.json is replaced after the split files.
    """
    path = Path(path)
    summary = _load_summary(path / SUMMARY)
    if _format(summary, path) == FORMAT:
        return False
    foldset = read_foldset(path)
    if foldset.id != path.name:
        raise ConfigError(f"{path}: its fold files were edited (fingerprint {foldset.fingerprint}); restore them")
    write_splits(foldset, path.parent)
    atomic_write_text(path / SUMMARY, summary_text(foldset))
    for entry in summary["folds"]:
        shutil.rmtree(path / entry["name"])
    return True


def _load_summary(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: no fold summary")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        if not all("name" in entry for entry in summary["folds"]):
            raise KeyError("a fold entry has no 'name'")
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a fold summary ({e})") from e
    return summary


def _read_rows(path: Path, check_name: bool = False) -> list[dict[str, Any]]:
    """The rows of a split file; with `check_name`, its bytes must hash to its name (a split file never changes)."""
    if not path.is_file():
        raise ConfigError(f"{path}: fold file missing")
    data = path.read_bytes()
    if check_name and _content_hash(data) != path.stem:
        raise ConfigError(f"{path}: its content does not hash to its name (the file was edited); restore it")
    rows = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
                rows.append({"uid": row["uid"]} | {key: row.get(key) for key in ROW_KEYS[1:]})
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ConfigError(f"{path}:{number}: not a fold line with a 'uid' ({e})") from e
    return rows


def _check_fold_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ConfigError(f"fold name '{name}' cannot be a directory name; rename the speaker or session")


# ---------------------------------------------------------------------------------------------------------------
# A run's fold set: either layout


def write_run_folds(run_dir: str | Path, folds: Sequence[Fold], utterances: Sequence[Utterance], corpus: str,
                    root: str | Path) -> Path:
    """Store the run's fold set in RUN_DIR/folds/<id>/ and point RUN_DIR/foldset.json at it; returns its folder."""
    run_dir = Path(run_dir)
    foldset = from_folds(corpus, folds, utterances, corpus_base(root))
    if (run_dir / POINTER).is_file():
        try:
            found = foldset_path(run_dir)
        except ConfigError:  # the pointer names a set that is not there (a copied run): write it again
            found = None
        if found is not None and read_foldset(found).fingerprint == foldset.fingerprint:
            return found  # a run resumed where it was exported: its set is already in the shared store
    path = write_foldset(foldset, run_dir / STORE)
    write_pointer(run_dir, foldset)
    return path


def write_pointer(run_dir: str | Path, foldset: FoldSet) -> None:
    pointer = {"foldset": foldset.id, "corpus": foldset.corpus, "fingerprint": foldset.fingerprint}
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / POINTER, json.dumps(pointer, indent=2) + "\n")


def foldset_path(run_dir: str | Path) -> Path | None:
    """The fold set folder a run points at: its own folds/, else the shared folds/ one or two levels above it
    (results/<run>, results/baselines/<run>); None for a run made before fold sets."""
    run_dir = Path(run_dir)
    pointer = run_dir / POINTER
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text(encoding="utf-8"))["foldset"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{pointer}: not a fold set pointer ({e})") from e
    candidates = [store / name for store in (run_dir / STORE, run_dir.parent / STORE, run_dir.parent.parent / STORE)]
    for candidate in candidates:
        if (candidate / SUMMARY).is_file():
            return candidate
    raise ConfigError(f"{pointer}: fold set '{name}' not found in {' or '.join(map(str, candidates))}")


def has_folds(run_dir: str | Path) -> bool:
    run_dir = Path(run_dir)
    return (run_dir / POINTER).is_file() or (run_dir / STORE / SUMMARY).is_file()


def fold_summary(run_dir: str | Path) -> list[dict[str, Any]]:
    """The fold entries (name, counts, labels, speakers) of a run in either layout; empty when it has none."""
    path = foldset_path(run_dir)
    if path is None:
        path = Path(run_dir) / STORE
        if not (path / SUMMARY).is_file():
            return []
    return _load_summary(path / SUMMARY)["folds"]


def read_run_folds(run_dir: str | Path) -> list[Fold]:
    """A run's folds with absolute uids, as `make_folds` returns them for its corpus, in either layout."""
    run_dir = Path(run_dir)
    path = foldset_path(run_dir)
    if path is None:
        return read_folds(run_dir)
    return read_foldset(path).to_folds(corpus_base(run_root(run_dir)))


def run_root(run_dir: str | Path) -> str:
    """corpus.root of a run, from its config.yaml."""
    config_path = Path(run_dir) / "config.yaml"
    try:
        return str((yaml.safe_load(config_path.read_text(encoding="utf-8")) or {})["corpus"]["root"])
    except (OSError, KeyError, TypeError, yaml.YAMLError) as e:
        raise ConfigError(f"{config_path}: cannot read corpus.root ({e})") from e


def run_foldset(run_dir: str | Path) -> tuple[FoldSet, Path]:
    """The run's fold set with relative uids, and the corpus root its absolute uids were recorded under."""
    run_dir = Path(run_dir)
    path = foldset_path(run_dir)
    old = read_foldset(path if path is not None else run_dir / STORE)
    uids = [r["uid"] for splits in old.folds.values() for rows in splits.values() for r in rows]
    uids += [row["uid"] for file in run_dir.glob("seed-*/*/predictions.csv") for row in _read_csv(file)[1]]
    base = uid_base(uids, run_root(run_dir))
    corpus = old.corpus if old.corpus != "?" else _run_corpus(run_dir)
    relative = {
        name: {s: [r | {"uid": relative_uid(r["uid"], base)} for r in rows] for s, rows in splits.items()}
        for name, splits in old.folds.items()
    }
    return FoldSet(corpus, relative), base


def _run_corpus(run_dir: Path) -> str:
    data = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    return str((data.get("corpus") or {}).get("name", "corpus"))


# ---------------------------------------------------------------------------------------------------------------
# Results without machine paths


def relativise_predictions(path: str | Path, base: str | Path, dest: str | Path | None = None) -> None:
    """Rewrite the uid column of a predictions.csv relative to `base` (into `dest`, default in place)."""
    fields, rows = _read_csv(Path(path))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)  # the runner's dialect: same bytes apart from the uids
    writer.writeheader()
    for row in rows:
        writer.writerow(row | {"uid": relative_uid(row["uid"], base)})
    Path(dest or path).write_text(buffer.getvalue(), encoding="utf-8", newline="")


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def export_folds(run_dir: str | Path, dest: str | Path) -> tuple[list[Path], Path]:
    """Store a run's fold set (either layout) in the shared store of `dest` and point `dest` at it.

    Returns the files written and the corpus root of the run's absolute uids (to relativise its predictions).
    """
    dest = Path(dest)
    foldset, base = run_foldset(run_dir)
    path = write_foldset(foldset, shared_store(dest))
    write_pointer(dest, foldset)
    return [dest / POINTER, *set_files(path)], base


def shared_store(dest: str | Path) -> Path:
    """The shared folds/ of an exported run: an existing one one or two levels above it, else one beside it."""
    dest = Path(dest)
    for candidate in (dest.parent / STORE, dest.parent.parent / STORE):
        if candidate.is_dir():
            return candidate
    return dest.parent / STORE
