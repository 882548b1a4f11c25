"""Behaviour check for a refactoring of training: tiny synthetic experiments whose outputs must not change.

    PYTHONPATH=<checkout> python scripts/trainer_parity.py OUT WORK

runs three 3-epoch experiments on a 3-speaker synthetic corpus (the plain paper configuration; EMA + speaker
adversary + class weights + augmentations + monitored test + gradient clipping; speaker-normalised embeddings with a
validation speaker, loss selection and patience 1), and copies each fold's predictions.csv and its log.csv (without
the timing and step columns) under OUT/<variant>/<fold>/. Run it with two checkouts into two OUT folders and compare
them with `diff -r` (after removing the WORK prefix of the utterance paths).
"""
import sys, shutil, csv
from pathlib import Path
from atfnn.config import load_config
from atfnn.corpora.synthetic import SyntheticSpec, generate
from atfnn.experiment import run_experiment

out = Path(sys.argv[1]); work = Path(sys.argv[2])
root = work / "corpus"
if not root.exists():
    generate(root, SyntheticSpec(speakers=3, utterances_per_class=3, seed=1))
TINY = ["model.lstm_hidden=8", "model.lstm_layers=1", "train.batch_size=16", "train.epochs=3",
        "frontend.segment_hop=128", "train.threads=1", "corpus.name=synthetic", f"corpus.root={root}",
        f"cache_dir={work / 'cache'}"]
VARIANTS = {
    "plain": [],
    "extras": ["train.ema_epochs=1", "train.speaker_adversarial=1", "train.class_weighting=true",
               "train.freq_warp=0.1", "train.spec_augment=true", "train.monitor_test=true", "train.grad_clip=1"],
    "spknorm": ["model.embedding_norm=speaker", "protocol.validation=speaker", "train.select_metric=loss", "train.patience=1"],
}
for name, extra in VARIANTS.items():
    run = work / f"run-{name}"
    shutil.rmtree(run, ignore_errors=True)
    run_experiment(load_config(None, TINY + extra), run, progress=False, log=lambda m: None)
    for p in sorted(run.glob("seed-0/*/predictions.csv")):
        dest = out / name / p.parent.name
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest / "predictions.csv")
        rows = list(csv.DictReader(open(p.parent / "log.csv")))
        with open(dest / "log.txt", "w") as f:
            for r in rows:
                f.write(",".join(f"{k}={v}" for k, v in r.items() if k not in ("seconds", "step")) + "\n")
print("ok")
