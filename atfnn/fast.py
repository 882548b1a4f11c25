"""The fast path of atfnn.model: the same function as its plain layers, computed faster (docs/performance.md).

atfnn/model.py is the network as section II describes it; everything here exists for speed only and is reached
through one switch and one dispatch function each:
- `f_encoder(encoder, x)`, taken by `FEncoder.forward` when `FEncoder.use_fast` is on and `applies(encoder)`:
  * the self-attention over the F scalar tokens of a frame is computed as attention of 1-dimensional queries over
    1-dimensional keys and values (`scalar_self_attention`), without the (N, heads, F, F) logits;
  * on fp32 CPU tensors that attention, the two add & norm steps and (AVX-512 builds) the convolution block run
    as fused C kernels (atfnn.kernels; the torch ops where they cannot be built, or inside `kernels.disabled()`);
  * the 1x5 convolutions run on the (B, T, F, C) layout as channels-last 2-D convolutions, without copies;
  * under bf16 autocast only the convolutions run in bf16 (the rest is faster, and more exact, in fp32 on CPUs).
- `lstm_autocast`, the T-Encoder's own autocast (`TEncoder.autocast_dtype`, train.precision=bf16-lstm); where
  torch has no bf16 LSTM for the machine (oneDNN's CPU LSTM needs AVX-512), the Bi-LSTM runs in fp32 instead.

Same parameters and state_dict as the plain layers; tests/test_model_parity.py checks that both paths agree.
"""
from __future__ import annotations

import contextlib
import functools
import math
import warnings
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atfnn import kernels

if TYPE_CHECKING:
    from atfnn.model import FEncoder


def applies(encoder: FEncoder) -> bool:
    """Whether `f_encoder` may replace the plain layers of this call.

    Not while tracing or exporting (the exporters know the plain layers, not the fused kernels), and not in training
    with dropout on the attention weights, which breaks "the weights sum to one" that the scalar form relies on.
    """
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
        return False
    return not (encoder.training and encoder.attention.dropout > 0)


def f_encoder(encoder: FEncoder, x: Tensor) -> Tensor:
    """FEncoder's function (Fig. 2) by the fast path: x (B, F, T) -> x̂ (B, T, F, C)."""
    b, f, t = x.shape
    # Under bf16 autocast only the convolutions run in bf16: the attention over scalars is a softmax of products of
    # raw log-Mel values (bf16 keeps 8 bits of them), and on CPUs the attention and the LayerNorms run slower in bf16.
    with torch.autocast(x.device.type, enabled=False):
        tokens = x.to(encoder.embed.weight.dtype).transpose(1, 2).reshape(b * t, f)  # (B*T, F): F scalars per frame
        fused = kernels.usable(tokens)  # every tensor below has the tokens' dtype and device
        h = encoder.embed(tokens.unsqueeze(-1))  # (B*T, F, C)
        attended = scalar_self_attention(tokens, encoder.embed, encoder.attention, fused)
        h = _add_norm(h, attended, encoder.norm1, encoder, fused)
    y = _convolve(h.view(b, t, f, -1), encoder).reshape(b * t, f, -1)
    with torch.autocast(x.device.type, enabled=False):
        h = _add_norm(h, y.to(h.dtype), encoder.norm2, encoder, fused)
    return h.view(b, t, f, -1)  # (B, T, F, C)


