"""ATFNN (section II of the paper) and its Table III ablations, as nn.Modules.

Shapes: B batch, F mel bands (80), T frames (128), C channels (c = 8), G groups. The paper writes x̂ ∈ R^{f×t×c};
inside the network the encodings are kept frame-major, (B, T, F, C), because the T-Encoder reads one frame per step.
Every choice the paper leaves open is a `ModelConfig` field; docs/model.md quotes the paper beside each.

The F-Encoder is computed by an exact reformulation (same function, same parameters and state_dict as the plain
layers; docs/performance.md has the derivation and timings, tests/test_model_parity.py checks the equivalence):
its self-attention reads one scalar per band, so its softmax depends only on scalars (`_scalar_self_attention`)
instead of 80x80 attention over 4-dimensional heads, and its 1x5 convolutions run on the (B, T, F, C) layout as
channels-last 2-D convolutions, without transposed copies. The plain attention layer still runs where the shortcut
does not apply (ONNX export and tracing, dropout on the attention weights). On fp32 CPU tensors the scalar attention,
the two add & norm steps and (on AVX-512 CPUs) the convolution block run as fused C kernels (atfnn.kernels; torch
ops where they cannot be built).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atfnn import kernels
from atfnn.config import ModelConfig
from atfnn.errors import ConfigError

VARIANTS = ("atfnn", "tfnn", "afnn", "atnn")
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


# The dtype the T-Encoder's Bi-LSTM autocasts to under `t_encoder_autocast` (train.precision=bf16-lstm), else None.
_T_ENCODER_DTYPE: contextvars.ContextVar[torch.dtype | None] = contextvars.ContextVar("t_encoder_dtype", default=None)


@contextlib.contextmanager
def t_encoder_autocast(dtype: torch.dtype) -> Iterator[None]:
    """Autocast for the T-Encoder's Bi-LSTM only (train.precision=bf16-lstm): everything before it stays fp32 (and
    on the fused kernels), and the encoding it returns is fp32."""
    token = _T_ENCODER_DTYPE.set(dtype)
    try:
        yield
    finally:
        _T_ENCODER_DTYPE.reset(token)


def _activate(scores: Tensor, kind: str, group_dim: int) -> Tensor:
    if kind == "sigmoid":
        return torch.sigmoid(scores)
    if kind == "softmax":  # weights of the groups of one frame (or band) sum to one
        return torch.softmax(scores, dim=group_dim)
    if kind == "tanh":
        return torch.tanh(scores)
    return scores


def _exporting() -> bool:
    """Tracing (ONNX export, torch.jit.trace) records the plain layers, which every exporter knows."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()


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
        return x * (1 + a), a  # = x + a x, one pass over x fewer each way


