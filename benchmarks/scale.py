"""Scale-out timings on the synthetic corpus: a tiny run serially, with --jobs 2 and with --executor ray (and Ray's
start-up and per-task overhead); the DDP step with 1 and 2 processes. Prints one JSON object.

    PYTHONPATH=$PWD python benchmarks/scale.py --out /tmp/scale-bench
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
        "frontend.segment_hop=128", "train.threads=1"]


def _atfnn(args: list[str], launcher: list[str] | None = None) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    began = time.perf_counter()
    subprocess.run((launcher or [sys.executable]) + ["-m", "atfnn", *args], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def ddp_step(corpus: Path, cache: Path, work: Path, processes: int) -> float:
    """Seconds per optimizer step of `atfnn train --final` (rank 0's log), 2 epochs."""
    out = work / f"ddp-{processes}"
    launcher = None
    if processes > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                    "--master_addr", "127.0.0.1", "--master_port", str(port)]
    _atfnn(["train", str(work / "none.yaml"), "--final", "--epochs", "2", "--out", str(out), "--no-progress",
            *_sets(corpus, cache)], launcher)
    rows = list(csv.DictReader((out / "final" / "work" / "log.csv").open()))
    per_epoch = int(rows[0]["step"])  # steps are counted from the start
    return round(sum(float(r["seconds"]) for r in rows) / (len(rows) * per_epoch), 4)


def main() -> None:
    from atfnn.corpora.synthetic import SyntheticSpec, generate

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=tempfile.mkdtemp(prefix="atfnn-scale-"))
    work = Path(parser.parse_args().out)
    corpus, cache = work / "corpus", work / "cache"
    generate(corpus, SyntheticSpec(speakers=4, utterances_per_class=3, seed=1))
    (work / "none.yaml").write_text("{}\n")
    config = [str(work / "none.yaml")]
    _atfnn(["prepare", *config, *_sets(corpus, cache)])  # the feature cache, outside every timing
    results = {
        "serial_s": _atfnn(["train", *config, "--out", str(work / "serial"), "--no-progress", *_sets(corpus, cache)]),
        "jobs2_s": _atfnn(["train", *config, "--out", str(work / "jobs2"), "--jobs", "2", "--no-progress",
                           *_sets(corpus, cache)]),
        "ray_s": _atfnn(["train", *config, "--out", str(work / "ray"), "--executor", "ray", "--no-progress",
                         *_sets(corpus, cache)]),
        **ray_overhead(),
        "ddp_step_1_s": ddp_step(corpus, cache, work, 1),
        "ddp_step_2_s": ddp_step(corpus, cache, work, 2),
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
