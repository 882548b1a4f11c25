"""Configuration: paper defaults, YAML with `base:`, `--set` overrides, validation with field names."""
from __future__ import annotations

import json
import re
import shlex
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import yaml

from atfnn.config import (
    ExperimentConfig, NonNegativeInt, Range, load_config, save_config, section_from_dict, validate,
)
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


# ----------------------------------------------------------------------------------------------- field rules
def _plain(hint):
    """int for Annotated[int, ...], float for Annotated[float | None, ...]."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


@pytest.mark.parametrize("section", ["frontend", "model", "train", "protocol"])
def test_every_numeric_field_has_a_range_and_every_string_its_choices(section):
    """A new field is one line (`warmup_epochs: NonNegativeInt = 0`); this keeps one from being added unchecked."""
    cls = type(getattr(ExperimentConfig(), section))
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        extras = getattr(hint, "__metadata__", ())
        if _plain(hint) in (int, float):
            assert any(isinstance(e, Range) for e in extras), f"{section}.{name} has no Range"
        if _plain(hint) is str:
            assert extras, f"{section}.{name} is a free string: give it a Literal[...] of its choices or a Check"


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("train.epochs=0", "train.epochs=0", ">= 1"),
        ("train.patience=-1", "train.patience=-1", ">= 1"),
        ("train.lr=0", "train.lr=0.0", "> 0"),
        ("train.lr=.inf", "train.lr=inf", "a finite number"),
        ("train.weight_decay=-1e-4", "train.weight_decay=-0.0001", ">= 0"),
        ("train.seed=-1", "train.seed=-1", "[0, 4294967295]"),
        ("train.freq_warp=0.5", "train.freq_warp=0.5", "[0, 0.5)"),
        ("train.threads=-2", "train.threads=-2", ">= 0"),
        ("model.lstm_dropout=-0.1", "model.lstm_dropout=-0.1", "[0, 1)"),
        ("model.heads=0", "model.heads=0", ">= 1"),
        ("frontend.log_floor=0", "frontend.log_floor=0.0", "> 0"),
        ("frontend.fmax=0", "frontend.fmax=0.0", "> 0"),
        ("protocol.val_fraction=1.5", "protocol.val_fraction=1.5", "(0, 1)"),
    ],
)
def test_a_number_out_of_range_names_the_key_and_the_range(override, key, allowed):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert str(error.value) == f"{key} is out of range; allowed: {allowed}"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=2.5", "train.epochs: expected an integer"),
        ("train.epochs=true", "train.epochs: expected int, got True"),
        ("train.lr=[", "override 'train.lr=[': the value is not valid YAML"),
        ("frontend.norm=global2", "frontend.norm='global2' is not one of none, utterance, speaker"),
        ("train.device=gpu0", "train.device='gpu0' is not valid; allowed: auto, cpu, cuda, cuda:N"),
        ("frontend.win_length=600", "frontend.win_length=600 must be at most frontend.n_fft=512"),
        ("frontend.fmax=9000", "frontend.fmax=9000.0 must be in (0, 8000]"),
        ("model.conv_kernel=4", "model.conv_kernel=4 must be odd"),
        ("corpus.root=[a]", "corpus.root: expected a string"),
    ],
)
def test_other_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_integers_and_floats_are_read_from_yaml_and_strings():
    cfg = load_config(None, ["train.epochs=3.0", "train.lr=1e-3", "train.batch_size='64'", "frontend.fmax=null"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.batch_size, cfg.frontend.fmax) == (3, 1e-3, 64, None)
    assert isinstance(cfg.train.epochs, int) and isinstance(cfg.train.lr, float)


def test_validate_checks_a_config_changed_in_code():
    cfg = ExperimentConfig()
    cfg.train.epochs = 0
    with pytest.raises(ConfigError, match="train.epochs=0 is out of range"):
        validate(cfg)
    cfg = ExperimentConfig()
    cfg.frontend.n_mels = 40  # after construction: the model's copy is stale
    with pytest.raises(ConfigError, match="model.n_mels=80 must equal frontend.n_mels=40"):
        validate(cfg)


def test_an_empty_section_is_the_defaults(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\nmodel:\n  heads: 4\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.train == ExperimentConfig().train and cfg.model.heads == 4


# ----------------------------------------------------------------------------------------------- derived sizes
def test_the_model_sizes_come_from_the_front_end(tmp_path):
    cfg = load_config(None, ["frontend.n_mels=40", "frontend.segment_frames=64", "frontend.segment_hop=32"])
    assert (cfg.model.n_mels, cfg.model.frames) == (40, 64)
    assert ExperimentConfig(frontend=cfg.frontend).model.n_mels == 40
    save_config(cfg, tmp_path / "resolved.yaml")
    saved = yaml.safe_load((tmp_path / "resolved.yaml").read_text())
    assert "n_mels" not in saved["model"] and "frames" not in saved["model"] and saved["frontend"]["n_mels"] == 40
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_an_old_yaml_may_repeat_the_sizes_but_not_change_them(tmp_path):
    (tmp_path / "old.yaml").write_text("frontend:\n  n_mels: 40\nmodel:\n  n_mels: 40\n  frames: 128\n")
    assert load_config(tmp_path / "old.yaml").model.n_mels == 40
    (tmp_path / "bad.yaml").write_text("model:\n  n_mels: 40\n")
    with pytest.raises(ConfigError, match="model.n_mels=40 disagrees with frontend.n_mels=80.*remove model.n_mels"):
        load_config(tmp_path / "bad.yaml")


def test_the_fingerprint_of_the_defaults_is_unchanged():
    """Run folders are locked to their config's fingerprint: the same config must keep the same one."""
    assert ExperimentConfig().fingerprint() == "32e12ee6a3a59c85"


