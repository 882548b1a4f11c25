"""Attention maps of a trained model (Fig. 6 of the paper) for one file, and F-Attention profiles over a corpus.

One file: three panels over the same axes (mel band 0-79 up, frame across, the whole file): the log-Mel spectrogram,
the F-Attention map and the T-Attention map. The model sees overlapping segments; each map is put back at its
segment's frames and overlapping frames are averaged, so a panel spans the file's frames. A dashed black line marks
mel band 50 (~2.5 kHz with the default Slaney mel scale; the paper says ~2 700 Hz): above it is the high-frequency
region the paper's discussion is about. Colours run from blue (low) to red (high), scaled per panel.

Corpus: the F-Attention of every utterance, averaged over its frames (one value per band), then over the utterances
of each emotion. The ratio of the mean weight above band 50 to the mean weight below says whether an emotion's
attention leans to high frequencies (the paper: happy more than sad).
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm import tqdm

from atfnn.audio import AudioInput, band_centres
from atfnn.config import FrontEndConfig, load_config
from atfnn.corpora.base import Utterance
from atfnn.errors import ATFNNError
from atfnn.inference import Features, Prediction, Predictor, load

HIGH_BAND = 50  # the paper's dashed line: mel band 50 ~ 2.7 kHz
CMAP = "jet"  # the paper's red (high) to blue (low)
TOP_DB_NATS = float(np.log(1e8))  # spectrogram colour range: 80 dB below the peak, in natural-log units
FIGSIZE = (10.0, 8.0)
DPI = 100
PANELS = ("spectrogram", "f_attention", "t_attention")
PANEL_TITLES = {"spectrogram": "log-Mel spectrogram", "f_attention": "F-Attention", "t_attention": "T-Attention"}
MAP_KEYS = {"f_attention": "f", "t_attention": "t"}  # panel -> key of model.forward_with_attention's maps


# ----------------------------------------------------------------------------------------------------- one file
@dataclass
class Explanation:
    """Whole-file maps, each (n_mels, n_frames): the raw log-Mel and the attentions the variant has."""

    logmel: np.ndarray
    maps: dict[str, np.ndarray]  # "f" and/or "t"
    prediction: Prediction
    frontend: FrontEndConfig
    variant: str

    @property
    def n_frames(self) -> int:
        return int(self.logmel.shape[1])


def stitch(segment_maps: np.ndarray, starts: Sequence[int], n_frames: int) -> np.ndarray:
    """(n_segments, n_mels, frames) maps at frame offsets `starts` -> (n_mels, n_frames), overlaps averaged.

    Frames past n_frames (padding of a file shorter than one segment) are dropped.
    """
    _, n_mels, length = segment_maps.shape
    total = np.zeros((n_mels, n_frames), dtype=np.float64)
    count = np.zeros(n_frames, dtype=np.float64)
    for seg, start in zip(segment_maps, starts):
        stop = min(start + length, n_frames)
        total[:, start:stop] += seg[:, : stop - start]
        count[start:stop] += 1
    if (count == 0).any():
        raise ValueError(f"segments at {list(starts)} do not cover all {n_frames} frames")
    return (total / count).astype(np.float32)


def attention_maps(predictor: Predictor, audio: AudioInput, sample_rate: int | None = None) -> Explanation:
    """Run the PyTorch model on every segment of `audio` and stitch its attention maps over the file."""
    if predictor.model is None:
        raise ATFNNError("attention maps need the PyTorch model: load the model directory, not an .onnx export")
    feats: Features = predictor.features(audio, sample_rate)
    device = next(predictor.model.parameters()).device
    logits, maps = [], defaultdict(list)
    with torch.inference_mode():
        for i in range(0, len(feats.segments), predictor.batch_size):
            batch = feats.segments[i : i + predictor.batch_size].to(device)
            out, batch_maps = predictor.model.forward_with_attention(batch)
            logits.append(out.float().cpu().numpy())
            for key, value in batch_maps.items():
                maps[key].append(value.float().cpu().numpy())
    path = str(audio) if isinstance(audio, (str, Path)) else None
    prediction = predictor.summarise(np.concatenate(logits), feats, path)
    stitched = {key: stitch(np.concatenate(parts), feats.starts, feats.n_frames) for key, parts in maps.items()}
    return Explanation(feats.logmel.numpy(), stitched, prediction, predictor.frontend, predictor.card.model.variant)


def band_frequency(frontend: FrontEndConfig, band: int = HIGH_BAND) -> float:
    """Centre frequency (Hz) of a mel band of the front end's filterbank (its mel_scale)."""
    return float(band_centres(frontend)[band])


