"""The `atfnn` command: one entry point, one subcommand per job of the pipeline."""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, TextIO

from atfnn.errors import ATFNNError

if TYPE_CHECKING:
    from atfnn.inference import Failure, Prediction

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")
FORMATS = ("table", "json", "csv")
# Exit codes: predict's 1 is "some files failed"; 141 is a shell's code for a reader that closed the pipe (SIGPIPE).
EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141


def _split(values: Sequence[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _config(args: argparse.Namespace):
    """The experiment config of the command line, checked (device included) before any corpus is read."""
    from atfnn.config import load_config
    from atfnn.runtime import resolve_device

    overrides = list(args.set or [])
    flag = getattr(args, "device", None)
    if flag:
        resolve_device(flag, "--device")
        overrides.append(f"train.device={flag}")
    config = load_config(args.config, overrides)
    if not flag:
        resolve_device(config.train.device, "train.device")
    return config


def _positive(text: str) -> int:
    """argparse type of counts (--jobs, --seeds, --epochs): an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def cmd_demo(args: argparse.Namespace) -> int:
    from atfnn.config import load_config
    from atfnn.corpora.synthetic import SyntheticSpec, generate
    from atfnn.experiment import run_experiment
    from atfnn.runtime import cpu_count

    out = Path(args.out)
    began = time.perf_counter()
    corpus_root = out.parent / f"{out.name}-corpus"
    print(f"Generating the synthetic corpus in {corpus_root} ...", flush=True)
    generate(corpus_root, SyntheticSpec(seed=args.seed))
    config = load_config(DEMO_CONFIG, [f"corpus.root={corpus_root}", f"cache_dir={out.parent / '.cache'}", *(args.set or [])])
    jobs = args.jobs if args.jobs is not None else cpu_count()
    results = run_experiment(config, out, progress=not args.no_progress, jobs=jobs)
    print()
    print((out / "report.md").read_text())
    print(f"Chance level is {100 / len(results['labels']):.1f}%. Wall time {time.perf_counter() - began:.0f} s. "
          f"Artefacts in {out}/ (results.json, report.md, confusion.png, seed-*/<fold>/model).")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from atfnn.experiment import run_experiment, train_final

    config = _config(args)
    if _distributed(config):
        return _train_distributed(args, config)
    if args.final:
        model_dir, epochs = train_final(config, args.out, args.epochs, progress=not args.no_progress)
        print(f"final model trained on all speakers for {epochs} epochs: {model_dir}")
        return 0
    results = run_experiment(
        config, args.out, folds=_split(args.folds), seeds=args.seeds, progress=not args.no_progress, jobs=args.jobs,
        executor=args.executor, address=args.address,
    )
    print((Path(args.out) / "report.md").read_text())
    print(f"WAR {results['war']:.2f}  UAR {results['uar']:.2f}  ({args.out}/results.json)")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from atfnn.distributed.ray_executor import import_ray

    import_ray()  # a clear message without the extra, before any corpus is read
    from atfnn.distributed.tune import run_tune

    run_tune(_config(args), args.space, args.trials, args.out, fold=args.fold, address=args.address,
             outer=not args.no_outer)
    return 0


def _distributed(config) -> bool:
    """Under torchrun: join the process group; the processes then train each model together."""
    from atfnn.distributed import ddp

    if not ddp.launched():
        return False
    config.train.device = ddp.init_from_env(config.train.device)
    return True


def _train_distributed(args: argparse.Namespace, config) -> int:
    """`torchrun ... -m atfnn train`: the final model, or the folds one after another, each on every process."""
    from atfnn.distributed.ddp import finish, is_main
    from atfnn.experiment import run_experiment, train_final

    try:
        if args.final:
            model_dir, epochs = train_final(config, args.out, args.epochs, progress=not args.no_progress)
            done = f"final model trained on all speakers for {epochs} epochs by torchrun's processes: {model_dir}"
        else:
            log = print if is_main() else (lambda message: None)
            results = run_experiment(config, args.out, folds=_split(args.folds), seeds=args.seeds,
                                     progress=not args.no_progress and is_main(), log=log, jobs=args.jobs,
                                     executor=args.executor, address=args.address)
            done = f"WAR {results.get('war', 0):.2f}  UAR {results.get('uar', 0):.2f}  ({args.out}/results.json; " \
                   "each fold trained by torchrun's processes)"
    finally:
        main = is_main()
        finish()
    if main:
        print(done)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from atfnn.experiment import prepare_corpus

    config = _config(args)
    began = time.perf_counter()
    corpus = prepare_corpus(config, progress=not args.no_progress)
    print(f"{len(corpus.utterances)} utterances, {corpus.segments.x.shape[0]} segments, labels {corpus.labels} "
          f"({time.perf_counter() - began:.1f} s; cache in {config.cache_dir})")
    return 0


def cmd_corpus(args: argparse.Namespace) -> int:
    from atfnn.corpora import available, load_corpus
    from atfnn.corpora.describe import describe

    if args.action == "list":
        print("\n".join(available()))
        return 0
    if not args.name or not args.root:
        raise ATFNNError("usage: atfnn corpus describe NAME ROOT [--option key=value]")
    import yaml

    options = {}
    for item in args.option or []:
        key, _, value = item.partition("=")
        options[key] = yaml.safe_load(value)
    print(describe(load_corpus(args.name, args.root, **options)))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from atfnn.reports import compare, compare_speakers

    if args.seed is not None and not args.speakers:
        raise ATFNNError("compare: --seed needs --speakers")
    print(compare_speakers(args.runs, args.seed) if args.speakers else compare(args.runs), end="")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from atfnn.experiment import load_run_config
    from atfnn.reports import finalise_run, run_labels

    if "baseline" in _run_config(Path(args.run)):
        from atfnn.baselines import finalise_baseline

        finalise_baseline(args.run)
    else:
        config = load_run_config(args.run)
        finalise_run(args.run, run_labels(args.run), config.to_dict(), title=Path(args.run).name)
    print((Path(args.run) / "report.md").read_text())
    if args.curves:
        from atfnn.reports import plot_curves

        drawn = plot_curves(args.run, Path(args.curves), seed=args.seed)
        print(f"training curves of {', '.join(drawn)} in {args.curves}")
    if args.export:
        from atfnn.reports import export_run

        copied = export_run(args.run, args.export)
        print(f"exported {len(copied)} files to {args.export}")
    return 0


def _run_config(run: Path) -> dict:
    """The raw config.yaml of a run directory; a missing or broken one is an error naming it."""
    import yaml

    path = run / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ATFNNError(f"{path}: cannot be read ({e.strerror or e}); pass a run directory of atfnn train") from e
    except yaml.YAMLError as e:
        raise ATFNNError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ATFNNError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def cmd_baseline(args: argparse.Namespace) -> int:
    from atfnn.baselines import run_baseline

    config = _config(args)
    results = run_baseline(
        config, feature_set=args.features, out=args.out, speaker_norm=args.speaker_norm, folds=_split(args.folds),
        progress=not args.no_progress,
    )
    print((Path(args.out) / "report.md").read_text())
    print(f"WAR {results['war']:.2f}  UAR {results['uar']:.2f}  ({args.out}/results.json)")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from atfnn.packaged import split_model_argument

    model, inputs = split_model_argument(args.model, args.inputs, args.packaged)
    return predict_main(model, inputs, format=args.format, timeline=args.timeline, backend=args.backend,
                        device=args.device)


def predict_main(
    model: str,
    inputs: Sequence[str],
    format: str = "table",
    timeline: bool = False,
    backend: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """`atfnn predict`: one line per file (plus one per segment with `timeline`) on `out`.

    `backend` None picks onnx for a path ending in .onnx. Failures: on `err` for "table", in-band for "json" (an
    object with "error") and "csv" (the error column), and the other files still print. Exit code 0 when every
    file was classified, 1 when some failed, 2 when none was (or the model cannot be loaded, or an option is
    invalid). "json" is JSON Lines: one object per line.
    """
    from atfnn.inference import DEFAULT_BATCH, Prediction, collect_audio_files, load
    from atfnn.runtime import resolve_device

    out, err = out or sys.stdout, err or sys.stderr
    if format not in FORMATS:
        print(f"atfnn: error: unknown format {format!r}; available: {', '.join(FORMATS)}", file=err)
        return EXIT_ERROR
    try:
        predictor = load(model, device=resolve_device(device, "--device"), backend=backend)
    except (ATFNNError, OSError) as e:
        print(f"atfnn: error: {e}", file=err)
        return EXIT_ERROR
    files, missing = collect_audio_files(inputs)
    results = [*missing, *predictor.predict_many(files, batch_size or DEFAULT_BATCH)]
    WRITERS[format](results, predictor.labels, timeline, out, err)
    n_ok = sum(isinstance(r, Prediction) for r in results)
    if n_ok == 0:
        return EXIT_ERROR
    return EXIT_OK if n_ok == len(results) else EXIT_SOME_FAILED


def _write_table(results: list[Prediction | Failure], labels: list[str], timeline: bool, out: TextIO,
                 err: TextIO) -> None:
    from atfnn.inference import Failure, Prediction

    ok = [r for r in results if isinstance(r, Prediction)]
    width = max([len("file")] + [len(r.path or "") for r in ok])
    columns = "".join(f"{label[:8]:>9}" for label in labels)
    if ok:
        print(f"{'file':<{width}}  {'label':<10}{columns}", file=out)
    for r in ok:
        print(f"{r.path:<{width}}  {r.label:<10}{_prob_cells(r.probs)}", file=out)
        if timeline:
            for s in r.timeline:
                span = f"  {s.start:7.2f}-{s.end:.2f} s"
                print(f"{span:<{width}}  {s.label:<10}{_prob_cells(s.probs)}", file=out)
    for r in results:
        if isinstance(r, Failure):
            print(f"error: {r.path}: {r.reason}", file=err)
    if len(ok) < len(results):
        print(f"{len(results) - len(ok)} of {len(results)} file(s) failed", file=err)


def _prob_cells(probs: dict[str, float]) -> str:
    return "".join(f"{p:9.3f}" for p in probs.values())


def _write_json(results: list[Prediction | Failure], labels: list[str], timeline: bool, out: TextIO,
                err: TextIO) -> None:
    from atfnn.inference import Prediction

    for r in results:
        data = r.to_dict(timeline) if isinstance(r, Prediction) else r.to_dict()
        print(json.dumps(data, ensure_ascii=False), file=out)


def _write_csv(results: list[Prediction | Failure], labels: list[str], timeline: bool, out: TextIO,
               err: TextIO) -> None:
    """Columns: path, segment, start, end, label, one per class, error. The file's row has an empty segment."""
    from atfnn.inference import Failure

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "segment", "start", "end", "label", *labels, "error"])
    blank = [""] * len(labels)
    for r in results:
        if isinstance(r, Failure):
            writer.writerow([r.path, "", "", "", "", *blank, r.reason])
            continue
        writer.writerow([r.path, "", "0.0000", f"{r.duration:.4f}", r.label, *_prob_list(r.probs), ""])
        for k, s in enumerate(r.timeline if timeline else []):
            writer.writerow([r.path, k, f"{s.start:.4f}", f"{s.end:.4f}", s.label, *_prob_list(s.probs), ""])
    out.write(buffer.getvalue())


