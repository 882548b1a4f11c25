"""The experiment runner: every fold (and seed) of a cross-validated experiment, resumable, ending in a report.

RUN_DIR/config.yaml, run.json (fingerprint), foldset.json, seed-<s>/<fold>/{last.pt, log.csv, model/, predictions.csv,
done.json}, results.json, report.md, confusion.png. A fold is finished when its done.json exists (written last,
atomically); a rerun skips finished folds and resumes an unfinished one from last.pt.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import statistics
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from atfnn import features as feats
from atfnn import kernels
from atfnn.checkpoint import save_model
from atfnn.config import ExperimentConfig, from_dict, save_config
from atfnn.corpora import Utterance, load_corpus
from atfnn.errors import ConfigError, CorpusError
from atfnn.foldsets import read_run_folds, write_run_folds
from atfnn.protocols import Fold, make_folds, select_folds
from atfnn.reports import atomic_write_text, finalise_run, write_predictions
from atfnn.runtime import die_with_parent, peak_rss_mib, threads_per_job, tune_allocator
from atfnn.training import SplitData, evaluate, resolve_device, train_fold

DONE = "done.json"
LOCK = ".lock"  # held by the `atfnn train` writing the run (run_lock)


@dataclass
class PreparedCorpus:
    utterances: list[Utterance]
    labels: list[str]
    segments: feats.Segments
    seg_labels: torch.Tensor  # class index per segment


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
    segments = feats.build_segments(store, usable, config.frontend)
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
    return PreparedCorpus(utterances, labels, segments, seg_labels)


def split_data(corpus: PreparedCorpus, uids: Sequence[str], device: torch.device | None = None) -> SplitData:
    """The segments of the utterances `uids`, as a SplitData whose utterance indices are local to the split."""
    seg = corpus.segments
    wanted = {uid: i for i, uid in enumerate(uids)}
    global_to_local = np.array([wanted.get(uid, -1) for uid in seg.utterance_uids], dtype=np.int64)
    local = global_to_local[seg.utt]
    mask = local >= 0
    rows = torch.from_numpy(np.flatnonzero(mask))
    x = seg.x.index_select(0, rows)
    if device is not None and device.type != "cpu":
        x = x.to(device)
    by_uid = {u.uid: u for u in corpus.utterances}
    speaker_index = {name: i for i, name in enumerate(sorted({by_uid[uid].speaker for uid in uids}))}
    utt_speaker = np.array([speaker_index[by_uid[uid].speaker] for uid in uids], dtype=np.int64)
    return SplitData(
        x=x,
        y=corpus.seg_labels.index_select(0, rows),
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


def check_run_dir(out: Path, config: ExperimentConfig) -> None:
    """Refuse to mix two configurations in one run directory; record the configuration on first use."""
    run_file = out / "run.json"
    fingerprint = config.fingerprint()
    if run_file.is_file():
        # Compare with the saved config read back through today's dataclasses, so that a field added to atfnn
        # since the run began (at its default) does not lock the run out; run.json's hash is kept as a record.
        saved = out / "config.yaml"
        previous = load_run_config(out).fingerprint() if saved.is_file() else json.loads(run_file.read_text()).get("fingerprint")
        if previous != fingerprint:
            raise ConfigError(
                f"{out} holds a run of another configuration (fingerprint {previous} != {fingerprint}); "
                f"compare {out / 'config.yaml'} with yours, or choose a new --out directory"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
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
) -> dict:
    """Run (or resume) every selected fold for `seeds` seeds (train.seed, train.seed + 1, ...); return results.

    jobs > 1 trains that many folds at once, each in its own process with its share of the cores (train.threads
    each when set). On a CPU this is faster than one fold on all cores (docs/performance.md); a fold's result does
    not depend on it beyond floating-point summation order.
    """
    out = Path(out)
    with run_lock(out):
        return _run_experiment(config, out, folds, seeds, progress, on_fold_done, log, jobs)


def _run_experiment(
    config: ExperimentConfig, out: Path, folds: Sequence[str] | None, seeds: int, progress: bool,
    on_fold_done: Callable[[str, int], None] | None, log: Callable[[str], None], jobs: int,
) -> dict:
    check_run_dir(out, config)
    tune_allocator()
    if jobs < 1:
        raise ConfigError(f"jobs must be at least 1, got {jobs}")
    if config.train.threads > 0:
        torch.set_num_threads(config.train.threads)
    device = resolve_device(config.train.device)
    log(f"device {device}; F-Encoder ops: {kernels.status()}")
    corpus = prepare_corpus(config, progress=progress, log=log)
    all_folds = make_folds(
        corpus.utterances, config.protocol.kind, config.protocol.validation, config.protocol.val_fraction,
        config.protocol.seed,
    )
    write_run_folds(out, all_folds, corpus.utterances, config.corpus.name, config.corpus.root)
    chosen = select_folds(all_folds, folds)
    pending = []
    for seed in range(config.train.seed, config.train.seed + seeds):
        for fold in chosen:
            if (out / f"seed-{seed}" / fold.name / DONE).is_file():
                log(f"seed {seed}, fold {fold.name}: done, skipped")
            else:
                pending.append((seed, fold))
    if jobs > 1 and len(pending) > 1:
        _run_parallel(config, out, pending, jobs, on_fold_done, log)
    else:
        for seed, fold in pending:
            log(f"seed {seed}, fold {fold.name}: training on {len(fold.train)} utterances, "
                f"validating on {len(fold.validation)}, testing on {len(fold.test)} ({device})")
            run_fold(config, corpus, fold, out / f"seed-{seed}" / fold.name, seed, device, progress)
            if on_fold_done is not None:
                on_fold_done(fold.name, seed)
    return finalise_run(out, corpus.labels, config.to_dict(), title=out.name)


def _run_parallel(
    config: ExperimentConfig, out: Path, pending: list[tuple[int, Fold]], jobs: int,
    on_fold_done: Callable[[str, int], None] | None, log: Callable[[str], None],
) -> None:
    """Train the pending (seed, fold) pairs in `jobs` worker processes; stop handing out work at the first failure."""
    workers = min(jobs, len(pending))
    threads = threads_per_job(workers, config.train.threads)
    log(f"{len(pending)} fold(s) to train, {workers} at a time with {threads} thread(s) each")
    # spawn, not fork: a forked child inherits torch's thread pools in an undefined state.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {
            pool.submit(_fold_job, config.to_dict(), str(out), fold.name, seed, threads): (seed, fold)
            for seed, fold in pending
        }
        for future in as_completed(futures):
            seed, fold = futures[future]
            try:
                done = future.result()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # running folds finish (or keep last.pt); then report
                raise
            log(f"seed {seed}, fold {fold.name}: UAR {done['uar']:.2f}  WAR {done['war']:.2f}  "
                f"(best epoch {done['best_epoch']}, {done['seconds']:.0f} s)")
            if on_fold_done is not None:
                on_fold_done(fold.name, seed)


def _fold_job(config_dict: dict, out: str, fold_name: str, seed: int, threads: int) -> dict:
    """One fold in a worker process: the corpus comes from the feature cache the parent has filled."""
    die_with_parent()
    tune_allocator()
    torch.set_num_threads(threads)
    config = from_dict(config_dict)
    corpus = prepare_corpus(config, progress=False, log=lambda message: None)
    fold = next(
        f for f in make_folds(
            corpus.utterances, config.protocol.kind, config.protocol.validation, config.protocol.val_fraction,
            config.protocol.seed,
        ) if f.name == fold_name
    )
    print(f"seed {seed}, fold {fold.name}: training on {len(fold.train)} utterances, validating on "
          f"{len(fold.validation)}, testing on {len(fold.test)} (worker {os.getpid()}, {threads} thread(s))", flush=True)
    device = resolve_device(config.train.device)
    return run_fold(config, corpus, fold, Path(out) / f"seed-{seed}" / fold.name, seed, device, progress=False)


def run_fold(
    config: ExperimentConfig, corpus: PreparedCorpus, fold: Fold, fold_dir: Path, seed: int, device: torch.device,
    progress: bool = True,
) -> dict:
    began = time.perf_counter()
    # Each fold gets its own seed so that a fold's result does not depend on which folds ran before it.
    fold_seed = seed * 1000 + zlib.crc32(fold.name.encode()) % 1000
    train = split_data(corpus, fold.train, device)
    validation = split_data(corpus, fold.validation, device) if fold.validation else None
    test = split_data(corpus, fold.test, device)
    result = train_fold(
        config.model, config.train, corpus.labels, train, validation, fold_dir, fold_seed, device, progress=progress,
        monitor=test if config.train.monitor_test else None,
    )
    scores = evaluate(result.model, test, corpus.labels, device, config.train.precision, config.train.aggregate)
    by_uid = {u.uid: u for u in corpus.utterances}
    rows = [
        {"uid": uid, "speaker": by_uid[uid].speaker, "label": t, "pred": p, "probs": probs}
        for uid, t, p, probs in zip(scores["uids"], scores["y_true"], scores["y_pred"], scores["probs"])
    ]
    write_predictions(fold_dir / "predictions.csv", rows, corpus.labels)
    save_model(
        result.model, corpus.labels, config.frontend, fold_dir / "model",
        info={"corpus": config.corpus.name, "fold": fold.name, "seed": seed, "best_epoch": result.best_epoch},
    )
    done = {
        "fold": fold.name, "seed": seed, "best_epoch": result.best_epoch, "epochs": result.epochs,
        "war": scores["war"], "uar": scores["uar"], "segment_war": scores["segment_war"], "n": len(rows),
        "seconds": round(time.perf_counter() - began, 1),
        # The process's peak so far: with --jobs, this fold's worker; serially, the largest fold up to this one.
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "f_encoder_ops": kernels.status(),  # fused C kernels or torch ops (atfnn/kernels; same function)
    }
    atomic_write_text(fold_dir / DONE, json.dumps(done, indent=2) + "\n")
    (fold_dir / "last.pt").unlink(missing_ok=True)
    return done


def final_epochs(run_dir: str | Path) -> int:
    """The epoch count for a model on all speakers: the median best epoch of a cross-validation run's folds."""
    done = [json.loads(p.read_text()) for p in Path(run_dir).glob(f"seed-*/*/{DONE}")]
    if not done:
        raise ConfigError(f"{run_dir}: no finished fold to take the epoch count from; run `atfnn train` first")
    return max(1, int(round(statistics.median(d["best_epoch"] for d in done))))


