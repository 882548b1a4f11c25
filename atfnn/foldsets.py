"""Fold sets stored once: a corpus's folds, utterance ids relative to the corpus root, named by a fingerprint.

A fold set is a folder `<corpus>-<fingerprint>/` holding `folds.json` (the summary: counts, labels and speakers
per split) and `<fold>/{train,validation,test}.jsonl`, one utterance a line: {"uid", "label", "speaker",
"session"}, the uid relative to the corpus root (the folder of a manifest), as EmoBox keeps `data/<corpus>/fold_k/`.
The fingerprint hashes that content, so every run split the same way names the same set, and a set, once written,
never changes (write-once). A run names its set in `RUN_DIR/foldset.json`; the set lives in `RUN_DIR/folds/` while
the run is trained and in the shared `folds/` beside the runs in results/ (`atfnn report --export`).

Runs made before fold sets keep `RUN_DIR/folds/folds.json` and fold files with absolute uids: they are read as they
are, and exported (or migrated, scripts/migrate_results.py) into the layout above.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from atfnn.atomic import atomic_write_text, fsync_dir, fsync_file
from atfnn.corpora.base import Utterance
from atfnn.errors import ConfigError
from atfnn.protocols import Fold, read_folds

POINTER = "foldset.json"  # RUN_DIR/foldset.json: {"foldset": id, "corpus", "fingerprint"}
STORE = "folds"  # RUN_DIR/folds/<id>/ for a run, <results>/folds/<id>/ for the runs kept in the repository
SUMMARY = "folds.json"
SPLITS = ("train", "validation", "test")
ROW_KEYS = ("uid", "label", "speaker", "session")
FINGERPRINT_CHARS = 12
FORMAT = 1


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
    """Write `store/<id>/` once: an existing set of that id is kept (its content is the same, by the fingerprint).

    The set is written into a temporary folder and renamed, so a reader never sees half a set.
    """
    store = Path(store)
    target = store / foldset.id
    if (target / SUMMARY).is_file():
        found = read_foldset(target)
        if found.fingerprint != foldset.fingerprint:
            raise ConfigError(f"{target}: its fold files were edited (fingerprint {found.fingerprint}); restore them")
        return target
    store.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=store, prefix=f".{foldset.id}."))
    try:
        for name, splits in foldset.folds.items():
            (tmp / name).mkdir()
            for split in SPLITS:
                lines = "".join(json.dumps(_ordered(r), ensure_ascii=False) + "\n" for r in splits[split])
                (tmp / name / f"{split}.jsonl").write_text(lines, encoding="utf-8")
        (tmp / SUMMARY).write_text(json.dumps(foldset.summary(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        for path in [tmp, *tmp.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)  # mkdtemp makes 0700; results are meant to be shared
            fsync_file(path) if path.is_file() else fsync_dir(path)
        os.replace(tmp, target)
        fsync_dir(store)
    except OSError:
        if not (target / SUMMARY).is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # left only when another writer renamed the same set first
    return target


def _ordered(row: dict[str, Any]) -> dict[str, Any]:
    return {key: row.get(key) for key in ROW_KEYS}


def read_foldset(path: str | Path) -> FoldSet:
    """Read a fold set folder (or an old run's `folds/` folder: the same files, absolute uids)."""
    path = Path(path)
    summary = _load_summary(path / SUMMARY)
    folds: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for entry in summary["folds"]:
        name = entry["name"]
        folds[name] = {split: _read_rows(path / name / f"{split}.jsonl") for split in SPLITS}
        for split, expected in entry.get("counts", {}).items():
            if split in folds[name] and expected != len(folds[name][split]):
                raise ConfigError(
                    f"{path / name / f'{split}.jsonl'}: {len(folds[name][split])} utterances but {path / SUMMARY} "
                    f"says {expected}; the fold files were edited or partly written"
                )
    return FoldSet(summary.get("corpus", "?"), folds)


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


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ConfigError(f"{path}: fold file missing")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
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
    return [dest / POINTER, *sorted(p for p in path.rglob("*") if p.is_file())], base


def shared_store(dest: str | Path) -> Path:
    """The shared folds/ of an exported run: an existing one one or two levels above it, else one beside it."""
    dest = Path(dest)
    for candidate in (dest.parent / STORE, dest.parent.parent / STORE):
        if candidate.is_dir():
            return candidate
    return dest.parent / STORE
