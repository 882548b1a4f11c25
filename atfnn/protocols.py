"""Speaker-independent evaluation protocols: folds as data, written as readable JSON-lines files (EmoBox style).

A fold names its test speaker (or session) and lists utterance uids for training, validation and testing. Folds
are a pure function of the utterances and the seed: the input order does not matter, and every fold draws from
its own random stream (seed, fold name), so selecting a subset of folds does not change any of them.
"""
from __future__ import annotations

import difflib
import json
import warnings
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from atfnn.config import ProtocolConfig
from atfnn.corpora.base import Utterance
from atfnn.errors import ConfigError
from atfnn.atomic import atomic_write_text

PROTOCOLS = ("loso", "loso_session")
VALIDATION_MODES = ("utterances", "speaker")
SPLITS = ("train", "validation", "test")
FOLDS_DIR = "folds"
SUMMARY_FILE = "folds.json"


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold: `name` is the held-out speaker (or session); the tuples hold sorted uids."""

    name: str
    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]


def make_folds(utterances: Sequence[Utterance], protocol: ProtocolConfig | None = None) -> list[Fold]:
    """The folds of `protocol` (a ProtocolConfig; None = its defaults): the one entry point for folds.

    One fold per speaker (kind="loso") or per session (kind="loso_session"), sorted by name. With
    selection="split", validation="utterances" holds out about `val_fraction` of the training speakers'
    utterances, stratified by (speaker, label) and with every training speaker that has 2+ utterances represented;
    validation="speaker" holds out one whole training speaker, drawn from the seed. With selection="inner-loso" the
    fold has no validation part: every training utterance trains, and the epoch count comes from inner_folds.
    Test speakers never appear in train or validation.
    """
    p = protocol if protocol is not None else ProtocolConfig()
    _check_options(p.kind, p.validation, p.val_fraction, p.seed)
    ordered = _sorted_unique(utterances)
    group_of = _group_key(ordered, p.kind)
    groups = sorted({group_of(u) for u in ordered})
    if len(groups) < 2:
        unit = "speakers" if p.kind == "loso" else "sessions"
        raise ConfigError(f"protocol '{p.kind}' needs at least 2 {unit}; found {len(groups)}: {groups}")
    all_labels = sorted({u.label for u in ordered})
    folds = []
    for name in groups:
        rng = np.random.default_rng([p.seed, zlib.crc32(name.encode("utf-8"))])
        test = [u for u in ordered if group_of(u) == name]
        pool = [u for u in ordered if group_of(u) != name]
        if p.selection == "inner-loso":
            held_out: set[str] = set()
        elif p.validation == "speaker":
            held_out = _validation_speaker(pool, name, rng)
        else:
            held_out = _stratified_validation(pool, p.val_fraction, rng)
        fold = Fold(
            name=name,
            train=tuple(u.uid for u in pool if u.uid not in held_out),
            validation=tuple(u.uid for u in pool if u.uid in held_out),
            test=tuple(u.uid for u in test),
        )
        _warn_missing_classes(fold, ordered, all_labels)
        folds.append(fold)
    return folds


def inner_folds(fold: Fold, by_uid: dict[str, Utterance]) -> list[Fold]:
    """protocol.selection=inner-loso: within an outer fold's training utterances (train and validation), one inner
    fold per training speaker, that speaker's utterances as its validation and the other speakers' as its training.
    The outer test speaker is in none of them; inner folds have no test part."""
    pool = sorted(fold.train + fold.validation)
    speakers = sorted({by_uid[uid].speaker for uid in pool})
    if len(speakers) < 2:
        raise ConfigError(
            f"fold '{fold.name}': protocol.selection=inner-loso needs at least 2 training speakers, found {speakers}; "
            "use protocol.selection=split"
        )
    return [
        Fold(
            name=speaker,
            train=tuple(uid for uid in pool if by_uid[uid].speaker != speaker),
            validation=tuple(uid for uid in pool if by_uid[uid].speaker == speaker),
            test=(),
        )
        for speaker in speakers
    ]


def select_folds(folds: Sequence[Fold], names: Sequence[str] | None) -> list[Fold]:
    """The folds named in `names` (exact match), in the order of `folds`; None selects them all."""
    if names is None:
        return list(folds)
    available = [f.name for f in folds]
    if not names:
        raise ConfigError(f"no fold selected; available: {', '.join(available)} (pass None for all folds)")
    for name in names:
        if name not in available:
            raise ConfigError(f"Unknown fold '{name}'; available: {', '.join(available)}{_suggestion(name, available)}")
    wanted = set(names)
    return [f for f in folds if f.name in wanted]


def write_folds(folds: Sequence[Fold], utterances: Sequence[Utterance], directory: Path) -> Path:
    """Write `directory/folds/<name>/{train,validation,test}.jsonl` and the summary `directory/folds/folds.json`.

    Each line is one utterance: {"uid", "label", "speaker", "session"}. Returns the `folds` directory.
    """
    by_uid = {u.uid: u for u in utterances}
    root = Path(directory) / FOLDS_DIR
    summary = []
    for fold in folds:
        _check_fold_name(fold.name)
        fold_dir = root / fold.name
        entry: dict = {"name": fold.name, "counts": {}, "labels": {}, "speakers": {}}
        for split in SPLITS:
            rows = [_row(uid, by_uid, fold.name) for uid in getattr(fold, split)]
            lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            atomic_write_text(fold_dir / f"{split}.jsonl", lines)
            entry["counts"][split] = len(rows)
            entry["labels"][split] = dict(sorted(Counter(r["label"] for r in rows).items()))
            entry["speakers"][split] = sorted({r["speaker"] for r in rows})
        summary.append(entry)
    summary_text = json.dumps({"splits": list(SPLITS), "folds": summary}, indent=2, ensure_ascii=False)
    atomic_write_text(root / SUMMARY_FILE, summary_text + "\n")
    return root


def read_folds(directory: Path) -> list[Fold]:
    """Read the folds written by `write_folds` into `directory`, in the order of its summary file."""
    root = Path(directory) / FOLDS_DIR
    summary_path = root / SUMMARY_FILE
    if not summary_path.is_file():
        raise ConfigError(f"{summary_path}: no fold summary; write the folds with write_folds first")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        entries = [(entry["name"], entry.get("counts", {})) for entry in summary["folds"]]
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"{summary_path}: not a fold summary ({e})") from e
    folds = []
    for name, counts in entries:
        splits = {split: _read_split(root / name / f"{split}.jsonl") for split in SPLITS}
        for split, uids in splits.items():
            expected = counts.get(split)
            if expected is not None and expected != len(uids):
                raise ConfigError(
                    f"{root / name / f'{split}.jsonl'}: {len(uids)} utterances but {summary_path} says {expected}; "
                    "the fold files were edited or partly written, write them again"
                )
        folds.append(Fold(name=name, **{split: tuple(uids) for split, uids in splits.items()}))
    return folds


def _check_options(protocol: str, validation: str, val_fraction: float, seed: int) -> None:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"Unknown protocol '{protocol}'; available: {', '.join(PROTOCOLS)}")
    if validation not in VALIDATION_MODES:
        raise ConfigError(f"Unknown validation '{validation}'; available: {', '.join(VALIDATION_MODES)}")
    if validation == "utterances" and not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction} must lie strictly between 0 and 1")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed={seed!r} must be a non-negative integer")


def _sorted_unique(utterances: Sequence[Utterance]) -> list[Utterance]:
    """Sort by uid so folds do not depend on the input order; a repeated uid would break disjointness."""
    if not utterances:
        raise ConfigError("no utterances to split into folds; check the corpus root and its loader report")
    counts = Counter(u.uid for u in utterances)
    repeated = sorted(uid for uid, n in counts.items() if n > 1)
    if repeated:
        raise ConfigError(f"{len(repeated)} utterance uid(s) occur more than once, e.g. '{repeated[0]}'; uids must be unique")
    return sorted(utterances, key=lambda u: u.uid)


def _group_key(utterances: list[Utterance], protocol: str) -> Callable[[Utterance], str]:
    if protocol == "loso":
        return lambda u: u.speaker
    missing = [u.uid for u in utterances if not u.session]
    if missing:
        raise ConfigError(
            f"protocol 'loso_session' needs a session on every utterance; {len(missing)} of {len(utterances)} "
            f"have none (e.g. '{missing[0]}'); use protocol 'loso' for this corpus"
        )
    sessions_of: dict[str, set[str]] = defaultdict(set)
    for u in utterances:
        sessions_of[u.speaker].add(u.session)
    shared = sorted(s for s, sessions in sessions_of.items() if len(sessions) > 1)
    if shared:
        # A speaker in two sessions would sit on both sides of a test split: no longer speaker-independent.
        raise ConfigError(
            f"protocol 'loso_session' needs each speaker in one session; speaker '{shared[0]}' is in sessions "
            f"{sorted(sessions_of[shared[0]])}; use protocol 'loso'"
        )
    return lambda u: u.session


def _validation_speaker(pool: list[Utterance], fold_name: str, rng: np.random.Generator) -> set[str]:
    speakers = sorted({u.speaker for u in pool})
    if len(speakers) < 2:
        raise ConfigError(
            f"fold '{fold_name}': validation='speaker' needs at least 2 training speakers, found {speakers}; "
            "use validation='utterances'"
        )
    chosen = speakers[int(rng.integers(len(speakers)))]
    return {u.uid for u in pool if u.speaker == chosen}


def _stratified_validation(pool: list[Utterance], fraction: float, rng: np.random.Generator) -> set[str]:
    """Hold out ~fraction of each (speaker, label) stratum, by largest remainder, keeping one of each in training."""
    strata: dict[tuple[str, str], list[str]] = defaultdict(list)
    for u in pool:
        strata[(u.speaker, u.label)].append(u.uid)
    keys = sorted(strata)
    shuffled = [[strata[k][i] for i in rng.permutation(len(strata[k]))] for k in keys]
    sizes = np.array([len(s) for s in shuffled])
    exact = sizes * fraction
    quota = np.minimum(np.floor(exact), np.maximum(sizes - 1, 0)).astype(int)
    short = int(round(fraction * len(pool))) - int(quota.sum())
    if short > 0:
        # Largest remainder first, random among equal remainders; a stratum keeps one utterance in training.
        order = np.lexsort((rng.random(len(keys)), -(exact - quota)))
        eligible = [i for i in order if quota[i] < sizes[i] - 1][:short]
        quota[eligible] += 1
    _cover_every_speaker(keys, sizes, quota)
    return {uid for uids, q in zip(shuffled, quota) for uid in uids[:q]}


def _cover_every_speaker(keys: list[tuple[str, str]], sizes: np.ndarray, quota: np.ndarray) -> None:
    """Give each speaker with 2+ utterances at least one validation utterance, from one of its largest strata.

    Among those, take the label with the most utterances left in training, so that no class leaves training.
    """
    by_speaker: dict[str, list[int]] = defaultdict(list)
    left: Counter[str] = Counter()
    for i, (speaker, label) in enumerate(keys):
        by_speaker[speaker].append(i)
        left[label] += int(sizes[i] - quota[i])
    for indices in by_speaker.values():
        if quota[indices].sum() > 0 or sizes[indices].sum() < 2:
            continue
        largest = [i for i in indices if sizes[i] == sizes[indices].max()]
        chosen = max(largest, key=lambda i: left[keys[i][1]])  # first of equals: keys are sorted
        quota[chosen] += 1
        left[keys[chosen][1]] -= 1


def _warn_missing_classes(fold: Fold, utterances: list[Utterance], labels: list[str]) -> None:
    train = set(fold.train)
    present = {u.label for u in utterances if u.uid in train}
    missing = [label for label in labels if label not in present]
    if missing:
        warnings.warn(
            f"fold '{fold.name}': the training part has no utterance of class(es) {missing}; "
            "the model cannot learn them in this fold",
            stacklevel=3,
        )


def _suggestion(name: str, available: list[str]) -> str:
    folded = {a.lower(): a for a in available}
    if name.lower() in folded:
        return f"; did you mean '{folded[name.lower()]}'? (fold names are case-sensitive)"
    close = difflib.get_close_matches(name, available, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _check_fold_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ConfigError(f"fold name '{name}' cannot be a directory name; rename the speaker or session")


def _row(uid: str, by_uid: dict[str, Utterance], fold_name: str) -> dict:
    u = by_uid.get(uid)
    if u is None:
        raise ConfigError(f"fold '{fold_name}': uid '{uid}' is not among the utterances given to write_folds")
    return {"uid": u.uid, "label": u.label, "speaker": u.speaker, "session": u.session}


def _read_split(path: Path) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"{path}: fold file missing; write the folds again with write_folds")
    uids = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            uids.append(json.loads(line)["uid"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError(f"{path}:{number}: not a fold line with a 'uid' ({e})") from e
    return uids
