"""ATFNN (section II of the paper) and its Table III ablations, as nn.Modules.

Shapes: B batch, F mel bands (80), T frames (128), C channels (c = 8), G groups. The paper writes x̂ ∈ R^{f×t×c};
inside the network the encodings are kept frame-major, (B, T, F, C), because the T-Encoder reads one frame per step.
Every choice the paper leaves open is a `ModelConfig` field; docs/model.md quotes the paper beside each.

The layers below are the network. The F-Encoder is computed faster by atfnn/fast.py (an exact reformulation and
fused C kernels; same parameters, same function) wherever `FEncoder.use_fast` is on and the fast form applies.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atfnn import fast
from atfnn.config import ModelConfig
from atfnn.errors import ConfigError

VARIANTS = ("atfnn", "tfnn", "afnn", "atnn")
T_ATTENTION_INPUTS = ("x", "encoding")  # model.t_attention_input: II-B.2 and Fig. 4, or eq. (4) as printed
# model.embedding_norm="speaker": BatchNorm's epsilon and momentum for the per-speaker standardisation of h'.
SPEAKER_NORM_EPS = 1e-5
SPEAKER_NORM_MOMENTUM = 0.1
# Which parts each network of Table III has: (F-Attention, F-Encoder, T-Attention, T-Encoder).
PARTS = {
    "atfnn": (True, True, True, True),
    "tfnn": (False, True, False, True),
    "afnn": (True, True, False, False),
    "atnn": (False, False, True, True),
}


def _activate(scores: Tensor, kind: str, group_dim: int) -> Tensor:
    if kind == "sigmoid":
        return torch.sigmoid(scores)
    if kind == "softmax":  # weights of the groups of one frame (or band) sum to one
        return torch.softmax(scores, dim=group_dim)
    if kind == "tanh":
        return torch.tanh(scores)
    return scores


class FAttention(nn.Module):
    """Eq. (1): x' = x ⊕ (1/c Σ_m a_m ⊗ x), one weight per group of 5 bands of each frame, from a 5x1 convolution."""

    def __init__(self, channels: int = 8, group: int = 5, activation: str = "sigmoid"):
        super().__init__()
        self.group, self.activation = group, activation
        self.conv = nn.Conv2d(1, channels, kernel_size=(group, 1), stride=(group, 1))

    def weights(self, x: Tensor) -> Tensor:
        """x (B, F, T) -> group weights (B, F/5, T), averaged over the c channels."""
        a = _activate(self.conv(x.unsqueeze(1)), self.activation, group_dim=2)  # (B, C, F/5, T)
        return a.mean(dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a = self.weights(x).repeat_interleave(self.group, dim=1)  # (B, F, T): 5 bands share a weight
        return x * (1 + a), a  # = x ⊕ (a ⊗ x)


class FEncoder(nn.Module):
    """Fig. 2, x̂ = Fe(x): linear 1 -> c, self-attention across bands, add & norm, two 1x5 convolutions, add & norm."""

    # atfnn/fast.py computes this module's function faster where it applies; False (on a module or the class) runs
    # the layers below everywhere, as the parity tests and the benchmarks' reference do.
    use_fast = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c, k = cfg.channels, cfg.conv_kernel
        self.conv_axis = cfg.conv_axis
        self.embed = nn.Linear(1, c)
        self.attention = nn.MultiheadAttention(c, cfg.heads, dropout=cfg.attention_dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(c)
        self.conv1 = nn.Conv1d(c, cfg.conv_channels, k, padding=k // 2)
        self.conv2 = nn.Conv1d(cfg.conv_channels, c, k, padding=k // 2)
        self.norm2 = nn.LayerNorm(c)
        self.dropout = nn.Dropout(cfg.encoder_dropout)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, F, T) -> x̂ (B, T, F, C); self-attention over the F bands of each frame, without positions."""
        if self.use_fast and fast.applies(self):
            return fast.f_encoder(self, x)
        b, f, t = x.shape
        h = self.embed(x.transpose(1, 2).reshape(b * t, f, 1))  # (B*T, F, C): one sequence of F tokens per frame
        attended, _ = self.attention(h, h, h, need_weights=False)
        h = self.norm1(h + self.dropout(attended))
        y = self._convolve(h.view(b, t, f, -1))
        h = self.norm2(h + self.dropout(y.reshape(b * t, f, -1)))
        return h.view(b, t, f, -1)  # (B, T, F, C)

    def _convolve(self, h: Tensor) -> Tensor:
        """conv2(relu(conv1(.))) along the bands of a frame (default) or the frames of a band; (B, T, F, C) in/out."""
        b, t, f, c = h.shape
        if self.conv_axis == "frequency":
            y = self.conv2(F.relu(self.conv1(h.reshape(b * t, f, c).transpose(1, 2))))  # (B*T, C, F)
            return y.transpose(1, 2).reshape(b, t, f, c)
        y = self.conv2(F.relu(self.conv1(h.permute(0, 2, 3, 1).reshape(b * f, c, t))))  # (B*F, C, T)
        return y.reshape(b, f, c, t).permute(0, 3, 1, 2)


class TAttention(nn.Module):
    """Eq. (2): x̂'' = x̂' ⊕ (1/c Σ_n a_n ⊗ x̂'), one weight per group of 8 frames of each band, from x or x̂'."""

    # The weights come from x as II-B.2 and Fig. 4 say (in_channels 1), or from x̂' as eq. (4) prints it, Ta(x̂')
    # (model.t_attention_input="encoding": in_channels c, the "kernel size (1 × 8 × c)" of II-B.2).
    def __init__(self, channels: int = 8, group: int = 8, activation: str = "sigmoid", in_channels: int = 1):
        super().__init__()
        self.group, self.activation = group, activation
        self.conv = nn.Conv2d(in_channels, channels, kernel_size=(1, group), stride=(1, group))

    def weights(self, source: Tensor) -> Tensor:
        """x (B, F, T) or x̂' (B, T, F, C) -> group weights (B, F, T/8), averaged over the c channels."""
        image = source.unsqueeze(1) if source.dim() == 3 else source.permute(0, 3, 2, 1)  # (B, 1 or C, F, T)
        a = _activate(self.conv(image), self.activation, group_dim=3)  # (B, C, F, T/8)
        return a.mean(dim=1)

    def forward(self, source: Tensor, encoding: Tensor) -> tuple[Tensor, Tensor]:
        """Weights from `source` (see `weights`), applied to the encoding (B, T, F, C) -> (B, T, F, C), (B, F, T)."""
        a = self.weights(source).repeat_interleave(self.group, dim=2)  # (B, F, T): 8 frames share a weight
        scale = 1 + a.transpose(1, 2).unsqueeze(-1)  # (B, T, F, 1), broadcast over the c channels
        return encoding * scale, a  # = x̂' ⊕ (a ⊗ x̂')


class TEncoder(nn.Module):
    """II-A.2: 3-layer Bi-LSTM over frames, h = [last forward, last backward state]; (B, T, D) -> (B, 2*hidden)."""

    def __init__(self, input_size: int, hidden: int = 128, layers: int = 3, dropout: float = 0.0):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden, layers, batch_first=True, bidirectional=True, dropout=dropout)
        # train.precision=bf16-lstm sets torch.bfloat16: the Bi-LSTM alone autocasts to it and h comes back in fp32.
        self.autocast_dtype: torch.dtype | None = None

    def forward(self, x: Tensor) -> Tensor:
        with fast.lstm_autocast(x.device.type, self.autocast_dtype):
            if not torch.is_autocast_enabled(x.device.type):  # also where fast.lstm_autocast fell back to fp32
                x = x.to(self.lstm.weight_ih_l0.dtype)
            _, (h_n, _) = self.lstm(x)
        h = torch.cat([h_n[-2], h_n[-1]], dim=1)  # h_n (layers * 2, B, hidden): the top layer's last states (B, 256)
        return h if self.autocast_dtype is None else h.float()


class SpeakerNorm(nn.Module):
    """Not in the paper: h' standardised per speaker, dimension by dimension (AdaBN, Li et al. 2016, with speakers
    as domains). With `speakers` (one index per row), each speaker's rows use their own mean and population variance,
    so what the classifier sees is h' relative to that voice's average; training also folds the mean of the speakers'
    statistics into running estimates. Without `speakers` (one file at prediction time) the running estimates apply.
    h (N, D) -> (N, D), in fp32."""

    def __init__(self, features: int):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))

    def forward(self, h: Tensor, speakers: Tensor | None = None) -> Tensor:
        # Statistics in fp32 even under bf16 autocast, which would round the matrix products below to 8 bits.
        with torch.autocast(h.device.type, enabled=False):
            return self._standardise(h.float(), speakers)

    def _standardise(self, h: Tensor, speakers: Tensor | None) -> Tensor:
        if speakers is None:
            return (h - self.running_mean) / torch.sqrt(self.running_var + SPEAKER_NORM_EPS)
        groups = F.one_hot(speakers.to(h.device), int(speakers.max()) + 1).to(h.dtype)  # (N, S)
        counts = groups.sum(dim=0)  # (S,); clamped below so absent speakers give 0, not 0/0, in either pass
        mean = (groups.t() @ h) / counts.clamp(min=1)[:, None]  # (S, D)
        centred = h - mean[speakers]
        var = (groups.t() @ centred.square()) / counts.clamp(min=1)[:, None]
        if self.training:
            present = counts > 0
            with torch.no_grad():
                self.running_mean.lerp_(mean[present].mean(dim=0), SPEAKER_NORM_MOMENTUM)
                self.running_var.lerp_(var[present].mean(dim=0), SPEAKER_NORM_MOMENTUM)
        return centred / torch.sqrt(var[speakers] + SPEAKER_NORM_EPS)


