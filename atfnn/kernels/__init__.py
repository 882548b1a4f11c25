"""Fused CPU kernels for the F-Encoder's hot spots, compiled from fencoder.c on first use and called through ctypes.

Called by atfnn/fast.py, the F-Encoder's fast path, and nowhere else. What they replace (docs/performance.md has
the profile and the timings; benchmarks/run.py measures the model with and without them):
- `scalar_attention`: the softmax attention of 1-dimensional queries over 1-dimensional keys and values that
  `atfnn.fast.scalar_self_attention` reduces the F-Encoder's self-attention to. torch's SDPA kernel treats it as
  attention with heads of width 1, which leaves it dominated by blocking overhead; the fused loop recomputes the
  weights in the backward pass from two saved numbers per query.
- `add_dropout_norm`: LayerNorm(h + dropout(y)) over the c channels, the F-Encoder's two add & norm steps, in one
  pass each way (torch runs the mask, the product, the sum and the LayerNorm as separate passes, and its LayerNorm
  kernels are slow on rows of 8 values).

Same function as the torch ops; fp32 rounding differs (tests/test_kernels.py bounds it against float64), and
dropout draws its masks from a counter-based hash seeded from torch's generator, so a seed gives another (equally
random) mask than torch.nn.Dropout would. Used only for fp32 CPU tensors outside tracing and torch.compile; anything
else, a machine without a C compiler, or ATFNN_KERNELS=0 uses the torch ops. By default only the AVX-512 build is
used: on CPUs without AVX-512 the plain-C build is slower than the torch ops (docs/performance.md), which then run
instead unless ATFNN_KERNELS=on (whichever build the CPU gets) or portable (the plain-C loops everywhere). The
shared library is cached under $ATFNN_KERNEL_CACHE (default ~/.cache/atfnn/kernels), keyed by the source, the
compiler flags and the CPU.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

SOURCE = Path(__file__).with_name("fencoder.c")
# -march=native vectorises for this CPU (the cache key includes the CPU); the second set is the fallback for
# compilers or CPUs that refuse it. No -ffast-math: the exp relies on round-to-nearest of 1.5 * 2^23.
FLAG_SETS = (
    ["-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp-simd", "-fno-math-errno", "-std=c99", "-shared",
     "-fPIC"],
    ["-O3", "-fopenmp-simd", "-fno-math-errno", "-std=c99", "-shared", "-fPIC"],
)
MAX_KEYS, MAX_CHANNELS = 1024, 64  # fencoder.c's limits: bands per frame, channels per LayerNorm row
MIN_ROWS_PER_THREAD = 4096  # below this a second thread costs more than it saves
# unset / auto: the AVX-512 build, else torch ops; on: any build; 0 / off: torch ops; portable: the plain-C loops
ENV_SWITCH = "ATFNN_KERNELS"
FASTER_THAN_TORCH = ("AVX-512",)  # the builds `auto` uses

log = logging.getLogger(__name__)
_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_failure: str | None = None
_pool: ThreadPoolExecutor | None = None
_pool_workers = 0
_enabled = True
_p, _i64, _u32, _f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint32, ctypes.c_float
_SIGNATURES = {
    "atfnn_attention_forward": [_i64, _i64, _i64, _i64, _p, _p, _p, _p, _p],
    "atfnn_attention_backward": [_i64, _i64, _i64, _i64, _p, _p, _p, _p, _p, _p, _p, _p],
    "atfnn_add_norm_forward": [_i64, _i64, _i64, _p, _p, _u32, _f32, _u32, _u32, _p, _p, _f32, _p, _p, _p],
    "atfnn_add_norm_backward": [_i64, _i64, _i64, _p, _p, _p, _u32, _f32, _u32, _u32, _p, _p, _p, _p, _p],
    "atfnn_build": [],
}
_CONV_SIGNATURES = {  # AVX-512 builds only
    "atfnn_conv_block_forward": [_i64] * 6 + [_p] * 6,
    "atfnn_conv_block_backward": [_i64] * 6 + [_p] * 10,
}
MAX_CONV_BANDS, MAX_CONV_CHANNELS, MAX_CONV_KERNEL = 512, 64, 15  # beyond these the convolutions stay torch's


def _cache_dir() -> Path:
    if os.environ.get("ATFNN_KERNEL_CACHE"):
        return Path(os.environ["ATFNN_KERNEL_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "atfnn" / "kernels"


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU model and its flags (Linux), else the platform string."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        wanted = [ln for ln in lines if ln.startswith(("model name", "flags", "Features"))]
        return "\n".join(sorted(set(wanted)))
    except OSError:
        return platform.platform() + platform.processor()


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _build() -> ctypes.CDLL:
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc or clang)")
    source = SOURCE.read_bytes()
    errors = []
    portable = os.environ.get(ENV_SWITCH, "").lower() == "portable"
    for flags in FLAG_SETS:
        flags = [*flags, "-DATFNN_PORTABLE"] if portable else flags
        key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(flags).encode(),
                                         _cpu_signature().encode()])).hexdigest()[:16]
        target = _cache_dir() / f"fencoder-{key}.so"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            # Compile to a private name and rename: parallel workers may build at the same time.
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
            os.close(fd)
            result = subprocess.run([compiler, *flags, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True)
            if result.returncode != 0:
                os.unlink(tmp)
                errors.append(f"{compiler} {' '.join(flags)}: {result.stderr.strip()[-500:]}")
                continue
            os.replace(tmp, target)
        library = ctypes.CDLL(str(target))
        for name, argtypes in _SIGNATURES.items():
            getattr(library, name).argtypes = argtypes
            getattr(library, name).restype = None
        library.atfnn_build.restype = ctypes.c_char_p
        for name, argtypes in _CONV_SIGNATURES.items():
            if hasattr(library, name):
                getattr(library, name).argtypes = argtypes
                getattr(library, name).restype = ctypes.c_int
        return library
    raise RuntimeError("compiling atfnn/kernels/fencoder.c failed:\n" + "\n".join(errors))


def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on the first call; None (once logged) where they cannot be built or are off."""
    global _library, _failure
    if _library is not None or _failure is not None:
        return _library
    with _lock:
        if _library is None and _failure is None:
            mode = os.environ.get(ENV_SWITCH, "auto").lower()
            if mode in ("0", "off", "false", "no"):
                _failure = f"{ENV_SWITCH}={os.environ[ENV_SWITCH]}"
            else:
                try:
                    _library = _build()
                except (OSError, RuntimeError) as e:
                    _failure = str(e)
                    log.warning("atfnn: fused CPU kernels unavailable, using torch ops (%s)", e)
            if _library is not None and not worth_using(_library.atfnn_build().decode(), mode):
                _failure = (f"the {_library.atfnn_build().decode()} build is slower than them on this CPU; "
                            f"{ENV_SWITCH}=on uses it")
                _library = None
    return _library


