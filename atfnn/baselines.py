"""Classical baselines on the same folds as the neural runs: openSMILE functionals + a linear SVM.

features (openSMILE, cached) -> optional per-speaker z-normalisation -> per fold: StandardScaler + linear SVM with
C chosen by leave-one-training-speaker-out cross-validation (balanced accuracy = UAR) -> predictions.csv/done.json
in the run-directory layout of `atfnn.reports`, so `atfnn compare` puts baselines and neural runs in one table.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from atfnn.audio import load_audio
from atfnn.config import ExperimentConfig
from atfnn.corpora import load_corpus
from atfnn.corpora.base import Utterance
from atfnn.errors import ATFNNError, AudioError, ConfigError
from atfnn.foldsets import has_folds, read_run_folds, write_run_folds
from atfnn.protocols import Fold, make_folds, select_folds
from atfnn.atomic import atomic_write_text
from atfnn.reports import finalise_run, run_labels, write_predictions

FEATURE_SETS = {"eGeMAPSv02": "egemaps", "ComParE_2016": "compare"}  # openSMILE name -> method prefix
C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
# SVC(kernel="linear") (libsvm, one-vs-one) matches the reference values on CASIA (35.7 / 55.8 vs 35.5 / 55.8);
# LinearSVC (liblinear, one-vs-rest) gives 35.0 / 57.0 and is slower here (large C converges slowly).
CLASSIFIERS = ("svc-linear", "linear-svc")
SEED = 0  # the SVM is deterministic; one seed directory keeps the layout of the neural runs
INDEX_FILE = "index.json"
CACHE_FORMAT = 2  # 2: the key names the sample rate the audio was resampled to
PARALLEL_MIN_FILES = 64  # below this a process pool costs more than it saves
SPEAKER_NORM_NOTE = (
    "per-speaker z-normalisation of the features with each speaker's own utterances, the test speaker's included: "
    "transductive (uses the test speaker's unlabelled audio), not the paper's protocol"
)


# ---------------------------------------------------------------------------------------------------------------
# Features


def _smile(feature_set: str):
    try:
        import opensmile
    except ModuleNotFoundError as e:
        raise ATFNNError("the baselines need openSMILE: pip install 'atfnn[baselines]' (or opensmile)") from e
    if feature_set not in FEATURE_SETS:
        raise ConfigError(f"Unknown feature set '{feature_set}'; available: {', '.join(FEATURE_SETS)}")
    return opensmile.Smile(
        feature_set=getattr(opensmile.FeatureSet, feature_set), feature_level=opensmile.FeatureLevel.Functionals
    )


def _opensmile_version() -> str:
    import opensmile

    return opensmile.__version__


def file_key(path: str | Path, sample_rate: int = 16000) -> str:
    """Cache key of an audio file: resolved path, size and modification time (an edited file is recomputed),
    and the rate openSMILE saw (functionals differ between 16 and 22.05 kHz input)."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}|{sample_rate}Hz"


_WORKER_SMILE: dict[str, Any] = {}


def _extract_one(args: tuple[str, str, int]) -> tuple[np.ndarray | None, str | None]:
    """(features, None) or (None, reason) for one file; runs in the main process or a pool worker."""
    path, feature_set, sample_rate = args
    smile = _WORKER_SMILE.get(feature_set)
    if smile is None:
        smile = _WORKER_SMILE[feature_set] = _smile(feature_set)
    try:
        wave = load_audio(path, sample_rate)
    except AudioError as e:
        return None, e.reason
    try:
        values = smile.process_signal(wave, sample_rate).to_numpy(dtype=np.float32).reshape(-1)
    except Exception as e:  # openSMILE raises plain RuntimeErrors; report the file instead of aborting the run
        return None, f"openSMILE failed ({e})"
    if not np.isfinite(values).all():
        return None, "openSMILE returned NaN or infinite features"
    return values, None


