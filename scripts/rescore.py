#!/usr/bin/env python
"""Inference-time alternatives on a finished run: utterance decision and test segment hop, same models and folds.

    .venv/bin/python scripts/rescore.py runs/casia-atfnn --aggregate mean vote max --segment-hop 64 128 \
        --json results/casia-atfnn/rescore.json

Prints one markdown row per (aggregate, hop): the pooled UAR/WAR of each seed and their mean. Training and model
selection are untouched (atfnn.experiment.rescore_run), so the rows differ only by the inference choice.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from atfnn.experiment import rescore_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--aggregate", nargs="+", default=["mean", "vote", "max"])
    parser.add_argument("--segment-hop", nargs="+", type=int, default=[None], help="test segment hop in frames")
    parser.add_argument("--json", type=Path, help="write every row (with per-fold numbers) here")
    args = parser.parse_args()
    rows = []
    print("| Aggregate | Test segment hop | UAR per seed | UAR mean | WAR mean |")
    print("|---|---|---|---|---|")
    for hop in args.segment_hop:
        for method in args.aggregate:
            by_seed = rescore_run(args.run_dir, method, hop, log=lambda message: None)
            uars = [s["uar"] for s in by_seed.values()]
            wars = [s["war"] for s in by_seed.values()]
            label = "run's" if hop is None else str(hop)
            print(f"| {method} | {label} | {', '.join(f'{u:.2f}' for u in uars)} | {statistics.mean(uars):.2f} | "
                  f"{statistics.mean(wars):.2f} |", flush=True)
            rows.append({"aggregate": method, "segment_hop": hop, "seeds": {
                str(seed): {k: s[k] for k in ("war", "uar", "folds")} for seed, s in by_seed.items()}})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"run": str(args.run_dir), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
