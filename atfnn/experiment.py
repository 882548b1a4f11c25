"""The experiment runner: every fold (and seed) of a cross-validated experiment, resumable, ending in a report.

RUN_DIR/config.yaml, run.json (fingerprint), foldset.json, seed-<s>/<fold>/{last.pt, log.csv, model/, predictions.csv,
done.json}, results.json, report.md, confusion.png; with protocol.selection=inner-loso also
seed-<s>/<fold>/{selection.json, inner/<speaker>/{last.pt, log.csv, curve.json}}. A fold is finished when its
done.json exists (written last, atomically); a rerun skips finished folds and resumes an unfinished one from last.pt.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import statistics
import time
import zlib
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import yaml

from atfnn import fast, kernels
from atfnn import features as feats
from atfnn.checkpoint import save_model
from atfnn.config import ExperimentConfig, from_dict
from atfnn.corpora import Utterance, load_corpus
from atfnn.distributed import ddp
from atfnn.errors import ConfigError, CorpusError
from atfnn.foldsets import read_run_folds, write_run_folds
from atfnn.frontend import NormStats, apply_stats, fit_global_stats
from atfnn.protocols import Fold, inner_folds, make_folds, select_folds
from atfnn.atomic import atomic_write_text
from atfnn.reports import finalise_run, write_predictions
from atfnn.runtime import die_with_parent, peak_rss_mib, resolve_device, threads_per_job, tune_allocator
from atfnn.training import CHECKPOINT, FoldResult, SplitData, evaluate, train_fold

DONE = "done.json"
SELECTION = "selection.json"  # inner-loso: the epoch count chosen for the outer fold, and the curves it came from
INNER = "inner"  # inner-loso: the inner folds of an outer fold, one folder per left-out training speaker
CURVE = "curve.json"  # a finished inner fold: its validation curve and cost
LOCK = ".lock"  # held by the `atfnn train` writing the run (run_lock)


@dataclass
class PreparedCorpus:
    utterances: list[Utterance]
    labels: list[str]
    segments: feats.Segments  # cut with frontend.segment_hop (validation, test)
    seg_labels: torch.Tensor  # class index per segment
    store: feats.FeatureStore | None = None  # the cached log-Mel (fit_global_stats reads it)
    train_segments: feats.Segments | None = None  # cut with frontend.train_segment_hop; None = `segments`


def prepare_corpus(config: ExperimentConfig, progress: bool = True, log: Callable[[str], None] = print) -> PreparedCorpus:
    """Load the corpus, report what was skipped, compute (or reuse) cached features, cut segments."""
    report = load_corpus(config.corpus.name, config.corpus.root, **config.corpus.options)
    store = feats.prepare(report.utterances, config.frontend, config.cache_dir, progress=progress)
    skipped = list(report.skipped) + list(store.skipped)
    if skipped:
        log(f"{len(skipped)} file(s) skipped:")
        for path, reason in skipped[:20]:
            log(f"  {path}: {reason}")
        if len(skipped) > 20:
            log(f"  ... and {len(skipped) - 20} more")
    usable = [u for u in report.utterances if u.uid in store]
    stats = feats.normalise_stats(store, usable, config.frontend.norm)
    segments = feats.build_segments(store, usable, config.frontend, stats)
    train_hop = config.frontend.train_segment_hop not in (0, config.frontend.segment_hop)
    train_segments = feats.build_segments(store, usable, config.frontend, stats, split="train") if train_hop else None
    for uid, reason in segments.dropped:
        log(f"  dropped {uid}: {reason}")
    dropped = dict(segments.dropped)
    utterances = [u for u in usable if u.uid not in dropped]
    if not utterances:
        raise CorpusError(f"{config.corpus.root}: no usable utterance left after feature extraction")
    labels = sorted({u.label for u in utterances})
    by_uid = {u.uid: u for u in utterances}
    index = {label: i for i, label in enumerate(labels)}
    seg_labels = torch.tensor(
        [index[by_uid[segments.utterance_uids[i]].label] for i in segments.utt], dtype=torch.long
    )
    return PreparedCorpus(utterances, labels, segments, seg_labels, store, train_segments)


def split_data(
    corpus: PreparedCorpus, uids: Sequence[str], device: torch.device | None = None, split: str = "evaluation",
    stats: NormStats | None = None,
) -> SplitData:
    """The segments of the utterances `uids`, as a SplitData whose utterance indices are local to the split.

    split "train" takes the segments cut with frontend.train_segment_hop; `stats` (norm=global) normalise them."""
    seg = corpus.train_segments if split == "train" and corpus.train_segments is not None else corpus.segments
    wanted = {uid: i for i, uid in enumerate(uids)}
    global_to_local = np.array([wanted.get(uid, -1) for uid in seg.utterance_uids], dtype=np.int64)
    local = global_to_local[seg.utt]
    mask = local >= 0
    rows = torch.from_numpy(np.flatnonzero(mask))
    x = apply_stats(seg.x.index_select(0, rows), stats)
    if device is not None and device.type != "cpu":
        x = x.to(device)
    by_uid = {u.uid: u for u in corpus.utterances}
    label_index = {label: i for i, label in enumerate(corpus.labels)}
    speaker_index = {name: i for i, name in enumerate(sorted({by_uid[uid].speaker for uid in uids}))}
    utt_speaker = np.array([speaker_index[by_uid[uid].speaker] for uid in uids], dtype=np.int64)
    return SplitData(
        x=x,
        y=torch.tensor([label_index[by_uid[uid].label] for uid in uids], dtype=torch.long)[local[mask]],
        utt=local[mask],
        uids=list(uids),
        utt_labels=[by_uid[uid].label for uid in uids],
        spk=torch.from_numpy(utt_speaker[local[mask]]),
    )


@contextlib.contextmanager
def run_lock(out: Path):
    """Hold an exclusive lock on a run directory: a second `atfnn train` on it (which would overwrite the first's
    checkpoints and logs) fails at once instead. The lock is the OS's (flock), so a killed run leaves none behind."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    handle = path.open("a+")
    try:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not on POSIX: no lock, as before
            pass
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(f"{out} is in use by {holder}; wait for it to finish, or stop it, "
                              "or choose another --out directory") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"atfnn train (pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        handle.flush()
        yield
    finally:
        handle.close()