@dataclass
class FeatureCache:
    """Functionals of one feature set, one row per file key: `dir/index.json` names the .npy holding the rows.

    The .npy is written under a fresh name before the index points at it, so a crash leaves the old pair intact.
    """

    directory: Path
    feature_set: str
    version: str
    rows: dict[str, np.ndarray]

    @classmethod
    def open(cls, cache_dir: str | Path, feature_set: str) -> "FeatureCache":
        directory = Path(cache_dir) / f"opensmile-{feature_set}"
        version = _opensmile_version()
        index_path = directory / INDEX_FILE
        rows: dict[str, np.ndarray] = {}
        if index_path.is_file():
            try:
                index = json.loads(index_path.read_text())
                current = (index.get("format"), index.get("opensmile"), index.get("feature_set"))
                if current == (CACHE_FORMAT, version, feature_set):
                    matrix = np.load(directory / index["matrix"])
                    rows = {key: matrix[i] for i, key in enumerate(index["keys"])}
            except (OSError, ValueError, KeyError, IndexError) as e:
                warnings.warn(f"{index_path}: feature cache unreadable ({e}); recomputing the features", stacklevel=2)
        return cls(directory, feature_set, version, rows)

    def save(self) -> None:
        if not self.rows:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        keys = list(self.rows)
        matrix = np.stack([self.rows[k] for k in keys]).astype(np.float32)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix="features-", suffix=".npy")
        with os.fdopen(fd, "wb") as f:
            np.save(f, matrix)
        index_path = self.directory / INDEX_FILE
        old = json.loads(index_path.read_text()).get("matrix") if index_path.is_file() else None
        index = {
            "format": CACHE_FORMAT, "feature_set": self.feature_set, "opensmile": self.version,
            "matrix": Path(tmp).name, "keys": keys,
        }
        atomic_write_text(index_path, json.dumps(index) + "\n")
        if old and old != Path(tmp).name:
            (self.directory / old).unlink(missing_ok=True)


