"""Move the runs kept in results/ to fold sets stored once, with no machine paths (atfnn.foldsets).

Each run directory under RESULTS (results/<run>/, results/baselines/<run>/) that still holds its own folds/ (the
layout before fold sets, uids absolute paths of the machine that ran it) gets:
  - its fold set stored once in RESULTS/folds/<corpus>-<fingerprint>/ (runs split the same way share one), uids
    relative to the corpus root;
  - RUN/foldset.json naming that set, and its folds/ removed;
  - the uid column of every RUN/seed-*/<fold>/predictions.csv made relative to the same root.
Then every fold set in RESULTS/folds/ still in format 1 (its folds' split files in its own folder) is rewritten in
format 2: each distinct split once in RESULTS/folds/splits/<sha12>.jsonl, named by the sets' folds.json; the
fingerprints, and so foldset.json of every run, stay as they are.
A run or set already migrated is left as it is, so the script can be rerun. It prints what it did and, at the end,
any file under RESULTS that still names an absolute path and any two fold files with the same content.

    python scripts/migrate_results.py [RESULTS]          # default: results/
    python scripts/migrate_results.py --dry-run           # say what would change, change nothing
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

from atfnn import foldsets

ABSOLUTE = re.compile(r"(?<![\w.])/(work|root|home|tmp|Users|mnt|data)/")


def run_dirs(results: Path) -> list[Path]:
    """Runs in the old layout: a folder with config.yaml and folds/folds.json (the shared store is not a run)."""
    summaries = results.glob("**/folds/folds.json")
    return sorted(p.parent.parent for p in summaries if (p.parent.parent / "config.yaml").is_file())


def migrate(run: Path, results: Path, dry_run: bool) -> str:
    foldset, base = foldsets.run_foldset(run)
    predictions = sorted(run.glob("seed-*/*/predictions.csv"))
    if dry_run:
        return f"{run}: would use {foldset.id} (uids relative to {base}), rewrite {len(predictions)} predictions.csv"
    # The shared store at the top of results/, whatever the run's depth (results/baselines/<run> too).
    path = foldsets.write_foldset(foldset, results / foldsets.STORE)
    foldsets.write_pointer(run, foldset)
    for file in predictions:
        foldsets.relativise_predictions(file, base)
    shutil.rmtree(run / foldsets.STORE)
    return f"{run}: {path.relative_to(results)}, {len(predictions)} predictions.csv relative"


def upgrade_sets(results: Path, dry_run: bool) -> list[str]:
    """Rewrite the format-1 fold sets of RESULTS/folds/ in format 2 (atfnn.foldsets.upgrade_foldset)."""
    done = []
    for summary in sorted((results / foldsets.STORE).glob("*/" + foldsets.SUMMARY)):
        path = summary.parent
        if dry_run:
            if json.loads(summary.read_text(encoding="utf-8")).get("format", 1) != foldsets.FORMAT:
                done.append(f"{path}: would be rewritten in format {foldsets.FORMAT}")
        elif foldsets.upgrade_foldset(path):
            done.append(f"{path}: format {foldsets.FORMAT}, splits in {path.parent / foldsets.SPLIT_STORE}")
    return done


def duplicate_files(store: Path) -> list[list[Path]]:
    """Groups of fold files under `store` with the same bytes (none once every set is in format 2)."""
    by_content: dict[bytes, list[Path]] = {}
    for path in sorted(store.rglob("*.jsonl")):
        by_content.setdefault(hashlib.sha256(path.read_bytes()).digest(), []).append(path)
    return [paths for paths in by_content.values() if len(paths) > 1]


def absolute_paths(results: Path) -> list[Path]:
    found = []
    for path in sorted(results.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".csv", ".md", ".yaml", ".txt"):
            if ABSOLUTE.search(path.read_text(encoding="utf-8", errors="replace")):
                found.append(path)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default="results", type=Path)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    results = args.results
    runs = run_dirs(results)
    for run in runs:
        print(migrate(run, results, args.dry_run))
    upgraded = upgrade_sets(results, args.dry_run)
    print("\n".join(upgraded) if upgraded else "every fold set is in format 2")
    n_sets = len(list((results / foldsets.STORE).glob("*/" + foldsets.SUMMARY)))
    done = "to migrate" if args.dry_run else "migrated"
    print(f"{len(runs)} run(s) {done}; {n_sets} fold set(s) in {results / foldsets.STORE}")
    left = absolute_paths(results)
    for path in left:
        print(f"still names an absolute path: {path}")
    duplicates = duplicate_files(results / foldsets.STORE)
    for paths in duplicates:
        print(f"same content: {', '.join(map(str, paths))}")
    return 1 if (left or duplicates) and not args.dry_run else 0


if __name__ == "__main__":
    sys.exit(main())
