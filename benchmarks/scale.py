"""Scale-out timings: a run serially, with --jobs 2 and with --executor ray (and Ray's start-up and per-task
overhead); the DDP step with 1 and 2 processes. Prints one JSON object.

    PYTHONPATH=$PWD python benchmarks/scale.py --out /tmp/scale-bench              # synthetic corpus, tiny model
    PYTHONPATH=$PWD python benchmarks/scale.py --out /tmp/scale-casia --casia      # CASIA, the default ATFNN

--casia times configs/casia_atfnn.yaml itself (the full-size model; serially on 2 threads, otherwise a fold per
core) on --folds for --epochs epochs each, with the feature cache filled first (`atfnn prepare`), so each timing is
training, testing and the per-command and per-task costs.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.lstm_hidden=8", "model.lstm_layers=1", "train.batch_size=16", "train.epochs=3",
        "frontend.segment_hop=128"]


def _atfnn(args: list[str], launcher: list[str] | None = None) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # threads come from train.threads
    began = time.perf_counter()
    done = subprocess.run((launcher or [sys.executable]) + ["-m", "atfnn", *args], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"atfnn {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return round(time.perf_counter() - began, 2)


def _sets(corpus: Path, cache: Path) -> list[str]:
    sets = []
    for item in ["corpus.name=synthetic", f"corpus.root={corpus}", f"cache_dir={cache}", *TINY]:
        sets += ["--set", item]
    return sets


def ray_overhead() -> dict:
    import ray

    began = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    start = time.perf_counter() - began

    @ray.remote(num_cpus=1)
    def nothing() -> int:
        return 0

    ray.get([nothing.remote() for _ in range(4)])  # workers started
    began = time.perf_counter()
    for _ in range(20):
        ray.get(nothing.remote())
    per_task = (time.perf_counter() - began) / 20
    ray.shutdown()
    return {"ray_init_s": round(start, 2), "ray_task_roundtrip_ms": round(per_task * 1000, 2)}


def ddp_step(config: str, sets: list[str], work: Path, processes: int, epochs: int = 2) -> float:
    """Seconds per optimizer step of `atfnn train --final` (rank 0's log)."""
    out = work / f"ddp-{processes}"
    launcher = None
    if processes > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                    "--master_addr", "127.0.0.1", "--master_port", str(port)]
    _atfnn(["train", config, "--final", "--epochs", str(epochs), "--out", str(out), "--no-progress", *sets], launcher)
    rows = list(csv.DictReader((out / "final" / "work" / "log.csv").open()))
    per_epoch = int(rows[0]["step"])  # steps are counted from the start
    return round(sum(float(r["seconds"]) for r in rows) / (len(rows) * per_epoch), 4)


def timings(config: str, sets: list[str], work: Path, run_sets: list[str], ddp_epochs: int) -> dict:
    """serial_s: one process on both cores; jobs2_s and ray_s: a fold per core; DDP: per process one thread, and one
    process on both cores for comparison."""
    _atfnn(["prepare", config, *sets])  # the feature cache, outside every timing
    train = ["train", config, "--no-progress", *sets, *run_sets]
    one, two = ["--set", "train.threads=1"], ["--set", "train.threads=2"]
    return {
        "serial_s": _atfnn([*train, *two, "--out", str(work / "serial")]),
        "jobs2_s": _atfnn([*train, *one, "--out", str(work / "jobs2"), "--jobs", "2"]),
        "ray_s": _atfnn([*train, *one, "--out", str(work / "ray"), "--executor", "ray"]),
        **ray_overhead(),
        "ddp_step_1_s": ddp_step(config, [*sets, *one], work, 1, ddp_epochs),
        "ddp_step_1_2threads_s": ddp_step(config, [*sets, *two], work / "2threads", 1, ddp_epochs),
        "ddp_step_2_s": ddp_step(config, [*sets, *one], work, 2, ddp_epochs),
    }


def main() -> None:
    from atfnn.corpora.synthetic import SyntheticSpec, generate

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=tempfile.mkdtemp(prefix="atfnn-scale-"))
    parser.add_argument("--casia", action="store_true", help="configs/casia_atfnn.yaml instead of the synthetic run")
    parser.add_argument("--folds", default="liuchanhg,wangzhe", help="--casia: the folds each command trains")
    parser.add_argument("--epochs", type=int, default=1, help="--casia: epochs per fold and of the DDP trainings")
    args = parser.parse_args()
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    if args.casia:
        sets = []
        run_sets = ["--folds", args.folds, "--set", f"train.epochs={args.epochs}"]
        results = timings(str(REPO / "configs" / "casia_atfnn.yaml"), sets, work, run_sets, args.epochs)
        results |= {"folds": args.folds, "epochs": args.epochs}
    else:
        corpus, cache = work / "corpus", work / "cache"
        generate(corpus, SyntheticSpec(speakers=4, utterances_per_class=3, seed=1))
        (work / "none.yaml").write_text("{}\n")
        results = timings(str(work / "none.yaml"), _sets(corpus, cache), work, [], 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