def extract_features(
    paths: Sequence[str | Path],
    feature_set: str = "eGeMAPSv02",
    cache_dir: str | Path = ".cache/atfnn",
    sample_rate: int = 16000,
    progress: bool = True,
    workers: int | None = None,
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """openSMILE functionals of each readable file, (n_ok, n_features) float32 in the order of `paths`,
    and the (path, reason) of the files that failed (left out of the matrix). Cached in `cache_dir/opensmile-<set>/`.
    """
    from tqdm import tqdm

    _smile(feature_set)  # fail early on an unknown set or a missing opensmile
    cache = FeatureCache.open(cache_dir, feature_set)
    keys = [file_key(p, sample_rate) if Path(p).is_file() else None for p in paths]
    todo = [i for i, k in enumerate(keys) if k is not None and k not in cache.rows]
    failures: dict[int, str] = {i: "file not found" for i, k in enumerate(keys) if k is None}
    workers = workers or min(2, os.cpu_count() or 1)
    jobs = [(str(paths[i]), feature_set, sample_rate) for i in todo]
    bar = tqdm(total=len(jobs), desc=f"openSMILE {feature_set}", unit="file", disable=not progress or not jobs)
    try:
        if workers > 1 and len(jobs) >= PARALLEL_MIN_FILES:
            # fork: the workers inherit the imported modules instead of importing torch again
            with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
                results = pool.map(_extract_one, jobs, chunksize=8)
                _collect(todo, results, keys, cache, failures, bar)
        else:
            _collect(todo, map(_extract_one, jobs), keys, cache, failures, bar)
    finally:
        bar.close()
        if todo:
            cache.save()  # also after an interruption: the finished files are not computed again
    ok = [i for i in range(len(paths)) if i not in failures]
    dim = len(next(iter(cache.rows.values()))) if cache.rows else 0
    matrix = np.stack([cache.rows[keys[i]] for i in ok]) if ok else np.zeros((0, dim), np.float32)
    return matrix, [(str(paths[i]), failures[i]) for i in sorted(failures)]


def _collect(todo, results, keys, cache: FeatureCache, failures: dict[int, str], bar) -> None:
    for i, (values, reason) in zip(todo, results):
        if values is None:
            failures[i] = reason
        else:
            cache.rows[keys[i]] = values
        bar.update()


def speaker_normalise(features: np.ndarray, speakers: Sequence[str]) -> np.ndarray:
    """z-normalise each feature within each speaker (mean 0, std 1 over that speaker's rows; ddof=0).

    A feature constant within a speaker becomes 0 there rather than NaN.
    """
    features = np.asarray(features, dtype=np.float64)
    speakers = np.asarray(speakers)
    if len(speakers) != len(features):
        raise ValueError(f"{len(features)} feature rows but {len(speakers)} speakers")
    out = np.empty_like(features)
    for speaker in np.unique(speakers):
        rows = speakers == speaker
        mean = features[rows].mean(axis=0)
        std = features[rows].std(axis=0)
        out[rows] = (features[rows] - mean) / np.where(std > 0, std, 1.0)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Classifier


def make_classifier(classifier: str = "svc-linear", c: float = 1.0):
    """StandardScaler (fitted on training rows only, inside the pipeline) + a class-balanced linear SVM."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, LinearSVC

    if classifier == "linear-svc":
        svm = LinearSVC(C=c, class_weight="balanced", dual="auto", max_iter=20000, random_state=SEED)
    elif classifier == "svc-linear":
        svm = SVC(C=c, kernel="linear", class_weight="balanced")
    else:
        raise ConfigError(f"Unknown classifier '{classifier}'; available: {', '.join(CLASSIFIERS)}")
    return Pipeline([("scale", StandardScaler()), ("svm", svm)])


def fit_fold(
    x: np.ndarray, y: Sequence[str], groups: Sequence[str], classifier: str = "svc-linear",
    c_grid: Sequence[float] = C_GRID, n_jobs: int | None = None,
) -> tuple[Any, float, float]:
    """Choose C by leave-one-speaker-out over the training speakers (balanced accuracy), refit on all of them.

    Returns (fitted pipeline, chosen C, its cross-validated UAR in percent).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV, LeaveOneGroupOut

    if len(set(groups)) < 2:
        raise ConfigError(f"choosing C needs at least 2 training speakers, found {sorted(set(groups))}")
    search = GridSearchCV(
        make_classifier(classifier), {"svm__C": list(c_grid)}, scoring="balanced_accuracy",
        cv=LeaveOneGroupOut(), n_jobs=n_jobs, refit=True,
    )
    with warnings.catch_warnings():
        # LinearSVC may stop at max_iter for the largest C values; the search still ranks them by held-out UAR.
        warnings.simplefilter("ignore", ConvergenceWarning)
        # A held-out training speaker may lack a class (EmoDB); balanced accuracy then averages the classes it
        # has, as our UAR does, and says so once per fit.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        search.fit(x, np.asarray(y), groups=np.asarray(groups))
    return search.best_estimator_, float(search.best_params_["svm__C"]), float(100 * search.best_score_)


# ---------------------------------------------------------------------------------------------------------------
# Run


def method_name(feature_set: str, speaker_norm: bool = False) -> str:
    """"egemaps-svm", "compare-svm+spknorm", ...: the method shown in reports and `atfnn compare`."""
    if feature_set not in FEATURE_SETS:
        raise ConfigError(f"Unknown feature set '{feature_set}'; available: {', '.join(FEATURE_SETS)}")
    return f"{FEATURE_SETS[feature_set]}-svm" + ("+spknorm" if speaker_norm else "")


def run_baseline(
    config: ExperimentConfig,
    feature_set: str = "eGeMAPSv02",
    out: str | Path = "runs/baseline",
    speaker_norm: bool = False,
    folds: Sequence[str] | None = None,
    progress: bool = True,
    classifier: str = "svc-linear",
    c_grid: Sequence[float] = C_GRID,
    workers: int | None = None,
    n_jobs: int | None = None,
) -> dict:
    """openSMILE functionals + linear SVM on the config's corpus and folds; writes RUN_DIR like a neural run.

    Finished folds (done.json) are skipped on a rerun; returns the results of all finished folds (results.json).
    """
    out = Path(out)
    method = method_name(feature_set, speaker_norm)
    if classifier not in CLASSIFIERS:
        raise ConfigError(f"Unknown classifier '{classifier}'; available: {', '.join(CLASSIFIERS)}")
    block = _baseline_block(method, feature_set, speaker_norm, classifier, c_grid)
    _write_run_config(out, config, block)

    utterances, labels = _load_utterances(config)
    all_folds = make_folds(utterances, config.protocol)
    _write_or_check_folds(all_folds, utterances, out, config)
    chosen = select_folds(all_folds, folds)

    x, kept, failures = _features(utterances, feature_set, config, progress, workers)
    if speaker_norm:
        x = speaker_normalise(x, [u.speaker for u in kept])
    row = {u.uid: i for i, u in enumerate(kept)}
    for fold in chosen:
        fold_dir = out / f"seed-{SEED}" / fold.name
        if (fold_dir / "done.json").is_file():
            _say(progress, f"fold {fold.name}: done, skipped")
            continue
        _run_fold(fold, fold_dir, x, kept, row, labels, classifier, c_grid, n_jobs, failures, progress)

    return finalise_baseline(out)


def finalise_baseline(run_dir: str | Path) -> dict:
    """(Re)write results.json, report.md and confusion.png of a baseline run from its config.yaml and fold files.

    The config given to the report names the method (e.g. "egemaps-svm+spknorm"), and says when the features
    were normalised per speaker (transductive) and which audio files were left out.
    """
    run_dir = Path(run_dir)
    data = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    block = data.get("baseline")
    if not block:
        raise ConfigError(f"{run_dir / 'config.yaml'} has no 'baseline:' block; this is not a baseline run")
    excluded: dict[str, str] = {}
    for done in sorted(run_dir.glob("seed-*/*/done.json")):
        excluded.update({e["path"]: e["reason"] for e in json.loads(done.read_text()).get("excluded", [])})
    summary = {
        "method": block["method"],
        "corpus": data.get("corpus", {}),
        "protocol": data.get("protocol", {}),
        "baseline": block,
        "speaker_norm": bool(block.get("speaker_norm")),
        "excluded": [{"path": p, "reason": r} for p, r in sorted(excluded.items())],
    }
    if block.get("speaker_norm"):
        summary["note"] = SPEAKER_NORM_NOTE
    return finalise_run(run_dir, run_labels(run_dir), summary, title=f"{run_dir.name}: {block['method']}")


def _baseline_block(
    method: str, feature_set: str, speaker_norm: bool, classifier: str, c_grid: Sequence[float]
) -> dict[str, Any]:
    block = {
        "method": method,
        "feature_set": feature_set,
        "feature_level": "Functionals",
        "opensmile": _opensmile_version(),
        "speaker_norm": speaker_norm,
        "classifier": {"linear-svc": "sklearn LinearSVC", "svc-linear": "sklearn SVC(kernel='linear')"}[classifier]
        + ", class_weight=balanced, StandardScaler fitted on the training speakers",
        "c_grid": [float(c) for c in c_grid],
        "c_selection": "leave-one-training-speaker-out on train+validation of the fold, balanced accuracy (UAR)",
        "training_data": "train + validation utterances of the fold (both are training speakers)",
    }
    if speaker_norm:
        block["note"] = SPEAKER_NORM_NOTE
    return block


def _write_run_config(out: Path, config: ExperimentConfig, block: dict[str, Any]) -> None:
    """RUN_DIR/config.yaml = experiment config + baseline block; a different existing one means another run."""
    text = yaml.safe_dump({**config.to_dict(), "baseline": block}, sort_keys=False)
    path = out / "config.yaml"
    if path.is_file():
        existing = yaml.safe_load(path.read_text()) or {}
        if _comparable(existing) != _comparable(yaml.safe_load(text)):
            raise ConfigError(
                f"{path} belongs to another configuration (corpus, protocol or baseline settings differ); "
                "use a new --out directory or delete this one"
            )
        return
    atomic_write_text(path, text)


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    """What must match for a rerun to reuse finished folds: corpus, protocol and the baseline settings."""
    keep = {k: data.get(k) for k in ("corpus", "protocol")}
    baseline = dict(data.get("baseline") or {})
    baseline.pop("opensmile", None)  # a patch release of openSMILE does not invalidate finished folds
    return {**keep, "baseline": baseline, "sample_rate": (data.get("frontend") or {}).get("sample_rate")}


def _load_utterances(config: ExperimentConfig) -> tuple[list[Utterance], list[str]]:
    report = load_corpus(config.corpus.name, config.corpus.root, **config.corpus.options)
    if report.skipped:
        print(f"{config.corpus.name}: the loader skipped {len(report.skipped)} file(s):")
        for path, reason in report.skipped:
            print(f"  {path}: {reason}")
    if not report.utterances:
        raise ConfigError(f"corpus '{config.corpus.name}' at {config.corpus.root}: no utterances found")
    return report.utterances, sorted({u.label for u in report.utterances})


def _write_or_check_folds(folds: list[Fold], utterances: list[Utterance], out: Path, config: ExperimentConfig) -> None:
    """The folds of the neural runs (same make_folds call); folds already in RUN_DIR must be these."""
    if has_folds(out):
        if read_run_folds(out) != folds:
            raise ConfigError(f"{out}: the folds there differ from this config's; use a new --out directory")
        return
    write_run_folds(out, folds, utterances, config.corpus.name, config.corpus.root)


def _features(
    utterances: list[Utterance], feature_set: str, config: ExperimentConfig, progress: bool, workers: int | None
) -> tuple[np.ndarray, list[Utterance], list[tuple[str, str]]]:
    x, failures = extract_features(
        [u.path for u in utterances], feature_set, config.cache_dir, config.frontend.sample_rate, progress, workers
    )
    if failures:
        print(f"{len(failures)} audio file(s) failed and are left out of every fold:")
        for path, reason in failures:
            print(f"  {path}: {reason}")
    failed = {p for p, _ in failures}
    kept = [u for u in utterances if str(u.path) not in failed]
    return x, kept, failures


def _run_fold(
    fold: Fold, fold_dir: Path, x: np.ndarray, kept: list[Utterance], row: dict[str, int], labels: list[str],
    classifier: str, c_grid: Sequence[float], n_jobs: int | None, failures: list[tuple[str, str]], progress: bool,
) -> None:
    start = time.perf_counter()
    train = [row[uid] for uid in fold.train + fold.validation if uid in row]
    test = [row[uid] for uid in fold.test if uid in row]
    if not test:
        raise ATFNNError(f"fold {fold.name}: every test file failed feature extraction; see the list above")
    model, c, cv_uar = fit_fold(
        x[train], [kept[i].label for i in train], [kept[i].speaker for i in train], classifier, c_grid, n_jobs
    )
    predicted = model.predict(x[test])
    rows = [
        {"uid": kept[i].uid, "speaker": kept[i].speaker, "label": kept[i].label, "pred": str(p)}
        for i, p in zip(test, predicted)
    ]
    write_predictions(fold_dir / "predictions.csv", rows, labels)
    seconds = time.perf_counter() - start
    excluded = sorted(set(fold.test) - {kept[i].uid for i in test})
    done = {
        "fold": fold.name, "seed": SEED, "C": c, "cv_uar": cv_uar, "seconds": round(seconds, 2),
        "n_train": len(train), "n_test": len(test), "excluded_test": excluded,
        # every failed file: a test file of this fold or a training file it could not use
        "excluded": [{"path": p, "reason": r} for p, r in failures],
    }
    atomic_write_text(fold_dir / "done.json", json.dumps(done, indent=2) + "\n")
    accuracy = 100 * float(np.mean([r["label"] == r["pred"] for r in rows]))
    _say(progress, f"fold {fold.name}: C={c:g} (cv UAR {cv_uar:.1f}), test WAR {accuracy:.1f}, {seconds:.1f} s")


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, flush=True)
