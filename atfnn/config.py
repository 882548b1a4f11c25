"""Typed configuration: the paper's values are the defaults; YAML files and `--set a.b=c` overrides change them.

Sections follow the pipeline: corpus -> frontend (audio) -> model -> train -> protocol. An experiment config is
one `ExperimentConfig`; `configs/*.yaml` hold the paper's experiments as small overrides of these defaults.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from atfnn.errors import ConfigError


@dataclass
class FrontEndConfig:
    """Log-Mel front end of section III-C."""

    sample_rate: int = 16000  # "16000" Hz for every corpus (Table I)
    win_length: int = 320  # "20 ms Hamming window"
    hop_length: int = 160  # "50% frame overlapping" -> 10 ms hop
    n_fft: int = 512  # "512-point FFT"
    n_mels: int = 80  # "the number of Mel-filter bands is set as 80"
    fmin: float = 0.0
    fmax: float | None = None  # None = Nyquist
    log_floor: float = 1e-6  # log(max(mel power, floor)); the paper says only "log"
    segment_frames: int = 128  # "segments with 128 frames"
    # The paper does not say whether segments overlap; 64 (50% overlap) "augment[s] the dataset" as III-C says.
    segment_hop: int = 64
    # Utterances shorter than one segment: "silence" pads with the log floor, "repeat" tiles the utterance,
    # "drop" raises/skips. The last (partial) segment of a longer utterance is aligned to its end, so no padding.
    pad_short: str = "silence"
    # Feature normalisation, not in the paper: "none" (faithful), "utterance" (per-utterance mean/std per band),
    # "speaker" (per-speaker mean/std per band, transductive: uses the test speaker's unlabelled audio).
    norm: str = "none"


@dataclass
class ModelConfig:
    """ATFNN (section II) and its ablations (Table III). Fields the paper leaves open quote its wording in docs/model.md."""

    variant: str = "atfnn"  # atfnn | tfnn | afnn | atnn
    n_mels: int = 80  # f
    frames: int = 128  # t
    channels: int = 8  # c
    f_group: int = 5  # "5 frequency bands of x_i as a band group"
    t_group: int = 8  # "8 time frames of x_j ... as a frame group"
    # Open: activation of the attention convolutions. sigmoid keeps a in (0, 1), so x' = x + a*x scales by (1, 2).
    attention_activation: str = "sigmoid"  # sigmoid | softmax | tanh | none
    heads: int = 2  # open: "multi-head self-attention" with c=8 -> 2 heads of 4 dims
    conv_kernel: int = 5  # "kernel size is 1 x 5"
    conv_channels: int = 32  # "Conv1d-15-32" then back to c
    conv_axis: str = "frequency"  # open: the 1x5 convolutions run along the bands of a frame (or "time")
    encoder_dropout: float = 0.1  # open: the Transformer's residual dropout ("P_drop = 0.1")
    attention_dropout: float = 0.0  # open: the Transformer paper drops sub-layer outputs, not attention weights
    lstm_hidden: int = 128  # "128 hidden nodes"
    lstm_layers: int = 3  # "three-layer Bi-LSTM"
    lstm_dropout: float = 0.0  # open
    head: str = "linear"  # open: "input into the classifier" -> linear | mlp
    head_dropout: float = 0.0  # open
    afnn_pool: str = "mean"  # AFNN has no T-Encoder: the frequency encoding is averaged over time ("mean" | "max")
    # Not in the paper: "speaker" standardises h' per speaker before the classifier (statistics of each speaker's
    # segments in the batch when training, of all of a split's segments per speaker when evaluating; transductive like
    # frontend.norm="speaker"). A prediction without a speaker group uses running estimates. "none" = the paper.
    embedding_norm: str = "none"


@dataclass
class TrainConfig:
    """Section III-C: "trained from scratch with the batch size of 128 ... Adam ... learning rate of 0.0005"."""

    optimizer: str = "adam"
    lr: float = 5e-4
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 30  # open: the paper gives no epoch count; the most epochs, early stopping may end sooner
    patience: int = 10  # early stopping on the validation metric
    # Not in the paper, which trains at a fixed Adam rate: constant | cosine (train.lr down to train.min_lr over
    # train.epochs) | plateau (halved after 3 epochs without a better validation score, not below train.min_lr).
    lr_schedule: str = "constant"
    warmup_epochs: int = 0  # linear warm-up of the rate over this many epochs first (0 = none, the paper)
    min_lr: float = 0.0  # the floor of cosine and plateau
    select_metric: str = "uar"  # model selection on the fold's validation split, never the test speaker
    class_weighting: bool = False
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # fp32 | bf16 (autocast of the whole network) | bf16-lstm (autocast of the T-Encoder's Bi-LSTM only; the rest
    # fp32, docs/performance.md) | fp16 (CUDA)
    precision: str = "fp32"
    threads: int = 0  # 0 = torch default
    grad_clip: float = 0.0  # 0 = off
    spec_augment: bool = False  # not in the paper; option for "beyond the paper" runs
    # Not in the paper: VTLP-style warp of the mel axis by a random factor in [1 - freq_warp, 1 + freq_warp] per
    # training segment (0 = off), so the network sees the training speakers with other voice heights.
    freq_warp: float = 0.0
    # Not in the paper: evaluate, select and keep an exponential moving average of the weights over about this many
    # recent epochs (updated after every step) instead of the raw weights; 0 = off.
    ema_epochs: float = 0.0
    # Not in the paper: speaker-adversarial training (Ganin & Lempitsky's gradient reversal, 2015). A speaker
    # classifier on h' is trained alongside and its gradient reaches the network reversed, scaled by this weight
    # times DANN's ramp 2 / (1 + exp(-10 p)) - 1 over the training progress p; 0 = off. Training only: the kept
    # model is the plain network.
    speaker_adversarial: float = 0.0
    # The speaker classifier's own learning rate (0 = train.lr). At the paper's 5e-4 and CASIA's ~16 steps per epoch a
    # fresh classifier barely moves, so it never learns the speakers whose gradient it is meant to reverse.
    adversary_lr: float = 0.0
    aggregate: str = "mean"  # segment posteriors -> utterance: mean | vote | max
    # Analysis only: also score the test speaker after every epoch into log.csv (test_war, test_uar), to see what a
    # protocol that picks the epoch on the test speaker would report. Never used for selection or early stopping.
    monitor_test: bool = False


@dataclass
class ProtocolConfig:
    """Section III-B: leave-one-speaker-out (or leave-one-session-out on IEMOCAP)."""

    kind: str = "loso"  # loso | loso_session
    validation: str = "utterances"  # utterances of the training speakers | speaker (one held-out training speaker)
    val_fraction: float = 0.1
    seed: int = 0
    # How the epoch count is chosen: "split" (the paper's reading: early stopping on the `validation` split of the
    # training speakers) | "inner-loso" (leave each training speaker out in turn, pick the epoch count of the best
    # mean inner curve, then train on all training speakers for it; docs/experiments.md).
    selection: str = "split"
    inner_seeds: int = 0  # inner-loso: 0 = every seed selects on its own; 1 = the first seed's epoch count is reused


@dataclass
class CorpusConfig:
    name: str = "synthetic"
    root: str = ""  # relative paths resolve against the working directory
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExperimentConfig:
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    frontend: FrontEndConfig = field(default_factory=FrontEndConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    cache_dir: str = ".cache/atfnn"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self, ignore: tuple[str, ...] = ("cache_dir", "train.device", "train.threads")) -> str:
        """A hash of everything that changes results (not where the cache lives or which device runs it)."""
        data = self.to_dict()
        for key in ignore:
            section, _, name = key.partition(".")
            if name:
                data.get(section, {}).pop(name, None)
            else:
                data.pop(section, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _resolve_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the dataclass field's type, with a message naming the field when it cannot."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], where)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _from_dict(annotation, value, where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if annotation in (int, float):
        try:
            number = annotation(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}") from e
        if annotation is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return number
    if annotation is str:
        return str(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(known)}")
    kwargs = {name: _coerce(value, _resolve_type(cls, name), f"{where}.{name}") for name, value in data.items()}
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> ExperimentConfig:
    config = _from_dict(ExperimentConfig, data or {})
    validate(config)
    return config


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML config (a `base:` key names another YAML file it extends), then apply `a.b=value` overrides."""
    data: dict[str, Any] = _read_yaml(Path(path)) if path else {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.epochs=30")
        _set_path(data, key.strip().split("."), yaml.safe_load(raw) if raw.strip() else "")
    return from_dict(data)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: circular 'base:' chain")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    merged = _read_yaml((path.parent / base), seen + (path.resolve(),))
    return _deep_merge(merged, data)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "options":
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_path(data: dict[str, Any], keys: list[str], value: Any) -> None:
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(keys)}: {key} is not a section")
    node[keys[-1]] = value


