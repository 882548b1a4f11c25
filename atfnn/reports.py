"""Results of a run directory: results.json, report.md and confusion.png, all computed from the per-fold
prediction files, so the summary always agrees with the predictions it summarises.

Layout read here (written by the experiment runner and the baselines alike):
    RUN_DIR/config.yaml
    RUN_DIR/foldset.json                      the fold set the run used (atfnn.foldsets; older runs: RUN_DIR/folds/)
    RUN_DIR/seed-<s>/<fold>/predictions.csv   uid,speaker,label,pred[,p_<label>...]
    RUN_DIR/seed-<s>/<fold>/done.json         {"fold", "seed", "epochs", "best_epoch", "seconds", ...}
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from atfnn import foldsets
from atfnn.atomic import atomic_path, atomic_write_text
from atfnn.errors import ATFNNError
from atfnn.metrics import row_normalise, summarise

PREDICTION_FIELDS = ("uid", "speaker", "label", "pred")
# Figures quoted from the paper (Tables II and III), shown beside ours in reports.
PAPER = {
    ("casia", "atfnn"): (48.75, 48.75), ("casia", "tfnn"): (46.67, 46.67),
    ("casia", "atnn"): (46.42, 46.42), ("casia", "afnn"): (32.50, 32.50),
    ("iemocap", "atfnn"): (73.81, 64.48), ("iemocap", "tfnn"): (72.99, 63.60),
    ("iemocap", "atnn"): (71.76, 61.90), ("iemocap", "afnn"): (70.71, 59.10),
    ("abc", "atfnn"): (68.84, 57.57), ("abc", "tfnn"): (67.21, 55.99),
    ("abc", "atnn"): (66.05, 55.01), ("abc", "afnn"): (58.14, 48.22),
}


def write_predictions(path: Path, rows: Sequence[dict[str, Any]], labels: Sequence[str]) -> None:
    """One row per test utterance; probabilities (if given as row["probs"]) become p_<label> columns."""
    import io

    buffer = io.StringIO()
    has_probs = bool(rows) and "probs" in rows[0]
    fields = list(PREDICTION_FIELDS) + ([f"p_{label}" for label in labels] if has_probs else [])
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        out = {k: row[k] for k in PREDICTION_FIELDS}
        if has_probs:
            out.update({f"p_{label}": f"{p:.6f}" for label, p in zip(labels, row["probs"])})
        writer.writerow(out)
    atomic_write_text(path, buffer.getvalue())


def read_predictions(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fold_dirs(run_dir: Path) -> list[Path]:
    """Finished folds (those with done.json), ordered by seed then fold name."""
    return sorted(p.parent for p in Path(run_dir).glob("seed-*/*/done.json"))


def run_labels(run_dir: str | Path) -> list[str]:
    """The class names of a run: every label of its folds (its fold set), sorted as the runner sorts them."""
    if not foldsets.has_folds(run_dir):
        raise ATFNNError(f"{run_dir}: no {foldsets.POINTER} (nor folds/folds.json); is this a run directory?")
    folds = foldsets.fold_summary(run_dir)
    return sorted({label for fold in folds for split in fold["labels"].values() for label in split})


def expected_folds(run_dir: str | Path) -> set[str]:
    """The fold names a run was split into (its fold set); empty when the run has none."""
    return {fold["name"] for fold in foldsets.fold_summary(run_dir)}


def curve_stats(log_path: Path, best_epoch: int | None) -> dict[str, Any]:
    """From a fold's log.csv: the validation UAR of the kept epoch and, for monitored runs (train.monitor_test), the
    test speaker's UAR at the last epoch and at its best epoch, i.e. what selecting on the test speaker would report."""
    if not log_path.is_file():
        return {}
    with open(log_path, newline="") as f:
        rows = list(csv.DictReader(f))
    stats: dict[str, Any] = {}
    if best_epoch and 0 < best_epoch <= len(rows) and rows[best_epoch - 1].get("val_uar"):
        stats["val_uar"] = float(rows[best_epoch - 1]["val_uar"])
    test = [float(r["test_uar"]) for r in rows if r.get("test_uar")]
    if test and len(test) == len(rows):
        peak = int(np.argmax(test))
        stats.update(test_uar_last=test[-1], test_uar_max=test[peak], test_uar_max_epoch=peak + 1)
    return stats