def _scalar_self_attention(x: Tensor, embed: nn.Linear, attention: nn.MultiheadAttention) -> Tensor:
    """attention(embed(x)) for sequences of scalars x (N, F) -> (N, F, C), without the (N, heads, F, F) logits.

    Token j is h_j = x_j w + b, so per head q_i = x_i u_q + p_q and k_j = x_j u_k + p_k, and the logit
    q_i·k_j/√d = x_j (x_i α + β) + (terms without j, which the softmax over j cancels), with α = u_q·u_k/√d,
    β = p_q·u_k/√d. Since v_j = x_j u_v + p_v and the weights sum to one, head n returns m_in u_v + p_v with
    m_in = Σ_j softmax_j(a_in x_j) x_j, a_in = x_i α_n + β_n: attention of 1-dimensional queries (a) over
    1-dimensional keys and values (x). Exact algebra; only the fp32 rounding differs from the plain layer.
    """
    n, f = x.shape
    c, heads = attention.embed_dim, attention.num_heads
    d = c // heads
    w, b = embed.weight[:, 0], embed.bias  # (C,), (C,)
    u = attention.in_proj_weight @ w  # (3C,): the q, k, v of a token per unit of x
    p = attention.in_proj_weight @ b + attention.in_proj_bias  # (3C,): ... and at x = 0
    u_q, u_k, u_v = u.view(3, heads, d).unbind(0)
    p_q, _, p_v = p.view(3, heads, d).unbind(0)
    alpha, beta = (u_q * u_k).sum(-1) / math.sqrt(d), (p_q * u_k).sum(-1) / math.sqrt(d)  # (H,)
    queries = torch.addcmul(beta[:, None], x[:, None, :], alpha[:, None])  # (N, H, F)
    # Centring the keys leaves the softmax unchanged and keeps the products a·x small (better fp32 rounding);
    # the centre is a constant for autograd, which is exact because the result does not depend on it.
    centre = x.mean(dim=1, keepdim=True).detach()
    keys = x - centre  # (N, F)
    if kernels.usable(queries, keys):
        m = kernels.scalar_attention(queries, keys)  # (N, H, F)
    else:
        k = keys[:, None, :, None].expand(n, heads, f, 1)
        m = F.scaled_dot_product_attention(queries.unsqueeze(-1), k, k, scale=1.0).squeeze(-1)  # (N, H, F)
    m = m + centre[:, None, :]
    # Output projection of [m_in u_v + p_v]_n: m (N, F, H) @ Z (H, C) + z0.
    w_o = attention.out_proj.weight.view(c, heads, d)  # columns grouped by head
    z = torch.einsum("chd,hd->hc", w_o, u_v)
    z0 = attention.out_proj.weight @ p_v.reshape(c) + attention.out_proj.bias
    return torch.addmm(z0, m.transpose(1, 2).reshape(n * f, heads), z).view(n, f, c)


