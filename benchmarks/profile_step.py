"""Where the time of one ATFNN training step goes: torch.profiler's table of the busiest operators, fp32 and bf16.

    python benchmarks/profile_step.py --threads 1 --precision fp32,bf16 --out benchmarks/results/profile
    python benchmarks/profile_step.py --threads 1 --torch-ops --out benchmarks/results/profile-torch-ops
    python benchmarks/profile_step.py --threads 1 --precision fp32 --plain --out benchmarks/results/profile-plain

Writes <out>/profile-<precision>.txt (operators by self CPU time). Same step as benchmarks/run.py: batch 128,
forward + cross-entropy + backward + Adam, tuned allocator, after one warm-up step; --torch-ops profiles the
model without the fused kernels of atfnn/kernels, --plain the reference of run.py (the plain layers, without the
fast path of atfnn/fast.py).
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

RUN = Path(__file__).resolve().parent / "run.py"
PRECISIONS = ("fp32", "bf16", "bf16-lstm")  # train.precision's CPU values


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 = what each --jobs worker uses)")
    parser.add_argument("--precision", default="fp32,bf16", help=f"comma-separated: {', '.join(PRECISIONS)}")
    parser.add_argument("--rows", type=int, default=15, help="operators listed")
    parser.add_argument("--batch", type=int, default=None, help="segments per step (default: run.py's, 128)")
    parser.add_argument("--torch-ops", action="store_true", help="without atfnn.kernels (the F-Encoder on torch ops)")
    parser.add_argument("--plain", action="store_true", help="run.py's reference: the plain layers (no atfnn/fast.py)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/profile"))
    args = parser.parse_args(argv)
    spec = importlib.util.spec_from_file_location("atfnn_bench_run", RUN)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # reuse its batch, model and step so both measure the same thing
    bench.tune_allocator()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    batch_size = args.batch or bench.BATCH
    x, y = bench.batch(batch_size)
    written = []
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        parser.error(f"--precision: unknown {', '.join(unknown)}; choose from {', '.join(PRECISIONS)}")
    for precision in precisions:
        model, reference = bench.model_pair("atfnn")
        dtype = None if precision == "fp32" else torch.bfloat16
        step = bench.train_step_fn(reference if args.plain else model, x, y, dtype, fused=not args.torch_ops,
                                   lstm_only=precision == "bf16-lstm")
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
        path = args.out / f"profile-{precision}.txt"
        ops = "plain layers" if args.plain else "torch ops" if args.torch_ops else bench.kernels.status()
        path.write_text(f"{precision}, {args.threads} thread(s), batch {batch_size}, F-Encoder: {ops}\n{table}\n")
        print(f"wrote {path}")
        written.append(path)
    return written


if __name__ == "__main__":
    main()