def summarise_run(run_dir: str | Path, labels: Sequence[str], config: dict[str, Any]) -> dict[str, Any]:
    """results.json's content. Headline war/uar: pooled over all test utterances of a seed, then averaged over seeds."""
    run_dir = Path(run_dir)
    by_seed: dict[str, list[tuple[str, list[str], list[str]]]] = {}
    fold_info: dict[tuple[str, str], dict] = {}
    for folder in fold_dirs(run_dir):
        rows = read_predictions(folder / "predictions.csv")
        seed = folder.parent.name.removeprefix("seed-")
        by_seed.setdefault(seed, []).append((folder.name, [r["label"] for r in rows], [r["pred"] for r in rows]))
        fold_info[(seed, folder.name)] = json.loads((folder / "done.json").read_text())
    if not by_seed:
        raise ATFNNError(f"{run_dir}: no finished fold (no seed-*/<fold>/done.json); run `atfnn train` first")
    # A seed still training has fewer finished folds than the others: its pooled figure would be one of a few
    # speakers, so it is left out of the headline (and listed) until every fold of it is done. The folds a run
    # should have come from its fold set where it has one, so a run whose every seed is still training is
    # reported over its finished folds but flagged incomplete, never as if those folds were all of them.
    all_folds = {name for per_fold in by_seed.values() for name, _, _ in per_fold} | expected_folds(run_dir)
    partial = sorted(int(seed) for seed, per_fold in by_seed.items() if {name for name, _, _ in per_fold} != all_folds)
    complete = len(partial) < len(by_seed)
    if not complete:
        partial = []
    seeds = []
    folds = []
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for seed, per_fold in sorted(by_seed.items(), key=lambda kv: int(kv[0])):
        if int(seed) in partial:
            continue
        summary = summarise(per_fold, labels)
        seeds.append({"seed": int(seed), "war": summary["war"], "uar": summary["uar"]})
        confusion += np.asarray(summary["confusion"], dtype=np.int64)
        folds += _fold_rows(run_dir, seed, summary["folds"], per_fold, fold_info, labels)
    wars = np.array([s["war"] for s in seeds])
    uars = np.array([s["uar"] for s in seeds])
    fold_wars = np.array([f["war"] for f in folds])
    fold_uars = np.array([f["uar"] for f in folds])
    return {
        "war": float(wars.mean()),
        "uar": float(uars.mean()),
        "war_std_seeds": float(wars.std(ddof=0)),
        "uar_std_seeds": float(uars.std(ddof=0)),
        "war_fold_mean": float(fold_wars.mean()),
        "war_fold_std": float(fold_wars.std(ddof=0)),
        "uar_fold_mean": float(fold_uars.mean()),
        "uar_fold_std": float(fold_uars.std(ddof=0)),
        "aggregate": "war/uar: pooled over the test utterances of all folds of a seed, mean over seeds; "
        "*_fold_*: over folds and seeds; percent; std with ddof=0",
        "n": int(confusion.sum()),
        "seeds": seeds,
        "partial_seeds": partial,
        "complete": complete,
        "folds_expected": len(all_folds),
        **_missing_and_cost(all_folds, by_seed, fold_info, config),
        "folds": folds,
        "confusion": confusion.tolist(),
        "labels": list(labels),
        "config": config,
    }


