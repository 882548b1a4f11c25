"""`atfnn train --executor ray` on a local Ray cluster of this machine: the same predictions as `--jobs 1`, a killed
worker retried and resumed, a killed driver finished by a rerun."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, require_extra

ray = require_extra("ray", "distributed")

from atfnn.distributed.ray_executor import WORKER_PID, task_resources  # noqa: E402
from atfnn.experiment import DONE, prepare_corpus, run_experiment  # noqa: E402
from atfnn.protocols import make_folds  # noqa: E402
from tests.test_experiment import tiny_config  # noqa: E402

# One thread per fold, so that the serial reference and the Ray tasks sum in the same order; 3 epochs leave a
# checkpointed epoch before the end of a fold for the worker-kill test.
SETTINGS = ("train.threads=1", "train.epochs=3")


@pytest.fixture(scope="module")
def cluster():
    """One local Ray session for the module (starting one costs seconds): 2 CPUs, so 2 folds at a time."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def reference(corpus, cache, tmp_path_factory) -> Path:
    """The serial (`--jobs 1`) run of the same seed."""
    out = tmp_path_factory.mktemp("serial") / "run"
    run_experiment(tiny_config(corpus, cache, *SETTINGS), out, progress=False, log=lambda m: None)
    return out


def predictions(out: Path) -> dict[str, bytes]:
    found = {p.parent.name: p.read_bytes() for p in sorted(out.glob("seed-0/*/predictions.csv"))}
    assert len(found) == 3, f"{out}: {sorted(found)}"
    return found


def test_a_fold_task_asks_for_the_configs_threads_or_one_gpu(corpus, cache):
    on_cpu = task_resources(tiny_config(corpus, cache, "train.threads=3"))
    assert (on_cpu.num_cpus, on_cpu.num_gpus, on_cpu.threads) == (3, 0, 3)
    assert task_resources(tiny_config(corpus, cache, "train.threads=0")).num_cpus == 1
    on_gpu = task_resources(tiny_config(corpus, cache, "train.device=cuda"))
    assert (on_gpu.num_cpus, on_gpu.num_gpus) == (1, 1)


def test_a_ray_run_predicts_byte_for_byte_what_a_serial_run_does(cluster, corpus, cache, reference, tmp_path):
    out = tmp_path / "run"
    results = run_experiment(tiny_config(corpus, cache, *SETTINGS), out, progress=False, executor="ray",
                             log=lambda m: None)
    assert predictions(out) == predictions(reference)
    assert results["n"] == 36 and (out / "results.json").is_file() and (out / "report.md").is_file()
    for fold_dir in (out / "seed-0").iterdir():
        assert int((fold_dir / WORKER_PID).read_text()) != os.getpid(), "the fold ran in a Ray worker"


def _kill_first_checkpointed_worker(out: Path, killed: dict) -> None:
    """Wait for a fold's first checkpoint, then SIGKILL the Ray worker training it (by the pid it wrote)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for checkpoint in out.glob("seed-0/*/last.pt"):
            fold_dir = checkpoint.parent
            if (fold_dir / DONE).exists():
                continue
            pid = int((fold_dir / WORKER_PID).read_text())
            os.kill(pid, signal.SIGKILL)
            killed.update(fold=fold_dir.name, pid=pid)
            return
        time.sleep(0.05)


def test_a_worker_killed_mid_fold_is_retried_and_resumes_to_the_same_predictions(
    cluster, corpus, cache, reference, tmp_path,
):
    out, killed = tmp_path / "run", {}
    killer = threading.Thread(target=_kill_first_checkpointed_worker, args=(out, killed))
    killer.start()
    run_experiment(tiny_config(corpus, cache, *SETTINGS), out, progress=False, executor="ray", log=lambda m: None)
    killer.join()
    assert killed, "no fold checkpoint appeared to kill its worker at"
    retried = out / "seed-0" / killed["fold"]
    assert int((retried / WORKER_PID).read_text()) != killed["pid"], "the killed fold was rerun by another worker"
    assert predictions(out) == predictions(reference)


def test_a_killed_driver_is_finished_by_rerunning_the_command(cluster, corpus, cache, reference, tmp_path):
    out, config = tmp_path / "run", tiny_config(corpus, cache, *SETTINGS)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    command = [sys.executable, "-m", "atfnn", "train", str(config_path), "--out", str(out), "--no-progress",
               "--executor", "ray", "--address", cluster]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300  # generous: on a loaded 2-core machine a tiny fold can take minutes
    while not any(out.glob(f"seed-0/*/{DONE}")) and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    finished = len(list(out.glob(f"seed-0/*/{DONE}")))
    assert 1 <= finished < 3 and not (out / "results.json").exists(), f"the driver died after {finished} folds"
    run_experiment(config, out, progress=False, executor="ray", log=lambda m: None)
    assert predictions(out) == predictions(reference)
    assert (out / "results.json").is_file()


def test_tune_runs_two_trials_on_training_speakers_and_writes_a_trainable_best_config(cluster, corpus, cache,
                                                                                       tmp_path):
    from atfnn.config import load_config
    from atfnn.distributed.tune import BEST, TRIALS, run_tune

    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {loguniform: [1.0e-4, 1.0e-2]}\nmodel.head_dropout: {choice: [0.0, 0.2]}\n")
    out = tmp_path / "tune"
    best = run_tune(tiny_config(corpus, cache, "train.threads=1", "train.epochs=1"), space, 2, out,
                    log=lambda m: None)
    rows = list(csv.DictReader((out / TRIALS).open()))
    assert len(rows) == 2 and {"train.lr", "model.head_dropout", "score"} <= set(rows[0])
    # The trials trained the inner folds of the first outer fold only: its test speaker is never among them.
    config = tiny_config(corpus, cache)
    folds = make_folds(prepare_corpus(config, progress=False, log=lambda m: None).utterances, config.protocol)
    trained = {p.name for p in out.glob("trials/*/*")}
    assert trained == {f.name for f in folds[1:]}, "one inner fold per training speaker, none for the test one"
    chosen = load_config(out / BEST)
    assert chosen.train.lr == pytest.approx(best["train.lr"])
    assert chosen.model.head_dropout == best["model.head_dropout"]
    assert float(rows[0]["score"]) == pytest.approx(best["score"])
    # Then, apart from the trials, the chosen configuration scored once on the outer test speaker no trial saw.
    outer = json.loads((out / "outer" / "results.json").read_text())
    assert [f["test"] for f in outer["folds"]] == [folds[0].name]
    assert best["outer_fold"] == folds[0].name and best["outer_uar"] == pytest.approx(outer["uar"])
    assert load_config(out / "outer" / "config.yaml").train.lr == pytest.approx(best["train.lr"])
