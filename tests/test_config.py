"""Configuration: paper defaults, YAML with `base:`, `--set` overrides, validation with field names."""
from __future__ import annotations

from pathlib import Path

import pytest

from atfnn.config import ExperimentConfig, load_config, save_config
from atfnn.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_the_paper_values():
    cfg = ExperimentConfig()
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.batch_size) == ("adam", 5e-4, 128)
    assert (cfg.model.variant, cfg.model.channels, cfg.model.lstm_hidden, cfg.model.lstm_layers) == ("atfnn", 8, 128, 3)
    assert (cfg.model.f_group, cfg.model.t_group, cfg.model.conv_kernel, cfg.model.conv_channels) == (5, 8, 5, 32)
    assert cfg.protocol.kind == "loso"


def test_yaml_base_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("model:\n  heads: 4\ntrain:\n  epochs: 5\n")
    (tmp_path / "exp.yaml").write_text("base: base.yaml\ntrain:\n  epochs: 7\ncorpus:\n  name: casia\n")
    cfg = load_config(tmp_path / "exp.yaml", ["train.epochs=30", "train.class_weighting=true", "model.variant=tfnn"])
    assert cfg.model.heads == 4 and cfg.train.epochs == 30 and cfg.train.class_weighting is True
    assert cfg.model.variant == "tfnn" and cfg.corpus.name == "casia"
    assert isinstance(cfg.train.lr, float)
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochz=3", "unknown key.*epochz"),
        ("train.epochs=abc", "train.epochs: expected int"),
        ("model.variant=cnn", "model.variant='cnn' is not one of"),
        ("model.heads=3", "not divisible by model.heads"),
        ("frontend.segment_hop=0", "segment_hop"),
        ("noequals", "expected KEY=VALUE"),
        ("train.class_weighting=maybe", "expected true/false"),
    ],
)
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_fingerprint_ignores_device_but_not_hyperparameters():
    a, b, c = ExperimentConfig(), ExperimentConfig(), ExperimentConfig()
    b.train.device = "cuda"
    c.train.lr = 1e-3
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_every_shipped_config_loads():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert files, "configs/ is empty"
    for path in files:
        load_config(path)
