"""`atfnn train --executor ray`: each pending (seed, fold) is one Ray task running the same fold job as `--jobs`.

The driver (the `atfnn train` process) keeps everything a run directory promises: it holds the run lock, it alone
writes the run's files (config, fold set, results), and it skips finished folds. A task writes only inside its own
fold directory, so a task that Ray retries after its worker died resumes from that fold's last.pt. Workers must see
the run directory, the corpus and the feature cache at the same paths as the driver (docs/scale-out.md).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from atfnn.config import ExperimentConfig
from atfnn.errors import ConfigError
from atfnn.protocols import Fold

WORKER_PID = "worker.pid"  # written by a task into its fold directory before it trains (for operators and tests)
RETRIES = 3  # times Ray reruns a task whose worker process died; each rerun resumes from last.pt


@dataclass
class TaskResources:
    """What one fold task asks Ray for."""

    num_cpus: int
    num_gpus: int
    threads: int  # torch threads inside the task


def task_resources(config: ExperimentConfig) -> TaskResources:
    """train.threads CPUs (at least 1), or one GPU when the config trains on CUDA."""
    threads = max(1, config.train.threads)
    if str(config.train.device).startswith("cuda"):
        return TaskResources(num_cpus=1, num_gpus=1, threads=threads)
    return TaskResources(num_cpus=threads, num_gpus=0, threads=threads)


def import_ray():
    try:
        import ray
    except ImportError as e:
        raise ConfigError(f"--executor ray needs Ray ({e}); install it with pip install 'atfnn[distributed]'") from None
    return ray


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join the Ray cluster at `address`, or start a local one; returns whether this call started the session."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=True)
    return True


def _task(config_dict: dict, out: str, fold_name: str, seed: int, threads: int) -> dict:
    """The Ray task: record this worker's pid in the fold directory, then the process pool's fold job."""
    from atfnn.experiment import _fold_job

    fold_dir = Path(out) / f"seed-{seed}" / fold_name
    fold_dir.mkdir(parents=True, exist_ok=True)
    (fold_dir / WORKER_PID).write_text(f"{os.getpid()}\n")
    return _fold_job(config_dict, out, fold_name, seed, threads)


def run_on_ray(
    config: ExperimentConfig, out: Path, pending: list[tuple[int, Fold]], address: str | None,
    on_fold_done: Callable[[str, int], None] | None, log: Callable[[str], None],
) -> None:
    """Train the pending (seed, fold) pairs as Ray tasks; report each as it finishes; stop at the first failure."""
    ray = import_ray()
    started = connect(address)
    try:
        resources = task_resources(config)
        remote = ray.remote(max_retries=RETRIES, retry_exceptions=False)(_task).options(
            num_cpus=resources.num_cpus, num_gpus=resources.num_gpus)
        log(f"{len(pending)} fold(s) to train as Ray tasks, {resources.num_cpus} CPU(s) and {resources.num_gpus} "
            f"GPU(s) each; cluster: {ray.cluster_resources()}")
        refs = {remote.remote(config.to_dict(), str(out), fold.name, seed, resources.threads): (seed, fold)
                for seed, fold in pending}
        _collect(ray, refs, on_fold_done, log)
    finally:
        if started:
            ray.shutdown()


def _collect(ray, refs: dict, on_fold_done: Callable[[str, int], None] | None, log: Callable[[str], None]) -> None:
    waiting = list(refs)
    while waiting:
        finished, waiting = ray.wait(waiting, num_returns=1)
        seed, fold = refs[finished[0]]
        try:
            done = ray.get(finished[0])
        except BaseException:
            for ref in waiting:  # a running fold keeps its last.pt; the rerun resumes it
                ray.cancel(ref, force=True)
            raise
        log(f"seed {seed}, fold {fold.name}: UAR {done['uar']:.2f}  WAR {done['war']:.2f}  "
            f"(best epoch {done['best_epoch']}, {done['seconds']:.0f} s)")
        if on_fold_done is not None:
            on_fold_done(fold.name, seed)
