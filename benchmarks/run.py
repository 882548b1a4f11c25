"""Performance benchmarks of atfnn on this machine; one command writes results.json and results.md.

    python benchmarks/run.py --out benchmarks/results            # default run (~10 min on a 2-core CPU)
    python benchmarks/run.py --quick                             # one timed repeat each, no memory subprocesses
    python benchmarks/run.py --repeats 5 --threads 2 --extra     # extra: bf16 autocast and torch.compile

What is measured (docs/performance.md explains each):
- training throughput (segments/s) of ATFNN and each ablation, optimised (atfnn.model as it runs, with the fast path
  of atfnn/fast.py) and reference (the same model on its plain layers, `FEncoder.use_fast = False`), same weights,
  batch 128, forward + backward + Adam step;
  median of the timed repeats after a warm-up step, the two models interleaved in one process;
- inference throughput (segments/s, eval mode, inference_mode);
- front end: seconds of audio per second, `atfnn.audio.log_mel_spectrogram` vs librosa with the same parameters;
- peak memory (VmHWM) of one training step, each model in a fresh subprocess;
- predict latency of a 3 s file (when `atfnn.inference.load` exists);
- with --extra: bf16 autocast training steps, and torch.compile (compile time and steady state).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atfnn import audio, kernels  # noqa: E402
from atfnn.config import FrontEndConfig, ModelConfig  # noqa: E402
from atfnn.model import VARIANTS, build_model  # noqa: E402
from atfnn.runtime import cpu_count, tune_allocator  # noqa: E402

SHARED_DATA = Path(os.environ.get("ATFNN_SHARED_DATA", ROOT / ".." / "shared" / "data")).resolve()
BATCH = 128
N_CLASSES = 6  # CASIA
LR = 5e-4
INFERENCE_BATCH = 128
FRONTEND_SECONDS = 60.0
FRONTEND_REPEATS = 10
FRONTEND_BLOCK = 5  # consecutive calls per timing
CASIA_FILES = 100  # the first N files of CASIA, sorted by path, for the front-end benchmark
PREDICT_SECONDS = 3.0


def model_pair(variant: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The model of one variant and the reference, a copy with the same weights on its plain layers."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(variant=variant), N_CLASSES)
    ref = copy.deepcopy(model)
    if ref.f_encoder is not None:  # ATNN has no F-Encoder: the reference is the same network there
        ref.f_encoder.use_fast = False
    return model, ref


def batch(size: int = BATCH, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random segments at the scale of log-Mel values, and labels."""
    g = torch.Generator().manual_seed(seed)
    cfg = ModelConfig()
    x = torch.randn(size, cfg.n_mels, cfg.frames, generator=g) * 3 - 6
    return x, torch.randint(0, N_CLASSES, (size,), generator=g)


def train_step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None = None,
                  fused: bool = True, lstm_only: bool = False):
    """A closure running one training step (forward, cross-entropy, backward, Adam), as atfnn.training does;
    fused=False runs the optimised model on torch ops instead of atfnn.kernels; lstm_only autocasts the T-Encoder
    alone (train.precision=bf16-lstm), on a copy of the model."""
    if lstm_only and dtype is not None:  # the T-Encoder's own autocast instead of the whole network's
        model = copy.deepcopy(model)
        model.t_encoder.autocast_dtype, dtype = dtype, None
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)

    def step() -> None:
        with contextlib.nullcontext() if fused else kernels.disabled():
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()

    return step


def t_encoder_step_fn(model: torch.nn.Module, dtype: torch.dtype | None = None):
    """Forward + backward of the model's T-Encoder alone on a batch of its inputs (B, T, F*C): the part that the
    optimised and the reference ATFNN share (nn.LSTM has no fast path), so reference step / this step bounds their
    ratio."""
    encoder = copy.deepcopy(model.t_encoder).train()
    cfg = ModelConfig()
    x = torch.randn(BATCH, cfg.frames, cfg.n_mels * cfg.channels, requires_grad=True)

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            h = encoder(x)
        h.float().sum().backward()

    return step


