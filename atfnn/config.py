"""Typed configuration: the paper's values are the defaults; YAML files and `--set a.b=c` overrides change them.

Sections follow the pipeline: corpus -> frontend (audio) -> model -> train -> protocol. An experiment config is
one `ExperimentConfig`; `configs/*.yaml` hold the paper's experiments as small overrides of these defaults.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import yaml

from atfnn.atomic import atomic_write_text
from atfnn.errors import ConfigError
from atfnn.runtime import DEVICE_NAMES, is_device_name


# ----------------------------------------------------------------------------------------------- field rules
@dataclass(frozen=True)
class Range:
    """The numbers a field allows (always finite): low <= value <= high, with either end open or absent."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def check(self, value: Any, where: str) -> None:
        if value is None:
            return
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if below or above or not math.isfinite(value):
            raise ConfigError(f"{where}={value!r} is out of range; allowed: {self}")

    def __str__(self) -> str:
        low, high = (_number(x) for x in (self.low, self.high))
        if self.low is None and self.high is None:
            return "a finite number"
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {high}"
        return f"{'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _number(x: float | None) -> str:
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Check:
    """A rule on a string field: `test(value)` must hold; `allowed` says what does, for the message."""

    test: Callable[[Any], bool]
    allowed: str

    def check(self, value: Any, where: str) -> None:
        if not self.test(value):
            raise ConfigError(f"{where}={value!r} is not valid; allowed: {self.allowed}")


@dataclass(frozen=True)
class Derived:
    """A field whose value is taken from another section's field ("frontend.n_mels") wherever a config is read."""

    source: str


# One-line field types: `epochs: Count = 30`, `lr: Positive = 5e-4`, `norm: Literal["none", "utterance"] = "none"`.
Count = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
Positive = Annotated[float, Range(0, low_open=True)]
NonNegative = Annotated[float, Range(0)]
Dropout = Annotated[float, Range(0, 1, high_open=True)]
Seed = Annotated[int, Range(0, 2**32 - 1)]
Device = Annotated[str, Check(is_device_name, DEVICE_NAMES)]


# Fields added after runs were made, each with the default that reproduces the earlier behaviour: at that default
# they stay out of the fingerprint, so a run folder made before them still resumes.
LATER_FIELDS: dict[str, Any] = {
    "frontend.mel_scale": "slaney",
    "frontend.trim_db": 0.0,
    "frontend.floor_db": 0.0,
    "frontend.train_segment_hop": 0,
    "model.t_attention_input": "x",
    "train.lr_schedule": "constant",
    "train.warmup_epochs": 0,
    "train.min_lr": 0.0,
    "protocol.selection": "split",
    "protocol.inner_seeds": 0,
}


@dataclass
class FrontEndConfig:
    """Log-Mel front end of section III-C."""

    sample_rate: Count = 16000  # "16000" Hz for every corpus (Table I)
    win_length: Count = 320  # "20 ms Hamming window"
    hop_length: Count = 160  # "50% frame overlapping" -> 10 ms hop
    n_fft: Count = 512  # "512-point FFT"
    n_mels: Count = 80  # "the number of Mel-filter bands is set as 80"
    fmin: NonNegative = 0.0
    fmax: Annotated[float | None, Range(0, low_open=True)] = None  # None = Nyquist
    log_floor: Positive = 1e-6  # log(max(mel power, floor)); the paper says only "log"
    segment_frames: Count = 128  # "segments with 128 frames"
    # The paper does not say whether segments overlap; 64 (50% overlap) "augment[s] the dataset" as III-C says.
    segment_hop: Count = 64
    # Utterances shorter than one segment: "silence" pads with the log floor, "repeat" tiles the utterance,
    # "drop" raises/skips. The last (partial) segment of a longer utterance is aligned to its end, so no padding.
    pad_short: Literal["silence", "repeat", "drop"] = "silence"
    # Feature normalisation, not in the paper: "none" (faithful), "utterance" (per-utterance mean/std per band),
    # "speaker" (per-speaker mean/std per band, transductive: uses the test speaker's unlabelled audio), "global"
    # (per-band mean/std of the fold's training split only, saved with the model and applied at prediction).
    norm: Literal["none", "utterance", "speaker", "global"] = "none"
    # Mel scale of the filterbank: "slaney" (librosa's default) or "htk" (the paper's band 50 at ~2.7 kHz is HTK's).
    mel_scale: Literal["slaney", "htk"] = "slaney"
    # Not in the paper: drop leading/trailing frames quieter than the utterance's loudest frame minus trim_db dB.
    trim_db: NonNegative = 0.0  # 0 = off
    # Not in the paper: floor the mel power at the utterance's peak minus floor_db dB instead of at log_floor.
    floor_db: NonNegative = 0.0  # 0 = the absolute log_floor
    # The hop that cuts TRAINING segments; validation, test and prediction keep segment_hop.
    train_segment_hop: NonNegativeInt = 0  # 0 = segment_hop