def _fold_rows(run_dir: Path, seed: str, summaries: list[dict], per_fold: list, fold_info: dict,
               labels: Sequence[str]) -> list[dict[str, Any]]:
    """results.json's per-fold rows of one seed: scores, done.json's epochs and time, predicted shares, curves."""
    predicted = {name: preds for name, _, preds in per_fold}
    rows = []
    for fold in summaries:
        extra = {k: v for k, v in fold_info[(seed, fold["test"])].items() if k in ("best_epoch", "epochs", "seconds")}
        extra["pred_share"] = prediction_shares(predicted[fold["test"]], labels)
        extra |= curve_stats(run_dir / f"seed-{seed}" / fold["test"] / "log.csv", extra.get("best_epoch"))
        rows.append({"seed": int(seed), **fold, **extra})
    return rows


def prediction_shares(preds: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """% of a test speaker's utterances given each class: a collapse onto one class shows as one large share."""
    counts = {label: 0 for label in labels}
    for p in preds:
        counts[p] += 1
    return {label: 100.0 * n / max(len(preds), 1) for label, n in counts.items()}


def _missing_and_cost(all_folds: set[str], by_seed: dict, fold_info: dict, config: dict[str, Any]) -> dict:
    missing = sorted(f for f in all_folds if any((seed, f) not in fold_info for seed in by_seed))
    return {"folds_missing": missing, "selection": selection_cost(config, fold_info.values())}


def selection_cost(config: dict[str, Any], done: Any) -> dict[str, Any]:
    """How the epoch counts of a run were chosen and what its folds cost: trainings (inner ones included) and wall
    time, summed over the finished folds' done.json."""
    if "train" not in config or config.get("method"):
        return {}  # a baseline: no epochs to choose
    protocol = config.get("protocol", {})
    done = list(done)
    cost = {
        "kind": protocol.get("selection", "split"),
        "trainings": int(sum(d.get("trainings", 1) for d in done)),
        "seconds": round(float(sum(d.get("seconds", 0.0) for d in done)), 1),
    }
    if cost["kind"] == "inner-loso":
        cost["inner_seeds"] = protocol.get("inner_seeds", 0)
        cost["reused"] = sum(1 for d in done if d.get("selection_reused_from_seed") is not None)
    return cost


def _selection_line(results: dict[str, Any]) -> str:
    cost = results.get("selection")
    if not cost:
        return ""
    cost_text = f"{cost['trainings']} trainings, {cost['seconds'] / 60:.1f} min of fold time"
    if cost["kind"] != "inner-loso":
        return (f"Selection: split (early stopping on a validation split of the training speakers); {cost_text}.")
    reuse = (f" The epoch counts were chosen with the first seed and reused by the others ({cost['reused']} fold(s))."
             if cost.get("inner_seeds") == 1 else "")
    return ("Selection: inner-loso (each outer fold's epoch count from the mean validation curve of its "
            f"leave-one-training-speaker-out inner folds, then one training on all training speakers); {cost_text}."
            + reuse)


def finalise_run(run_dir: str | Path, labels: Sequence[str], config: dict[str, Any], title: str | None = None) -> dict:
    """Write results.json, report.md and confusion.png for a run directory; return the results."""
    run_dir = Path(run_dir)
    results = summarise_run(run_dir, labels, config)
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(run_dir / "report.md", render_report(results, title or run_dir.name))
    plot_confusion(np.asarray(results["confusion"]), labels, run_dir / "confusion.png", title or run_dir.name)
    return results


def _describe(config: dict[str, Any]) -> tuple[str, str, str]:
    corpus = config.get("corpus", {}).get("name", "?")
    method = config.get("method") or config.get("model", {}).get("variant", "?")
    protocol = config.get("protocol", {}).get("kind", "loso")
    return corpus, method, protocol


def _incomplete_note(results: dict[str, Any], n_done: int, n_expected: int) -> str:
    missing = results.get("folds_missing")
    return (
        f"**Incomplete run: {n_done} of its {n_expected} folds are finished.** The figures below are over those "
        "folds only. To finish it, run the same `atfnn train` command without `--folds`"
        + (f" (or with `--folds {','.join(missing)}`, the folds still missing)" if missing else "")
        + ", then `atfnn report`."
    )


def render_report(results: dict[str, Any], title: str) -> str:
    """Markdown: a Table II style row (with the paper's figure where there is one), per-fold rows, confusion matrix."""
    corpus, method, protocol = _describe(results["config"])
    labels = results["labels"]
    protocol_name = {"loso": "Leave-one-speaker-out", "loso_session": "Leave-one-session-out"}[protocol]
    n_seeds = len(results["seeds"])
    pm = (lambda m, s: f"{m:.2f} ± {s:.2f}") if n_seeds > 1 else (lambda m, s: f"{m:.2f}")
    n_done = len({f["test"] for f in results["folds"]})
    n_expected = results.get("folds_expected", n_done)
    complete = results.get("complete", True)
    folds_text = f"{n_done} folds" if complete else f"{n_done} of {n_expected} folds, provisional"
    lines = [
        f"# {title}",
        "",
    ]
    if not complete:
        lines += [_incomplete_note(results, n_done, n_expected), ""]
    lines += [
        "| Database | Protocol | Method | WAR (%) | UAR (%) |",
        "|---|---|---|---|---|",
        f"| {corpus} | {protocol_name} ({folds_text}) | {method.upper()} (ours, "
        f"{n_seeds} seed{'s' if n_seeds > 1 else ''}) | {pm(results['war'], results['war_std_seeds'])} | "
        f"{pm(results['uar'], results['uar_std_seeds'])} |",
    ]
    paper = PAPER.get((corpus, method))
    if paper:
        lines.append(f"| {corpus} | {protocol_name} | {method.upper()} (paper) | {paper[0]:.2f} | {paper[1]:.2f} |")
    lines += [
        "",
        f"WAR/UAR pooled over the {results['n']} test utterances of each seed, "
        + ("mean ± std over seeds." if n_seeds > 1 else "one seed.")
        + (f" Seed(s) {', '.join(map(str, results['partial_seeds']))} still training, left out until all their folds"
           " are done." if results.get("partial_seeds") else ""),
        f"Mean over folds: WAR {results['war_fold_mean']:.2f} ± {results['war_fold_std']:.2f}, "
        f"UAR {results['uar_fold_mean']:.2f} ± {results['uar_fold_std']:.2f}.",
        _selection_line(results),
        "",
        "## Folds",
        "",
        "| Seed | Test | n | WAR (%) | UAR (%) | Best epoch |",
        "|---|---|---|---|---|---|",
    ]
    for f in results["folds"]:
        lines.append(
            f"| {f['seed']} | {f['test']} | {f['n']} | {f['war']:.2f} | {f['uar']:.2f} | {f.get('best_epoch', '')} |"
        )
    lines += _curves_section(results["folds"])
    lines += _shares_section(results["folds"], labels)
    cm = np.asarray(results["confusion"])
    norm = row_normalise(cm)
    lines += ["", "## Confusion matrix (rows: true, columns: predicted; % of the row, counts in brackets)", ""]
    lines.append("| | " + " | ".join(labels) + " |")
    lines.append("|---" * (len(labels) + 1) + "|")
    for i, label in enumerate(labels):
        cells = [f"{100 * norm[i, j]:.1f} ({cm[i, j]})" for j in range(len(labels))]
        lines.append(f"| **{label}** | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _shares_section(folds: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[str]:
    """Per test speaker, the share of its utterances given each class (runs made before this table lack it)."""
    if not folds or not all("pred_share" in f for f in folds):
        return []
    lines = ["", "## Predicted classes per test speaker (% of the speaker's test utterances)", "",
             "| Seed | Test | " + " | ".join(labels) + " | largest |", "|---" * (len(labels) + 3) + "|"]
    for f in folds:
        shares = f["pred_share"]
        cells = " | ".join(f"{shares[label]:.1f}" for label in labels)
        lines.append(f"| {f['seed']} | {f['test']} | {cells} | {max(shares.values()):.1f} |")
    return lines


def _curves_section(folds: Sequence[dict[str, Any]]) -> list[str]:
    """Validation (training speakers) against test speaker; with a monitored test curve, the selected epoch against
    the epoch a test-speaker selection would pick (analysis only: the headline numbers never use it)."""
    if not folds or not all("val_uar" in f for f in folds):
        return []
    monitored = all("test_uar_max" in f for f in folds)
    lines = ["", "## Validation and test", ""]
    if monitored:
        lines += [
            "| Seed | Test | Val UAR at kept epoch | Test UAR at kept epoch | Test UAR, last epoch | Best test UAR (epoch) |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {f['seed']} | {f['test']} | {f['val_uar']:.2f} | {f['uar']:.2f} | {f['test_uar_last']:.2f} | "
            f"{f['test_uar_max']:.2f} ({f['test_uar_max_epoch']}) |" for f in folds
        ]
        mean = lambda key: float(np.mean([f[key] for f in folds]))  # noqa: E731
        lines.append(
            f"| mean | | {mean('val_uar'):.2f} | {mean('uar'):.2f} | {mean('test_uar_last'):.2f} | {mean('test_uar_max'):.2f} |"
        )
        lines += ["", "The last column picks each fold's epoch on its test speaker: an optimistic figure, for comparison "
                  "with protocols that do so, never a result of this run."]
    else:
        lines += ["| Seed | Test | Val UAR at kept epoch | Test UAR |", "|---|---|---|---|"]
        lines += [f"| {f['seed']} | {f['test']} | {f['val_uar']:.2f} | {f['uar']:.2f} |" for f in folds]
        lines.append(f"| mean | | {np.mean([f['val_uar'] for f in folds]):.2f} | {np.mean([f['uar'] for f in folds]):.2f} |")
    return lines


def plot_confusion(cm: np.ndarray, labels: Sequence[str], path: Path, title: str = "") -> None:
    """Fig. 5 style: row-normalised percentages in each cell, a colour scale from 0 to 100."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norm = 100 * row_normalise(cm)
    size = 1.0 + 0.8 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{norm[i, j]:.1f}", ha="center", va="center", color="white" if norm[i, j] > 50 else "black")
    fig.colorbar(image, ax=ax, label="% of the true class")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)


def _read_log(path: Path) -> dict[str, np.ndarray]:
    """A fold's log.csv as columns (empty cells, such as the test UAR of an unmonitored run, as NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ATFNNError(f"{path}: no epoch logged yet")
    return {key: np.array([float(r[key]) if r.get(key) not in ("", None) else np.nan for r in rows])
            for key in ("epoch", "step", "train_loss", "val_uar", "test_uar")}


def plot_curves(run_dir: str | Path, path: Path, seed: int | None = None) -> list[str]:
    """One panel per fold of one seed: training loss, validation UAR and (monitored, never used) test UAR against
    optimizer steps, the kept epoch marked. Returns the folds drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    seed = seed if seed is not None else min(int(p.name.split("-")[1]) for p in run_dir.glob("seed-*"))
    logs = sorted((run_dir / f"seed-{seed}").glob("*/log.csv"))
    if not logs:
        raise ATFNNError(f"{run_dir / f'seed-{seed}'}: no fold with a log.csv")
    fig, axes = plt.subplots(1, len(logs), figsize=(3.6 * len(logs), 3.2), squeeze=False, sharey=True)
    for ax, log_path in zip(axes[0], logs):
        log = _read_log(log_path)
        loss_ax = ax.twinx()
        loss_ax.plot(log["step"], log["train_loss"], color="0.5", lw=1, label="training loss")
        ax.plot(log["step"], log["val_uar"], color="tab:blue", label="validation UAR")
        if not np.isnan(log["test_uar"]).all():
            ax.plot(log["step"], log["test_uar"], color="tab:red", label="test UAR (monitored)")
        done = log_path.with_name("done.json")
        if done.is_file():
            kept = json.loads(done.read_text())["best_epoch"]
            ax.axvline(log["step"][int(kept) - 1], color="k", ls=":", lw=1)
        ax.set_title(log_path.parent.name, fontsize=9)
        ax.set_xlabel("optimizer steps")
        ax.set_ylim(0, 100)
    axes[0][0].set_ylabel("UAR (%)")
    loss_ax.set_ylabel("training loss")
    handles = axes[0][0].get_legend_handles_labels()[0] + loss_ax.get_legend_handles_labels()[0]
    fig.legend(handles, [h.get_label() for h in handles], loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"{run_dir.name}, seed {seed} (dotted: kept epoch)", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return [p.parent.name for p in logs]


def compare(run_dirs: Sequence[str | Path]) -> str:
    """One Markdown table of several runs (Table III layout): method, corpus, WAR, UAR, seeds, paper's figures.
    Each entry is a run directory or a results.json file (results/ keeps some runs as that file alone)."""
    lines = ["| Run | Corpus | Method | Protocol | Seeds | WAR (%) | UAR (%) | Paper WAR | Paper UAR |", "|---" * 9 + "|"]
    for run_dir in run_dirs:
        given = Path(run_dir)
        path = given if given.is_file() and given.suffix == ".json" else given / "results.json"
        name = given.stem if path is given else given.name
        if not path.is_file():
            raise ATFNNError(f"{run_dir}: no results.json; finish the run (or rerun `atfnn train`) first")
        r = json.loads(path.read_text())
        corpus, method, protocol = _describe(r["config"])
        paper = PAPER.get((corpus, method), ("", ""))
        n = len(r["seeds"])
        fmt = (lambda m, s: f"{m:.2f} ± {s:.2f}") if n > 1 else (lambda m, s: f"{m:.2f}")
        if not r.get("complete", True):
            name += f" (incomplete: {len({f['test'] for f in r['folds']})} of {r['folds_expected']} folds)"
        lines.append(
            f"| {name} | {corpus} | {method} | {protocol} | {n} | {fmt(r['war'], r['war_std_seeds'])} | "
            f"{fmt(r['uar'], r['uar_std_seeds'])} | {paper[0]} | {paper[1]} |"
        )
    return "\n".join(lines) + "\n"


def _fold_shares(run_path: Path, fold: dict[str, Any], labels: Sequence[str]) -> dict[str, float]:
    """A fold's predicted-class shares: results.json's, or from its predictions.csv (exports made before they were
    recorded)."""
    if "pred_share" in fold:
        return fold["pred_share"]
    csv_path = run_path.parent / f"seed-{fold['seed']}" / fold["test"] / "predictions.csv"
    if not csv_path.is_file():
        return {}
    return prediction_shares([row["pred"] for row in read_predictions(csv_path)], labels)


def _seed_subset(results: dict[str, Any], seed: int | None) -> dict[str, Any]:
    """results.json restricted to one seed (its pooled scores and folds); all seeds when seed is None."""
    if seed is None:
        return results
    kept = [s for s in results["seeds"] if s["seed"] == seed]
    if not kept:
        return {**results, "seeds": [], "folds": []}
    return {**results, "seeds": kept, "uar": kept[0]["uar"], "war": kept[0]["war"], "uar_std_seeds": 0.0,
            "folds": [f for f in results["folds"] if f["seed"] == seed]}


def compare_speakers(run_dirs: Sequence[str | Path], seed: int | None = None) -> str:
    """One Markdown row per run: pooled UAR, then per test speaker its UAR (mean over seeds) and the class it was
    given most, with that class's share of its predictions (mean over seeds): the per-speaker collapse. With `seed`,
    only that seed of each run (a run without it shows dashes)."""
    loaded = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "results.json"
        if not path.is_file():
            raise ATFNNError(f"{run_dir}: no results.json; finish the run (or rerun `atfnn report`) first")
        loaded.append((Path(run_dir).name, path, _seed_subset(json.loads(path.read_text()), seed)))
    speakers = sorted({f["test"] for _, _, r in loaded for f in r["folds"]}, key=str.lower)
    lines = ["| Run | Seeds | UAR (%) | " + " | ".join(speakers) + " | kept epochs |", "|---" * (len(speakers) + 4) + "|"]
    for name, path, r in loaded:
        cells = []
        for speaker in speakers:
            folds = [f for f in r["folds"] if f["test"] == speaker]
            shares = [_fold_shares(path, f, r["labels"]) for f in folds]
            if not folds or not all(shares):
                cells.append("–")
                continue
            mean_share = {k: float(np.mean([sh[k] for sh in shares])) for k in r["labels"]}
            top = max(mean_share, key=mean_share.get)
            cells.append(f"{np.mean([f['uar'] for f in folds]):.2f} ({top} {mean_share[top]:.0f} %)")
        epochs = [f["best_epoch"] for f in r["folds"] if f.get("best_epoch") is not None]
        kept = f"{min(epochs)}-{max(epochs)}" if epochs else "–"
        n = len(r["seeds"])
        uar = f"{r['uar']:.2f} ± {r['uar_std_seeds']:.2f}" if n > 1 else f"{r['uar']:.2f}" if n else "–"
        lines.append(f"| {name} | {n} | {uar} | " + " | ".join(cells) + f" | {kept} |")
    return "\n".join(lines) + "\n"


# The small, text-like files of a run: enough to recompute every number and to resume it (finished folds are skipped
# by their done.json; with inner-loso a chosen epoch count and each finished inner fold's curve are kept too, so a
# resumed copy neither retrains them nor lets another seed choose again); no weights and no resume checkpoints. The
# fold set is stored apart (atfnn.foldsets).
EXPORT_PATTERNS = (
    "config.yaml", "run.json", "results.json", "report.md", "confusion.png",
    "seed-*/*/done.json", "seed-*/*/log.csv", "seed-*/*/predictions.csv", "seed-*/*/model/model.json",
    "seed-*/*/selection.json", "seed-*/*/inner/*/curve.json", "seed-*/*/inner/*/log.csv",
)


def _unfinished_log(path: Path) -> bool:
    """A log.csv beside neither done.json (fold) nor curve.json (inner fold): a training still going or cut off."""
    # A resumed copy starts such a training again, so its half log would only mislead a reader of results/.
    return path.name == "log.csv" and not any((path.parent / name).is_file() for name in ("done.json", "curve.json"))


def export_run(run_dir: str | Path, dest: str | Path) -> list[Path]:
    """Copy a run's small files (EXPORT_PATTERNS) to dest, keeping the layout; returns the written paths.

    The fold set goes once into the shared folds/ above dest (`atfnn.foldsets.shared_store`), dest/foldset.json
    names it, and the uids of the predictions become relative to the corpus root: no machine path is kept. A run
    made before fold sets is exported the same way. For keeping results in the repository: `atfnn train ... --out
    dest-copy` resumes from such a copy (unfinished folds start again, as their checkpoints and logs are not
    copied).
    """
    import shutil

    run_dir, dest = Path(run_dir), Path(dest)
    if not (run_dir / "config.yaml").is_file() or not foldsets.has_folds(run_dir):
        raise ATFNNError(f"{run_dir}: not a run directory (no config.yaml and fold set)")
    copied, base = foldsets.export_folds(run_dir, dest)
    for pattern in EXPORT_PATTERNS:
        for path in sorted(run_dir.glob(pattern)):
            if path.is_file() and not _unfinished_log(path):
                target = dest / path.relative_to(run_dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                if path.name == "predictions.csv":
                    foldsets.relativise_predictions(path, base, target)
                else:
                    shutil.copy2(path, target)
                copied.append(target)
    return copied