class FEncoder(nn.Module):
    """Fig. 2: linear 1 -> c, self-attention across the bands of each frame (no positions), add & norm,
    two 1x5 convolutions (32 and c channels), add & norm. x (B, F, T) -> x̂ (B, T, F, C)."""

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
        b, f, t = x.shape
        # Under bf16 autocast only the convolutions run in bf16: the attention over scalars is a softmax of
        # products of raw log-Mel values (bf16 keeps 8 bits of them), and on CPUs the attention kernel and the
        # LayerNorms run slower in bf16 than in fp32 (docs/performance.md).
        with torch.autocast(x.device.type, enabled=False):
            tokens = x.to(self.embed.weight.dtype).transpose(1, 2).reshape(b * t, f)  # F scalars per frame
            h = self.embed(tokens.unsqueeze(-1))  # (B*T, F, C)
            h = self._add_norm(h, self._attend(tokens, h), self.norm1)
        y = self._convolve(h.view(b, t, f, -1)).reshape(b * t, f, -1)
        with torch.autocast(x.device.type, enabled=False):
            h = self._add_norm(h, y.to(h.dtype), self.norm2)
        return h.view(b, t, f, -1)  # (B, T, F, C)

    def _add_norm(self, h: Tensor, y: Tensor, norm: nn.LayerNorm) -> Tensor:
        """norm(h + dropout(y)): one fused pass on fp32 CPU tensors (atfnn.kernels), else the torch layers."""
        if kernels.usable(h, y):
            return kernels.add_dropout_norm(h, y, norm, self.dropout.p if self.training else 0.0)
        return norm(h + self.dropout(y))

    def _attend(self, tokens: Tensor, h: Tensor) -> Tensor:
        # Dropout on the attention weights breaks "weights sum to one", which the shortcut relies on.
        if _exporting() or (self.training and self.attention.dropout > 0):
            return self.attention(h, h, h, need_weights=False)[0]
        return _scalar_self_attention(tokens, self.embed, self.attention)

    def _convolve(self, h: Tensor) -> Tensor:
        """The 1x5 convolutions along the bands of a frame (default) or the frames of a band; (B, T, F, C) in/out.

        (B, T, F, C) memory is a channels-last (B, C, T, F) image, so both axes are one Conv2d with a 1x5 or 5x1
        kernel (the Conv1d weights with a unit axis), and no transposes are copied.
        """
        k = self.conv1.kernel_size[0]
        along_f = self.conv_axis == "frequency"
        b, t, f, c = h.shape
        if along_f and kernels.conv_block_usable(h.view(b * t, f, c), self.conv1, self.conv2):
            # One fused pass each way (AVX-512 CPUs, fp32): the ReLU output is never stored (atfnn.kernels).
            return kernels.conv_block(h.view(b * t, f, c), self.conv1, self.conv2).view(b, t, f, c)
        kernel = (lambda w: w.unsqueeze(2)) if along_f else (lambda w: w.unsqueeze(3))  # (out, in, 1, k) / (k, 1)
        padding = (0, k // 2) if along_f else (k // 2, 0)
        y = h.permute(0, 3, 1, 2)  # (B, C, T, F), channels-last
        # In place: conv2d's backward keeps its input, not its output, so ReLU may overwrite it (one buffer less).
        y = F.relu(F.conv2d(y, kernel(self.conv1.weight), self.conv1.bias, padding=padding), inplace=True)
        y = F.conv2d(y, kernel(self.conv2.weight), self.conv2.bias, padding=padding)
        return y.permute(0, 2, 3, 1)  # (B, T, F, C)


class TAttention(nn.Module):
    """Eq. (2): x̂'' = x̂' ⊕ (1/c Σ_n a_n ⊗ x̂'), one weight per group of 8 frames of each band, computed from x."""

    def __init__(self, channels: int = 8, group: int = 8, activation: str = "sigmoid"):
        super().__init__()
        self.group, self.activation = group, activation
        self.conv = nn.Conv2d(1, channels, kernel_size=(1, group), stride=(1, group))

    def weights(self, x: Tensor) -> Tensor:
        """x (B, F, T) -> group weights (B, F, T/8), averaged over the c channels."""
        a = _activate(self.conv(x.unsqueeze(1)), self.activation, group_dim=3)  # (B, C, F, T/8)
        return a.mean(dim=1)

    def forward(self, x: Tensor, encoding: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, F, T), encoding (B, T, F, C) -> (B, T, F, C) and the weights (B, F, T)."""
        a = self.weights(x).repeat_interleave(self.group, dim=2)  # (B, F, T): 8 frames share a weight
        scale = 1 + a.transpose(1, 2).unsqueeze(-1)  # (B, T, F, 1), broadcast over the c channels
        return encoding * scale, a  # = encoding + a encoding, one pass over the encoding fewer each way


class TEncoder(nn.Module):
    """3-layer Bi-LSTM over frames; h = [last forward state, last backward state]. (B, T, D) -> (B, 2*hidden)."""

    def __init__(self, input_size: int, hidden: int = 128, layers: int = 3, dropout: float = 0.0):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden, layers, batch_first=True, bidirectional=True, dropout=dropout)

    def forward(self, x: Tensor) -> Tensor:
        dtype = _T_ENCODER_DTYPE.get()
        # Only entered when set: autocast(enabled=False) would switch off an enclosing whole-model autocast.
        with torch.autocast(x.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
            _, (h_n, _) = self.lstm(x)  # h_n (layers * 2, B, hidden); the last two are the top layer's directions
        h = torch.cat([h_n[-2], h_n[-1]], dim=1)
        return h.float() if dtype is not None else h


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
    """Eq. (4) plus a classifier: h' = Te(Fe(x ⊕ Fa(x)) ⊕ Ta(x)), logits = classifier(h'). Subclasses drop parts."""

    variant = "atfnn"

    def __init__(self, num_classes: int, config: ModelConfig | None = None):
        super().__init__()
        cfg = config or ModelConfig(variant=self.variant)
        if cfg.variant != self.variant:
            raise ConfigError(f"{type(self).__name__} built with model.variant={cfg.variant!r}; use build_model()")
        self.config, self.num_classes = cfg, num_classes
        has_fa, has_fe, has_ta, has_te = PARTS[self.variant]
        c = cfg.channels
        self.f_attention = FAttention(c, cfg.f_group, cfg.attention_activation) if has_fa else None
        self.f_encoder = FEncoder(cfg) if has_fe else None
        self.t_attention = TAttention(c, cfg.t_group, cfg.attention_activation) if has_ta else None
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
            h, maps["t"] = self.t_attention(x, h)  # x̂'' (B, T, F, C), T-Attention computed from x
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