def _prob_list(probs: dict[str, float]) -> list[str]:
    return [f"{p:.6f}" for p in probs.values()]


WRITERS = {"table": _write_table, "json": _write_json, "csv": _write_csv}


def cmd_explain(args: argparse.Namespace) -> int:
    from atfnn.explain import explain_corpus_main, explain_main
    from atfnn.packaged import split_model_argument

    model, audio = split_model_argument(args.model, [args.audio] if args.audio else [], args.packaged)
    if len(audio) > 1:
        raise ATFNNError(f"{args.model}: not a model directory (no model.json); atfnn explain takes one AUDIO file")
    args.model, args.audio = model, (audio[0] if audio else None)
    _torch_model_dir(args.model)
    if args.corpus:
        return explain_corpus_main(
            args.model, args.corpus, args.out, limit_per_class=args.limit_per_class, speakers=_split(args.speaker)
        )
    if not args.audio:
        raise ATFNNError("atfnn explain needs an AUDIO file, or --corpus CONFIG for per-emotion profiles")
    return explain_main(args.model, args.audio, args.out)


def _torch_model_dir(path: str) -> None:
    """explain needs the PyTorch network (its attention maps); an exported .onnx file has only the logits."""
    if Path(path).suffix.lower() == ".onnx":
        raise ATFNNError(
            f"{path}: atfnn explain reads the attention maps of the PyTorch network, which an .onnx file does not "
            "keep; pass the model directory it was exported from"
        )


