"""Using a trained model: audio in, an emotion label, class posteriors and a per-segment timeline out.

    predictor = atfnn.load("runs/casia/fold-0/model")      # a model directory, or an .onnx file from atfnn.export
    result = predictor.predict("speech.wav")                 # or predict(array, sample_rate=44100)
    result.label, result.probs, result.timeline

The front end is the model's own `FrontEndConfig` (stored beside the weights) run by atfnn.frontend.extract_features,
the code training's feature cache uses too, so features equal the training ones: load and resample to the model's
rate, log-Mel (silence trimmed and floored as the front end says), cut into `segment_frames`-frame segments every
`segment_hop` frames (the last one aligned to the end of the file), normalise. The utterance decision is the mean
of the segment posteriors (softmax of the logits).

Normalisation at prediction time: "utterance" uses the file's own per-band mean and std over its frames (population
std floored at 1e-5), as training did. "global" applies the training split's statistics saved with the model
(ModelCard.norm_stats; the ONNX file carries them in its metadata). "speaker" was trained with statistics pooled over
each speaker's utterances; a prediction has no speaker group, so it falls back to the file's own statistics -- the
same computation as "utterance". Expect some mismatch when one file is much shorter or less varied than a speaker's
whole set.
Likewise model.embedding_norm="speaker" standardises h' per speaker in training and evaluation; a prediction uses the
running estimates kept in training (the mean over the training speakers), which do not remove a new voice's offset.

Timeline: segment k covers frames [s_k, s_k + segment_frames) of the file, i.e. [s_k * hop / sr, (s_k + frames) *
hop / sr) seconds, with the last end clipped to the file's duration. The first start is 0 and the last end is the
duration, so the segments cover the file exactly (with frontend.trim_db, the trimmed span of it); with the default hop (64 of 128 frames) consecutive segments
overlap by half, and the last one, aligned to the end, may overlap its neighbour by more. A file shorter than one
segment gives one segment [0, duration] (padded as `frontend.pad_short` says).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import soundfile as sf
import torch

from atfnn.audio import AudioInput, filterbank
from atfnn.checkpoint import ModelCard, load_model
from atfnn.config import FrontEndConfig
from atfnn.errors import ATFNNError, AudioError
from atfnn.frontend import Features, extract_features, timeline_bounds  # noqa: F401  (re-exported: the API)
from atfnn.model import ATFNN
from atfnn.runtime import resolve_device

# What a directory walk picks up: formats soundfile (libsndfile) decodes. A file named explicitly is always tried.
AUDIO_EXTENSIONS = tuple(
    ext for ext, fmt in (
        (".wav", "WAV"), (".flac", "FLAC"), (".ogg", "OGG"), (".oga", "OGG"), (".opus", "OGG"), (".mp3", "MP3"),
        (".aif", "AIFF"), (".aiff", "AIFF"), (".au", "AU"), (".caf", "CAF"), (".w64", "W64"), (".rf64", "RF64"),
    ) if fmt in sf.available_formats()
)
BACKENDS = ("torch", "onnx")
DEFAULT_BATCH = 64

Logits = Callable[[torch.Tensor], np.ndarray]  # (N, n_mels, frames) segments -> (N, n_classes) logits


# ----------------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Segment:
    """One model input: seconds [start, end) of the file and its class posteriors."""

    start: float
    end: float
    probs: dict[str, float]

    @property
    def label(self) -> str:
        return max(self.probs, key=self.probs.get)


@dataclass(frozen=True)
class Prediction:
    """The utterance decision: `label` is the argmax of `probs`, the mean of the timeline's segment posteriors."""

    label: str
    probs: dict[str, float]
    timeline: list[Segment]
    path: str | None = None
    duration: float = 0.0  # seconds

    @property
    def confidence(self) -> float:
        return self.probs[self.label]

    def to_dict(self, timeline: bool = True) -> dict:
        out = {"path": self.path, "label": self.label, "probs": self.probs, "duration": self.duration}
        if timeline:
            out["timeline"] = [
                {"start": s.start, "end": s.end, "label": s.label, "probs": s.probs} for s in self.timeline
            ]
        return out


@dataclass(frozen=True)
class Failure:
    """A file that could not be classified, and why (the reason names the fix where there is one)."""

    path: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": self.path, "error": self.reason}


# ----------------------------------------------------------------------------------------------------- scores
def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------------------- backends
class TorchBackend:
    """The PyTorch network; keeps the model for attention maps (atfnn.explain)."""

    def __init__(self, model: ATFNN, device: torch.device):
        self.model, self.device = model.eval(), device

    @torch.inference_mode()
    def __call__(self, segments: torch.Tensor) -> np.ndarray:
        return self.model(segments.to(self.device)).float().cpu().numpy()


class OnnxBackend:
    """An ONNX file from atfnn.export run by onnxruntime; the front end stays in Python (this module)."""

    def __init__(self, path: str | Path, device: torch.device):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ATFNNError("the onnx backend needs onnxruntime: pip install 'atfnn[export]'") from e
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ATFNNError(f"{path}: device {device} asked for, but this onnxruntime has no CUDA provider")
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as e:  # onnxruntime raises its own untyped errors for unreadable files
            raise ATFNNError(f"{path}: cannot be loaded by onnxruntime ({e})") from e
        self.input_name = self.session.get_inputs()[0].name
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, segments: torch.Tensor) -> np.ndarray:
        x = segments.detach().cpu().numpy().astype(np.float32, copy=False)
        return self.session.run(None, {self.input_name: x})[0]