@dataclass
class ModelConfig:
    """ATFNN (section II) and its ablations (Table III). Fields the paper leaves open quote its wording in docs/model.md."""

    variant: Literal["atfnn", "tfnn", "afnn", "atnn"] = "atfnn"
    # The network's input size (f, t) is the front end's: derived from it wherever a config is read, stored in the
    # model card. A YAML file may repeat the front end's values; any other value is an error.
    n_mels: Annotated[int, Range(1), Derived("frontend.n_mels")] = 80
    frames: Annotated[int, Range(1), Derived("frontend.segment_frames")] = 128
    channels: Count = 8  # c
    f_group: Count = 5  # "5 frequency bands of x_i as a band group"
    t_group: Count = 8  # "8 time frames of x_j ... as a frame group"
    # Open: activation of the attention convolutions. sigmoid keeps a in (0, 1), so x' = x + a*x scales by (1, 2).
    attention_activation: Literal["sigmoid", "softmax", "tanh", "none"] = "sigmoid"
    heads: Count = 2  # open: "multi-head self-attention" with c=8 -> 2 heads of 4 dims
    conv_kernel: Count = 5  # "kernel size is 1 x 5"; odd, so the convolutions keep the length
    conv_channels: Count = 32  # "Conv1d-15-32" then back to c
    # Open: the 1x5 convolutions run along the bands of a frame (or along the frames of a band, "time").
    conv_axis: Literal["frequency", "time"] = "frequency"
    encoder_dropout: Dropout = 0.1  # open: the Transformer's residual dropout ("P_drop = 0.1")
    attention_dropout: Dropout = 0.0  # open: the Transformer paper drops sub-layer outputs, not attention weights
    lstm_hidden: Count = 128  # "128 hidden nodes"
    lstm_layers: Count = 3  # "three-layer Bi-LSTM"
    lstm_dropout: Dropout = 0.0  # open
    head: Literal["linear", "mlp"] = "linear"  # open: "input into the classifier"
    head_dropout: Dropout = 0.0  # open
    afnn_pool: Literal["mean", "max"] = "mean"  # AFNN has no T-Encoder: the frequency encoding is pooled over time
    # Open: T-Attention's weights from the input x (II-B.2 and Fig. 4) or from the F-Encoder's output x̂', Ta(x̂'), as
    # eq. (4) prints it.
    t_attention_input: Literal["x", "encoding"] = "x"
    # Not in the paper: "speaker" standardises h' per speaker before the classifier (statistics of each speaker's
    # segments in the batch when training, of all of a split's segments per speaker when evaluating; transductive like
    # frontend.norm="speaker"). A prediction without a speaker group uses running estimates. "none" = the paper.
    embedding_norm: Literal["none", "speaker"] = "none"