def test_a_new_field_is_checked_from_its_one_line_declaration():
    @dataclass
    class Extra:
        warmup_epochs: NonNegativeInt = 0
        lr_schedule: Literal["constant", "cosine"] = "constant"

    assert section_from_dict(Extra, {"warmup_epochs": "2"}, "train").warmup_epochs == 2
    with pytest.raises(ConfigError, match=re.escape("train.warmup_epochs=-1 is out of range; allowed: >= 0")):
        section_from_dict(Extra, {"warmup_epochs": -1}, "train")
    with pytest.raises(ConfigError, match=re.escape("train.lr_schedule='step' is not one of constant, cosine")):
        section_from_dict(Extra, {"lr_schedule": "step"}, "train")


def test_the_first_reading_is_the_dataclass_defaults_so_old_cards_and_runs_load_unchanged():
    """paper_v1.yaml must stay what a card or run folder without the later fields means; paper.yaml departs from it."""
    assert load_config(CONFIGS / "paper_v1.yaml").fingerprint() == ExperimentConfig().fingerprint()
    new = load_config(CONFIGS / "paper.yaml")
    assert (new.frontend.mel_scale, new.frontend.norm, new.frontend.trim_db) == ("slaney", "global", 60)
    assert new.fingerprint() != ExperimentConfig().fingerprint()


@pytest.mark.parametrize(
    "config, run",
    [
        ("casia_atfnn.yaml", "casia-atfnn-combo"),  # the default is the combination the study chose
        ("casia_atfnn_v2.yaml", "casia-atfnn-v2"),
        ("casia_atnn_v2.yaml", "casia-atnn-v2"),
        ("casia_afnn_v2.yaml", "casia-afnn-v2"),
        ("casia_tfnn_v2.yaml", "casia-tfnn-v2"),
        ("emodb_atfnn_v2.yaml", "emodb-atfnn"),
    ],
)
def test_a_moved_default_leaves_each_runs_config_meaning_what_it_meant(config, run):
    """Runs made under an earlier default resume from their named config; the new default's ATFNN run is its own."""
    recorded = json.loads((CONFIGS.parent / "results" / run / "run.json").read_text())
    monitored = load_config(CONFIGS / config, ["train.monitor_test=true"])  # as scripts/reproduce.sh ran them
    assert monitored.fingerprint() == recorded["fingerprint"]


def reproduce_sh_runs() -> dict[str, tuple[str, list[str]]]:
    """scripts/reproduce.sh's table: run name -> (config file, its --set overrides), as the script runs them."""
    text = (CONFIGS.parent / "scripts" / "reproduce.sh").read_text()
    text = text.replace("$MONITOR", "--set train.monitor_test=true")
    runs = {}
    for name, command in re.findall(r'\[([\w-]+)\]="([^"]*)"', text):
        args = shlex.split(command)
        runs[name] = (args[0], [args[i + 1] for i, arg in enumerate(args) if arg == "--set"])
    return runs


EXPORTED = sorted(run for run in reproduce_sh_runs() if (CONFIGS.parent / "results" / run / "config.yaml").exists())


def test_reproduce_sh_lists_the_exported_runs():
    assert len(EXPORTED) >= 30 and "casia-atfnn-combo" in EXPORTED and "casia-atfnn-innerloso" in EXPORTED


@pytest.mark.parametrize("run", EXPORTED)
def test_reproduce_sh_reruns_each_exported_run_with_the_config_it_was_made_with(run):
    """A moved default must not silently change what an entry of scripts/reproduce.sh trains: its config file, with
    the script's overrides, means what the run's exported config.yaml records (fields added later at their neutral
    values compare equal; the device and thread count do not count)."""
    config, overrides = reproduce_sh_runs()[run]
    recorded = load_config(CONFIGS.parent / "results" / run / "config.yaml")
    assert load_config(CONFIGS.parent / config, overrides).fingerprint() == recorded.fingerprint(), config


def test_a_config_of_an_earlier_run_still_has_that_runs_fingerprint():
    """Moving the default must not change what an earlier run's config file means (it would no longer resume)."""
    run = json.loads((CONFIGS.parent / "results" / "casia-atfnn-gnorm" / "run.json").read_text())
    assert load_config(CONFIGS / "casia_atfnn_gnorm.yaml").fingerprint() == run["fingerprint"]
