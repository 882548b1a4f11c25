"""`atfnn tune CONFIG --space SPACE.yaml --trials N`: a search over the choices the paper leaves open, on Ray Tune
with Optuna's sampler and ASHA's early stopping of bad trials.

The objective never sees a test speaker: a trial runs inner leave-one-training-speaker-out on the training speakers
of one outer fold (--fold, default the first), training one inner fold per training speaker for train.epochs and
scoring that speaker every epoch; after each inner fold it reports the best epoch of the mean inner validation curve
so far (the quantity protocol.selection=inner-loso maximises), and ASHA may stop it there. The outer fold's own test
speaker is in none of the inner folds; after the search the chosen configuration is trained on that fold's training
speakers and tested once on its test speaker, whom the search never saw (OUT/outer/, reported apart from the trials).

SPACE.yaml maps dotted config keys to one distribution each:
    train.lr: {loguniform: [1.0e-4, 1.0e-2]}
    model.encoder_dropout: {uniform: [0.0, 0.3]}
    train.epochs: {randint: [2, 6]}          # both ends included
    frontend.norm: {choice: [utterance, global]}
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from atfnn.atomic import atomic_write_text
from atfnn.config import ExperimentConfig, _set_path, from_dict
from atfnn.errors import ConfigError

KINDS = ("loguniform", "uniform", "randint", "choice")
TRIALS = "trials.csv"
BEST = "best.yaml"
OUTER = "outer"


def read_space(path: str | Path) -> dict[str, dict]:
    """SPACE.yaml, checked: every key a dotted config key, every value one known distribution."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space {path} not found")
    space = yaml.safe_load(path.read_text()) or {}
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{path}: expected a mapping of config keys to distributions, e.g. train.lr: "
                          "{loguniform: [1.0e-4, 1.0e-2]}")
    for key, spec in space.items():
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise ConfigError(f"{path}: {key}: expected one of {', '.join(KINDS)} with its arguments, got {spec!r}")
        kind, args = next(iter(spec.items()))
        if not isinstance(args, list) or (kind != "choice" and len(args) != 2) or not args:
            shape = "[low, high]" if kind != "choice" else "of values"
            raise ConfigError(f"{path}: {key}.{kind}: expected a list ({shape})")
    return space


def with_params(base: dict, params: dict[str, Any]) -> ExperimentConfig:
    """The base configuration with a trial's values set (each checked as a config value)."""
    data = json.loads(json.dumps(base))
    for key, value in params.items():
        _set_path(data, key.split("."), value.item() if isinstance(value, np.generic) else value)
    return from_dict(data)


def _tune_space(space: dict[str, dict]) -> dict:
    from ray import tune

    make = {"loguniform": lambda a: tune.loguniform(*a), "uniform": lambda a: tune.uniform(*a),
            "randint": lambda a: tune.randint(a[0], a[1] + 1), "choice": lambda a: tune.choice(a)}
    return {key: make[kind](args) for key, spec in space.items() for kind, args in spec.items()}


@dataclass
class TrialSetup:
    base: dict  # the base configuration as a mapping
    fold: str  # the outer fold whose training speakers the trials use
    out: str  # the tuning directory; each trial trains under out/trials/<trial id>/


def trial(params: dict, setup: TrialSetup) -> None:
    """One trial: the inner folds of the outer fold, one after another, reporting the mean curve's best so far."""
    from ray import tune

    from atfnn.experiment import _inner_curve, prepare_corpus, setup_process
    from atfnn.protocols import inner_folds, make_folds

    config = with_params(setup.base, params)
    device = setup_process(config, max(1, config.train.threads))
    corpus = prepare_corpus(config, progress=False, log=lambda message: None)
    outer = next(f for f in make_folds(corpus.utterances, config.protocol) if f.name == setup.fold)
    by_uid = {u.uid: u for u in corpus.utterances}
    work = Path(setup.out) / "trials" / tune.get_context().get_trial_id()
    curves = []
    for k, inner in enumerate(inner_folds(outer, by_uid), start=1):
        record = _inner_curve(config, corpus, outer, inner, work / inner.name, config.train.seed, device, False,
                              lambda message: None)
        curves.append(record["curve"])
        mean = np.mean(curves, axis=0)
        tune.report({"score": float(mean.max()), "epochs": int(mean.argmax()) + 1, "inner_folds": k})


