"""Turn a `atfnn train --final` model into a packaged one: copy the weights, write the model card.

    python -m atfnn.packaged.build RUN/final/model --cv results/casia-atfnn --config configs/casia_atfnn_v1.yaml \
        --out atfnn/packaged/casia-atfnn
    python -m atfnn.packaged.build RUN/final/model --cv results/emodb-atfnn --config configs/emodb_atfnn_v2.yaml \
        --out atfnn/packaged/emodb-atfnn

The corpus is the model's own (model.json info.corpus, set by training); its terms, language and caveat are
CORPORA's. The packaged model's name is the --out folder's name, which is what atfnn.packaged lists.

The card's numbers are the cross-validated run's (`--cv`, an exported run with results.json): the packaged model is
trained on every speaker, so it has no held-out score of its own; the cross-validation of the same configuration is
the estimate of how it does on a new speaker.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from atfnn.checkpoint import load_model, save_model
from atfnn.errors import ATFNNError

CARD_FILE = "README.md"
DERIVED = "These weights are derived from it, so the same terms apply to them: research use only. atfnn's code is MIT."
CASIA_TERMS = ("CASIA Chinese emotional speech corpus, public 1200-utterance subset (4 speakers, 6 emotions): "
               f"copyright of the Institute of Automation, Chinese Academy of Sciences; for research use. {DERIVED}")
EMODB_TERMS = ("Berlin Database of Emotional Speech (EmoDB; Burkhardt et al., Interspeech 2005), 535 recordings "
               f"of 10 actors in 7 emotions: Technische Universität Berlin; freely available for research. {DERIVED}")
EMODB_NOTE = ("EmoDB is not in this model: it is a separate packaged model, emodb-atfnn (`--packaged emodb-atfnn`), "
              "built by scripts/build_packaged_model.sh with CORPUS=emodb from results/emodb-atfnn, one model per "
              "corpus (`atfnn models` lists them).")
CASIA_NOTE = ("CASIA is not in this model: it is a separate packaged model, casia-atfnn, one model per corpus "
              "(`atfnn models` lists them).")
OTHER_DATA = "expect much less than the cross-validated figure on other speakers, languages, microphones or " \
             "spontaneous speech."


@dataclass(frozen=True)
class CorpusTerms:
    """What a card says about the corpus a packaged model was trained on (../shared/data/README.md)."""

    title: str  # the card's training_data.corpus
    short: str
    language: str
    licence: str
    not_included: str
    caveat: str
    reference: str  # what the cross-validated UAR is compared with


CORPORA = {
    "casia": CorpusTerms(
        "CASIA (public 1200-utterance subset)", "CASIA", "Mandarin Chinese", CASIA_TERMS, EMODB_NOTE,
        f"Trained on 4 actors reading 50 sentences in 6 acted emotions: {OTHER_DATA}", "the paper reports 48.75"),
    "emodb": CorpusTerms(
        "EmoDB (Berlin Database of Emotional Speech, full-length recordings)", "EmoDB", "German", EMODB_TERMS,
        CASIA_NOTE, f"Trained on 10 actors reading German sentences in 7 acted emotions, with imbalanced classes "
        f"(anger 127 ... disgust 46 recordings): {OTHER_DATA}",
        "EmoDB is not in the paper; openSMILE functionals + linear SVM on the same folds measured 67.06 "
        "(eGeMAPSv02) and 78.23 (ComParE_2016), results/baselines/emodb-*; an independent measurement gave 66.7 "
        "and 78.8 (../shared/data/README.md)"),
}


def corpus_terms(name: str | None, model_dir: Path) -> CorpusTerms:
    if name not in CORPORA:
        raise ATFNNError(f"{model_dir}: trained on corpus {name!r} (model.json info.corpus); packaged cards are "
                         f"written for {', '.join(CORPORA)}")
    return CORPORA[name]


def cv_summary(cv_dir: Path) -> dict:
    """UAR/WAR of the cross-validated run as reported in its results.json, with where they come from."""
    path = cv_dir / "results.json"
    if not path.is_file():
        raise ATFNNError(f"{cv_dir}: no results.json; pass an exported cross-validated run (e.g. results/casia-atfnn)")
    r = json.loads(path.read_text())
    folds = r["folds"]
    return {
        "source": str(path),
        "protocol": f"leave-one-speaker-out, {len({f['test'] for f in folds})} folds, {len(r['seeds'])} seed(s)",
        "uar": round(r["uar"], 2), "war": round(r["war"], 2),
        "uar_std_seeds": round(r["uar_std_seeds"], 2),
        "uar_per_speaker": per_speaker_uar(folds),
        "labels": r["labels"],
        "utterances": r["n"] // max(1, len(r["seeds"])),  # every utterance is tested once per seed
        "precision": r.get("config", {}).get("train", {}).get("precision", "fp32"),
        "corpus": r.get("config", {}).get("corpus", {}).get("name"),
    }


def per_speaker_uar(folds: list[dict]) -> dict[str, float]:
    """Mean over seeds of each test speaker's fold UAR."""
    by_speaker: dict[str, list[float]] = {}
    for fold in folds:
        by_speaker.setdefault(fold["test"], []).append(fold["uar"])
    return {speaker: round(sum(v) / len(v), 2) for speaker, v in sorted(by_speaker.items())}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def build_card(name: str, terms: CorpusTerms, model_info: dict, train_config: dict, config_path: str, cv: dict,
               n_params: int) -> dict:
    return {
        "name": name,
        "task": "speech emotion recognition, one label per recording (mean of 1.28 s segment posteriors)",
        "training_data": {
            "corpus": terms.title, "speakers": sorted(cv["uar_per_speaker"]),
            "utterances": cv["utterances"], "language": terms.language, "sample_rate": 16000,
        },
        "licence": terms.licence,
        "not_included": terms.not_included,
        "configuration": config_path,
        "training": {"epochs": model_info.get("epochs"), "seed": model_info.get("seed"),
                     "precision": train_config.get("precision"), "speakers": "all (--final)"},
        "parameters": n_params,
        # fp16 halves the package; the weights are loaded back into the fp32 network. scripts/packaged_fp16_check.py
        # compares the decisions with those of the fp32 weights; tests/test_serve_packaged.py keeps CASIA's.
        "weights": "fp16, loaded as fp32",
        "cross_validated": cv,
        "caveat": terms.caveat,
        "compared_with": terms.reference,
        "built_from_commit": git_commit(),
    }