def fused_available() -> bool:
    return kernels.usable(torch.zeros(1))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each function: warm-up calls, then `repeats` rounds calling each once in turn.

    Interleaving makes slow drifts of the machine (other processes, thermal state) hit every function alike.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return times


def summary(seconds: list[float], items: int) -> dict:
    med = statistics.median(seconds)
    return {"seconds": [round(s, 4) for s in seconds], "median_s": round(med, 4), "per_s": round(items / med, 2)}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------------------------ benchmarks
def bench_training(variants: list[str], repeats: int, with_reference: bool) -> dict:
    x, y = batch()
    out = {}
    for variant in variants:
        model, ref = model_pair(variant)
        fns = {"optimised": train_step_fn(model, x, y)}
        if fused_available():  # the same model without atfnn.kernels: what the fused kernels add
            fns["optimised_torch_ops"] = train_step_fn(copy.deepcopy(model), x, y, fused=False)
        if with_reference:
            fns["reference"] = train_step_fn(ref, x, y)
            if variant == "atfnn":
                fns["t_encoder_alone"] = t_encoder_step_fn(model)
        times = interleaved(fns, repeats)
        row = {name: summary(t, BATCH) for name, t in times.items()}
        _ratios(row)
        out[variant] = row
        log(f"train {variant}: " + ", ".join(f"{k} {v['per_s']} seg/s" for k, v in row.items() if isinstance(v, dict))
            + (f", x{row['speedup']}" if with_reference else "")
            + (f" (bound x{row['speedup_bound']})" if "speedup_bound" in row else ""))
    return out


def _ratios(row: dict) -> None:
    """Speed-ups of the optimised model over the reference and over itself on torch ops, where both ran."""
    if "reference" in row:
        row["speedup"] = round(row["reference"]["median_s"] / row["optimised"]["median_s"], 2)
    if "optimised_torch_ops" in row:
        row["kernels_speedup"] = round(row["optimised_torch_ops"]["median_s"] / row["optimised"]["median_s"], 2)
    if "reference" in row and "t_encoder_alone" in row:  # the speed-up if everything but nn.LSTM took no time
        row["speedup_bound"] = round(row["reference"]["median_s"] / row["t_encoder_alone"]["median_s"], 2)


def bench_inference(variants: list[str], repeats: int, with_reference: bool) -> dict:
    x, _ = batch(INFERENCE_BATCH, seed=1)
    out = {}
    for variant in variants:
        model, ref = model_pair(variant)
        models = {"optimised": (model.eval(), True)}
        if fused_available():
            models["optimised_torch_ops"] = (model, False)
        if with_reference:
            models["reference"] = (ref.eval(), True)

        def forward(m, fused):
            def run():
                with torch.inference_mode(), contextlib.nullcontext() if fused else kernels.disabled():
                    m(x)
            return run

        times = interleaved({k: forward(*v) for k, v in models.items()}, repeats)
        row = {name: summary(t, INFERENCE_BATCH) for name, t in times.items()}
        _ratios(row)
        out[variant] = row
        log(f"inference {variant}: " + ", ".join(f"{k} {v['per_s']} seg/s" for k, v in row.items() if isinstance(v, dict)))
    return out


def bench_tencoder(repeats: int) -> dict:
    """The T-Encoder alone (ATFNN's BiLSTM, 640 inputs), forward + backward, at 1 thread and at all threads: the part
    of the step that the optimised and the reference model share, and the bound it sets (docs/performance.md)."""
    torch.manual_seed(0)
    step = t_encoder_step_fn(build_model(ModelConfig(), N_CLASSES))
    threads = torch.get_num_threads()
    out = {}
    for n in sorted({1, threads}):
        torch.set_num_threads(n)
        out[f"threads_{n}"] = summary(interleaved({"t": step}, repeats)["t"], BATCH)
        log(f"T-Encoder forward + backward, {n} thread(s): {out[f'threads_{n}']['per_s']} seg/s")
    torch.set_num_threads(threads)
    return out


