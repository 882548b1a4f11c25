"""The F-Encoder's fast path (atfnn/fast.py) computes the same function as the plain layers of atfnn/model.py: the
same module is run with `FEncoder.use_fast` on and off, with the fused CPU kernels (atfnn.kernels) and without them.

Same weights in both (one module); logits, attention maps and the gradient of every parameter (and of the input)
are compared.
- float64: fast and plain agree to 1e-10 (the reformulations are exact algebra; only rounding is left).
- float32 on unit-scale input: fast vs plain within RTOL/ATOL (logits, maps) and GRAD_RTOL (gradients).
- float32 on log-Mel-scale input (values around -6 +- 3): the plain path's own fp32 rounding error reaches ~4e-3 of
  a gradient's scale there (the plain attention subtracts large nearly equal logits), so both are compared with the
  plain path in float64 instead, and the fast path must be within GRAD_RTOL of it.
"""
from __future__ import annotations

import contextlib
import copy
import os

import pytest
import torch

from atfnn import fast, kernels
from atfnn.config import ModelConfig
from atfnn.model import VARIANTS, FEncoder, build_model

B, N_CLASSES = 3, 6
# float32: |fast - plain| <= ATOL + RTOL * |plain|, elementwise; gradients are compared relative to their tensor's scale.
RTOL, ATOL = 1e-4, 1e-5
GRAD_RTOL = 1e-4  # of max |grad| of the parameter tensor
TOL64 = 1e-10


@pytest.fixture(autouse=True, params=["fused-kernels", "torch-ops"])
def kernel_path(request):
    """Every comparison runs twice: the fast path with atfnn.kernels (the default on a CPU) and on torch ops alone."""
    if request.param == "torch-ops":
        with kernels.disabled():
            yield request.param
        return
    if not kernels.usable(torch.zeros(1)):
        if os.environ.get("ATFNN_REQUIRE_KERNELS") == "1":
            pytest.fail(f"fused kernels required but unavailable: {kernels.status()}")
        pytest.skip(f"fused kernels unavailable: {kernels.status()}")
    yield request.param


@pytest.fixture(autouse=True)
def _one_thread():
    """Batch-3 models are op-overhead bound: two OpenMP threads only add waits (and stall when the CPU is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def plain(model):
    """Run `model` on its plain layers inside this block: FEncoder.use_fast off on this module only."""
    if model.f_encoder is None:  # ATNN: no F-Encoder, so both paths are the same network
        yield model
        return
    model.f_encoder.use_fast = False
    try:
        yield model
    finally:
        del model.f_encoder.use_fast  # back to the class's default


def _model(cfg: ModelConfig, dtype=torch.float32):
    torch.manual_seed(0)
    return build_model(cfg, N_CLASSES).to(dtype)


def _inputs(cfg: ModelConfig, dtype=torch.float32, log_mel: bool = False) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(B, cfg.n_mels, cfg.frames, dtype=torch.float64)
    return (x * 3 - 6 if log_mel else x).to(dtype)


def _run(model, x):
    """Logits, attention maps and d(fixed random projection of the logits)/d(every parameter, and x)."""
    x = x.clone().requires_grad_(True)
    logits, maps = model.forward_with_attention(x)
    torch.manual_seed(2)
    probe = torch.randn(logits.shape, dtype=torch.float64).to(logits.dtype)
    params = [p for _, p in model.named_parameters()]
    grads = torch.autograd.grad(logits, params + [x], probe, allow_unused=True)
    names = [n for n, _ in model.named_parameters()] + ["input"]
    return logits.detach(), {k: v.detach() for k, v in maps.items()}, dict(zip(names, grads))


def _assert_same(got, want, rtol, atol, grad_rtol):
    (lo, mo, go), (lr, mr, gr) = got, want
    torch.testing.assert_close(lo, lr, rtol=rtol, atol=atol)
    assert mo.keys() == mr.keys()
    for key in mo:
        torch.testing.assert_close(mo[key], mr[key], rtol=rtol, atol=atol)
    assert go.keys() == gr.keys()
    for name in go:
        a, b = go[name], gr[name]
        if a is None or b is None:  # a parameter the logits cannot depend on: both must agree on "none"
            zero = a if b is None else b
            assert zero is None or not zero.abs().max() > 1e-6, name
            continue
        scale = float(b.abs().max())
        err = float((a - b).abs().max())
        assert err <= atol + grad_rtol * scale, f"{name}: max |fast - plain| = {err:.3g}, max |plain| = {scale:.3g}"


def _both_paths(model, x):
    """_run of the fast path, then of the plain path, of the same module."""
    got = _run(model, x)
    with plain(model):
        return got, _run(model, x)


def _spy_fast(monkeypatch) -> list:
    """Record each call of atfnn.fast.f_encoder, the fast path's dispatch."""
    calls, real = [], fast.f_encoder
    monkeypatch.setattr(fast, "f_encoder", lambda encoder, x: calls.append(encoder.training) or real(encoder, x))
    return calls


