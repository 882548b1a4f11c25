"""atfnn.kernels: the fused CPU kernels compute the torch ops' function (checked against float64), their dropout is
a real dropout, and a machine that cannot build them falls back to torch ops.

In CI (ATFNN_REQUIRE_KERNELS=1) a build failure fails these tests instead of skipping them.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from atfnn import kernels


@pytest.fixture(autouse=True)
def _require_kernels():
    if not kernels.usable(torch.zeros(1)):
        if os.environ.get("ATFNN_REQUIRE_KERNELS") == "1":
            pytest.fail(f"fused kernels required but unavailable: {kernels.status()}")
        pytest.skip(f"fused kernels unavailable: {kernels.status()}")


def _sdpa(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    n, heads, f = queries.shape
    k = keys[:, None, :, None].expand(n, heads, f, 1)
    return F.scaled_dot_product_attention(queries.unsqueeze(-1), k, k, scale=1.0).squeeze(-1)


def _attention_case(n: int, heads: int, f: int, spread: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, f, generator=g) * 3 - 6  # log-Mel scale
    keys = x - x.mean(dim=1, keepdim=True)
    alpha, beta = torch.randn(heads, generator=g) * spread, torch.randn(heads, generator=g)
    queries = beta[:, None] + x[:, None, :] * alpha[:, None]
    return queries.contiguous(), keys.contiguous(), torch.randn(n, heads, f, generator=g)


@pytest.mark.parametrize("f", [80, 17], ids=["80-bands", "17-bands"])  # the specialised and the generic loop
@pytest.mark.parametrize("spread", [0.05, 1.0], ids=["flat-softmax", "peaked-softmax"])
def test_scalar_attention_forward_and_backward_match_float64(f, spread):
    queries, keys, grad = _attention_case(300, 2, f, spread)
    _assert_matches_float64(_kernel_output_and_grads(queries, keys, grad), queries, keys, grad, f"{f} bands")


def _kernel_output_and_grads(queries, keys, grad):
    q32, k32 = queries.clone().requires_grad_(), keys.clone().requires_grad_()
    got = kernels.scalar_attention(q32, k32)
    got.backward(grad)
    return got.detach(), q32.grad, k32.grad


def _assert_matches_float64(got, queries, keys, grad, what: str):
    """got = (m, dq, dk) of the fp32 kernel, each within 2e-5 of its largest float64 value."""
    q64, k64 = queries.double().requires_grad_(), keys.double().requires_grad_()
    truth = _sdpa(q64, k64)
    truth.backward(grad.double())
    for name, a, b in zip(("m", "dq", "dk"), got, (truth.detach(), q64.grad, k64.grad)):
        err = float((a.double() - b).abs().max())
        assert err <= 2e-5 * float(b.abs().max()) + 1e-6, f"{what}, {name}: max error {err:.3g}"


def test_portable_build_matches_float64_like_the_default_build(tmp_path):
    """ATFNN_KERNELS=portable builds the plain-C loops that CPUs without AVX-512 run; on AVX-512 machines the default
    build runs intrinsics instead, so both are checked here against float64 (the portable one in a fresh process)."""
    code = (
        "import sys, torch\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_kernels import _attention_case\n"
        "from atfnn import kernels\n"
        "out = {'status': kernels.status()}\n"
        "for f in (80, 17):\n"
        "    q, k, g = _attention_case(300, 2, f, 1.0)\n"
        "    q.requires_grad_(); k.requires_grad_()\n"
        "    m = kernels.scalar_attention(q, k); m.backward(g)\n"
        "    out[f] = (m.detach(), q.grad, k.grad)\n"
        f"torch.save(out, {str(tmp_path / 'portable.pt')!r})\n"
    )
    env = {**os.environ, "ATFNN_KERNELS": "portable"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    portable = torch.load(tmp_path / "portable.pt")
    assert portable["status"] == "fused C kernels (portable C)"
    for f in (80, 17):
        queries, keys, grad = _attention_case(300, 2, f, 1.0)
        _assert_matches_float64(portable[f], queries, keys, grad, f"portable build, {f} bands")
        _assert_matches_float64(_kernel_output_and_grads(queries, keys, grad), queries, keys, grad,
                                f"default build, {f} bands")


def test_scalar_attention_is_about_as_accurate_as_torch_in_fp32():
    """The fused kernel's fp32 error stays within 4x of the SDPA path it replaces (about 3x here, ~1e-6 relative)."""
    queries, keys, _ = _attention_case(200, 2, 80, 1.0, seed=3)
    truth = _sdpa(queries.double(), keys.double())
    fused_err = float((kernels.scalar_attention(queries, keys).double() - truth).abs().max())
    torch_err = float((_sdpa(queries, keys).double() - truth).abs().max())
    assert fused_err <= 4 * torch_err + 1e-6