def bench_autocast(repeats: int) -> dict:
    """bf16 autocast training steps of ATFNN against fp32, all interleaved in this process (native bf16
    needs AVX-512-bf16 or AMX; elsewhere CPU autocast emulates it and is slower than fp32)."""
    x, y = batch()
    out: dict = {}
    model, ref = model_pair("atfnn")
    steps = {}
    # fp16 autocast is CUDA-only in atfnn (train.precision), and the reference in bf16 (minutes per repeat where
    # bf16 is emulated) adds nothing to the question "how much faster is bf16 training than fp32".
    # (key, model, autocast dtype, what runs): "step" a training step, "torch ops" one without atfnn.kernels,
    # "lstm" one with train.precision=bf16-lstm's autocast, "t-encoder" the T-Encoder alone.
    runs = [("optimised_fp32", model, None, "step"), ("reference_fp32", ref, None, "step"),
            ("optimised_bf16", model, torch.bfloat16, "step"), ("optimised_bf16_lstm", model, torch.bfloat16, "lstm")]
    if fused_available():  # the optimised model on torch ops, to show what atfnn.kernels adds in each precision
        runs += [("optimised_fp32_torch_ops", copy.deepcopy(model), None, "torch ops"),
                 ("optimised_bf16_torch_ops", copy.deepcopy(model), torch.bfloat16, "torch ops")]
    runs += [("t_encoder_alone_fp32", model, None, "t-encoder"),
             ("t_encoder_alone_bf16", model, torch.bfloat16, "t-encoder")]
    for key, m, dtype, kind in runs:
        step = (t_encoder_step_fn(m, dtype) if kind == "t-encoder"
                else train_step_fn(m, x, y, dtype, fused=kind != "torch ops", lstm_only=kind == "lstm"))
        try:
            step()  # warm-up, and a check that this build supports it
            steps[key] = step
        except Exception as e:  # report, not crash: a build may lack bf16 kernels
            out[key] = {"error": f"{type(e).__name__}: {e}"[:300]}
            log(f"autocast {key}: {out[key]['error']}")
    times = interleaved(steps, repeats, warmup=0)
    for key, seconds in times.items():
        out[key] = summary(seconds, BATCH)
        log(f"autocast {key}: {out[key]['per_s']} seg/s")
    if "optimised_fp32" in times and "reference_fp32" in times:
        out["ratio_optimised_fp32_to_reference_fp32"] = round(
            out["optimised_fp32"]["per_s"] / out["reference_fp32"]["per_s"], 2)
    if "optimised_bf16" in times and "reference_fp32" in times:
        out["ratio_optimised_bf16_to_reference_fp32"] = round(
            out["optimised_bf16"]["per_s"] / out["reference_fp32"]["per_s"], 2)
        out["ratio_optimised_bf16_to_optimised_fp32"] = round(
            out["optimised_bf16"]["per_s"] / out["optimised_fp32"]["per_s"], 2)
        log(f"autocast: optimised bf16 / reference fp32 x{out['ratio_optimised_bf16_to_reference_fp32']}, "
            f"/ optimised fp32 x{out['ratio_optimised_bf16_to_optimised_fp32']}")
    if "optimised_bf16_lstm" in times and "reference_fp32" in times:
        for other in ("reference_fp32", "optimised_fp32"):
            out[f"ratio_optimised_bf16_lstm_to_{other}"] = round(
                out["optimised_bf16_lstm"]["per_s"] / out[other]["per_s"], 2)
    for precision in ("fp32", "bf16"):
        fused, plain = f"optimised_{precision}", f"optimised_{precision}_torch_ops"
        if fused in times and plain in times:
            out[f"ratio_{fused}_to_{plain}"] = round(out[fused]["per_s"] / out[plain]["per_s"], 2)
        # The ratio to the reference if everything but the T-Encoder (nn.LSTM, shared with it) took no time.
        alone = f"t_encoder_alone_{precision}"
        if alone in times and "reference_fp32" in times:
            out[f"ratio_{alone}_to_reference_fp32"] = round(out[alone]["per_s"] / out["reference_fp32"]["per_s"], 2)
    return out