@dataclass
class TrainConfig:
    """Section III-C: "trained from scratch with the batch size of 128 ... Adam ... learning rate of 0.0005"."""

    optimizer: Literal["adam", "adamw"] = "adam"
    lr: Positive = 5e-4
    weight_decay: NonNegative = 0.0
    batch_size: Count = 128
    epochs: Count = 30  # open: the paper gives no epoch count; the most epochs, early stopping may end sooner
    patience: Count = 10  # early stopping on the validation metric
    # Not in the paper, which trains at a fixed Adam rate: constant | cosine (train.lr down to train.min_lr over
    # train.epochs) | plateau (halved after 3 epochs without a better validation score, not below train.min_lr).
    lr_schedule: Literal["constant", "cosine", "plateau"] = "constant"
    warmup_epochs: NonNegativeInt = 0  # linear warm-up of the rate over this many epochs first (0 = none, the paper)
    min_lr: NonNegative = 0.0  # the floor of cosine and plateau
    # Model selection on the fold's validation split, never the test speaker.
    select_metric: Literal["uar", "war", "loss"] = "uar"
    class_weighting: bool = False
    seed: Seed = 0
    device: Device = "auto"
    # fp32 | bf16 (autocast of the whole network) | bf16-lstm (autocast of the T-Encoder's Bi-LSTM only; the rest
    # fp32, docs/performance.md) | fp16 (CUDA)
    precision: Literal["fp32", "bf16", "bf16-lstm", "fp16"] = "fp32"
    threads: NonNegativeInt = 0  # 0 = torch default
    grad_clip: NonNegative = 0.0  # 0 = off
    spec_augment: bool = False  # not in the paper; option for "beyond the paper" runs
    # Not in the paper: VTLP-style warp of the mel axis by a random factor in [1 - freq_warp, 1 + freq_warp] per
    # training segment (0 = off), so the network sees the training speakers with other voice heights.
    freq_warp: Annotated[float, Range(0, 0.5, high_open=True)] = 0.0
    # Not in the paper: evaluate, select and keep an exponential moving average of the weights over about this many
    # recent epochs (updated after every step) instead of the raw weights; 0 = off.
    ema_epochs: NonNegative = 0.0
    # Not in the paper: speaker-adversarial training (Ganin & Lempitsky's gradient reversal, 2015). A speaker
    # classifier on h' is trained alongside and its gradient reaches the network reversed, scaled by this weight
    # times DANN's ramp 2 / (1 + exp(-10 p)) - 1 over the training progress p; 0 = off. Training only: the kept
    # model is the plain network.
    speaker_adversarial: NonNegative = 0.0
    # The speaker classifier's own learning rate (0 = train.lr). At the paper's rate and a small corpus's few steps
    # per epoch a fresh classifier barely moves, so it never learns the speakers whose gradient it is meant to reverse.
    adversary_lr: NonNegative = 0.0
    aggregate: Literal["mean", "vote", "max"] = "mean"  # segment posteriors -> utterance
    # Analysis only: also score the test speaker after every epoch into log.csv (test_war, test_uar), to see what a
    # protocol that picks the epoch on the test speaker would report. Never used for selection or early stopping.
    monitor_test: bool = False