def card_markdown(card: dict, labels: list[str], terms: CorpusTerms) -> str:
    cv = card["cross_validated"]
    per_speaker = ", ".join(f"{s} {u:.2f}" for s, u in cv["uar_per_speaker"].items())
    return f"""# Packaged model: {card['name']}

ATFNN, configuration `{card['configuration']}`, trained with `atfnn train --final` on all
{len(card['training_data']['speakers'])} speakers of {terms.short} for {card['training']['epochs']} epochs
(precision {card['training']['precision']}, seed {card['training']['seed']}), {card['parameters']:,} parameters,
fp16 weights, run in fp32. Built by `scripts/build_packaged_model.sh` at commit {card['built_from_commit']}.

- **Labels**: {', '.join(labels)}.
- **Training data**: {card['training_data']['corpus']}, {card['training_data']['utterances']} utterances, speakers
  {', '.join(card['training_data']['speakers'])}; {card['training_data']['language']}, 16 kHz.
- **Licence terms**: {card['licence']}
- **Measured**: cross-validated UAR {cv['uar']:.2f} % (WAR {cv['war']:.2f} %, ± {cv['uar_std_seeds']:.2f} over seeds),
  {cv['protocol']}, from `{cv['source']}` (the same configuration in {cv['precision']}; this model, trained on
  every speaker, has no held-out score of its own). Per test speaker: {per_speaker}. Chance is
  {100 / len(labels):.1f} %; {card['compared_with']}.
- **Not included**: {card['not_included']}
- **Caveat**: {card['caveat']}
"""


def build(model_dir: Path, cv_dir: Path, config_path: str, out: Path) -> Path:
    model, card = load_model(model_dir)
    terms = corpus_terms(card.info.get("corpus"), model_dir)
    cv = cv_summary(cv_dir)
    if cv["corpus"] not in (None, card.info["corpus"]):
        raise ATFNNError(f"{model_dir}: trained on {card.info['corpus']}, but {cv_dir} cross-validated {cv['corpus']}")
    if cv["labels"] != card.labels:
        raise ATFNNError(f"{model_dir}: labels {card.labels} differ from {cv_dir}'s {cv['labels']}")
    config_file = model_dir.parent / "config.yaml"
    train_config = yaml.safe_load(config_file.read_text())["train"] if config_file.is_file() else {}
    n_params = sum(p.numel() for p in model.parameters())
    model_card = build_card(out.name, terms, card.info, train_config, config_path, cv, n_params)
    info = {**card.info, "name": model_card["name"], "card": model_card}
    save_model(model.half(), card.labels, card.frontend, out, info=info, norm_stats=card.norm_stats)
    (out / CARD_FILE).write_text(card_markdown(model_card, card.labels, terms))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atfnn.packaged.build", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the --final model directory (RUN/final/model)")
    parser.add_argument("--cv", type=Path, required=True, help="the exported cross-validated run of the same config")
    parser.add_argument("--config", required=True, help="the experiment YAML it was trained with (named in the card)")
    parser.add_argument("--out", type=Path, required=True,
                        help="the packaged model's folder (atfnn/packaged/<corpus>-atfnn); its name is the model's")
    args = parser.parse_args(argv)
    try:
        out = build(args.model, args.cv, args.config, args.out)
    except (ATFNNError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"packaged model written to {out} ({out / CARD_FILE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