def bench_compile(repeats: int) -> dict:
    """torch.compile of the optimised ATFNN against the same model in eager mode, interleaved in this process:
    time of the first (compiling) step, then the steady state of both and their ratio."""
    x, y = batch()
    out = {}
    try:
        from torch import _dynamo

        _dynamo.reset()
        models = {}
        for name in ("eager", "compiled"):
            torch.manual_seed(0)
            models[name] = build_model(ModelConfig(), N_CLASSES)
        steps = {"eager": train_step_fn(models["eager"], x, y),
                 "compiled": train_step_fn(torch.compile(models["compiled"]), x, y)}
        first = timed(steps["compiled"])
        times = interleaved(steps, repeats, warmup=1)
        eager, compiled = summary(times["eager"], BATCH), summary(times["compiled"], BATCH)
        out = {"first_step_s": round(first, 2), "eager": eager, "compiled": compiled,
               "ratio": round(compiled["per_s"] / eager["per_s"], 2)}
        log(f"compile: first step {first:.1f} s, then {compiled['per_s']} seg/s against {eager['per_s']} eager "
            f"(x{out['ratio']})")
    except Exception as e:
        out = {"error": f"{type(e).__name__}: {e}"[:500]}
        log(f"compile failed: {out['error']}")
    return out


def _synthetic_speech(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """A harmonic tone with a moving pitch plus noise: a deterministic stand-in for speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 150 + 50 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    wave = sum(np.sin(k * phase) / k for k in range(1, 10)) + 0.05 * rng.standard_normal(t.size)
    return (0.1 * wave).astype(np.float32)


def _librosa_logmel(wave: np.ndarray, fe: FrontEndConfig) -> np.ndarray:
    import librosa

    mel = librosa.feature.melspectrogram(
        y=wave, sr=fe.sample_rate, n_fft=fe.n_fft, hop_length=fe.hop_length, win_length=fe.win_length,
        window="hamming", center=True, pad_mode="constant", power=2.0, n_mels=fe.n_mels, fmin=fe.fmin, fmax=fe.fmax,
    )
    return np.log(np.maximum(mel, fe.log_floor))


def casia_files(limit: int) -> list[Path]:
    root = SHARED_DATA / "casia"
    return sorted(root.rglob("*.wav"))[:limit] if root.is_dir() else []


def bench_frontend(repeats: int) -> dict:
    fe = FrontEndConfig()
    out: dict = {}
    wave = _synthetic_speech(FRONTEND_SECONDS, fe.sample_rate)
    ours = lambda: audio.log_mel_spectrogram(wave, fe)  # noqa: E731
    theirs = lambda: _librosa_logmel(wave, fe)  # noqa: E731
    diff = float(np.abs(ours().numpy() - theirs()).max())

    def block(fn):  # a file after a file, as a corpus is processed; one librosa call between two torch calls
        return lambda: [fn() for _ in range(FRONTEND_BLOCK)]  # costs torch ~50% (its threads fall asleep)

    # Tens of milliseconds per call: many repeats, or the median is noise.
    times = interleaved({"atfnn": block(ours), "librosa": block(theirs)}, max(repeats, FRONTEND_REPEATS), warmup=1)
    out["synthetic_60s"] = {
        name: {**summary(t, FRONTEND_BLOCK), "audio_s_per_s": round(FRONTEND_BLOCK * FRONTEND_SECONDS / statistics.median(t), 1)}
        for name, t in times.items()
    }
    out["synthetic_60s"]["max_abs_diff_log"] = diff
    log(f"front end 60 s: atfnn {out['synthetic_60s']['atfnn']['audio_s_per_s']} s/s, "
        f"librosa {out['synthetic_60s']['librosa']['audio_s_per_s']} s/s, max |diff| {diff:.2e}")
    files = casia_files(CASIA_FILES)
    if not files:
        out["casia"] = {"skipped": f"no CASIA wav files under {SHARED_DATA / 'casia'}"}
        return out
    waves = [audio.load_audio(f, fe.sample_rate) for f in files]
    total = sum(len(w) for w in waves) / fe.sample_rate
    times = interleaved(
        {
            "atfnn": lambda: [audio.log_mel_spectrogram(w, fe) for w in waves],
            "librosa": lambda: [_librosa_logmel(w, fe) for w in waves],
            "atfnn_with_loading": lambda: [audio.log_mel_spectrogram(f, fe) for f in files],
        },
        max(repeats, FRONTEND_REPEATS // 4),
    )
    out["casia"] = {
        "files": len(files), "audio_s": round(total, 1),
        **{name: {**summary(t, len(files)), "audio_s_per_s": round(total / statistics.median(t), 1)}
           for name, t in times.items()},
    }
    log(f"front end CASIA ({len(files)} files, {total:.0f} s): "
        + ", ".join(f"{k} {v['audio_s_per_s']} s/s" for k, v in out["casia"].items() if isinstance(v, dict)))
    return out


def bench_predict(repeats: int) -> dict:
    """Latency of Predictor.predict on one 3 s file (random weights; the network's cost does not depend on them)."""
    try:
        from atfnn.checkpoint import save_model
        from atfnn.inference import load
    except ImportError as e:
        return {"skipped": f"predict API not available ({e})"}
    import soundfile as sf

    fe = FrontEndConfig()
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = build_model(ModelConfig(), N_CLASSES)
        save_model(model, [f"c{i}" for i in range(N_CLASSES)], fe, Path(tmp) / "model")
        wav = Path(tmp) / "three_seconds.wav"
        sf.write(str(wav), _synthetic_speech(PREDICT_SECONDS, fe.sample_rate), fe.sample_rate)
        start = time.perf_counter()
        predictor = load(Path(tmp) / "model", device="cpu")
        load_s = time.perf_counter() - start
        times = interleaved({"predict": lambda: predictor.predict(wav)}, repeats)
    med = statistics.median(times["predict"])
    log(f"predict 3 s file: {med * 1000:.0f} ms (load {load_s:.2f} s)")
    return {"file_s": PREDICT_SECONDS, "load_s": round(load_s, 3), "latency_ms": round(med * 1000, 1),
            "seconds": [round(t, 4) for t in times["predict"]]}


def bench_allocator(repeats: int, threads: int, current: str) -> dict:
    """ATFNN training with the other glibc allocator setting, in a subprocess (mallopt is process-wide)."""
    other = "default" if current == "tuned" else "tuned"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--only", "training", "--variants", "atfnn",
               "--repeats", str(repeats), "--threads", str(threads), "--malloc", other, "--out", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            return {"malloc": other, "error": proc.stderr.strip()[-500:]}
        row = json.loads((Path(tmp) / "results.json").read_text())["training"]["atfnn"]
    log(f"allocator {other}: " + ", ".join(f"{k} {v['per_s']} seg/s" for k, v in row.items() if isinstance(v, dict)))
    return {"malloc": other, "atfnn": row}


def bench_parallel(repeats: int, malloc: str, single: dict | None) -> dict:
    """ATFNN training as `atfnn train --jobs N` runs it: one process per core, 1 thread each, all at once.

    Throughput is the sum over the processes; the ratio is against one process on all cores (`single`, measured
    in this run's training benchmark).
    """
    jobs = cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--only", "training", "--variants", "atfnn",
               "--no-reference", "--repeats", str(repeats), "--threads", "1", "--malloc", malloc]
        procs = [subprocess.Popen(cmd + ["--out", f"{tmp}/{k}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for k in range(jobs)]
        errors = [p.communicate()[1] for p in procs]
        if any(p.returncode for p in procs):
            return {"jobs": jobs, "error": next(e for p, e in zip(procs, errors) if p.returncode).strip()[-500:]}
        rows = [json.loads(Path(f"{tmp}/{k}/results.json").read_text())["training"]["atfnn"]["optimised"]
                for k in range(jobs)]
    total = round(sum(r["per_s"] for r in rows), 2)
    out = {"jobs": jobs, "threads_each": 1, "per_process": rows, "per_s": total}
    if single:
        out["single_process_per_s"] = single["per_s"]
        out["speedup_vs_single_process"] = round(total / single["per_s"], 2)
    log(f"parallel {jobs} x 1 thread: {total} seg/s in total" + (
        f" (x{out['speedup_vs_single_process']} one process)" if single else ""))
    return out


_MEMORY_CHILD = r"""
import json, sys, torch
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
import run as bench
from atfnn.runtime import peak_rss_mib
if {malloc!r} == "tuned":
    bench.tune_allocator()
torch.set_num_threads({threads})
model, ref = bench.model_pair({variant!r})
m = model if {which!r} == "optimised" else ref
x, y = bench.batch()
step = bench.train_step_fn(m, x, y)
before = peak_rss_mib()
step()
print(json.dumps({{"before_mib": before, "peak_mib": peak_rss_mib()}}))
"""


def bench_memory(variants: list[str], threads: int, with_reference: bool, malloc: str) -> dict:
    """Peak resident memory of one training step (first step, Adam state included), each in a fresh process."""
    out = {}
    for variant in variants:
        row = {}
        for which in ("optimised", "reference") if with_reference else ("optimised",):
            code = _MEMORY_CHILD.format(root=str(ROOT), bench=str(ROOT / "benchmarks"), threads=threads,
                                        variant=variant, which=which, malloc=malloc)
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                row[which] = {"error": proc.stderr.strip()[-300:]}
                continue
            rss = json.loads(proc.stdout.strip().splitlines()[-1])
            row[which] = {
                "peak_mib": round(rss["peak_mib"], 1),
                "step_increase_mib": round(rss["peak_mib"] - rss["before_mib"], 1),
            }
        out[variant] = row
        log(f"memory {variant}: " + ", ".join(f"{k} peak {v.get('peak_mib')} MiB" for k, v in row.items()))
    return out


# ------------------------------------------------------------------------------------------------------- reporting
def cpu_flags() -> list[str]:
    """The vector-ISA flags that decide fp32/bf16 speed here (Linux /proc/cpuinfo; empty elsewhere)."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [flag for flag in wanted if flag in present]
    except OSError:
        pass
    return []


def machine_info(threads: int) -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for name in ("librosa", "soundfile", "soxr"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # optional for the report
            versions[name] = None
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": platform.machine(), "system": f"{platform.system()} {platform.release()}",
        "hostname": platform.node(), "cpu_model": cpu, "logical_cpus": os.cpu_count(),
        "torch_threads": threads, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": cpu_flags(),
        "mkldnn": torch.backends.mkldnn.is_available(), "kernels": kernels.status(), "versions": versions,
        "load_average_start": list(os.getloadavg()),
    }


def write_markdown(results: dict, path: Path) -> None:
    info = results["machine"]
    lines = [
        "# atfnn benchmarks", "",
        f"- Command: `{results['command']}`",
        f"- Date: {info['date']}; machine: {info['cpu_model']} ({info['logical_cpus']} logical CPUs, "
        f"torch capability {info['torch_cpu_capability']}; flags: {', '.join(info.get('cpu_flags') or ['unknown'])}), "
        f"{info['system']}",
        f"- torch {info['versions']['torch']} ({info['torch_threads']} threads), numpy {info['versions']['numpy']}, "
        f"librosa {info['versions']['librosa']}, Python {info['versions']['python']}",
        f"- Load average at start / end: {', '.join(f'{v:.2f}' for v in info['load_average_start'])} / "
        f"{', '.join(f'{v:.2f}' for v in info.get('load_average_end', []))} (other processes skew timings)",
        f"- Timing: batch {BATCH}, {results['repeats']} timed repeat(s) after 1 warm-up, median; optimised and "
        "reference (the same model on its plain layers, FEncoder.use_fast off) interleaved in one process, same "
        "weights.",
        f"- glibc allocator: {results['malloc']} (`--malloc`; tuned = keep freed memory, see atfnn/runtime.py)",
        f"- F-Encoder kernels of the optimised model: {info.get('kernels', '-')} (atfnn/kernels; the 'torch ops' "
        "column is the same model without them)", "",
    ]

    def table(title: str, rows: dict, unit: str) -> None:
        lines.extend([f"## {title}", "", f"| variant | optimised ({unit}) | optimised, torch ops ({unit}) | "
                      f"reference ({unit}) | speed-up over the reference | fused kernels' speed-up |",
                      "|---|---|---|---|---|---|"])
        for variant, row in rows.items():
            plain = row.get("optimised_torch_ops", {}).get("per_s", "-")
            ref = row.get("reference", {}).get("per_s", "-")
            lines.append(f"| {variant} | {row['optimised']['per_s']} | {plain} | {ref} | {row.get('speedup', '-')} | "
                         f"{row.get('kernels_speedup', '-')} |")
        lines.append("")

    if "training" in results:
        table("Training throughput (forward + backward + Adam step, fp32)", results["training"], "segments/s")
        bound = results["training"].get("atfnn", {})
        if "speedup_bound" in bound:
            lines.extend([f"ATFNN's T-Encoder alone (nn.LSTM, the same in both models; forward + backward), interleaved "
                          f"with them: {bound['t_encoder_alone']['per_s']} segments/s, so no optimisation of the rest "
                          f"can take the speed-up over the reference past x{bound['speedup_bound']}.", ""])
    if "parallel" in results:
        par = results["parallel"]
        text = par.get("error") or (
            f"{par['jobs']} processes x 1 thread (`atfnn train --jobs {par['jobs']}`): {par['per_s']} segments/s in "
            f"total" + (f", x{par['speedup_vs_single_process']} one process on all cores "
                        f"({par['single_process_per_s']} segments/s)" if "single_process_per_s" in par else ""))
        lines.extend(["## Parallel folds (ATFNN training, optimised)", "", text, ""])
    if "tencoder" in results:
        lines.extend(["## T-Encoder alone (BiLSTM 640 -> 2 x 128, 3 layers; forward + backward)", "",
                      "| threads | segments/s |", "|---|---|"])
        lines += [f"| {k.split('_')[1]} | {v['per_s']} |" for k, v in results["tencoder"].items()]
        lines.append("")
    if "inference" in results:
        table("Inference throughput (eval, inference_mode)", results["inference"], "segments/s")
    if "allocator" in results:
        a = results["allocator"]
        if "atfnn" in a:
            table(f"ATFNN training with --malloc {a['malloc']} (subprocess)", {"atfnn": a["atfnn"]}, "segments/s")
        else:
            lines.extend([f"## ATFNN training with --malloc {a['malloc']}", "", a.get("error", "-"), ""])
    if "memory" in results:
        lines.extend(["## Peak memory of a training step (VmHWM, fresh process)", "",
                      "| variant | optimised peak (MiB) | reference peak (MiB) |", "|---|---|---|"])
        for variant, row in results["memory"].items():
            cells = [str(row.get(k, {}).get("peak_mib", "-")) for k in ("optimised", "reference")]
            lines.append(f"| {variant} | {cells[0]} | {cells[1]} |")
        lines.append("")
    if "frontend" in results:
        fe = results["frontend"]
        lines.extend(["## Front end (seconds of audio per second)", "", "| input | atfnn | librosa |", "|---|---|---|"])
        s = fe["synthetic_60s"]
        lines.append(f"| 60 s synthetic | {s['atfnn']['audio_s_per_s']} | {s['librosa']['audio_s_per_s']} |")
        c = fe.get("casia", {})
        if "atfnn" in c:
            lines.append(f"| CASIA, {c['files']} files ({c['audio_s']} s) | {c['atfnn']['audio_s_per_s']} "
                         f"({c['atfnn_with_loading']['audio_s_per_s']} with loading) | {c['librosa']['audio_s_per_s']} |")
        else:
            lines.append(f"| CASIA | {c.get('skipped', '-')} | |")
        lines.extend(["", f"max |atfnn - librosa| of the 60 s log-Mel: {s['max_abs_diff_log']:.2e}", ""])
    if "predict" in results:
        p = results["predict"]
        text = p.get("skipped") or f"{p['latency_ms']} ms per {p['file_s']:.0f} s file (model load {p['load_s']} s)"
        lines.extend(["## predict latency", "", text, ""])
    if "autocast" in results:
        lines.extend(["## Autocast (ATFNN training)", "", "| model_precision | segments/s |", "|---|---|"])
        for key, row in results["autocast"].items():
            if isinstance(row, dict):
                lines.append(f"| {key} | {row.get('per_s', row.get('error'))} |")
        ratios = [f"{k.removeprefix('ratio_').replace('_', ' ')}: x{v}"
                  for k, v in results["autocast"].items() if k.startswith("ratio_")]
        summary_line = "; ".join(ratios) or "No ratios: a precision failed (see its row)."
        lines.extend(["", f"Interleaved in one process. {summary_line}", ""])
    if "compile" in results:
        c = results["compile"]
        text = c.get("error") or (f"first step {c['first_step_s']} s; then {c['compiled']['per_s']} segments/s "
                                  f"against {c['eager']['per_s']} eager, same process, interleaved (x{c['ratio']})")
        lines.extend(["## torch.compile (optimised ATFNN training)", "", text, ""])
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder for the results")
    parser.add_argument("--quick", action="store_true", help="one timed repeat, ATFNN memory only")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, = cores)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated model variants")
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) reference: the plain layers")
    parser.add_argument("--only", default="training,parallel,tencoder,inference,memory,frontend,predict,allocator",
                        help="comma-separated subset of: training, parallel, tencoder, inference, memory, frontend, predict, allocator, "
                             "autocast, compile")
    parser.add_argument("--extra", action="store_true", help="also autocast (bf16, fp16) and torch.compile")
    parser.add_argument("--malloc", choices=("default", "tuned"), default="tuned",
                        help="glibc allocator: tuned (as atfnn train runs) keeps freed memory (atfnn/runtime.py), or default")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; available: {', '.join(VARIANTS)}")
    parts = {p.strip() for p in args.only.split(",") if p.strip()} | ({"autocast", "compile"} if args.extra else set())
    known = {"training", "parallel", "tencoder", "inference", "memory", "frontend", "predict", "allocator", "autocast", "compile"}
    if parts - known:
        parser.error(f"unknown --only part(s) {sorted(parts - known)}; available: {', '.join(sorted(known))}")
    if args.malloc == "tuned" and not tune_allocator():
        parser.error("--malloc tuned needs glibc (mallopt); this C library does not provide it")
    repeats = args.repeats or (1 if args.quick else 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    with_ref = not args.no_reference
    results: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else "run.main(...)",
        "machine": machine_info(threads), "repeats": repeats, "batch": BATCH, "malloc": args.malloc,
    }
    log(f"{results['machine']['cpu_model']}, {threads} threads, torch {torch.__version__}, repeats {repeats}")
    if "training" in parts:
        results["training"] = bench_training(variants, repeats, with_ref)
    if "inference" in parts:
        results["inference"] = bench_inference(variants, repeats, with_ref)
    if "parallel" in parts and cpu_count() > 1:
        single = results.get("training", {}).get("atfnn", {}).get("optimised")
        results["parallel"] = bench_parallel(repeats, args.malloc, single)
    if "memory" in parts:
        results["memory"] = bench_memory(["atfnn"] if args.quick else variants, threads, with_ref, args.malloc)
    if "allocator" in parts:
        results["allocator"] = bench_allocator(repeats, threads, args.malloc)
    if "frontend" in parts:
        results["frontend"] = bench_frontend(repeats)
    if "predict" in parts:
        results["predict"] = bench_predict(max(repeats, 3))
    if "tencoder" in parts:
        results["tencoder"] = bench_tencoder(repeats)
    if "autocast" in parts:
        results["autocast"] = bench_autocast(repeats)
    if "compile" in parts:
        results["compile"] = bench_compile(repeats)
    results["machine"]["load_average_end"] = list(os.getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.out / "results.md")
    log(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}")
    return results


if __name__ == "__main__":
    main()