def check_run_dir(out: Path, config: ExperimentConfig, log: Callable[[str], None] = print) -> None:
    """Refuse to mix two configurations in one run directory; record the configuration on first use.

    A directory is tied to its configuration only once a fold of it has finished: a start that failed (a wrong
    corpus root, a diverged first fold) is taken over by the corrected configuration, its unfinished folds begun
    again from scratch."""
    run_file = out / "run.json"
    fingerprint = config.fingerprint()
    if run_file.is_file():
        # Compare with the saved config read back through today's dataclasses, so that a field added to atfnn
        # since the run began (at its default) does not lock the run out; run.json's hash is kept as a record.
        saved = out / "config.yaml"
        previous = load_run_config(out).fingerprint() if saved.is_file() else json.loads(run_file.read_text()).get("fingerprint")
        if previous == fingerprint:
            return
        if any(out.glob(f"seed-*/*/{DONE}")):
            raise ConfigError(
                f"{out} holds a run of another configuration (fingerprint {previous} != {fingerprint}); "
                f"compare {out / 'config.yaml'} with yours, or choose a new --out directory"
            )
        log(f"{out}: no fold of its earlier configuration ({previous}) finished; starting again with this one")
        for seed_dir in out.glob("seed-*"):
            shutil.rmtree(seed_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    atomic_write_text(run_file, json.dumps({"fingerprint": fingerprint, "created": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")


def run_experiment(
    config: ExperimentConfig,
    out: str | Path,
    folds: Sequence[str] | None = None,
    seeds: int = 1,
    progress: bool = True,
    on_fold_done: Callable[[str, int], None] | None = None,
    log: Callable[[str], None] = print,
    jobs: int = 1,
    executor: str = "local",
    address: str | None = None,
) -> dict:
    """Run (or resume) every selected fold for `seeds` seeds (train.seed, train.seed + 1, ...); return results.

    jobs > 1 trains that many folds at once, each in its own process with its share of the cores (train.threads
    each when set). On a CPU this is faster than one fold on all cores (docs/performance.md); a fold's result does
    not depend on it beyond floating-point summation order. executor "ray" trains each fold as a task on the Ray
    cluster at `address` (default: a local one; atfnn.distributed.ray_executor), this process keeping the run's files.
    """
    out = Path(out)
    if jobs < 1:
        raise ConfigError(f"jobs must be at least 1, got {jobs}")
    if executor not in ("local", "ray"):
        raise ConfigError(f"executor must be 'local' or 'ray', got {executor!r}")
    if ddp.world_size() > 1 and (executor == "ray" or jobs > 1):
        raise ConfigError("under torchrun the processes train each fold together, one fold after another: "
                          "drop --jobs and --executor")
    main = ddp.is_main()  # under torchrun rank 0 holds the lock and writes the run's files; all train each fold
    with run_lock(out) if main else contextlib.nullcontext():
        if main:
            check_run_dir(out, config, log)
        device = setup_process(config)
        log(f"device {device}; F-Encoder ops: {kernels.status()}")
        with ddp.main_first():
            corpus = prepare_corpus(config, progress=progress and main, log=log)
        all_folds = make_folds(corpus.utterances, config.protocol)
        if main:
            write_fold_set(config, all_folds, corpus.utterances, out)
        pending = _pending(out, select_folds(all_folds, folds), config.train.seed, seeds, log)
        inner = _inner_pending(config, out, corpus, pending) if jobs > 1 else []
        if executor == "ray" and pending:
            from atfnn.distributed.ray_executor import run_on_ray

            for wave in _waves(config, pending):
                run_on_ray(config, out, wave, address, on_fold_done, log)
        elif jobs > 1 and (len(pending) > 1 or len(inner) > 1):
            _run_local_parallel(config, corpus, out, pending, inner, jobs, device, on_fold_done, log)
        else:
            for seed, fold in pending:
                log(f"seed {seed}, fold {fold.name}: training on {len(fold.train)} utterances, "
                    f"validating on {len(fold.validation)}, testing on {len(fold.test)} ({device})")
                run_fold(config, corpus, fold, out / f"seed-{seed}" / fold.name, seed, device, progress, log)
                if on_fold_done is not None:
                    on_fold_done(fold.name, seed)
        return finalise_run(out, corpus.labels, config.to_dict(), title=out.name) if main else {}


def setup_process(config: ExperimentConfig, threads: int | None = None) -> torch.device:
    """What every process that trains does once: the allocator, the thread count, the device."""
    tune_allocator()
    threads = threads if threads is not None else config.train.threads
    if threads > 0:
        torch.set_num_threads(threads)
    return resolve_device(config.train.device, "train.device")


def write_fold_set(config: ExperimentConfig, folds: Sequence[Fold], utterances: Sequence[Utterance], out: Path) -> None:
    """The folds a run uses: a fold set stored once (ids relative to the corpus root), named by the run."""
    write_run_folds(out, folds, utterances, config.corpus.name, config.corpus.root)


def _pending(out: Path, chosen: list[Fold], first_seed: int, seeds: int, log: Callable[[str], None]) -> list:
    pending = []
    for seed in range(first_seed, first_seed + seeds):
        for fold in chosen:
            if (out / f"seed-{seed}" / fold.name / DONE).is_file():
                log(f"seed {seed}, fold {fold.name}: done, skipped")
            else:
                pending.append((seed, fold))
    return pending


def _waves(config: ExperimentConfig, pending: list[tuple[int, Fold]]) -> list[list[tuple[int, Fold]]]:
    """With inner-loso and protocol.inner_seeds=1 the first seed's folds select the epoch counts the other seeds
    reuse, so they run first; otherwise all pending folds form one wave."""
    if config.protocol.selection != "inner-loso" or config.protocol.inner_seeds != 1:
        return [pending]
    first = [(s, f) for s, f in pending if s == config.train.seed]
    rest = [(s, f) for s, f in pending if s != config.train.seed]
    return [wave for wave in (first, rest) if wave]


def _run_local_parallel(
    config: ExperimentConfig, corpus: PreparedCorpus, out: Path, pending: list[tuple[int, Fold]],
    inner: list[tuple[int, Fold, str]], jobs: int, device: torch.device,
    on_fold_done: Callable[[str, int], None] | None, log: Callable[[str], None],
) -> None:
    """--jobs N: one pool of N workers. inner-loso's inner folds are handed out first; each outer fold follows as
    soon as the inner folds its epoch count comes from have ended, so no worker waits for another fold's last one."""
    workers = min(jobs, len(pending) + len(inner))
    threads = threads_per_job(workers, config.train.threads)
    if inner:
        log(f"{len(inner)} inner fold(s) to train, {workers} at a time with {threads} thread(s) each")
    log(f"{len(pending)} fold(s) to train, {workers} at a time with {threads} thread(s) each"
        + (", each once its epoch count is chosen" if inner else ""))
    owner_seed = (lambda seed: config.train.seed) if config.protocol.inner_seeds == 1 else (lambda seed: seed)
    # What each outer fold waits for: the (seed, fold, left-out speaker) names of the inner folds it selects from.
    waits = {(seed, fold.name): {(s, f.name, name) for s, f, name in inner
                                 if (s, f.name) == (owner_seed(seed), fold.name)} for seed, fold in pending}

    def outer(seed: int, fold: Fold) -> WorkerCall:
        if config.protocol.selection == "inner-loso":  # from the saved curves, in this process, before the worker
            select_epochs(config, corpus, fold, out / f"seed-{seed}" / fold.name, seed, device, False, log)
        return WorkerCall((seed, fold), _fold_job, (config.to_dict(), str(out), fold.name, seed, threads))

    def released(key: tuple) -> list[WorkerCall]:
        """The outer folds whose last awaited inner fold is the one that has just ended."""
        if len(key) != 3:
            return []
        ended, ready = (key[0], key[1].name, key[2]), []
        for seed, fold in pending:
            left = waits[seed, fold.name]
            if ended in left:
                left.discard(ended)
                ready += [] if left else [outer(seed, fold)]
        return ready

    calls = [WorkerCall(task, _inner_job, (config.to_dict(), str(out), task[1].name, task[2], task[0], threads))
             for task in inner]
    calls += [outer(seed, fold) for seed, fold in pending if not waits[seed, fold.name]]
    for key, result in _in_workers(workers, calls, then=released):
        if len(key) == 3:  # an inner fold: (seed, outer fold, left-out speaker)
            seed, fold, name = key
            curve = result["curve"]
            log(f"seed {seed}, fold {fold.name}, inner fold {name}: best inner validation "
                f"{max(curve):.2f} at epoch {int(np.argmax(curve)) + 1} ({result['seconds']:.0f} s)")
            continue
        seed, fold = key
        log(f"seed {seed}, fold {fold.name}: UAR {result['uar']:.2f}  WAR {result['war']:.2f}  "
            f"(best epoch {result['best_epoch']}, {result['seconds']:.0f} s)")
        if on_fold_done is not None:
            on_fold_done(fold.name, seed)


@dataclass(frozen=True)
class WorkerCall:
    """job(*args) to run in a worker process, and the key its result is yielded with."""

    key: tuple
    job: Callable
    args: tuple


def _in_workers(
    workers: int, calls: list[WorkerCall], then: Callable[[tuple], list[WorkerCall]] | None = None,
) -> Iterator[tuple[tuple, object]]:
    """Run each call in `workers` processes, in order; yield (key, result) as each ends. After a call ends,
    then(key) may hand out further calls (queued behind those already handed out).

    At the first failure no more work is handed out: running jobs finish (or keep their last.pt), then it is raised."""
    # spawn, not fork: a forked child inherits torch's thread pools in an undefined state.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(call.job, *call.args): call.key for call in calls}
        while futures:
            finished, _ = wait(futures, return_when=FIRST_COMPLETED)
            for future in finished:
                key = futures.pop(future)
                try:
                    result = future.result()
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
                yield key, result
                for call in then(key) if then is not None else []:
                    futures[pool.submit(call.job, *call.args)] = call.key


def _inner_pending(
    config: ExperimentConfig, out: Path, corpus: PreparedCorpus, pending: list[tuple[int, Fold]],
) -> list[tuple[int, Fold, str]]:
    """inner-loso: the (seed, outer fold, left-out speaker) trainings the pending folds still need, so that --jobs
    spreads them over its workers instead of one outer fold running its inner folds one after another."""
    if config.protocol.selection != "inner-loso":
        return []
    by_uid = {u.uid: u for u in corpus.utterances}
    tasks = []
    for seed, fold in pending:
        if config.protocol.inner_seeds == 1 and seed != config.train.seed:
            continue  # reuses the first seed's choice, which its own fold in this list selects
        fold_dir = out / f"seed-{seed}" / fold.name
        if (fold_dir / SELECTION).is_file():
            continue
        tasks += [(seed, fold, inner.name) for inner in inner_folds(fold, by_uid)
                  if not (fold_dir / INNER / inner.name / CURVE).is_file()]
    return tasks


def _inner_job(config_dict: dict, out: str, fold_name: str, inner_name: str, seed: int, threads: int) -> dict:
    """One inner fold in a worker process (the feature cache is filled by the parent)."""
    die_with_parent()
    config = from_dict(config_dict)
    device = setup_process(config, threads)
    corpus = prepare_corpus(config, progress=False, log=lambda message: None)
    fold = next(f for f in make_folds(corpus.utterances, config.protocol) if f.name == fold_name)
    by_uid = {u.uid: u for u in corpus.utterances}
    inner = next(f for f in inner_folds(fold, by_uid) if f.name == inner_name)
    inner_dir = Path(out) / f"seed-{seed}" / fold.name / INNER / inner.name
    print(f"seed {seed}, fold {fold.name}, inner fold {inner.name}: training on {len(inner.train)} utterances, "
          f"validating on {len(inner.validation)} (worker {os.getpid()}, {threads} thread(s))", flush=True)
    return _inner_curve(config, corpus, fold, inner, inner_dir, seed, device, False, print)


def _fold_job(config_dict: dict, out: str, fold_name: str, seed: int, threads: int) -> dict:
    """One fold in a worker process: the corpus comes from the feature cache the parent has filled."""
    die_with_parent()
    config = from_dict(config_dict)
    device = setup_process(config, threads)
    corpus = prepare_corpus(config, progress=False, log=lambda message: None)
    fold = next(f for f in make_folds(corpus.utterances, config.protocol) if f.name == fold_name)
    print(f"seed {seed}, fold {fold.name}: training on {len(fold.train)} utterances, validating on "
          f"{len(fold.validation)}, testing on {len(fold.test)} (worker {os.getpid()}, {threads} thread(s))", flush=True)
    return run_fold(config, corpus, fold, Path(out) / f"seed-{seed}" / fold.name, seed, device, progress=False)


@dataclass
class FoldData:
    train: SplitData
    validation: SplitData | None
    test: SplitData | None
    stats: NormStats | None = None  # frontend.norm="global": the training split's statistics, saved with the model


def fold_data(
    config: ExperimentConfig, corpus: PreparedCorpus, train: Sequence[str], validation: Sequence[str],
    test: Sequence[str], device: torch.device,
) -> FoldData:
    """The segments a training sees: the one place where a fold's features (and their normalisation) are obtained.

    frontend.norm="global" fits its statistics on `train` alone, never on validation or test utterances."""
    stats = fit_global_stats(corpus.store, list(train)) if config.frontend.norm == "global" else None
    return FoldData(
        train=split_data(corpus, train, device, "train", stats),
        validation=split_data(corpus, validation, device, "evaluation", stats) if validation else None,
        test=split_data(corpus, test, device, "evaluation", stats) if test else None,
        stats=stats,
    )


def fold_seed(seed: int, name: str) -> int:
    """Each fold gets its own seed so that a fold's result does not depend on which folds ran before it."""
    return seed * 1000 + zlib.crc32(name.encode()) % 1000


def run_fold(
    config: ExperimentConfig, corpus: PreparedCorpus, fold: Fold, fold_dir: Path, seed: int, device: torch.device,
    progress: bool = True, log: Callable[[str], None] = print,
) -> dict:
    """Train one outer fold (choosing its epoch count as protocol.selection says), test it once, write its files."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    if config.protocol.selection == "inner-loso":
        selection = select_epochs(config, corpus, fold, fold_dir, seed, device, progress, log)
        began = time.perf_counter()
        data = fold_data(config, corpus, fold.train + fold.validation, (), fold.test, device)
        result = train_fold(
            config.model, config.train, corpus.labels, data.train, None, fold_dir, fold_seed(seed, fold.name), device,
            selection.epochs, progress, monitor=data.test if config.train.monitor_test else None, log=log,
        )
        extra = selection.done_fields()
    else:
        began = time.perf_counter()
        data = fold_data(config, corpus, fold.train, fold.validation, fold.test, device)
        result = train_fold(
            config.model, config.train, corpus.labels, data.train, data.validation, fold_dir,
            fold_seed(seed, fold.name), device, progress=progress,
            monitor=data.test if config.train.monitor_test else None, log=log,
        )
        extra = {"selection": "split", "trainings": 1}
    scores = evaluate(result.model, data.test, corpus.labels, device, config.train.precision, config.train.aggregate)
    return _finish_fold(config, corpus, fold, fold_dir, seed, result, scores, extra,
                        time.perf_counter() - began + result.seconds - result.sitting_seconds, data.stats)


def _finish_fold(
    config: ExperimentConfig, corpus: PreparedCorpus, fold: Fold, fold_dir: Path, seed: int, result: FoldResult,
    scores: dict, extra: dict, seconds: float, stats: NormStats | None = None,
) -> dict:
    """predictions.csv, the model, then done.json (written last: a fold is finished when it exists)."""
    if not ddp.is_main():  # under torchrun every process holds the same model; rank 0 writes it
        return {"fold": fold.name, "seed": seed, "war": scores["war"], "uar": scores["uar"]}
    by_uid = {u.uid: u for u in corpus.utterances}
    rows = [
        {"uid": uid, "speaker": by_uid[uid].speaker, "label": t, "pred": p, "probs": probs}
        for uid, t, p, probs in zip(scores["uids"], scores["y_true"], scores["y_pred"], scores["probs"])
    ]
    write_predictions(fold_dir / "predictions.csv", rows, corpus.labels)
    save_model(
        result.model, corpus.labels, config.frontend, fold_dir / "model",
        info={"corpus": config.corpus.name, "fold": fold.name, "seed": seed, "best_epoch": result.best_epoch},
        norm_stats=stats,
    )
    done = {
        "fold": fold.name, "seed": seed, "best_epoch": result.best_epoch, "epochs": result.epochs,
        "steps": result.steps, "war": scores["war"], "uar": scores["uar"], "segment_war": scores["segment_war"],
        "n": len(rows),
        # The whole fold, over every sitting of a resumed one, inner selection included.
        "seconds": round(seconds + extra.get("selection_seconds", 0.0), 1),
        # The process's peak so far: with --jobs, this fold's worker; serially, the largest fold up to this one.
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "f_encoder_ops": kernels.status(),  # fused C kernels or torch ops (atfnn/kernels; same function)
        "t_encoder_precision": t_encoder_precision(result.model, config.train.precision),
        **extra,
    }
    atomic_write_text(fold_dir / DONE, json.dumps(done, indent=2) + "\n")
    (fold_dir / CHECKPOINT).unlink(missing_ok=True)
    return done


def t_encoder_precision(model: torch.nn.Module, precision: str) -> str | None:
    """What the model's Bi-LSTM computed in under train.precision here; None for AFNN, which has none."""
    if model.t_encoder is None:
        return None
    return fast.lstm_precision(next(model.parameters()).device.type, precision)


@dataclass
class Selection:
    """The epoch count protocol.selection=inner-loso chose for an outer fold, and what choosing it cost."""

    epochs: int
    curve: list[float]  # the mean inner validation curve, one value per epoch (higher is better)
    inner: dict[str, list[float]]  # each left-out training speaker's curve
    trainings: int  # inner trainings run for this choice (0 when reused from another seed)
    seconds: float  # their training time, over every sitting
    reused_from_seed: int | None = None

    def done_fields(self) -> dict:
        return {"selection": "inner-loso", "selected_epochs": self.epochs, "trainings": self.trainings + 1,
                "selection_seconds": round(self.seconds, 1), "selection_reused_from_seed": self.reused_from_seed}


def select_epochs(
    config: ExperimentConfig, corpus: PreparedCorpus, fold: Fold, fold_dir: Path, seed: int, device: torch.device,
    progress: bool = False, log: Callable[[str], None] = print,
) -> Selection:
    """inner-loso: leave each training speaker of the outer fold out in turn, train on the others for train.epochs
    scoring the left-out speaker every epoch, and choose the epoch count with the best mean curve (the first on a
    tie). Each inner fold lives in fold_dir/inner/<speaker>/ and resumes like an outer fold."""
    if config.protocol.inner_seeds not in (0, 1):
        raise ConfigError(f"protocol.inner_seeds={config.protocol.inner_seeds} must be 0 (every seed selects) or 1 "
                          "(the first seed's choice is reused)")
    first = config.train.seed
    if config.protocol.inner_seeds == 1 and seed != first:
        owner = fold_dir.parent.parent / f"seed-{first}" / fold.name
        chosen = select_epochs(config, corpus, fold, owner, first, device, progress, log)
        return Selection(chosen.epochs, chosen.curve, chosen.inner, 0, 0.0, reused_from_seed=first)
    saved = fold_dir / SELECTION
    if saved.is_file():
        return Selection(**json.loads(saved.read_text()))
    by_uid = {u.uid: u for u in corpus.utterances}
    records = {
        inner.name: _inner_curve(
            config, corpus, fold, inner, fold_dir / INNER / inner.name, seed, device, progress, log
        )
        for inner in inner_folds(fold, by_uid)
    }
    inner = {name: record["curve"] for name, record in records.items()}
    curve = np.mean(list(inner.values()), axis=0).tolist()
    seconds = sum(record["seconds"] for record in records.values())
    selection = Selection(int(np.argmax(curve)) + 1, curve, inner, len(inner), seconds)
    log(f"seed {seed}, fold {fold.name}: inner-loso over {len(inner)} training speakers chose {selection.epochs} "
        f"epoch(s)")
    if ddp.is_main():  # under torchrun rank 0 alone writes
        atomic_write_text(saved, json.dumps(asdict(selection), indent=2) + "\n")
    return selection


def _inner_curve(
    config: ExperimentConfig, corpus: PreparedCorpus, outer: Fold, inner: Fold, inner_dir: Path, seed: int,
    device: torch.device, progress: bool, log: Callable[[str], None],
) -> dict:
    """One inner fold's validation curve (higher is better) and its cost, trained once, kept in inner_dir/curve.json."""
    saved = inner_dir / CURVE
    if saved.is_file():
        return json.loads(saved.read_text())
    data = fold_data(config, corpus, inner.train, inner.validation, (), device)
    result = train_fold(
        config.model, config.train, corpus.labels, data.train, data.validation, inner_dir,
        fold_seed(seed, f"{outer.name}/{inner.name}"), device, progress=progress, stop_early=False, log=log,
    )
    metric = config.train.select_metric
    curve = [-row["val_loss"] if metric == "loss" else row[f"val_{metric}"] for row in result.history]
    record = {"curve": curve, "steps": result.steps, "seconds": round(result.seconds, 1)}
    if ddp.is_main():  # under torchrun rank 0 alone writes
        atomic_write_text(saved, json.dumps(record, indent=2) + "\n")
        (inner_dir / CHECKPOINT).unlink(missing_ok=True)
    return record


def final_epochs(run_dir: str | Path) -> int:
    """The epoch count for a model on all speakers: the median best epoch of a cross-validation run's folds."""
    done = [json.loads(p.read_text()) for p in Path(run_dir).glob(f"seed-*/*/{DONE}")]
    if not done:
        raise ConfigError(f"{run_dir}: no finished fold to take the epoch count from; run `atfnn train` first")
    return max(1, int(round(statistics.median(d["best_epoch"] for d in done))))


def train_final(
    config: ExperimentConfig, run_dir: str | Path, epochs: int | None = None, progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[Path, int]:
    """`atfnn train --final`: under the run's lock, a model on every speaker for `epochs` (default: final_epochs of
    the run) into RUN_DIR/final; returns its model directory and the epoch count."""
    run_dir = Path(run_dir)
    # Under torchrun the processes train one model together: rank 0 holds the lock for all of them.
    with run_lock(run_dir) if ddp.is_main() else contextlib.nullcontext():
        epochs = epochs or final_epochs(run_dir)
        return fit_final(config, run_dir / "final", epochs, progress, log), epochs


def fit_final(
    config: ExperimentConfig, out: str | Path, epochs: int, progress: bool = True, log: Callable[[str], None] = print
) -> Path:
    """Train one deployable model on every speaker of the corpus for a fixed number of epochs; returns its directory."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = setup_process(config)
    with ddp.main_first():  # under torchrun, rank 0 fills the feature cache that the others then read
        corpus = prepare_corpus(config, progress=progress and ddp.is_main(), log=log)
    data = fold_data(config, corpus, [u.uid for u in corpus.utterances], (), (), device)
    log(f"final model: {len(corpus.utterances)} utterances, {epochs} epochs ({device})")
    result = train_fold(
        config.model, config.train, corpus.labels, data.train, None, out / "work", config.train.seed, device, epochs,
        progress and ddp.is_main(), log=log,
    )
    if not ddp.is_main():
        return out / "model"
    model_dir = save_model(
        result.model, corpus.labels, config.frontend, out / "model",
        info={"corpus": config.corpus.name, "speakers": "all", "epochs": epochs, "seed": config.train.seed},
        norm_stats=data.stats,
    )
    atomic_write_text(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    (out / "work" / CHECKPOINT).unlink(missing_ok=True)
    return model_dir


def load_run_config(run_dir: str | Path) -> ExperimentConfig:
    import yaml

    return from_dict(yaml.safe_load((Path(run_dir) / "config.yaml").read_text()))


def rescore_run(
    run_dir: str | Path, aggregate: str | None = None, segment_hop: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[int, dict]:
    """Re-evaluate a run's saved fold models on their test speakers with another inference-time choice.

    Only the utterance decision (`aggregate`) and the test segmenting (`segment_hop`) may change; the models, their
    kept epochs and the folds stay those of the run, so this measures an inference choice without retraining and
    without any new model selection. Returns {seed: metrics.summarise(...)} over the seed's finished folds.
    """
    from atfnn.checkpoint import load_model
    from atfnn.metrics import summarise

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    if aggregate is not None:
        config.train.aggregate = aggregate
    if segment_hop is not None:
        config.frontend.segment_hop = segment_hop
    corpus = prepare_corpus(config, progress=False, log=log)
    folds = {fold.name: fold for fold in read_run_folds(run_dir)}
    device = torch.device("cpu")
    by_seed: dict[int, list] = {}
    for fold_dir in sorted(run_dir.glob(f"seed-*/*/{DONE}")):
        fold_dir = fold_dir.parent
        seed, fold = int(fold_dir.parent.name.removeprefix("seed-")), folds[fold_dir.name]
        model, card = load_model(fold_dir / "model", device)
        if card.labels != corpus.labels:
            raise ConfigError(f"{fold_dir}: model labels {card.labels} differ from the corpus's {corpus.labels}")
        test = split_data(corpus, fold.test, stats=card.norm_stats)
        scores = evaluate(model, test, corpus.labels, device, "fp32", config.train.aggregate)
        by_seed.setdefault(seed, []).append((fold.name, scores["y_true"], scores["y_pred"]))
    if not by_seed:
        raise ConfigError(f"{run_dir}: no finished fold (seed-*/<fold>/{DONE}) to rescore")
    return {seed: summarise(per_fold, corpus.labels) for seed, per_fold in sorted(by_seed.items())}