def cmd_serve(args: argparse.Namespace) -> int:
    from atfnn.serve.main import serve_main

    return serve_main(args)


def cmd_models(args: argparse.Namespace) -> int:
    from atfnn.packaged import list_models

    return list_models(sys.stdout)


def cmd_export(args: argparse.Namespace) -> int:
    from atfnn.export import export_onnx

    path = export_onnx(args.model, args.onnx)
    print(f"wrote {path} (network only: the log-Mel front end runs in Python, see atfnn.inference)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atfnn", description="Speech emotion recognition with ATFNN.")
    from atfnn import __version__

    parser.add_argument("--version", action="version", version=f"atfnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_experiment_commands(sub)
    _add_model_commands(sub)
    return parser


def _experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML (see configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. train.epochs=30")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (overrides train.device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_training_commands(sub) -> None:
    """train (cross-validation, --final, the Ray executor) and tune."""
    p = sub.add_parser("train", help="cross-validated experiment (resumable), or --final for a deployable model")
    _experiment_args(p)
    p.add_argument("--out", required=True, help="run directory; rerunning the same command resumes")
    p.add_argument("--folds", action="append", help="only these test speakers/sessions (comma-separated)")
    p.add_argument("--seeds", type=_positive, default=1, help="repeat with seeds train.seed, train.seed+1, ...")
    p.add_argument("--final", action="store_true", help="train on all speakers (epochs: --epochs or the CV run's median best epoch)")
    p.add_argument("--epochs", type=_positive, help="epoch count for --final")
    p.add_argument("--jobs", type=_positive, default=1,
                   help="folds trained at once, each in its own process with its share of the cores "
                        "(docs/performance.md)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: this machine (--jobs); ray: one Ray task per fold (docs/scale-out.md)")
    p.add_argument("--address", help="with --executor ray: the Ray cluster to join (default: start a local one)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune", help="search open choices on Ray Tune (Optuna, ASHA); inner-LOSO objective")
    _experiment_args(p)
    p.add_argument("--space", required=True, help="YAML of config keys and distributions (docs/scale-out.md)")
    p.add_argument("--trials", type=_positive, default=8, help="configurations to try")
    p.add_argument("--out", required=True, help="directory for trials.csv, best.yaml and the trials' work")
    p.add_argument("--fold", help="the outer fold whose training speakers the search uses (default: the first)")
    p.add_argument("--address", help="the Ray cluster to join (default: start a local one)")
    p.add_argument("--no-outer", action="store_true",
                   help="skip training the best configuration on the outer fold and testing it (OUT/outer/)")
    p.set_defaults(func=cmd_tune)


def _add_experiment_commands(sub) -> None:
    """demo, train, tune, prepare, corpus, compare, report, baseline."""
    p = sub.add_parser("demo", help="synthetic corpus + leave-one-speaker-out ATFNN in a few minutes")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic corpus")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--jobs", type=_positive, help="folds trained at once (default: one per core)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

    _add_training_commands(sub)

    p = sub.add_parser("prepare", help="compute (or reuse) the cached log-Mel features of a config's corpus")
    _experiment_args(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("corpus", help="list loaders, or describe a corpus on disk (Table I)")
    p.add_argument("action", choices=["describe", "list"])
    p.add_argument("name", nargs="?")
    p.add_argument("root", nargs="?")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="loader option, e.g. scripted=true")
    p.set_defaults(func=cmd_corpus)

    p = sub.add_parser("compare", help="one table of several runs (Table III layout)")
    p.add_argument("runs", nargs="+", help="run directories or results.json files")
    p.add_argument("--speakers", action="store_true",
                   help="per test speaker: UAR and the class predicted most, with its share (run directories only)")
    p.add_argument("--seed", type=int, help="with --speakers: only this seed of each run")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="recompute results.json, report.md and confusion.png of a run")
    p.add_argument("run")
    p.add_argument("--export", metavar="DIR", help="also copy the run's small files (no weights) to DIR, e.g. results/")
    p.add_argument("--curves", metavar="PNG", help="also plot each fold's training loss, validation UAR and "
                   "(train.monitor_test) test UAR against optimizer steps")
    p.add_argument("--seed", type=int, help="the seed whose folds --curves draws (default: the first)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("baseline", help="openSMILE functionals + linear SVM on the same folds")
    _experiment_args(p)
    p.add_argument("--features", default="eGeMAPSv02", choices=["eGeMAPSv02", "ComParE_2016"])
    p.add_argument("--out", required=True)
    p.add_argument("--speaker-norm", action="store_true", help="per-speaker z-normalisation (transductive)")
    p.add_argument("--folds", action="append")
    p.set_defaults(func=cmd_baseline)


def _add_model_commands(sub) -> None:
    """predict, explain, export: the commands that use a trained model."""
    p = sub.add_parser("predict", help="emotion of audio files with a trained model")
    p.add_argument("model", nargs="?", help="a model directory (e.g. RUN/seed-0/<fold>/model) or an .onnx file "
                                            "(default: the packaged model)")
    p.add_argument("inputs", nargs="+", help="audio files or directories (walked recursively)")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.add_argument("--timeline", action="store_true", help="per-segment probabilities over time")
    p.add_argument("--backend", choices=["torch", "onnx"], help="default: onnx for an .onnx file, else torch")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: auto)")
    _packaged_arg(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", help="Fig. 6: log-Mel, F- and T-Attention of a file, or per-emotion profiles")
    p.add_argument("model", nargs="?", help="a model directory (default: the packaged model)")
    p.add_argument("audio", nargs="?")
    p.add_argument("--corpus", metavar="CONFIG", help="average F-Attention per emotion over this config's corpus")
    p.add_argument("--out", required=True, help="PNG file (one audio) or directory (--corpus)")
    p.add_argument("--limit-per-class", type=_positive, help="with --corpus: at most N utterances per emotion")
    p.add_argument("--speaker", action="append", help="with --corpus: only these speakers (a fold's test speaker)")
    _packaged_arg(p)
    p.set_defaults(func=cmd_explain)

    from atfnn.serve.settings import add_arguments as add_serve_arguments

    p = sub.add_parser("serve", help="HTTP API and web page for a model (default: the packaged one)")
    add_serve_arguments(p)
    _packaged_arg(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("models", help="the packaged models: corpus, labels, cross-validated UAR")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("export", help="export the network to ONNX")
    p.add_argument("model")
    p.add_argument("--onnx", required=True, metavar="PATH")
    p.set_defaults(func=cmd_export)


def _packaged_arg(p: argparse.ArgumentParser) -> None:
    from atfnn.packaged import DEFAULT

    p.add_argument("--packaged", metavar="NAME", help=f"the packaged model used when no model argument is given "
                   f"(default: {DEFAULT}; `atfnn models` lists them)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ATFNNError as e:
        print(f"atfnn: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\natfnn: interrupted; finished folds are kept, rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _silence_stdout() -> None:
    """The reader of our output has gone (`atfnn predict ... | head`): point stdout at /dev/null, so that the
    interpreter's final flush of what is still buffered does not raise again at exit (Python's documented recipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured in tests)
        pass


if __name__ == "__main__":
    sys.exit(main())