class ATFNN(nn.Module):
    """Eq. (3), (4) and a classifier: h' = Te(Fe(x ⊕ Fa(x)) ⊕ Ta(x or x̂')), logits = classifier(h')."""

    variant = "atfnn"

    def __init__(self, num_classes: int, config: ModelConfig | None = None):
        super().__init__()
        cfg = config or ModelConfig(variant=self.variant)
        if cfg.variant != self.variant:
            raise ConfigError(f"{type(self).__name__} built with model.variant={cfg.variant!r}; use build_model()")
        if cfg.t_attention_input not in T_ATTENTION_INPUTS:
            raise ConfigError(f"model.t_attention_input={cfg.t_attention_input!r}; choose from "
                              f"{', '.join(T_ATTENTION_INPUTS)}")
        self.config, self.num_classes = cfg, num_classes
        has_fa, has_fe, has_ta, has_te = PARTS[self.variant]
        c = cfg.channels
        self.f_attention = FAttention(c, cfg.f_group, cfg.attention_activation) if has_fa else None
        self.f_encoder = FEncoder(cfg) if has_fe else None
        # Ta(x̂') reads the c channels of the F-Encoder's output; without an F-Encoder (ATNN) x̂' is x itself.
        t_source_channels = c if cfg.t_attention_input == "encoding" and has_fe else 1
        self.t_attention = TAttention(c, cfg.t_group, cfg.attention_activation, t_source_channels) if has_ta else None
        frame_size = cfg.n_mels * (c if has_fe else 1)
        self.t_encoder = TEncoder(frame_size, cfg.lstm_hidden, cfg.lstm_layers, cfg.lstm_dropout) if has_te else None
        self.embedding_size = 2 * cfg.lstm_hidden if has_te else frame_size
        self.speaker_norm = SpeakerNorm(self.embedding_size) if cfg.embedding_norm == "speaker" else None
        self.classifier = _classifier(self.embedding_size, num_classes, cfg)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, F, T) or (B, 1, F, T) log-Mel segments -> logits (B, num_classes)."""
        return self.forward_with_attention(x)[0]

    def forward_with_attention(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and the attention maps of this pass, each (B, F, T) and broadcast over its groups (Fig. 6)."""
        h, maps = self.embed(x)
        return self.classify(h), maps

    def classify(self, h: Tensor, speakers: Tensor | None = None) -> Tensor:
        """h' (B, embedding_size) -> logits; `speakers` (B,) groups the rows for model.embedding_norm="speaker"."""
        if self.speaker_norm is not None:
            h = self.speaker_norm(h, speakers)
        return self.classifier(h)

    def embed(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The encoding the classifier reads, h' (B, embedding_size), and the attention maps of this pass."""
        if x.dim() == 4 and x.shape[1] == 1:
            x = x.squeeze(1)
        if x.dim() != 3 or x.shape[1:] != (self.config.n_mels, self.config.frames):
            raise ValueError(
                f"expected log-Mel segments (batch, {self.config.n_mels}, {self.config.frames}), got {tuple(x.shape)}"
            )
        maps: dict[str, Tensor] = {}
        h = x
        if self.f_attention is not None:
            h, maps["f"] = self.f_attention(h)  # x' (B, F, T)
        if self.f_encoder is not None:
            h = self.f_encoder(h)  # x̂' (B, T, F, C)
        else:
            h = h.transpose(1, 2).unsqueeze(-1)  # (B, T, F, 1)
        if self.t_attention is not None:
            source = x if self.config.t_attention_input == "x" else h  # Fig. 4, or Ta(x̂') of eq. (4)
            h, maps["t"] = self.t_attention(source, h)  # x̂'' (B, T, F, C)
        if self.t_encoder is not None:
            h = self.t_encoder(h.flatten(2))  # (B, T, F*C) -> h' (B, 256)
        else:
            pooled = h.mean(dim=1) if self.config.afnn_pool == "mean" else h.amax(dim=1)
            h = pooled.flatten(1)  # (B, F*C)
        return h, maps


class TFNN(ATFNN):
    """Table III: F-Encoder + T-Encoder, no attention: h = Te(Fe(x))."""

    variant = "tfnn"


class AFNN(ATFNN):
    """Table III: F-Attention + F-Encoder, no T-Encoder; x̂' = Fe(x ⊕ Fa(x)) averaged over frames -> classifier."""

    variant = "afnn"


class ATNN(ATFNN):
    """Table III: T-Attention + T-Encoder on x (one channel, 80 values per frame), no F-Encoder."""

    variant = "atnn"


MODELS: dict[str, type[ATFNN]] = {"atfnn": ATFNN, "tfnn": TFNN, "afnn": AFNN, "atnn": ATNN}


def _classifier(features: int, num_classes: int, cfg: ModelConfig) -> nn.Module:
    if cfg.head == "linear":
        return nn.Sequential(nn.Dropout(cfg.head_dropout), nn.Linear(features, num_classes))
    hidden = max(num_classes, features // 2)
    return nn.Sequential(
        nn.Linear(features, hidden), nn.ReLU(), nn.Dropout(cfg.head_dropout), nn.Linear(hidden, num_classes)
    )


def build_model(config: ModelConfig, num_classes: int) -> ATFNN:
    """The network of Table III named by `config.variant`."""
    if config.variant not in MODELS:
        raise ConfigError(f"Unknown model variant {config.variant!r}; available: {', '.join(MODELS)}")
    return MODELS[config.variant](num_classes, config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