def run_tune(
    config: ExperimentConfig, space_path: str | Path, trials: int, out: str | Path, fold: str | None = None,
    address: str | None = None, log: Callable[[str], None] = print, outer: bool = True,
) -> dict:
    """Search `trials` configurations; write OUT/trials.csv and OUT/best.yaml; then (outer) score the best on the
    outer fold's test speaker in OUT/outer/. Returns the best trial's row (with outer_war/outer_uar)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from atfnn.distributed.ray_executor import connect, import_ray, task_resources
    from atfnn.experiment import prepare_corpus
    from atfnn.protocols import inner_folds, make_folds

    space, out = read_space(space_path), Path(out).resolve()
    corpus = prepare_corpus(config, progress=False, log=log)  # fills the feature cache the trials read
    folds = make_folds(corpus.utterances, config.protocol)
    chosen = next((f for f in folds if f.name == (fold or folds[0].name)), None)
    if chosen is None:
        raise ConfigError(f"--fold {fold}: no such fold; the folds are {', '.join(f.name for f in folds)}")
    rungs = len(inner_folds(chosen, {u.uid: u for u in corpus.utterances}))
    started = connect(address)
    try:
        resources = task_resources(config)
        trainable = tune.with_resources(
            tune.with_parameters(trial, setup=TrialSetup(config.to_dict(), chosen.name, str(out))),
            {"cpu": resources.num_cpus, "gpu": resources.num_gpus})
        tuner = tune.Tuner(
            trainable, param_space=_tune_space(space),
            tune_config=tune.TuneConfig(
                metric="score", mode="max", num_samples=trials, search_alg=OptunaSearch(seed=config.train.seed),
                scheduler=ASHAScheduler(time_attr="inner_folds", max_t=rungs, grace_period=1, reduction_factor=2)),
            run_config=tune.RunConfig(storage_path=str(out / "ray"), name="tune", verbose=0),
        )
        grid = tuner.fit()
    finally:
        if started:
            import_ray().shutdown()
    row = _write_outputs(config, space, grid, chosen.name, out, log)
    if outer:
        row.update(score_outer(out, chosen.name, log))
    return row


def score_outer(out: Path, fold: str, log: Callable[[str], None] = print) -> dict:
    """The chosen configuration trained on the outer fold's training speakers and tested once on its test speaker,
    whom no trial saw: OUT/outer/ is an `atfnn train OUT/best.yaml --folds FOLD` run."""
    from atfnn.config import load_config
    from atfnn.experiment import run_experiment

    results = run_experiment(load_config(out / BEST), out / OUTER, folds=[fold], progress=False, log=log)
    log(f"outer fold {fold} (a speaker no trial saw), best configuration: WAR {results['war']:.2f}  "
        f"UAR {results['uar']:.2f}  ({out / OUTER / 'results.json'})")
    return {"outer_fold": fold, "outer_war": results["war"], "outer_uar": results["uar"]}


def _write_outputs(config: ExperimentConfig, space: dict, grid, fold: str, out: Path,
                   log: Callable[[str], None]) -> dict:
    rows = []
    for result in grid:
        if result.error is not None:
            raise ConfigError(f"a tuning trial failed: {result.error}")
        metrics = result.metrics or {}
        rows.append({"trial": metrics.get("trial_id", ""), **{k: result.config[k] for k in space},
                     "score": metrics.get("score"), "epochs": metrics.get("epochs"),
                     "inner_folds": metrics.get("inner_folds")})
    rows.sort(key=lambda row: -(row["score"] if row["score"] is not None else -1))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / TRIALS, buffer.getvalue())
    best = with_params(config.to_dict(), {k: rows[0][k] for k in space})
    atomic_write_text(out / BEST, yaml.safe_dump(best.to_dict(), sort_keys=False))
    log(f"{len(rows)} trial(s) in {out / TRIALS}; best inner-LOSO validation UAR {rows[0]['score']:.2f} "
        f"(fold {fold}'s training speakers); its configuration: {out / BEST}")
    return rows[0]