def plot_explanation(explanation: Explanation, title: str | None = None) -> Figure:
    """Fig. 6 for one file: three panels (labelled by PANELS) sharing the band and frame axes."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    axes = fig.subplots(len(PANELS), 1, sharex=True)
    n_mels, n_frames = explanation.logmel.shape
    hz = band_frequency(explanation.frontend)
    images = {"spectrogram": explanation.logmel, **{p: explanation.maps.get(k) for p, k in MAP_KEYS.items()}}
    for letter, ax, panel in zip("abc", axes, PANELS):
        ax.set_label(panel)
        data = images[panel]
        if data is None:
            ax.text(0.5, 0.5, f"{PANEL_TITLES[panel]}: not in this variant ({explanation.variant})",
                    transform=ax.transAxes, ha="center", va="center", fontsize=12, color="0.3")
        else:
            vmin = max(float(data.min()), float(data.max()) - TOP_DB_NATS) if panel == "spectrogram" else None
            image = ax.imshow(data, origin="lower", aspect="auto", cmap=CMAP, interpolation="nearest",
                              extent=(0, n_frames, 0, n_mels), vmin=vmin)
            fig.colorbar(image, ax=ax, pad=0.01, label="log power" if panel == "spectrogram" else "weight")
        ax.axhline(HIGH_BAND, color="black", linestyle="--", linewidth=1.2)
        ax.set_xlim(0, n_frames)
        ax.set_ylim(0, n_mels)
        ax.set_ylabel("mel band")
        ax.set_title(f"({letter}) {PANEL_TITLES[panel]}", loc="left", fontsize=10)
    axes[0].annotate(f"band {HIGH_BAND} ≈ {hz / 1000:.1f} kHz", (n_frames, HIGH_BAND), xytext=(-4, 3),
                     textcoords="offset points", ha="right", va="bottom", fontsize=8, color="white")
    step_ms = 1000 * explanation.frontend.hop_length / explanation.frontend.sample_rate
    axes[-1].set_xlabel(f"frame ({step_ms:g} ms)")
    p = explanation.prediction
    fig.suptitle(title or f"{Path(p.path).name + ': ' if p.path else ''}{p.label} (p = {p.confidence:.2f})")
    return fig


def explain(
    model: str | Path | Predictor, audio: AudioInput, out: str | Path, sample_rate: int | None = None,
    title: str | None = None, dpi: int = DPI,
) -> tuple[Path, Explanation]:
    """Write the Fig. 6 PNG of `audio` to `out`; returns the path and the maps. `title` replaces the default one."""
    predictor = model if isinstance(model, Predictor) else load(model, backend="torch")
    explanation = attention_maps(predictor, audio, sample_rate)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_explanation(explanation, title).savefig(out, dpi=dpi)
    return out, explanation


def explain_main(model: str, audio: str, out: str) -> int:
    """`atfnn explain MODEL AUDIO OUT.png`: 0 on success, 2 with the reason on stderr."""
    try:
        path, explanation = explain(model, audio, out)
    except (ATFNNError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    p = explanation.prediction
    print(f"{audio}: {p.label} (p = {p.confidence:.3f}); wrote {path}")
    return 0


# ----------------------------------------------------------------------------------------------------- corpus
@dataclass
class CorpusProfile:
    """Mean F-Attention per band of each emotion (mean over frames, then over that emotion's utterances)."""

    profiles: dict[str, np.ndarray]  # label -> (n_mels,)
    counts: dict[str, int]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def ratios(self, band: int = HIGH_BAND) -> dict[str, float]:
        """Mean weight of bands >= `band` over the mean weight of bands < `band`, per emotion."""
        return {label: float(p[band:].mean() / p[:band].mean()) for label, p in self.profiles.items()}


def f_attention_profiles(
    predictor: Predictor, utterances: Sequence[Utterance], progress: bool = True
) -> CorpusProfile:
    """Per-emotion F-Attention profiles of `utterances` (labels as the corpus gives them, not the predictions)."""
    _require_f_attention(predictor)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = defaultdict(int)
    skipped: list[tuple[str, str]] = []
    bar = tqdm(utterances, desc="F-Attention", unit="file", disable=not progress or not sys.stderr.isatty())
    for utt in bar:
        try:
            explanation = attention_maps(predictor, utt.path)
        except ATFNNError as e:
            skipped.append((str(utt.path), getattr(e, "reason", str(e))))
            continue
        profile = explanation.maps["f"].mean(axis=1)  # over frames: one value per band
        sums[utt.label] = sums.get(utt.label, 0.0) + profile
        counts[utt.label] += 1
    profiles = {label: (sums[label] / counts[label]).astype(np.float64) for label in sorted(sums)}
    return CorpusProfile(profiles, {label: counts[label] for label in profiles}, skipped)


def _require_f_attention(predictor: Predictor) -> None:
    if predictor.model is None:
        raise ATFNNError("attention maps need the PyTorch model: load the model directory, not an .onnx export")
    if predictor.model.f_attention is None:
        variant = predictor.card.model.variant
        raise ATFNNError(f"model variant {variant!r} has no F-Attention; profiles need an atfnn or afnn model")


def select_per_class(utterances: Sequence[Utterance], limit: int | None) -> list[Utterance]:
    """At most `limit` utterances of each label, taken round-robin over speakers so that every speaker is heard."""
    if limit is None:
        return list(utterances)
    by_label: dict[str, dict[str, list[Utterance]]] = defaultdict(lambda: defaultdict(list))
    for utt in utterances:
        by_label[utt.label][utt.speaker].append(utt)
    chosen: list[Utterance] = []
    for speakers in by_label.values():
        queues = [list(q) for q in speakers.values()]
        picked: list[Utterance] = []
        while len(picked) < limit and any(queues):
            for queue in queues:
                if queue and len(picked) < limit:
                    picked.append(queue.pop(0))
        chosen.extend(picked)
    return chosen


def plot_profiles(profile: CorpusProfile, title: str = "Mean F-Attention per mel band") -> Figure:
    """One line per emotion, band on x, a dashed vertical line at band 50."""
    fig = Figure(figsize=(8.0, 4.5), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ratios = profile.ratios()
    for label, values in profile.profiles.items():
        ax.plot(np.arange(len(values)), values, label=f"{label} (n={profile.counts[label]}, ratio {ratios[label]:.3f})")
    ax.axvline(HIGH_BAND, color="black", linestyle="--", linewidth=1.2)
    ax.set_xlabel("mel band")
    ax.set_ylabel("mean F-Attention weight")
    ax.set_title(title)
    ax.legend(fontsize=8, title=f"ratio = mean above band {HIGH_BAND} / mean below", title_fontsize=8)
    return fig


def explain_corpus(
    model: str | Path | Predictor, config_path: str | Path, out_dir: str | Path, limit_per_class: int | None = None,
    progress: bool = True, speakers: Sequence[str] | None = None,
) -> CorpusProfile:
    """Profiles of the corpus of an experiment YAML: writes profiles.json, ratios.json and profiles.png to out_dir.

    The model's own front end is used, not the YAML's (the YAML only names the corpus). `speakers` keeps only those
    speakers' utterances: a cross-validation fold's model is profiled on its own test speaker.
    """
    from atfnn.corpora import load_corpus

    predictor = model if isinstance(model, Predictor) else load(model, backend="torch")
    _require_f_attention(predictor)  # before reading the corpus, which can take a while
    cfg = load_config(config_path)
    report = load_corpus(cfg.corpus.name, cfg.corpus.root, **cfg.corpus.options)
    pool = report.utterances
    if speakers:
        pool = [u for u in pool if u.speaker in set(speakers)]
        if not pool:
            known = sorted({u.speaker for u in report.utterances})
            raise ATFNNError(f"{config_path}: no utterance of speaker(s) {list(speakers)}; the corpus has {known}")
    utterances = select_per_class(pool, limit_per_class)
    profile = f_attention_profiles(predictor, utterances, progress)
    profile.skipped = [*report.skipped, *profile.skipped]
    if not profile.profiles:
        raise ATFNNError(f"{config_path}: no utterance of corpus {cfg.corpus.name!r} could be read")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "profiles.json").write_text(
        json.dumps({label: [round(float(v), 6) for v in p] for label, p in profile.profiles.items()}, indent=1) + "\n"
    )
    (out_dir / "ratios.json").write_text(json.dumps(_ratio_summary(profile), indent=1) + "\n")
    plot_profiles(profile, title=f"Mean F-Attention per mel band, {cfg.corpus.name}").savefig(out_dir / "profiles.png")
    return profile


def _ratio_summary(profile: CorpusProfile) -> dict:
    ratios = profile.ratios()
    summary: dict = {"band": HIGH_BAND, "ratio_above_below": ratios, "counts": profile.counts}
    if "happy" in ratios and "sad" in ratios:
        summary["happy_gt_sad"] = ratios["happy"] > ratios["sad"]
    return summary


def explain_corpus_main(
    model: str, config_path: str, out_dir: str, limit_per_class: int | None = None,
    speakers: Sequence[str] | None = None,
) -> int:
    """`atfnn explain MODEL --corpus CONFIG --out OUT_DIR [--limit-per-class N] [--speaker S]`: prints the ratios;
    0 ok, 2 on error."""
    try:
        profile = explain_corpus(model, config_path, out_dir, limit_per_class, speakers=speakers)
    except (ATFNNError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, reason in profile.skipped:
        print(f"skipped: {path}: {reason}", file=sys.stderr)
    summary = _ratio_summary(profile)
    print(f"{'emotion':<12}{'n':>6}{'above/below band ' + str(HIGH_BAND):>26}")
    for label, ratio in summary["ratio_above_below"].items():
        print(f"{label:<12}{profile.counts[label]:>6}{ratio:>26.4f}")
    if "happy_gt_sad" in summary:
        print(f"happy > sad: {'yes' if summary['happy_gt_sad'] else 'no'}")
    print(f"wrote {Path(out_dir) / 'profiles.json'}, ratios.json, profiles.png")
    return 0