def test_scalar_attention_splits_over_threads_without_changing_results():
    queries, keys, _ = _attention_case(3 * kernels.MIN_ROWS_PER_THREAD + 7, 2, 80, 0.5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.scalar_attention(queries, keys)
        torch.set_num_threads(3)
        three = kernels.scalar_attention(queries, keys)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, three)


def test_scalar_attention_rejects_bad_shapes():
    with pytest.raises(ValueError, match="queries"):
        kernels.scalar_attention(torch.zeros(4, 2, 80), torch.zeros(4, 81))


@pytest.mark.parametrize("c", [8, 5], ids=["8-channels", "5-channels"])
def test_add_norm_without_dropout_matches_layer_norm_in_float64(c):
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(c)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    h, y, grad = torch.randn(3000, c) * 2 + 1, torch.randn(3000, c), torch.randn(3000, c)
    h64, y64 = h.double().requires_grad_(), y.double().requires_grad_()
    norm64 = torch.nn.LayerNorm(c).double()
    norm64.load_state_dict(norm.state_dict())
    norm64(h64 + y64).backward(grad.double())
    h32, y32 = h.clone().requires_grad_(), y.clone().requires_grad_()
    kernels.add_dropout_norm(h32, y32, norm, 0.0).backward(grad)
    pairs = {"out": (kernels.add_dropout_norm(h, y, norm, 0.0), norm64(h64 + y64)), "dh": (h32.grad, h64.grad),
             "dy": (y32.grad, y64.grad), "dweight": (norm.weight.grad, norm64.weight.grad),
             "dbias": (norm.bias.grad, norm64.bias.grad)}
    for name, (a, b) in pairs.items():
        a, b = a.detach().double(), b.detach()
        err = float((a - b).abs().max())
        assert err <= 1e-5 * float(b.abs().max()) + 1e-6, f"{name}: max error {err:.3g}"


def test_add_norm_dropout_drops_p_of_y_scales_the_rest_and_its_gradient_uses_the_same_mask():
    p, rows, c = 0.3, 20000, 8
    norm = torch.nn.LayerNorm(c)
    # With h = 0 and y = 1 the LayerNorm input is the mask itself, so the output is positive exactly at the kept
    # elements of each row that has both kept and dropped ones (the mask depends on the seed and position only).
    torch.manual_seed(1)
    probe = kernels.add_dropout_norm(torch.zeros(rows, c), torch.ones(rows, c), norm, p)
    kept = probe > 0
    mixed = kept.any(dim=1) & ~kept.all(dim=1)
    q = 1 - p  # E[kept fraction | a mixed row] for 8 independent elements kept with probability q
    expected = (c * q - c * q**c) / (1 - q**c - p**c) / c
    assert abs(float(kept[mixed].float().mean()) - expected) < 0.01
    # The same seed on other values: LayerNorm(h + y * mask / (1 - p)), forward and backward.
    g = torch.Generator().manual_seed(2)
    h, y, grad = (torch.randn(rows, c, generator=g) for _ in range(3))
    y32 = y.clone().requires_grad_()
    torch.manual_seed(1)
    out = kernels.add_dropout_norm(h, y32, norm, p)
    out.backward(grad)
    y64 = y.double().requires_grad_()
    truth = F.layer_norm(h.double() + y64 * kept.double() / (1 - p), (c,))
    truth.backward(grad.double())
    torch.testing.assert_close(out[mixed].double(), truth[mixed].detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y32.grad[mixed].double(), y64.grad[mixed], rtol=1e-5, atol=1e-5)
    assert torch.all(y32.grad[mixed][~kept[mixed]] == 0), "a dropped element of y must get no gradient"


def test_add_norm_dropout_is_seeded_by_torch_and_differs_between_calls():
    norm = torch.nn.LayerNorm(8)
    h, y = torch.randn(5000, 8), torch.randn(5000, 8)
    torch.manual_seed(7)
    first, second = kernels.add_dropout_norm(h, y, norm, 0.1), kernels.add_dropout_norm(h, y, norm, 0.1)
    torch.manual_seed(7)
    again = kernels.add_dropout_norm(h, y, norm, 0.1)
    assert torch.equal(first, again), "torch.manual_seed must make the masks repeat"
    assert not torch.equal(first, second), "two calls must draw two masks"