def lstm_autocast(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` for the T-Encoder's Bi-LSTM alone; nothing when None; fp32 where bf16 has no LSTM."""
    wanted = dtype or (torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None)
    if wanted == torch.bfloat16 and not bf16_lstm_runs(device_type):
        return torch.autocast(device_type, enabled=False)
    # Only entered when set: autocast(enabled=False) would switch off an enclosing whole-network autocast.
    return torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@functools.cache
def bf16_lstm_runs(device_type: str) -> bool:
    """Whether torch runs an LSTM under bf16 autocast on this machine; warns once where it does not."""
    lstm = nn.LSTM(1, 1, batch_first=True).to(device_type)
    try:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            lstm(torch.zeros(1, 1, 1, device=device_type))
    except RuntimeError:
        warnings.warn(f"this {device_type.upper()} has no bf16 LSTM kernel (oneDNN's needs AVX-512 on CPUs): "
                      "train.precision bf16/bf16-lstm run the Bi-LSTM in fp32 here", RuntimeWarning, stacklevel=3)
        return False
    return True


def lstm_precision(device_type: str, precision: str) -> str:
    """What the Bi-LSTM computes in under train.precision on this machine (recorded in each fold's done.json)."""
    wanted = {"bf16": "bf16", "bf16-lstm": "bf16", "fp16": "fp16"}.get(precision, "fp32")
    return "fp32" if wanted == "bf16" and not bf16_lstm_runs(device_type) else wanted


def scalar_self_attention(x: Tensor, embed: nn.Linear, attention: nn.MultiheadAttention, fused: bool = False) -> Tensor:
    """attention(embed(x)) for sequences of scalars x (N, F) -> (N, F, C), without the (N, heads, F, F) logits.

    Token j is h_j = x_j w + b, so per head q_i = x_i u_q + p_q and k_j = x_j u_k + p_k, and the logit
    q_i·k_j/√d = x_j (x_i α + β) + (terms without j, which the softmax over j cancels), with α = u_q·u_k/√d,
    β = p_q·u_k/√d. Since v_j = x_j u_v + p_v and the weights sum to one, head n returns m_in u_v + p_v with
    m_in = Σ_j softmax_j(a_in x_j) x_j, a_in = x_i α_n + β_n: attention of 1-dimensional queries (a) over
    1-dimensional keys and values (x). Exact algebra; only the rounding differs from the plain layer. `fused` runs
    that attention as atfnn.kernels' C loop, else as torch's SDPA.
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
    if fused:
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


def _add_norm(h: Tensor, y: Tensor, norm: nn.LayerNorm, encoder: FEncoder, fused: bool) -> Tensor:
    """norm(h + dropout(y)) with the encoder's dropout: one fused pass each way, or the torch layers."""
    if fused:
        return kernels.add_dropout_norm(h, y, norm, encoder.dropout.p if encoder.training else 0.0)
    return norm(h + encoder.dropout(y))


def _convolve(h: Tensor, encoder: FEncoder) -> Tensor:
    """conv2(relu(conv1(.))) along the bands of a frame (default) or the frames of a band; (B, T, F, C) in and out.

    (B, T, F, C) memory is a channels-last (B, C, T, F) image, so both axes are one Conv2d with a 1x5 or 5x1 kernel
    (the Conv1d weights with a unit axis), and no transposes are copied.
    """
    conv1, conv2 = encoder.conv1, encoder.conv2
    k = conv1.kernel_size[0]
    along_f = encoder.conv_axis == "frequency"
    b, t, f, c = h.shape
    if along_f and kernels.conv_block_usable(h.view(b * t, f, c), conv1, conv2):
        # One fused pass each way (AVX-512 builds, fp32, no autocast): the ReLU output is never stored.
        return kernels.conv_block(h.view(b * t, f, c), conv1, conv2).view(b, t, f, c)
    kernel = (lambda w: w.unsqueeze(2)) if along_f else (lambda w: w.unsqueeze(3))  # (out, in, 1, k) / (k, 1)
    padding = (0, k // 2) if along_f else (k // 2, 0)
    y = h.permute(0, 3, 1, 2)  # (B, C, T, F), channels-last
    # In place: conv2d's backward keeps its input, not its output, so ReLU may overwrite it (one buffer less).
    y = F.relu(F.conv2d(y, kernel(conv1.weight), conv1.bias, padding=padding), inplace=True)
    y = F.conv2d(y, kernel(conv2.weight), conv2.bias, padding=padding)
    return y.permute(0, 2, 3, 1)  # (B, T, F, C)