@dataclass
class ProtocolConfig:
    """Section III-B: leave-one-speaker-out (or leave-one-session-out on IEMOCAP)."""

    kind: Literal["loso", "loso_session"] = "loso"
    # utterances of the training speakers | speaker (one held-out training speaker)
    validation: Literal["utterances", "speaker"] = "utterances"
    val_fraction: Annotated[float, Range(0, 1, low_open=True, high_open=True)] = 0.1
    seed: Seed = 0
    # How the epoch count is chosen: "split" (the paper's reading: early stopping on the `validation` split of the
    # training speakers) | "inner-loso" (leave each training speaker out in turn, pick the epoch count of the best
    # mean inner curve, then train on all training speakers for it; docs/experiments.md).
    selection: Literal["split", "inner-loso"] = "split"
    # inner-loso: 0 = every seed selects on its own; 1 = the first seed's epoch count is reused
    inner_seeds: Annotated[int, Range(0, 1)] = 0


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

    def __post_init__(self) -> None:
        for rule in derived_fields():
            setattr(getattr(self, rule.section), rule.name, rule.source_value(self))

    def to_dict(self, derived: bool = True) -> dict[str, Any]:
        """Every field; `derived=False` leaves out those taken from another section (what a YAML file sets)."""
        data = asdict(self)
        if not derived:
            for rule in derived_fields():
                data[rule.section].pop(rule.name)
        return data

    def fingerprint(self, ignore: tuple[str, ...] = ("cache_dir", "train.device", "train.threads")) -> str:
        """A hash of everything that changes results (not where the cache lives or which device runs it)."""
        data = self.to_dict()
        for key, default in LATER_FIELDS.items():
            section, name = key.split(".")
            if data[section].get(name) == default:
                del data[section][name]
        for key in ignore:
            section, _, name = key.partition(".")
            if name:
                data.get(section, {}).pop(name, None)
            else:
                data.pop(section, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- derived sizes
@dataclass(frozen=True)
class DerivedField:
    """`section.name` takes the value of `source` ("frontend.n_mels")."""

    section: str
    name: str
    source: str

    def source_value(self, config: ExperimentConfig) -> Any:
        section, name = self.source.split(".")
        return getattr(getattr(config, section), name)


@functools.cache
def derived_fields() -> tuple[DerivedField, ...]:
    """The fields of ExperimentConfig's sections marked `Derived(...)` in their annotation."""
    rules = []
    for section, cls in _hints(ExperimentConfig).items():
        if dataclasses.is_dataclass(cls):
            for name, hint in _hints(cls).items():
                rules += [DerivedField(section, name, e.source) for e in _extras(hint) if isinstance(e, Derived)]
    return tuple(rules)


def check_derived(data: dict[str, Any], config: ExperimentConfig) -> None:
    """A derived field given in `data` must repeat its source's value: an old file may name it, never change it."""
    for rule in derived_fields():
        section = data.get(rule.section)
        if not isinstance(section, dict) or rule.name not in section:
            continue
        given = _coerce(section[rule.name], _hints(type(getattr(config, rule.section)))[rule.name],
                        f"{rule.section}.{rule.name}")
        expected = rule.source_value(config)
        if given != expected:
            raise ConfigError(
                f"{rule.section}.{rule.name}={given} disagrees with {rule.source}={expected}; it is derived from "
                f"{rule.source}: remove {rule.section}.{rule.name} or set {rule.source}"
            )


# ----------------------------------------------------------------------------------------------- reading
@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _extras(annotation: Any) -> tuple[Any, ...]:
    """The metadata of an Annotated[...] type (Range, Check, Derived), else ()."""
    return annotation.__metadata__ if typing.get_origin(annotation) is Annotated else ()


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the field's type and check its rules, with a message naming the field."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        value = _coerce(value, typing.get_args(annotation)[0], where)
        for extra in _extras(annotation):
            if hasattr(extra, "check"):
                extra.check(value, where)
        return value
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if not isinstance(value, str) or value not in allowed:
            raise ConfigError(f"{where}={value!r} is not one of {', '.join(allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], where)
    if dataclasses.is_dataclass(annotation):
        if value is None:  # a section whose keys are all commented out
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return section_from_dict(annotation, value, where)
    if annotation is bool:
        return _coerce_bool(value, where)
    if annotation in (int, float):
        return _coerce_number(value, annotation, where)
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _coerce_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
        return value.lower() in ("true", "yes", "1", "on")
    raise ConfigError(f"{where}: expected true/false, got {value!r}")


def _coerce_number(value: Any, kind: type, where: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")
    if kind is int and isinstance(value, int):
        return value
    try:
        number = float(value)
    except ValueError as e:
        raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}") from e
    if not math.isfinite(number):
        raise ConfigError(f"{where}={value!r} is out of range; allowed: a finite number")
    if kind is float:
        return number
    if not number.is_integer():
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    return int(number)


def section_from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """One config section (a dataclass) from a mapping: unknown keys are errors, every value is coerced and checked."""
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(known)}")
    hints = _hints(cls)
    keys = {name: f"{where}.{name}" if where else name for name in data}
    return cls(**{name: _coerce(value, hints[name], keys[name]) for name, value in data.items()})


def from_dict(data: dict[str, Any] | None) -> ExperimentConfig:
    """An ExperimentConfig from a mapping (a YAML file's content), every value and rule checked."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(data).__name__}")
    config = section_from_dict(ExperimentConfig, data)
    check_derived(data, config)
    validate(config)
    return config


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML config (a `base:` key names another YAML file it extends), then apply `a.b=value` overrides."""
    data: dict[str, Any] = _read_yaml(Path(path)) if path else {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.epochs=30")
        _set_path(data, key.strip().split("."), _parse_value(item, raw))
    return from_dict(data)


def _parse_value(item: str, raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from e


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise ConfigError(f"{path}: circular 'base:' chain ({chain})")
    if not path.is_file():
        where = f" (the base of {seen[-1]})" if seen else ""
        raise ConfigError(f"config file {path} not found{where}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: 'base:' must name a YAML file, got {base!r}")
    merged = _read_yaml(path.parent / base, seen + (path.resolve(),))
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
        if node is None:
            node = data[key] = {}
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(keys)}: {key} is not a section")
    node[keys[-1]] = value


# ----------------------------------------------------------------------------------------------- validation
def validate(config: ExperimentConfig) -> None:
    """Every field's type, choices and range, then the rules between fields; raises ConfigError naming the key.

    `from_dict` checks the fields as it reads them; this repeats them for configs built or changed in code.
    """
    for section in fields(config):
        value = getattr(config, section.name)
        if dataclasses.is_dataclass(value):
            for name, hint in _hints(type(value)).items():
                _coerce(getattr(value, name), hint, f"{section.name}.{name}")
    for rule in derived_fields():
        value, expected = getattr(getattr(config, rule.section), rule.name), rule.source_value(config)
        if value != expected:
            raise ConfigError(f"{rule.section}.{rule.name}={value} must equal {rule.source}={expected}")
    _validate_frontend(config.frontend)
    _validate_model(config.model)


def _validate_frontend(fe: FrontEndConfig) -> None:
    nyquist = fe.sample_rate / 2
    if fe.win_length > fe.n_fft:
        raise ConfigError(f"frontend.win_length={fe.win_length} must be at most frontend.n_fft={fe.n_fft}")
    if fe.segment_hop > fe.segment_frames:
        raise ConfigError(f"frontend.segment_hop={fe.segment_hop} must be in 1..{fe.segment_frames} "
                          f"(frontend.segment_frames)")
    if fe.train_segment_hop > fe.segment_frames:
        raise ConfigError(f"frontend.train_segment_hop={fe.train_segment_hop} must be 0 (= segment_hop) or in "
                          f"1..{fe.segment_frames} (frontend.segment_frames)")
    if fe.fmin >= nyquist:
        raise ConfigError(f"frontend.fmin={fe.fmin} must be below the Nyquist frequency {nyquist:g} Hz")
    if fe.fmax is not None and not fe.fmin < fe.fmax <= nyquist:
        raise ConfigError(f"frontend.fmax={fe.fmax} must be in ({fe.fmin:g}, {nyquist:g}] "
                          f"(above frontend.fmin, at most the Nyquist frequency)")


def _validate_model(m: ModelConfig) -> None:
    if m.n_mels % m.f_group:
        raise ConfigError(f"model.f_group={m.f_group} must divide frontend.n_mels={m.n_mels}")
    if m.frames % m.t_group:
        raise ConfigError(f"model.t_group={m.t_group} must divide frontend.segment_frames={m.frames}")
    if m.channels % m.heads:
        raise ConfigError(f"model.channels={m.channels} is not divisible by model.heads={m.heads}")
    if m.conv_kernel % 2 == 0:
        raise ConfigError(f"model.conv_kernel={m.conv_kernel} must be odd, so the convolutions keep the length")


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    """The resolved config as YAML (without the derived fields, so the file reads back unchanged)."""
    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(derived=False), sort_keys=False))