def test_add_norm_splits_over_threads_without_changing_results():
    norm = torch.nn.LayerNorm(8)
    h, y = torch.randn(3 * kernels.MIN_ROWS_PER_THREAD + 5, 8), torch.randn(3 * kernels.MIN_ROWS_PER_THREAD + 5, 8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.manual_seed(3)
        one = kernels.add_dropout_norm(h, y, norm, 0.2)
        torch.set_num_threads(3)
        torch.manual_seed(3)
        three = kernels.add_dropout_norm(h, y, norm, 0.2)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, three), "the mask of an element must not depend on how rows are split over threads"


def test_add_norm_runs_on_tensors_that_need_no_gradient():
    norm = torch.nn.LayerNorm(8).requires_grad_(False)
    h, y = torch.randn(100, 8), torch.randn(100, 8)
    torch.testing.assert_close(kernels.add_dropout_norm(h, y, norm, 0.0), norm(h + y), rtol=1e-5, atol=1e-5)


def test_add_norm_rejects_what_it_cannot_compute():
    with pytest.raises(ValueError, match="LayerNorm"):
        kernels.add_dropout_norm(torch.zeros(4, 8), torch.zeros(4, 8), torch.nn.LayerNorm(8), 1.0)
    with pytest.raises(ValueError, match="LayerNorm"):
        kernels.add_dropout_norm(torch.zeros(4, 8), torch.zeros(4, 8), torch.nn.LayerNorm(8, elementwise_affine=False),
                                 0.1)


def _conv_pair(c: int, hidden: int, k: int, seed: int = 0) -> tuple[torch.nn.Conv1d, torch.nn.Conv1d]:
    torch.manual_seed(seed)
    return torch.nn.Conv1d(c, hidden, k, padding=k // 2), torch.nn.Conv1d(hidden, c, k, padding=k // 2)


def _require_conv_kernel():
    conv1, conv2 = _conv_pair(8, 32, 5)
    if not kernels.conv_block_usable(torch.zeros(1, 80, 8), conv1, conv2):
        pytest.skip(f"no fused convolution in this build ({kernels.status()}): AVX-512 CPUs only")


@pytest.mark.parametrize("n, f, c, hidden, k", [
    (300, 80, 8, 32, 5),  # the paper's sizes (the specialised loops)
    (3 * kernels.MIN_ROWS_PER_THREAD + 7, 80, 8, 32, 5),  # split over threads, many partial-sum flushes
    (40, 17, 3, 6, 3),  # generic loops, a band count that is not a multiple of 16
    (20, 100, 5, 7, 7),
], ids=["paper", "threads", "17-bands", "100-bands"])
def test_conv_block_forward_and_backward_match_float64(n, f, c, hidden, k):
    _require_conv_kernel()
    conv1, conv2 = _conv_pair(c, hidden, k)
    h = torch.randn(n, f, c)
    grad = torch.randn(n, f, c)
    threads = torch.get_num_threads()
    torch.set_num_threads(3 if n > kernels.MIN_ROWS_PER_THREAD else threads)
    try:
        h32 = h.clone().requires_grad_()
        got = kernels.conv_block(h32, conv1, conv2)
        got.backward(grad)
    finally:
        torch.set_num_threads(threads)
    ours = [got.detach(), h32.grad] + [p.grad.clone() for p in (conv1.weight, conv1.bias, conv2.weight, conv2.bias)]
    c1, c2 = conv1.double(), conv2.double()  # in place, gradients included: ours are copied first
    for p in (c1.weight, c1.bias, c2.weight, c2.bias):
        p.grad = None
    h64 = h.double().requires_grad_()
    truth = c2(F.relu(c1(h64.transpose(1, 2)))).transpose(1, 2)
    truth.backward(grad.double())
    names = ("y", "dh", "dw1", "db1", "dw2", "db2")
    for name, a, b in zip(names, ours, [truth.detach(), h64.grad, c1.weight.grad, c1.bias.grad, c2.weight.grad,
                                        c2.bias.grad]):
        assert a.dtype == torch.float32
        err = float((a.double() - b).abs().max())
        assert err <= 1e-5 * float(b.abs().max()) + 1e-6, f"{name}: max error {err:.3g}"


def test_conv_block_is_only_used_where_it_computes_the_same_function():
    _require_conv_kernel()
    conv1, conv2 = _conv_pair(8, 32, 5)
    h = torch.zeros(2, 80, 8)
    assert kernels.conv_block_usable(h, conv1, conv2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not kernels.conv_block_usable(h, conv1, conv2)  # bf16 convolutions stay oneDNN's
    even1, even2 = torch.nn.Conv1d(8, 32, 4, padding=2), torch.nn.Conv1d(32, 8, 4, padding=2)
    assert not kernels.conv_block_usable(h, even1, even2)
    valid = torch.nn.Conv1d(8, 32, 5)  # no padding: a shorter output
    assert not kernels.conv_block_usable(h, valid, conv2)
    assert not kernels.conv_block_usable(torch.zeros(2, 80, 4), conv1, conv2)
    assert not kernels.conv_block_usable(h.double(), conv1, conv2)
    with pytest.raises(ValueError, match="conv_block_usable"):
        kernels.conv_block(h, valid, conv2)


def test_not_used_for_other_dtypes_devices_or_inside_disabled():
    assert not kernels.usable(torch.zeros(2, dtype=torch.float64))
    assert not kernels.usable(torch.zeros(2, dtype=torch.bfloat16))
    with kernels.disabled():
        assert not kernels.usable(torch.zeros(2))
    assert kernels.usable(torch.zeros(2))


def test_model_uses_the_kernels_and_matches_torch_ops_in_eval():
    from atfnn.config import ModelConfig
    from atfnn.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(), 4).eval()
    x = torch.randn(3, 80, 128) * 3 - 6
    calls = []
    real, real_conv = kernels.scalar_attention, kernels.conv_block
    try:
        kernels.scalar_attention = lambda *a: calls.append("attention") or real(*a)
        kernels.conv_block = lambda *a: calls.append("conv") or real_conv(*a)
        with torch.no_grad():
            fused = model(x)
    finally:
        kernels.scalar_attention, kernels.conv_block = real, real_conv
    with torch.no_grad(), kernels.disabled():
        plain = model(x)
    assert "attention" in calls, "the F-Encoder did not call the fused attention"
    if "AVX-512" in kernels.status():
        assert "conv" in calls, "the F-Encoder did not call the fused convolutions"
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)