def worth_using(build: str, mode: str) -> bool:
    """Whether a compiled build replaces the torch ops under ATFNN_KERNELS=`mode` (auto, on, portable, 1, ...)."""
    return mode != "auto" or build in FASTER_THAN_TORCH


def status() -> str:
    """One line for benchmark and run headers: whether the fused kernels are in use, and why not."""
    lib = library()
    return f"fused C kernels ({lib.atfnn_build().decode()})" if lib is not None else f"torch ops ({_failure})"


@contextlib.contextmanager
def disabled():
    """Use the torch ops inside this block (benchmarks and tests compare both paths in one process)."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


def usable(*tensors: Tensor) -> bool:
    """Whether the fused kernels may compute on these tensors: fp32 on the CPU, eager mode, kernels built."""
    if not _enabled or torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return False
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors):
        return False
    return library() is not None


def conv_block_usable(h: Tensor, conv1: torch.nn.Conv1d, conv2: torch.nn.Conv1d) -> bool:
    """Whether `conv_block` can run conv2(relu(conv1(h))): `usable`, an AVX-512 build, no autocast (bf16 convolutions
    stay oneDNN's), sizes within the kernel's limits, odd kernels with 'same' zero padding, biases present."""
    if not usable(h, conv1.weight, conv2.weight) or torch.is_autocast_enabled("cpu"):
        return False
    if not hasattr(library(), "atfnn_conv_block_forward"):
        return False
    (c1, c, k), (c2, hidden, k2) = conv1.weight.shape, conv2.weight.shape
    same = all(m.padding == (k // 2,) and m.stride == (1,) and m.dilation == (1,) and m.groups == 1
               and m.padding_mode == "zeros" and m.bias is not None for m in (conv1, conv2))
    return (same and k == k2 and k % 2 == 1 and k <= MAX_CONV_KERNEL and c1 == hidden and c2 == c
            and max(c, hidden) <= MAX_CONV_CHANNELS and h.dim() == 3 and h.shape[1] <= MAX_CONV_BANDS
            and h.shape[2] == c)


def _ptr(t: Tensor) -> int:
    return t.data_ptr()


def _parallel(call, rows: int) -> None:
    """call(row0, count) over [0, rows), split across torch's thread count (ctypes releases the GIL)."""
    global _pool, _pool_workers
    threads = max(1, min(torch.get_num_threads(), rows // MIN_ROWS_PER_THREAD))
    if threads == 1:
        call(0, rows)
        return
    if _pool is None or _pool_workers < threads - 1:  # this thread takes the first share itself
        _pool_workers = threads - 1
        _pool = ThreadPoolExecutor(max_workers=_pool_workers, thread_name_prefix="atfnn-kernel")
    bounds = [rows * i // threads for i in range(threads + 1)]
    futures = [_pool.submit(call, bounds[i], bounds[i + 1] - bounds[i]) for i in range(1, threads)]
    call(bounds[0], bounds[1])
    for future in futures:
        future.result()


def _forget_pool() -> None:
    global _pool, _pool_workers
    _pool, _pool_workers = None, 0  # a forked child has the pool object but not its threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


class _ScalarAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, queries: Tensor, keys: Tensor) -> Tensor:
        n, heads, f = queries.shape
        queries, keys = queries.contiguous(), keys.contiguous()
        m, row_max, row_inv = (torch.empty_like(queries) for _ in range(3))
        lib = library()
        _parallel(lambda r0, k: lib.atfnn_attention_forward(
            r0, k, heads, f, _ptr(queries), _ptr(keys), _ptr(m), _ptr(row_max), _ptr(row_inv)), n)
        ctx.save_for_backward(queries, keys, m, row_max, row_inv)
        return m

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_m: Tensor) -> tuple[Tensor, Tensor]:
        queries, keys, m, row_max, row_inv = ctx.saved_tensors
        n, heads, f = queries.shape
        grad_m = grad_m.contiguous()
        grad_q, grad_k = torch.empty_like(queries), torch.empty_like(keys)
        lib = library()
        _parallel(lambda r0, k: lib.atfnn_attention_backward(
            r0, k, heads, f, _ptr(queries), _ptr(keys), _ptr(m), _ptr(row_max), _ptr(row_inv), _ptr(grad_m),
            _ptr(grad_q), _ptr(grad_k)), n)
        return grad_q, grad_k


def scalar_attention(queries: Tensor, keys: Tensor) -> Tensor:
    """m[n, h, i] = Σ_j softmax_j(queries[n, h, i] keys[n, j]) keys[n, j]; queries (N, H, F), keys (N, F).

    The same as F.scaled_dot_product_attention(q[..., None], k, k, scale=1) with k = keys[:, None, :, None]
    expanded over the heads. fp32 CPU tensors only (see `usable`).
    """
    if queries.dim() != 3 or keys.dim() != 2 or queries.shape[::2] != keys.shape or keys.shape[1] > MAX_KEYS:
        raise ValueError(f"scalar_attention: queries (N, H, F) and keys (N, F) with F <= {MAX_KEYS}, "
                         f"got {tuple(queries.shape)} and {tuple(keys.shape)}")
    return _ScalarAttention.apply(queries, keys)


class _AddDropoutNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, y: Tensor, weight: Tensor, bias: Tensor, p: float, eps: float) -> Tensor:
        c = h.shape[-1]
        rows = h.numel() // c
        h, y, weight, bias = h.contiguous(), y.contiguous(), weight.contiguous(), bias.contiguous()
        out = torch.empty_like(h)
        # The kernel always writes what the backward needs (a branch would keep its loops from vectorising).
        xhat, rstd = torch.empty_like(h), h.new_empty(rows)
        # An element is kept when its 32 mask bits are >= p * 2^32, so P(keep) = 1 - p to within 2^-32. The seed
        # comes from torch's generator, so torch.manual_seed makes a run repeat.
        drop_below = min(int(round(p * 2**32)), 2**32 - 1)
        keep_scale = 1.0 / (1.0 - p)
        seed_mul, seed_add = (torch.randint(0, 2**31, (2,)) * 2 + torch.tensor([1, 0])).tolist() if p > 0 else (1, 0)
        lib = library()
        _parallel(lambda r0, k: lib.atfnn_add_norm_forward(
            r0, k, c, _ptr(h), _ptr(y), drop_below, keep_scale, seed_mul, seed_add, _ptr(weight), _ptr(bias), eps,
            _ptr(out), _ptr(xhat), _ptr(rstd)), rows)
        if any(ctx.needs_input_grad[:4]):  # grad mode is off inside forward; this says whether autograd records
            ctx.save_for_backward(xhat, rstd, weight)
        ctx.mask = (drop_below, keep_scale, seed_mul, seed_add)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        xhat, rstd, weight = ctx.saved_tensors
        c = xhat.shape[-1]
        rows = xhat.numel() // c
        grad_out = grad_out.contiguous()
        grad_h, grad_y = torch.empty_like(xhat), torch.empty_like(xhat)
        lib = library()
        partials: list[tuple[Tensor, Tensor]] = []

        def call(r0: int, k: int) -> None:
            gw, gb = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
            lib.atfnn_add_norm_backward(r0, k, c, _ptr(grad_out), _ptr(xhat), _ptr(rstd), *ctx.mask, _ptr(weight),
                                        _ptr(grad_h), _ptr(grad_y), _ptr(gw), _ptr(gb))
            partials.append((gw, gb))

        _parallel(call, rows)
        grad_w = sum(gw for gw, _ in partials).to(weight.dtype)
        grad_b = sum(gb for _, gb in partials).to(weight.dtype)
        return grad_h, grad_y, grad_w, grad_b, None, None


class _ConvBlock(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
        n, f, c = h.shape
        hidden, _, k = w1.shape
        h, w1, b1, w2, b2 = (t.contiguous() for t in (h, w1, b1, w2, b2))
        y = torch.empty_like(h)
        lib = library()
        _parallel(lambda r0, rows: _check(lib.atfnn_conv_block_forward(
            r0, rows, f, c, hidden, k, _ptr(h), _ptr(w1), _ptr(b1), _ptr(w2), _ptr(b2), _ptr(y))), n)
        ctx.save_for_backward(h, w1, b1, w2)  # the ReLU output is recomputed in the backward, not kept
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor):
        h, w1, b1, w2 = ctx.saved_tensors
        n, f, c = h.shape
        hidden, _, k = w1.shape
        grad_y = grad_y.contiguous()
        grad_h = torch.empty_like(h)
        lib = library()
        partials: list[tuple[Tensor, ...]] = []

        def call(r0: int, rows: int) -> None:
            sums = (w1.new_zeros(w1.shape, dtype=torch.float64), w1.new_zeros(hidden, dtype=torch.float64),
                    w2.new_zeros(w2.shape, dtype=torch.float64), w2.new_zeros(c, dtype=torch.float64))
            _check(lib.atfnn_conv_block_backward(r0, rows, f, c, hidden, k, _ptr(h), _ptr(w1), _ptr(b1), _ptr(w2),
                                                 _ptr(grad_y), _ptr(grad_h), *(_ptr(t) for t in sums)))
            partials.append(sums)

        _parallel(call, n)
        gw1, gb1, gw2, gb2 = (sum(parts).to(h.dtype) for parts in zip(*partials))
        return grad_h, gw1, gb1, gw2, gb2


def _check(status: int) -> None:
    if status != 0:
        raise MemoryError("atfnn.kernels: the convolution kernel could not allocate its scratch buffers")


def conv_block(h: Tensor, conv1: torch.nn.Conv1d, conv2: torch.nn.Conv1d) -> Tensor:
    """conv2(relu(conv1(.))) along the F axis of h (N, F, C) -> (N, F, C), as Conv1d on h.transpose(1, 2);
    only where `conv_block_usable` says so."""
    if not conv_block_usable(h, conv1, conv2):
        raise ValueError(f"conv_block: no fused kernel for h {tuple(h.shape)} with {conv1} and {conv2} "
                         f"(kernels: {status()}); check conv_block_usable first")
    return _ConvBlock.apply(h, conv1.weight, conv1.bias, conv2.weight, conv2.bias)


def add_dropout_norm(h: Tensor, y: Tensor, norm: torch.nn.LayerNorm, p: float) -> Tensor:
    """norm(h + dropout(y, p)) in one pass (p = 0: no dropout, as in evaluation); h, y (..., C), fp32 CPU."""
    c = h.shape[-1]
    if (h.shape != y.shape or tuple(norm.normalized_shape) != (c,) or c > MAX_CHANNELS or not 0 <= p < 1
            or norm.weight is None or h.numel() >= 2**32):
        raise ValueError(f"add_dropout_norm: h and y of one shape (..., C), fewer than 2^32 elements, C = the "
                         f"affine LayerNorm's size <= {MAX_CHANNELS} "
                         f"and 0 <= p < 1, got {tuple(h.shape)}, {tuple(y.shape)}, {tuple(norm.normalized_shape)}, "
                         f"p={p}")
    return _AddDropoutNorm.apply(h, y, norm.weight, norm.bias, float(p), float(norm.eps))