def fit_final(
    config: ExperimentConfig, out: str | Path, epochs: int, progress: bool = True, log: Callable[[str], None] = print
) -> Path:
    """Train one deployable model on every speaker of the corpus for a fixed number of epochs; returns its directory."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tune_allocator()
    if config.train.threads > 0:
        torch.set_num_threads(config.train.threads)
    device = resolve_device(config.train.device)
    corpus = prepare_corpus(config, progress=progress, log=log)
    data = split_data(corpus, [u.uid for u in corpus.utterances], device)
    log(f"final model: {len(corpus.utterances)} utterances, {epochs} epochs ({device})")
    result = train_fold(
        config.model, config.train, corpus.labels, data, None, out / "work", config.train.seed, device, epochs, progress
    )
    model_dir = save_model(
        result.model, corpus.labels, config.frontend, out / "model",
        info={"corpus": config.corpus.name, "speakers": "all", "epochs": epochs, "seed": config.train.seed},
    )
    save_config(config, out / "config.yaml")
    (out / "work" / "last.pt").unlink(missing_ok=True)
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
        scores = evaluate(model, split_data(corpus, fold.test), corpus.labels, device, "fp32", config.train.aggregate)
        by_seed.setdefault(seed, []).append((fold.name, scores["y_true"], scores["y_pred"]))
    if not by_seed:
        raise ConfigError(f"{run_dir}: no finished fold (seed-*/<fold>/{DONE}) to rescore")
    return {seed: summarise(per_fold, corpus.labels) for seed, per_fold in sorted(by_seed.items())}