def test_a_machine_without_a_compiler_falls_back_to_torch_ops(tmp_path):
    """In a fresh process with no compiler and an empty cache, the model still runs (on torch ops) and says why."""
    code = (
        "import torch\n"
        "from atfnn import kernels\n"
        "from atfnn.config import ModelConfig\n"
        "from atfnn.model import build_model\n"
        "out = build_model(ModelConfig(), 4).eval()(torch.randn(1, 80, 128))\n"
        "assert out.shape == (1, 4)\n"
        "print(kernels.status())\n"
    )
    env = {**os.environ, "CC": "/nonexistent/cc", "PATH": str(tmp_path), "ATFNN_KERNEL_CACHE": str(tmp_path / "k")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("torch ops (no C compiler found")
    assert "fused CPU kernels unavailable" in proc.stderr


def test_kernels_can_be_switched_off_by_environment(tmp_path):
    code = "from atfnn import kernels\nprint(kernels.status())\n"
    env = {**os.environ, "ATFNN_KERNELS": "0"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "torch ops (ATFNN_KERNELS=0)"


def test_by_default_only_a_build_faster_than_torch_ops_replaces_them():
    """auto (the default) uses the AVX-512 build only: without AVX-512 the plain-C loops are slower than torch ops."""
    assert kernels.worth_using("AVX-512", "auto") and not kernels.worth_using("portable C", "auto")
    assert kernels.worth_using("portable C", "on") and kernels.worth_using("portable C", "portable")
    code = "from atfnn import kernels\nprint(kernels.status())\n"
    env = {k: v for k, v in os.environ.items() if k != "ATFNN_KERNELS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    on = kernels.status()  # the suite runs with ATFNN_KERNELS=on (conftest.py)
    if on == "fused C kernels (AVX-512)":
        assert proc.stdout.strip() == on
    elif on == "fused C kernels (portable C)":
        why = "the portable C build is slower than them on this CPU; ATFNN_KERNELS=on uses it"
        assert proc.stdout.strip() == f"torch ops ({why})"
