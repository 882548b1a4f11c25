"""The optimised atfnn.model computes the same function as the plain reference (benchmarks/reference_model.py),
with the fused CPU kernels (atfnn.kernels) and without them.

Same state_dict in both; logits, attention maps and the gradient of every parameter (and of the input) are compared.
- float64: optimised and reference agree to 1e-10 (the reformulations are exact algebra; only rounding is left).
- float32 on unit-scale input: optimised vs reference within RTOL/ATOL (logits, maps) and GRAD_RTOL (gradients).
- float32 on log-Mel-scale input (values around -6 +- 3): the reference's own fp32 rounding error reaches ~4e-3 of a
  gradient's scale there (the plain attention subtracts large nearly equal logits), so both are compared with the
  float64 reference instead, and the optimised model must be within GRAD_RTOL of it.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from atfnn import kernels
from atfnn.config import ModelConfig
from atfnn.model import VARIANTS, build_model

REFERENCE = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_model.py"
B, N_CLASSES = 3, 6
# float32: |opt - ref| <= ATOL + RTOL * |ref|, elementwise; gradients are compared relative to their tensor's scale.
RTOL, ATOL = 1e-4, 1e-5
GRAD_RTOL = 1e-4  # of max |grad| of the parameter tensor
TOL64 = 1e-10


def _reference():
    spec = importlib.util.spec_from_file_location("atfnn_reference_model", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference():
    return _reference()


@pytest.fixture(autouse=True, params=["fused-kernels", "torch-ops"])
def kernel_path(request):
    """Every comparison runs twice: with atfnn.kernels (the default on a CPU) and on torch ops alone."""
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


def _pair(reference, cfg: ModelConfig, dtype=torch.float32):
    torch.manual_seed(0)
    model = build_model(cfg, N_CLASSES).to(dtype)
    ref = reference.build_model(cfg, N_CLASSES).to(dtype)
    ref.load_state_dict(model.state_dict())  # strict: keys and shapes are the reference's
    return model, ref


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


def _assert_same(opt, ref, rtol, atol, grad_rtol):
    (lo, mo, go), (lr, mr, gr) = opt, ref
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
        assert err <= atol + grad_rtol * scale, f"{name}: max |opt - ref| = {err:.3g}, max |ref| = {scale:.3g}"


def test_state_dict_keys_and_shapes_are_the_reference_ones(reference):
    for variant in VARIANTS:
        cfg = ModelConfig(variant=variant)
        model, ref = build_model(cfg, N_CLASSES), reference.build_model(cfg, N_CLASSES)
        assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_float32_logits_maps_and_gradients_match_reference(reference, variant):
    cfg = ModelConfig(variant=variant, encoder_dropout=0.0)
    model, ref = _pair(reference, cfg)
    x = _inputs(cfg)
    _assert_same(_run(model, x), _run(ref, x), RTOL, ATOL, GRAD_RTOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_float64_agreement_is_exact_up_to_rounding(reference, variant):
    """In float64 only rounding at ~1e-16 is left: any algebra slip in the reformulations would show here."""
    cfg = ModelConfig(variant=variant, encoder_dropout=0.0)
    model, ref = _pair(reference, cfg, torch.float64)
    x = _inputs(cfg, torch.float64, log_mel=True)
    _assert_same(_run(model, x), _run(ref, x), 0.0, TOL64, 0.0)


@pytest.mark.parametrize("variant", ["atfnn", "tfnn"])
def test_float32_on_log_mel_scale_is_within_tolerance_of_float64_reference(reference, variant):
    cfg = ModelConfig(variant=variant, encoder_dropout=0.0)
    model, ref = _pair(reference, cfg)
    truth = _run(ref.double(), _inputs(cfg, torch.float64, log_mel=True))
    got = _run(model, _inputs(cfg, log_mel=True))
    as64 = (got[0].double(), {k: v.double() for k, v in got[1].items()}, {k: v.double() for k, v in got[2].items()})
    _assert_same(as64, truth, RTOL, ATOL, GRAD_RTOL)


@pytest.mark.parametrize(
    "overrides",
    [
        {"conv_axis": "time"},
        {"heads": 4, "attention_activation": "softmax", "head": "mlp"},
        {"heads": 1, "channels": 4, "conv_channels": 16, "lstm_layers": 1, "lstm_hidden": 16},
    ],
    ids=["conv-time", "4-heads-softmax-mlp", "1-head-small"],
)
def test_other_configurations_match_reference(reference, overrides):
    cfg = ModelConfig(encoder_dropout=0.0, **overrides)
    model, ref = _pair(reference, cfg)
    x = _inputs(cfg)
    _assert_same(_run(model, x), _run(ref, x), RTOL, ATOL, GRAD_RTOL)


def test_eval_mode_and_no_grad_inference_match_reference(reference):
    """Default config (dropout 0.1) in eval mode, under inference_mode as atfnn.inference runs it."""
    model, ref = _pair(reference, ModelConfig())
    model.eval(), ref.eval()
    x = _inputs(ModelConfig(), log_mel=True)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), ref(x), rtol=RTOL, atol=ATOL)


def test_attention_dropout_falls_back_to_the_plain_layer(reference):
    """Dropout on attention weights breaks the shortcut's algebra: training must use nn.MultiheadAttention."""
    cfg = ModelConfig(variant="afnn", encoder_dropout=0.0, attention_dropout=0.5)
    model, ref = _pair(reference, cfg)
    x = _inputs(cfg)
    torch.manual_seed(5)
    out = model(x)
    torch.manual_seed(5)
    torch.testing.assert_close(out, ref(x), rtol=RTOL, atol=ATOL)  # same random mask only on the same path
    model.eval(), ref.eval()
    torch.testing.assert_close(model(x), ref(x), rtol=RTOL, atol=ATOL)  # no dropout in eval: shortcut again
