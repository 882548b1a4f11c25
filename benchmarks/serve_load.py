"""Load on `atfnn serve` over loopback: requests/s and p50/p95 latency of POST /api/predict for 3 s files with 1, 4
and 16 concurrent clients, and whether GET /healthz keeps answering while the workers are saturated.

    python benchmarks/serve_load.py                          # the packaged model, a fresh server on a free port
    python benchmarks/serve_load.py --model RUN/.../model --workers 2 --out benchmarks/results/serve
    python benchmarks/serve_load.py --random-weights configs/casia_atfnn.yaml    # the paper network, any weights
    python benchmarks/serve_load.py --clients 1 4 --requests 8 --time-limit 20     # a quick look

Bounded: each level stops after --requests requests or --time-limit seconds, whichever comes first, and the server it
started is stopped at the end. Only 127.0.0.1 is contacted. The file is a synthetic 3 s harmonic tone (the model's
cost depends on the duration, not on what is said). Writes results.json and results.md to --out when given.
Exit code 1 when a /healthz probe failed or took longer than --health-limit seconds while saturated.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
SECONDS = 3.0
HEALTH_PERIOD = 0.1  # seconds between /healthz probes during a level


@dataclass
class Level:
    clients: int
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)
    health: list[float] = field(default_factory=list, repr=False)
    health_failures: int = 0

    def summary(self) -> dict:
        return {
            "clients": self.clients, "requests": self.requests, "errors": self.errors,
            "seconds": round(self.seconds, 2), "requests_per_s": round(self.requests / self.seconds, 2),
            "p50_s": round(percentile(self.latencies, 50), 3), "p95_s": round(percentile(self.latencies, 95), 3),
            "healthz_probes": len(self.health), "healthz_failures": self.health_failures,
            "healthz_p95_s": round(percentile(self.health, 95), 4) if self.health else None,
            "healthz_max_s": round(max(self.health), 4) if self.health else None,
        }


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def tone(seconds: float = SECONDS) -> bytes:
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(140 + 30 * np.sin(2 * np.pi * 0.7 * t)) / SR
    wave = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)
    buffer = io.BytesIO()
    sf.write(buffer, (0.1 * wave).astype(np.float32), SR, format="WAV")
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str | None, port: int, workers: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "atfnn", "serve", *([model] if model else []), "--port", str(port),
               "--workers", str(workers), "--max-queue", "64"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(log, "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def wait_until_up(url: str, process: subprocess.Popen, log: Path, limit: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"atfnn serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit(f"atfnn serve did not answer at {url} within {limit:.0f} s:\n{log.read_text()}")


# ----------------------------------------------------------------------------------------------------- load
async def client_loop(client, audio: bytes, level: Level, stop_at: float, budget: list[int]) -> None:
    while budget[0] > 0 and time.monotonic() < stop_at:
        budget[0] -= 1
        began = time.perf_counter()
        response = await client.post("/api/predict", files={"file": ("tone.wav", audio, "audio/wav")})
        level.latencies.append(time.perf_counter() - began)
        level.requests += 1
        level.errors += response.status_code != 200


async def probe_health(client, level: Level, done: asyncio.Event) -> None:
    while not done.is_set():
        began = time.perf_counter()
        try:
            ok = (await client.get("/healthz")).status_code == 200
        except Exception:  # a refused or timed-out probe is what this measures, whatever httpx calls it
            ok = False
        level.health.append(time.perf_counter() - began)
        level.health_failures += not ok
        await asyncio.sleep(HEALTH_PERIOD)


async def run_level(url: str, audio: bytes, clients: int, requests: int, time_limit: float) -> Level:
    import httpx

    level = Level(clients)
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, timeout=max(60.0, time_limit), limits=limits) as client:
        await client.post("/api/predict", files={"file": ("tone.wav", audio, "audio/wav")})  # warm-up
        budget, done = [requests], asyncio.Event()
        health = asyncio.create_task(probe_health(client, level, done))
        began = time.perf_counter()
        stop_at = time.monotonic() + time_limit
        await asyncio.gather(*(client_loop(client, audio, level, stop_at, budget) for _ in range(clients)))
        level.seconds = time.perf_counter() - began
        done.set()
        await health
    return level


# ----------------------------------------------------------------------------------------------------- report
def machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    cpu = platform.processor() or ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "loadavg_at_start": [round(x, 2) for x in load] if load else None,
            "time": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, load average {m['loadavg_at_start']} at start; "
             f"{m['time']}; model {results['model']}; {results['workers']} worker(s); 3 s WAV files.", "",
             "| Clients | Requests | Req/s | p50 (s) | p95 (s) | Errors | /healthz probes | failed | p95 (s) "
             "| max (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["levels"]:
        lines.append(f"| {r['clients']} | {r['requests']} | {r['requests_per_s']:.2f} | {r['p50_s']:.3f} | "
                     f"{r['p95_s']:.3f} | {r['errors']} | {r['healthz_probes']} | {r['healthz_failures']} | "
                     f"{r['healthz_p95_s']} | {r['healthz_max_s']} |")
    return "\n".join(lines) + "\n"


def random_model(config: str, directory: Path) -> str:
    """The network of an experiment YAML with seeded random weights: what a request costs does not depend on them."""
    import torch

    sys.path.insert(0, str(ROOT))
    from atfnn.checkpoint import save_model
    from atfnn.config import load_config
    from atfnn.model import build_model

    cfg = load_config(config)
    torch.manual_seed(0)
    labels = ["angry", "fear", "happy", "neutral", "sad", "surprise"]
    return str(save_model(build_model(cfg.model, len(labels)), labels, cfg.frontend, directory / "model",
                          {"note": f"random weights, {config}"}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: the packaged model)")
    parser.add_argument("--random-weights", metavar="CONFIG",
                        help="serve this experiment YAML's network with random weights instead of --model")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=48, help="most requests per level")
    parser.add_argument("--time-limit", type=float, default=40.0, help="most seconds per level")
    parser.add_argument("--workers", type=int, default=1, help="atfnn serve --workers")
    parser.add_argument("--health-limit", type=float, default=1.0, help="slowest acceptable /healthz answer, s")
    parser.add_argument("--out", type=Path, help="directory for results.json and results.md")
    args = parser.parse_args(argv)

    if args.random_weights:
        args.model = random_model(args.random_weights, Path(tempfile.mkdtemp(prefix="atfnn-serve-load-")))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"atfnn-serve-load-{port}.log"
    model_name = f"{args.random_weights} (random weights)" if args.random_weights else args.model or "packaged"
    results = {"machine": machine(), "model": model_name, "workers": args.workers, "levels": []}
    process = start_server(args.model, port, args.workers, log)
    try:
        wait_until_up(url, process, log)
        audio = tone()
        for clients in args.clients:
            level = asyncio.run(run_level(url, audio, clients, args.requests, args.time_limit))
            results["levels"].append(level.summary())
            print(json.dumps(level.summary()), flush=True)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.unlink(missing_ok=True)
        if args.random_weights:
            shutil.rmtree(Path(args.model).parent, ignore_errors=True)
    print(markdown(results))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        (args.out / "results.md").write_text(markdown(results))
    worst = [r for r in results["levels"] if r["healthz_failures"] or (r["healthz_max_s"] or 0) > args.health_limit]
    return 1 if worst else 0


if __name__ == "__main__":
    sys.exit(main())
