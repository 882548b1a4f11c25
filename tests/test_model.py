"""The network of section II, checked against the paper's definitions."""
from __future__ import annotations

import contextlib
import os

import pytest
import torch

from atfnn import fast, kernels
from atfnn.config import ModelConfig
from atfnn.errors import ConfigError
from atfnn.model import (
    AFNN, ATFNN, ATNN, PARTS, TFNN, FAttention, FEncoder, SpeakerNorm, TAttention, TEncoder, build_model, count_parameters,
)

B, F, T, C = 2, 80, 128, 8
# Default ATFNN with 6 classes (CASIA): stated in docs/model.md; a change here is a change of architecture.
ATFNN_PARAMETERS_6_CLASSES = 1_583_606
SMALL_LSTM = {"lstm_hidden": 16, "lstm_layers": 1}  # where the test is about what comes before the T-Encoder


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_f_attention_shapes_and_group_sharing():
    fa = FAttention(C, 5)
    x = torch.randn(B, F, T)
    out, a = fa(x)
    assert out.shape == (B, F, T) and a.shape == (B, F, T)
    groups = a.reshape(B, F // 5, 5, T)
    assert torch.equal(groups, groups[:, :, :1].expand_as(groups)), "5 bands of a group must share one weight"
    assert not torch.allclose(a[:, 0], a[:, 5]), "different groups should get different weights"
    assert torch.allclose(out, x + a * x)  # eq. (1)
    assert fa.weights(x).shape == (B, F // 5, T)


def test_f_attention_is_computed_per_frame_from_its_5_bands():
    fa = FAttention(C, 5)
    x = torch.randn(1, F, T)
    y = x.clone()
    y[0, 10:15, 7] += 3.0  # change one group of one frame
    diff = (fa.weights(x) - fa.weights(y)).abs() > 0
    assert diff.sum() == 1 and diff[0, 2, 7]


def test_t_attention_shapes_grouping_and_source():
    ta = TAttention(C, 8)
    x = torch.randn(B, F, T)
    enc = torch.randn(B, T, F, C)
    out, a = ta(x, enc)
    assert out.shape == (B, T, F, C) and a.shape == (B, F, T)
    groups = a.reshape(B, F, T // 8, 8)
    assert torch.equal(groups, groups[..., :1].expand_as(groups)), "8 frames of a group must share one weight"
    expected = enc + a.transpose(1, 2).unsqueeze(-1) * enc  # eq. (2), broadcast over the c channels
    assert torch.allclose(out, expected)
    # the weights come from x, not from the encoding
    _, a2 = ta(x, torch.randn(B, T, F, C))
    assert torch.equal(a, a2)


def test_f_encoder_shape_and_band_permutation_equivariance():
    enc = FEncoder(ModelConfig(encoder_dropout=0.0)).eval()
    x = torch.randn(B, F, T)
    out = enc(x)
    assert out.shape == (B, T, F, C)
    # Self-attention with no positional encoding treats bands as a set; only the 1x5 convolutions see order,
    # so swapping two frames (the conv axis is frequency) must just swap the outputs of those frames.
    perm = torch.arange(T)
    perm[[3, 90]] = perm[[90, 3]]
    assert torch.allclose(enc(x[:, :, perm]), out[:, perm], atol=1e-5)


def test_f_encoder_time_axis_option_mixes_frames():
    enc = FEncoder(ModelConfig(encoder_dropout=0.0, conv_axis="time")).eval()
    x = torch.randn(1, F, T)
    y = x.clone()
    y[0, :, 50] += 1.0
    changed = (enc(x) - enc(y)).abs().amax(dim=(0, 2, 3)) > 1e-6  # per frame
    assert changed[48:53].all() and not changed[:40].any()


def test_t_encoder_returns_last_forward_and_last_backward_states():
    te = TEncoder(F * C, 128, 3)
    x = torch.randn(B, T, F * C)
    h = te(x)
    assert h.shape == (B, 256)
    outputs, _ = te.lstm(x)  # (B, T, 2*hidden): forward half ends at step T-1, backward half at step 0
    assert torch.allclose(h[:, :128], outputs[:, -1, :128], atol=1e-6)
    assert torch.allclose(h[:, 128:], outputs[:, 0, 128:], atol=1e-6)
    assert te.lstm.num_layers == 3 and te.lstm.bidirectional and te.lstm.hidden_size == 128


@pytest.mark.parametrize("variant", ["atfnn", "tfnn", "afnn", "atnn"])
def test_variants_have_exactly_their_table_iii_parts(variant):
    model = build_model(ModelConfig(variant=variant), num_classes=4)
    has_fa, has_fe, has_ta, has_te = PARTS[variant]
    assert (model.f_attention is not None) == has_fa
    assert (model.f_encoder is not None) == has_fe
    assert (model.t_attention is not None) == has_ta
    assert (model.t_encoder is not None) == has_te
    logits, maps = model.forward_with_attention(torch.randn(B, F, T))
    assert logits.shape == (B, 4)
    assert set(maps) == {k for k, on in (("f", has_fa), ("t", has_ta)) if on}


def test_table_iii_parts():
    assert PARTS == {
        "atfnn": (True, True, True, True),
        "tfnn": (False, True, False, True),  # no attention
        "afnn": (True, True, False, False),  # no T-Encoder
        "atnn": (False, False, True, True),  # no F-Encoder
    }
    assert [type(build_model(ModelConfig(variant=v), 2)) for v in PARTS] == [ATFNN, TFNN, AFNN, ATNN]


def test_atnn_feeds_80_values_per_frame_and_atfnn_640():
    assert build_model(ModelConfig(variant="atnn"), 2).t_encoder.lstm.input_size == F
    assert build_model(ModelConfig(), 2).t_encoder.lstm.input_size == F * C


def test_parameter_count_of_default_atfnn():
    assert count_parameters(build_model(ModelConfig(), 6)) == ATFNN_PARAMETERS_6_CLASSES


@pytest.mark.parametrize("variant", ["atfnn", "tfnn", "afnn", "atnn"])
def test_gradients_reach_every_parameter(variant):
    model = build_model(ModelConfig(variant=variant), 3)
    model(torch.randn(B, F, T)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"


def test_accepts_channel_axis_and_rejects_wrong_shape():
    model = build_model(ModelConfig(), 2).eval()
    x = torch.randn(B, F, T)
    assert torch.allclose(model(x), model(x.unsqueeze(1)))
    with pytest.raises(ValueError, match=r"\(batch, 80, 128\)"):
        model(torch.randn(B, T, F))


def test_unknown_variant_and_mismatched_class():
    with pytest.raises(ConfigError, match="available: atfnn"):
        build_model(ModelConfig(variant="cnn"), 2)
    with pytest.raises(ConfigError, match=r"TFNN built with model.variant='atfnn'; use build_model\(\)"):
        TFNN(2, ModelConfig(variant="atfnn"))
    with pytest.raises(ConfigError, match="model.t_attention_input='spectrogram'; choose from x, encoding"):
        build_model(ModelConfig(t_attention_input="spectrogram"), 2)


def test_softmax_attention_sums_to_one_over_groups():
    fa = FAttention(1, 5, activation="softmax")
    w = fa.weights(torch.randn(B, F, T))
    assert torch.allclose(w.sum(dim=1), torch.ones(B, T), atol=1e-5)


def _require_kernels():
    """Skip without the fused kernels, or fail where CI requires them (ATFNN_REQUIRE_KERNELS=1)."""
    if not kernels.usable(torch.zeros(1)):
        if os.environ.get("ATFNN_REQUIRE_KERNELS") == "1":
            pytest.fail(f"fused kernels required but unavailable: {kernels.status()}")
        pytest.skip(f"fused kernels unavailable: {kernels.status()}")


@pytest.mark.parametrize("fused", [True, False], ids=["fused-kernels", "torch-ops"])
def test_bf16_autocast_runs_the_scalar_attention_in_fp32_and_stays_close_to_fp32(monkeypatch, fused):
    if fused:
        _require_kernels()
    autocast_seen = []

    def spy(real):
        def call(*args, **kwargs):
            autocast_seen.append((torch.is_autocast_enabled("cpu"), args[0].dtype))
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(fast.F, "scaled_dot_product_attention", spy(torch.nn.functional.scaled_dot_product_attention))
    monkeypatch.setattr(fast.kernels, "scalar_attention", spy(kernels.scalar_attention))
    torch.manual_seed(0)
    model = build_model(ModelConfig(), 4).eval()
    x = torch.randn(2, 80, 128) * 3 - 6
    with torch.no_grad(), (contextlib.nullcontext() if fused else kernels.disabled()):
        full = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x)
    assert autocast_seen == [(False, torch.float32)] * 2, "the attention over raw log-Mel products must not run in bf16"
    assert mixed.dtype == torch.bfloat16  # the rest (convolutions, Bi-LSTM, classifier) does
    assert torch.allclose(mixed.float(), full, atol=0.02 * full.abs().max().item())


@pytest.mark.skipif(not fast.bf16_lstm_runs("cpu"), reason="this CPU has no bf16 LSTM kernel (the fallback's test)")
def test_bf16_lstm_precision_autocasts_the_t_encoder_alone_and_returns_fp32():
    from atfnn.training import autocast

    torch.manual_seed(0)
    model = build_model(ModelConfig(), 4).train()
    model.t_encoder.autocast_dtype = torch.bfloat16  # what train_fold sets for train.precision=bf16-lstm
    seen = {}
    model.t_encoder.lstm.register_forward_pre_hook(lambda m, a: seen.update(lstm=torch.is_autocast_enabled("cpu")))
    model.f_encoder.register_forward_pre_hook(lambda m, a: seen.update(f_encoder=torch.is_autocast_enabled("cpu")))
    model.classifier.register_forward_pre_hook(lambda m, a: seen.update(head=(torch.is_autocast_enabled("cpu"),
                                                                             a[0].dtype)))
    x = torch.randn(2, 80, 128) * 3 - 6
    with autocast(torch.device("cpu"), "bf16-lstm"):
        logits = model(x)
    assert seen == {"f_encoder": False, "lstm": True, "head": (False, torch.float32)}
    assert logits.dtype == torch.float32
    logits.sum().backward()
    assert model.t_encoder.lstm.weight_ih_l0.grad.dtype == torch.float32
    with torch.no_grad():
        model.eval()
        mixed = model(x)
        model.t_encoder.autocast_dtype = None
        full = model(x)
        assert not seen["lstm"]
    assert not torch.equal(mixed, full)  # the Bi-LSTM really ran in bf16
    assert torch.allclose(mixed, full, atol=0.02 * full.abs().max().item())
    with autocast(torch.device("cpu"), "bf16"):  # the whole-network autocast still reaches the Bi-LSTM
        model(x)
    assert seen["f_encoder"] and seen["lstm"]


@pytest.mark.parametrize("precision", ["bf16-lstm", "bf16"])
def test_without_a_bf16_lstm_kernel_the_bi_lstm_runs_in_fp32_and_the_rest_as_asked(monkeypatch, precision):
    from atfnn.training import autocast

    monkeypatch.setattr(fast, "bf16_lstm_runs", lambda device_type: False)
    torch.manual_seed(0)
    model = build_model(ModelConfig(), 4).eval()
    model.t_encoder.autocast_dtype = torch.bfloat16 if precision == "bf16-lstm" else None
    seen = {}
    model.t_encoder.lstm.register_forward_pre_hook(
        lambda m, a: seen.update(lstm=(torch.is_autocast_enabled("cpu"), a[0].dtype)))
    model.classifier.register_forward_pre_hook(lambda m, a: seen.update(head=torch.is_autocast_enabled("cpu")))
    x = torch.randn(2, 80, 128) * 3 - 6
    with torch.no_grad(), autocast(torch.device("cpu"), precision):
        model(x)
    assert seen == {"lstm": (False, torch.float32), "head": precision == "bf16"}
    assert fast.lstm_precision("cpu", precision) == "fp32" and fast.lstm_precision("cpu", "fp32") == "fp32"


# --- model.t_attention_input: Fig. 4 (x) or eq. (4) as printed (x̂') ------------------------------------------------

def test_t_attention_reads_x_by_default_and_the_encoding_with_the_option():
    """Each setting computes T-Attention's weights from what it names: a hook sees the tensor T-Attention's
    convolution reads, and only the source named changes the weights."""
    x = torch.randn(B, F, T)
    maps, sources = {}, {}
    for source in ("x", "encoding"):
        torch.manual_seed(0)
        model = build_model(ModelConfig(t_attention_input=source, encoder_dropout=0.0, **SMALL_LSTM), 4).eval()
        read = []
        model.t_attention.conv.register_forward_pre_hook(lambda m, a: read.append(a[0]))
        with torch.no_grad():
            encoding = model.f_encoder(model.f_attention(x)[0])  # x̂' (B, T, F, C)
            _, maps[source] = model.forward_with_attention(x)
        sources[source] = read[-1]
        if source == "x":
            torch.testing.assert_close(sources[source], x.unsqueeze(1), rtol=0, atol=0)  # (B, 1, F, T)
        else:
            torch.testing.assert_close(sources[source], encoding.permute(0, 3, 2, 1), rtol=0, atol=0)  # (B, C, F, T)
    assert not torch.allclose(maps["x"]["t"], maps["encoding"]["t"])
    assert maps["x"]["t"].shape == maps["encoding"]["t"].shape == (B, F, T)


def test_t_attention_from_the_encoding_depends_on_the_f_encoder_and_from_x_does_not():
    x = torch.randn(1, F, T)
    for source, follows in (("x", False), ("encoding", True)):
        torch.manual_seed(0)
        model = build_model(ModelConfig(t_attention_input=source, **SMALL_LSTM), 4).eval()
        with torch.no_grad():
            before = model.forward_with_attention(x)[1]["t"]
            model.f_encoder.norm2.bias.add_(1.0)  # another x̂', the same x
            after = model.forward_with_attention(x)[1]["t"]
        assert (not torch.equal(before, after)) == follows, source


def test_t_attention_from_the_encoding_reads_c_channels_and_is_x_itself_without_an_f_encoder():
    assert build_model(ModelConfig(t_attention_input="encoding"), 6).t_attention.conv.in_channels == C
    assert build_model(ModelConfig(), 6).t_attention.conv.in_channels == 1
    x = torch.randn(B, F, T)
    outputs = []
    for source in ("x", "encoding"):  # ATNN has no F-Encoder: T-Attention is applied to x, so both read x
        torch.manual_seed(0)
        model = build_model(ModelConfig(variant="atnn", t_attention_input=source, **SMALL_LSTM), 4).eval()
        with torch.no_grad():
            outputs.append(model(x))
    torch.testing.assert_close(outputs[0], outputs[1])  # equal but for rounding: the two paths lay x out apart


def test_state_dict_names_and_shapes_are_those_of_saved_models():
    """atfnn.checkpoint loads weights by these names: a rename would break every saved model."""
    shapes = {k: tuple(v.shape) for k, v in build_model(ModelConfig(), 6).state_dict().items()}
    lstm = {k for k in shapes if k.startswith("t_encoder.lstm.")}
    assert len(lstm) == 3 * 2 * 4 and shapes["t_encoder.lstm.weight_ih_l0"] == (4 * 128, F * C)
    assert {k: v for k, v in shapes.items() if k not in lstm} == {
        "f_attention.conv.weight": (C, 1, 5, 1), "f_attention.conv.bias": (C,),
        "f_encoder.embed.weight": (C, 1), "f_encoder.embed.bias": (C,),
        "f_encoder.attention.in_proj_weight": (3 * C, C), "f_encoder.attention.in_proj_bias": (3 * C,),
        "f_encoder.attention.out_proj.weight": (C, C), "f_encoder.attention.out_proj.bias": (C,),
        "f_encoder.norm1.weight": (C,), "f_encoder.norm1.bias": (C,),
        "f_encoder.conv1.weight": (32, C, 5), "f_encoder.conv1.bias": (32,),
        "f_encoder.conv2.weight": (C, 32, 5), "f_encoder.conv2.bias": (C,),
        "f_encoder.norm2.weight": (C,), "f_encoder.norm2.bias": (C,),
        "t_attention.conv.weight": (C, 1, 1, 8), "t_attention.conv.bias": (C,),
        "classifier.1.weight": (6, 256), "classifier.1.bias": (6,),
    }


# --- model.embedding_norm="speaker" (not in the paper) -------------------------------------------------------------

def test_speaker_norm_standardises_each_speaker_with_its_own_statistics():
    norm = SpeakerNorm(4)
    h = torch.randn(9, 4) * torch.tensor([1.0, 3.0, 0.5, 2.0]) + torch.tensor([5.0, -2.0, 0.0, 1.0])
    speakers = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 1])
    z = norm(h, speakers)
    for s in (0, 1):
        rows = h[speakers == s]
        expected = (rows - rows.mean(0)) / torch.sqrt(rows.var(0, unbiased=False) + 1e-5)
        torch.testing.assert_close(z[speakers == s], expected)
    moved = h.clone()
    moved[speakers == 1] = moved[speakers == 1] * 7 + 3  # another voice for speaker 1 only
    torch.testing.assert_close(norm(moved, speakers)[speakers == 0], z[speakers == 0])
    torch.testing.assert_close(norm(moved, speakers)[speakers == 1], z[speakers == 1], atol=1e-4, rtol=1e-4)


def test_speaker_norm_gradients_stay_finite_when_a_speaker_index_is_absent():
    norm = SpeakerNorm(3)
    h = torch.randn(4, 3, requires_grad=True)
    norm(h, torch.tensor([0, 0, 2, 2])).pow(2).sum().backward()  # speaker 1 has no row in this batch
    assert torch.isfinite(h.grad).all()


def test_speaker_norm_running_estimates_update_in_training_only_and_serve_ungrouped_input():
    norm = SpeakerNorm(2)
    h = torch.tensor([[1.0, 2.0], [3.0, 2.0], [10.0, 0.0], [12.0, 4.0]])
    speakers = torch.tensor([0, 0, 1, 1])
    norm.train()
    norm(h, speakers)
    # Speaker means (2, 2) and (11, 2), variances (1, 0) and (1, 4); their averages move the estimates by 10 %.
    torch.testing.assert_close(norm.running_mean, torch.tensor([0.65, 0.2]))
    torch.testing.assert_close(norm.running_var, torch.tensor([1.0, 0.9 + 0.1 * 2.0]))
    norm.eval()
    norm(h * 5, speakers)
    torch.testing.assert_close(norm.running_mean, torch.tensor([0.65, 0.2]))
    expected = (h - norm.running_mean) / torch.sqrt(norm.running_var + 1e-5)
    torch.testing.assert_close(norm(h), expected)


def test_embedding_norm_is_off_by_default_and_adds_only_its_running_estimates():
    plain, normed = build_model(ModelConfig(), 6), build_model(ModelConfig(embedding_norm="speaker"), 6)
    assert plain.speaker_norm is None
    assert set(normed.state_dict()) - set(plain.state_dict()) == {"speaker_norm.running_mean", "speaker_norm.running_var"}
    assert count_parameters(normed) == count_parameters(plain) == ATFNN_PARAMETERS_6_CLASSES


def test_speaker_norm_statistics_stay_fp32_under_bf16_autocast():
    norm = SpeakerNorm(8)
    h = (torch.randn(12, 8) * 3 + 100).bfloat16()  # a large offset: bf16 statistics would be off by ~0.4
    speakers = torch.arange(12) % 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = norm(h, speakers)
    assert z.dtype == torch.float32
    torch.testing.assert_close(z, norm(h.float(), speakers))