def test_use_fast_chooses_the_path_at_one_switch(monkeypatch):
    model = _model(ModelConfig(encoder_dropout=0.0))
    x = _inputs(ModelConfig())
    calls = _spy_fast(monkeypatch)
    assert FEncoder.use_fast and model.f_encoder.use_fast  # the default
    model(x)
    assert calls == [True]
    with plain(model):
        model(x)
    assert calls == [True], "with use_fast off the plain layers must run"
    model(x)
    assert calls == [True, True], "the switch is back on after the block"
    torch.jit.trace(model.f_encoder.eval(), x, check_trace=False)
    assert calls == [True, True], "tracing (ONNX export) must record the plain layers"


@pytest.mark.parametrize("variant", VARIANTS)
def test_float32_logits_maps_and_gradients_match_the_plain_path(variant):
    cfg = ModelConfig(variant=variant, encoder_dropout=0.0)
    _assert_same(*_both_paths(_model(cfg), _inputs(cfg)), RTOL, ATOL, GRAD_RTOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_float64_agreement_is_exact_up_to_rounding(variant):
    """In float64 only rounding at ~1e-16 is left: any algebra slip in the reformulations would show here."""
    cfg = ModelConfig(variant=variant, encoder_dropout=0.0)
    model = _model(cfg, torch.float64)
    _assert_same(*_both_paths(model, _inputs(cfg, torch.float64, log_mel=True)), 0.0, TOL64, 0.0)


@pytest.mark.parametrize("variant", ["atfnn", "tfnn"])
def test_float32_on_log_mel_scale_is_within_tolerance_of_the_float64_plain_path(variant):
    cfg = ModelConfig(variant=variant, encoder_dropout=0.0)
    model = _model(cfg)
    with plain(copy.deepcopy(model).double()) as model64:
        truth = _run(model64, _inputs(cfg, torch.float64, log_mel=True))
    got = _run(model, _inputs(cfg, log_mel=True))
    as64 = (got[0].double(), {k: v.double() for k, v in got[1].items()}, {k: v.double() for k, v in got[2].items()})
    _assert_same(as64, truth, RTOL, ATOL, GRAD_RTOL)


@pytest.mark.parametrize(
    "overrides",
    [
        {"conv_axis": "time"},
        {"heads": 4, "attention_activation": "softmax", "head": "mlp"},
        {"heads": 1, "channels": 4, "conv_channels": 16, "lstm_layers": 1, "lstm_hidden": 16},
        {"t_attention_input": "encoding"},
    ],
    ids=["conv-time", "4-heads-softmax-mlp", "1-head-small", "t-attention-from-encoding"],
)
def test_other_configurations_match_the_plain_path(overrides):
    cfg = ModelConfig(encoder_dropout=0.0, **overrides)
    _assert_same(*_both_paths(_model(cfg), _inputs(cfg)), RTOL, ATOL, GRAD_RTOL)


def test_eval_mode_and_no_grad_inference_match_the_plain_path():
    """Default config (dropout 0.1) in eval mode, under inference_mode as atfnn.inference runs it."""
    model = _model(ModelConfig()).eval()
    x = _inputs(ModelConfig(), log_mel=True)
    with torch.inference_mode():
        fast_out = model(x)
        with plain(model):
            torch.testing.assert_close(fast_out, model(x), rtol=RTOL, atol=ATOL)


def test_attention_dropout_falls_back_to_the_plain_layers_in_training_only(monkeypatch):
    """Dropout on attention weights breaks the scalar form's algebra: training must run the plain layers."""
    model = _model(ModelConfig(variant="afnn", encoder_dropout=0.0, attention_dropout=0.5))
    x = _inputs(ModelConfig())
    calls = _spy_fast(monkeypatch)
    torch.manual_seed(5)
    out = model(x)
    with plain(model):
        torch.manual_seed(5)
        torch.testing.assert_close(out, model(x), rtol=0, atol=0)  # the same layers draw the same mask
    assert calls == []
    model.eval()
    fast_out = model(x)
    assert calls == [False], "in eval there is no dropout, so the fast path applies again"
    with plain(model):
        torch.testing.assert_close(fast_out, model(x), rtol=RTOL, atol=ATOL)