CHOICES: dict[str, tuple[str, ...]] = {
    "frontend.pad_short": ("silence", "repeat", "drop"),
    "frontend.norm": ("none", "utterance", "speaker"),
    "model.variant": ("atfnn", "tfnn", "afnn", "atnn"),
    "model.attention_activation": ("sigmoid", "softmax", "tanh", "none"),
    "model.conv_axis": ("frequency", "time"),
    "model.head": ("linear", "mlp"),
    "model.afnn_pool": ("mean", "max"),
    "model.embedding_norm": ("none", "speaker"),
    "train.optimizer": ("adam", "adamw"),
    "train.select_metric": ("uar", "war", "loss"),
    "train.precision": ("fp32", "bf16", "bf16-lstm", "fp16"),
    "train.aggregate": ("mean", "vote", "max"),
    "train.lr_schedule": ("constant", "cosine", "plateau"),
    "protocol.selection": ("split", "inner-loso"),
    "protocol.kind": ("loso", "loso_session"),
    "protocol.validation": ("utterances", "speaker"),
}


def validate(config: ExperimentConfig) -> None:
    """Reject values that would fail later, deep inside a run, with the field name and the valid choices."""
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}")
    m, fe = config.model, config.frontend
    if m.n_mels != fe.n_mels:
        raise ConfigError(f"model.n_mels={m.n_mels} must equal frontend.n_mels={fe.n_mels}")
    if m.frames != fe.segment_frames:
        raise ConfigError(f"model.frames={m.frames} must equal frontend.segment_frames={fe.segment_frames}")
    if m.n_mels % m.f_group:
        raise ConfigError(f"model.n_mels={m.n_mels} is not a multiple of model.f_group={m.f_group}")
    if m.frames % m.t_group:
        raise ConfigError(f"model.frames={m.frames} is not a multiple of model.t_group={m.t_group}")
    if config.train.ema_epochs < 0:
        raise ConfigError(f"train.ema_epochs={config.train.ema_epochs} must be 0 (off) or positive")
    if config.train.speaker_adversarial < 0:
        raise ConfigError(
            f"train.speaker_adversarial={config.train.speaker_adversarial} must be 0 (off) or positive (1 = DANN's)"
        )
    if config.train.adversary_lr < 0:
        raise ConfigError(f"train.adversary_lr={config.train.adversary_lr} must be 0 (= train.lr) or positive")
    if m.channels % m.heads:
        raise ConfigError(f"model.channels={m.channels} is not divisible by model.heads={m.heads}")
    if fe.segment_hop < 1 or fe.segment_hop > fe.segment_frames:
        raise ConfigError(f"frontend.segment_hop={fe.segment_hop} must be in 1..{fe.segment_frames}")
    if not 0.0 <= config.train.freq_warp < 0.5:
        raise ConfigError(f"train.freq_warp={config.train.freq_warp} must be in [0, 0.5) (0 = off; 0.1 = ±10 %)")
    if not 0.0 < config.protocol.val_fraction < 1.0:
        raise ConfigError(f"protocol.val_fraction={config.protocol.val_fraction} must be in (0, 1)")


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