# ----------------------------------------------------------------------------------------------------- predictor
class Predictor:
    """A loaded model with its labels and front end; see the module docstring for what `predict` computes."""

    def __init__(self, backend: Logits, card: ModelCard, model: ATFNN | None = None, batch_size: int = DEFAULT_BATCH):
        self.backend, self.card, self.model, self.batch_size = backend, card, model, batch_size
        # Builds (and caches) the filterbank now: the first call imports librosa, seconds that belong to loading.
        filterbank(card.frontend)

    @property
    def labels(self) -> list[str]:
        return self.card.labels

    @property
    def frontend(self) -> FrontEndConfig:
        return self.card.frontend

    def features(self, audio: AudioInput, sample_rate: int | None = None) -> Features:
        return extract_features(audio, self.frontend, sample_rate, stats=self.card.norm_stats)

    def logits(self, segments: torch.Tensor, batch_size: int | None = None) -> np.ndarray:
        """(N, n_mels, frames) -> (N, n_classes), in batches of `batch_size` segments."""
        size = batch_size or self.batch_size
        parts = [self.backend(segments[i : i + size]) for i in range(0, len(segments), size)]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.labels)), dtype=np.float32)

    def predict(self, audio: AudioInput, sample_rate: int | None = None) -> Prediction:
        """Classify one file or array. Its segments go through the network together, in batches of `batch_size`
        (64 segments: one forward for files up to ~42 s, bounded memory for longer ones)."""
        feats = self.features(audio, sample_rate)
        path = str(audio) if isinstance(audio, (str, Path)) else None
        return self.summarise(self.logits(feats.segments), feats, path)

    def predict_many(
        self, paths: Sequence[str | Path], batch_size: int = DEFAULT_BATCH
    ) -> list[Prediction | Failure]:
        """One result per path, in order: segments of consecutive files share batches; unreadable files fail alone."""
        results: list[Prediction | Failure | None] = [None] * len(paths)
        pending: list[tuple[int, Features]] = []
        n_pending = 0
        for i, path in enumerate(paths):
            try:
                feats = self.features(path)
            except (ATFNNError, OSError) as e:
                results[i] = Failure(str(path), _reason(e))
                continue
            pending.append((i, feats))
            n_pending += len(feats.segments)
            if n_pending >= batch_size:
                self._flush(pending, paths, results, batch_size)
                pending, n_pending = [], 0
        self._flush(pending, paths, results, batch_size)
        return results  # type: ignore[return-value]  # every slot is filled

    def _flush(self, pending: list[tuple[int, Features]], paths, results: list, batch_size: int) -> None:
        if not pending:
            return
        logits = self.logits(torch.cat([f.segments for _, f in pending]), batch_size)
        offset = 0
        for i, feats in pending:
            n = len(feats.segments)
            results[i] = self.summarise(logits[offset : offset + n], feats, str(paths[i]))
            offset += n

    def summarise(self, logits: np.ndarray, feats: Features, path: str | None = None) -> Prediction:
        """Segment logits of one file -> its Prediction (mean of the segment posteriors)."""
        probs = softmax(logits)
        mean = probs.mean(axis=0)
        bounds = timeline_bounds(feats.starts, self.frontend, feats.duration, feats.first_frame)
        timeline = [Segment(a, b, self._named(p)) for (a, b), p in zip(bounds, probs)]
        return Prediction(self.labels[int(mean.argmax())], self._named(mean), timeline, path, feats.duration)

    def _named(self, probs: np.ndarray) -> dict[str, float]:
        return {label: float(p) for label, p in zip(self.labels, probs)}


def _reason(error: Exception) -> str:
    if isinstance(error, AudioError):
        return error.reason
    if isinstance(error, OSError):
        return f"cannot be read ({error.strerror or error})"
    return str(error)


def load(
    path: str | Path, device: str | torch.device | None = None, backend: str | None = None
) -> Predictor:
    """A Predictor for a model directory (atfnn.checkpoint) or an ONNX file (atfnn.export).

    backend None picks "onnx" for a path ending in .onnx, else "torch"; device None picks CUDA when available.
    """
    path = Path(path)
    backend = backend or ("onnx" if path.suffix.lower() == ".onnx" else "torch")
    if backend not in BACKENDS:
        raise ATFNNError(f"Unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    dev = resolve_device(device, "device")
    if backend == "onnx":
        if not path.is_file():
            raise ATFNNError(f"{path}: no such ONNX file; write one with atfnn.export.export_onnx (atfnn export)")
        from atfnn.export import card_from_metadata

        runner = OnnxBackend(path, dev)
        return Predictor(runner, card_from_metadata(runner.metadata, path))
    if path.is_file() and path.suffix.lower() == ".onnx":
        raise ATFNNError(f"{path}: is an ONNX file; load it with backend='onnx' or pass the model directory")
    model, card = load_model(path, dev)
    return Predictor(TorchBackend(model, dev), card, model)


# ----------------------------------------------------------------------------------------------------- inputs
def collect_audio_files(inputs: Sequence[str | Path]) -> tuple[list[str], list[Failure]]:
    """Files as given, and the audio files (AUDIO_EXTENSIONS, hidden ones skipped) under directories, sorted."""
    files: list[str] = []
    failures: list[Failure] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                failures.append(Failure(str(path), f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under this folder"))
            files.extend(str(p) for p in found)
        elif path.exists():
            files.append(str(path))
        else:
            failures.append(Failure(str(path), "file not found"))
    return files, failures
