"""Training-time augmentations: what they change in a segment, and what they must leave alone."""
import pytest
import torch

from atfnn.config import load_config
from atfnn.errors import ConfigError
from atfnn.training import freq_warp, spec_augment, warp_bands

F, T = 80, 128


def ramp(batch: int = 1) -> torch.Tensor:
    """x[b, i, t] = i: every value names the band it came from."""
    return torch.arange(F, dtype=torch.float32).view(1, F, 1).expand(batch, F, T).contiguous()


def test_warp_by_one_is_the_identity():
    x = torch.randn(3, F, T)
    assert torch.equal(warp_bands(x, torch.ones(3)), x)


def test_warp_moves_a_band_up_by_its_factor_and_repeats_the_top():
    out = warp_bands(ramp(2), torch.tensor([1.25, 0.8]))
    # band i reads band i / alpha: 40 / 1.25 = 32, 40 / 0.8 = 50, interpolated between bands
    assert out[0, 40, 0].item() == pytest.approx(32.0)
    assert out[0, 41, 0].item() == pytest.approx(41 / 1.25)
    assert out[1, 40, 0].item() == pytest.approx(50.0)
    assert out[1, 70, 0].item() == F - 1  # 70 / 0.8 = 87.5 is beyond the top band
    assert torch.equal(out[:, :, 0:1].expand(-1, -1, T), out)  # frames untouched


def test_warp_moves_a_spectral_peak():
    x = torch.zeros(1, F, T)
    x[0, 30] = 1.0
    out = warp_bands(x, torch.tensor([1.1]))
    assert out[0, :, 0].argmax().item() == 33


def test_freq_warp_draws_factors_within_its_range_and_is_seeded():
    x = ramp(64)
    out = freq_warp(x, torch.Generator().manual_seed(1), 0.1)
    alpha = 60 / out[:, 60, 0]  # band 60 reads band 60 / alpha, well inside the axis for |alpha - 1| <= 0.1
    assert alpha.min() >= 0.9 - 1e-5 and alpha.max() <= 1.1 + 1e-5
    assert alpha.std() > 0.03  # one factor per segment, not one per batch
    assert torch.equal(out, freq_warp(x, torch.Generator().manual_seed(1), 0.1))


def test_spec_augment_masks_one_band_block_and_one_frame_block_with_the_minimum():
    torch.manual_seed(0)
    x = torch.rand(32, F, T) + 1.0
    x[:, 0, 0] = 0.5  # the minimum of every segment
    out = spec_augment(x, torch.Generator().manual_seed(0))
    changed = out != x
    for seg in range(32):
        assert torch.all(out[seg][changed[seg]] == 0.5)
        bands = changed[seg].all(dim=1).nonzero().flatten()
        frames = changed[seg].all(dim=0).nonzero().flatten()
        assert len(bands) <= 8 and len(frames) <= 16
        if len(bands):
            assert bands.max() - bands.min() + 1 == len(bands)  # one contiguous block
        if len(frames):
            assert frames.max() - frames.min() + 1 == len(frames)
    assert changed.any()


def test_freq_warp_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="train.freq_warp"):
        load_config(overrides=["train.freq_warp=0.7"])
    assert load_config(overrides=["train.freq_warp=0.1"]).train.freq_warp == 0.1
