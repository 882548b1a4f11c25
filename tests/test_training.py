"""Training-time augmentations (what they change in a segment, and what they must leave alone) and weight averaging."""
import numpy as np
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


# --- weight averaging (train.ema_epochs) ---------------------------------------------------------------------------

LABELS = ["a", "b"]


def tiny_split(n: int = 12, seed: int = 0):
    from atfnn.training import SplitData

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, F, T, generator=g)
    y = torch.arange(n) % 2
    x[y == 1, :10] += 2.0  # something to learn
    return SplitData(x=x, y=y, utt=np.arange(n), uids=[f"u{i}" for i in range(n)],
                     utt_labels=[LABELS[int(k)] for k in y])


def tiny_cfgs(*extra: str):
    cfg = load_config(overrides=["model.lstm_hidden=8", "model.lstm_layers=1", "train.batch_size=4", *extra])
    return cfg.model, cfg.train


def test_ema_decay_follows_the_horizon_in_epochs():
    from atfnn.training import _averaged_model

    model = torch.nn.Linear(1, 1, bias=False)
    averaged = _averaged_model(model, ema_epochs=2.0, steps_per_epoch=5)  # 10 steps -> decay 0.9
    with torch.no_grad():
        model.weight.fill_(1.0)
        averaged.update_parameters(model)  # the first update copies
        model.weight.fill_(3.0)
        averaged.update_parameters(model)
    assert averaged.module.weight.item() == pytest.approx(0.9 * 1.0 + 0.1 * 3.0)
    assert _averaged_model(model, ema_epochs=0.0, steps_per_epoch=5) is None


def test_ema_keeps_the_average_not_the_raw_weights(tmp_path):
    from atfnn.training import train_fold

    model_cfg, plain_cfg = tiny_cfgs()
    _, ema_cfg = tiny_cfgs("train.ema_epochs=1")
    data = tiny_split()
    cpu = torch.device("cpu")
    plain = train_fold(model_cfg, plain_cfg, LABELS, data, None, tmp_path / "plain", 0, cpu, epochs=2, progress=False)
    ema = train_fold(model_cfg, ema_cfg, LABELS, data, None, tmp_path / "ema", 0, cpu, epochs=2, progress=False)
    raw = torch.load(tmp_path / "ema" / "last.pt", weights_only=True)["model"]
    # The raw weights follow the same trajectory as without averaging; the kept model is their average.
    for name, value in plain.model.state_dict().items():
        torch.testing.assert_close(raw[name], value)
    assert any(not torch.equal(raw[n], v) for n, v in ema.model.state_dict().items() if v.is_floating_point())


def test_ema_resumes_exactly_after_an_interruption(tmp_path):
    from atfnn.training import train_fold

    model_cfg, train_cfg = tiny_cfgs("train.ema_epochs=1")
    data, cpu = tiny_split(), torch.device("cpu")
    straight = train_fold(model_cfg, train_cfg, LABELS, data, None, tmp_path / "a", 0, cpu, epochs=3, progress=False)
    train_fold(model_cfg, train_cfg, LABELS, data, None, tmp_path / "b", 0, cpu, epochs=1, progress=False)
    resumed = train_fold(model_cfg, train_cfg, LABELS, data, None, tmp_path / "b", 0, cpu, epochs=3, progress=False)
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value)


def test_ema_cannot_resume_a_checkpoint_written_without_it(tmp_path):
    from atfnn.training import train_fold

    model_cfg, plain_cfg = tiny_cfgs()
    _, ema_cfg = tiny_cfgs("train.ema_epochs=1")
    data, cpu = tiny_split(), torch.device("cpu")
    train_fold(model_cfg, plain_cfg, LABELS, data, None, tmp_path, 0, cpu, epochs=1, progress=False)
    with pytest.raises(ConfigError, match="ema_epochs"):
        train_fold(model_cfg, ema_cfg, LABELS, data, None, tmp_path, 0, cpu, epochs=2, progress=False)


def test_negative_ema_epochs_is_a_config_error():
    with pytest.raises(ConfigError, match="train.ema_epochs"):
        load_config(overrides=["train.ema_epochs=-1"])


# --- speaker-adversarial training (train.speaker_adversarial) ------------------------------------------------------

def speaker_split(n: int = 12):
    data = tiny_split(n)
    data.spk = torch.arange(n) % 3
    return data


def test_gradient_reversal_is_the_identity_forward_and_negates_scaled_gradients():
    from atfnn.training import GradientReversal

    x = torch.randn(4, 3, requires_grad=True)
    out = GradientReversal.apply(x, 0.25)
    assert torch.equal(out, x)
    out.backward(torch.ones_like(out) * 2.0)
    assert torch.equal(x.grad, torch.full_like(x, -0.5))


def test_adversarial_scale_follows_the_dann_ramp():
    from atfnn.training import adversarial_scale

    assert adversarial_scale(1.0, 0.0) == 0.0
    assert adversarial_scale(1.0, 0.5) == pytest.approx(2 / (1 + np.exp(-5)) - 1)  # 0.98661
    assert adversarial_scale(0.3, 1.0) == pytest.approx(0.3, abs=1e-4)


def test_the_network_receives_the_speaker_gradient_reversed():
    from atfnn.model import build_model
    from atfnn.training import SpeakerAdversary

    model_cfg, _ = tiny_cfgs()
    model = build_model(model_cfg, 2).eval()
    adversary = SpeakerAdversary(model.embedding_size, 3)
    x, spk = torch.randn(4, F, T), torch.tensor([0, 1, 2, 0])

    def grads(scale: float) -> list[torch.Tensor]:
        model.zero_grad()
        h, _ = model.embed(x)
        logits = adversary(h, scale) if scale else adversary.net(h)
        torch.nn.functional.cross_entropy(logits, spk).backward()
        return [p.grad.clone() for p in model.t_encoder.parameters()]

    plain, reversed_ = grads(0.0), grads(0.5)
    for g_plain, g_rev in zip(plain, reversed_):
        torch.testing.assert_close(g_rev, -0.5 * g_plain)
    assert any(g.abs().sum() > 0 for g in plain)


def test_speaker_adversary_changes_training_and_keeps_a_plain_model(tmp_path):
    from atfnn.training import LOG, train_fold

    model_cfg, plain_cfg = tiny_cfgs()
    _, adv_cfg = tiny_cfgs("train.speaker_adversarial=1")
    data, cpu = speaker_split(), torch.device("cpu")
    plain = train_fold(model_cfg, plain_cfg, LABELS, data, None, tmp_path / "plain", 0, cpu, epochs=2, progress=False)
    adv = train_fold(model_cfg, adv_cfg, LABELS, data, None, tmp_path / "adv", 0, cpu, epochs=2, progress=False)
    assert adv.model.state_dict().keys() == plain.model.state_dict().keys()  # the adversary is not part of the model
    assert any(not torch.equal(adv.model.state_dict()[n], v) for n, v in plain.model.state_dict().items())
    rows = (tmp_path / "adv" / LOG).read_text().splitlines()
    assert "speaker_loss" in rows[0] and all(r.split(",")[-1] for r in rows[1:])
    speaker_losses = [row["speaker_loss"] for row in adv.history]
    assert all(0 < v < 5 for v in speaker_losses)  # 3 speakers: ln 3 = 1.1 at chance
    assert all("speaker_loss" not in row for row in plain.history)


def test_speaker_adversary_resumes_exactly_after_an_interruption(tmp_path, monkeypatch):
    from atfnn import training
    from atfnn.training import train_fold

    model_cfg, train_cfg = tiny_cfgs("train.speaker_adversarial=1")
    data, cpu = speaker_split(), torch.device("cpu")
    straight = train_fold(model_cfg, train_cfg, LABELS, data, None, tmp_path / "a", 0, cpu, epochs=3, progress=False)
    # Interrupted after its first checkpoint, within the same 3-epoch run (the ramp depends on the epoch count).
    real_save = training._save_checkpoint

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_fold(model_cfg, train_cfg, LABELS, data, None, tmp_path / "b", 0, cpu, epochs=3, progress=False)
    monkeypatch.setattr(training, "_save_checkpoint", real_save)
    resumed = train_fold(model_cfg, train_cfg, LABELS, data, None, tmp_path / "b", 0, cpu, epochs=3, progress=False)
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value)
    assert [r["speaker_loss"] for r in resumed.history] == [r["speaker_loss"] for r in straight.history]


@pytest.mark.parametrize("first, second", [("", "train.speaker_adversarial=1"), ("train.speaker_adversarial=1", "")])
def test_speaker_adversary_cannot_resume_a_checkpoint_of_the_other_kind(tmp_path, first, second):
    from atfnn.training import train_fold

    data, cpu = speaker_split(), torch.device("cpu")
    model_cfg, cfg_a = tiny_cfgs(*filter(None, [first]))
    _, cfg_b = tiny_cfgs(*filter(None, [second]))
    train_fold(model_cfg, cfg_a, LABELS, data, None, tmp_path, 0, cpu, epochs=1, progress=False)
    with pytest.raises(ConfigError, match="train.speaker_adversarial"):
        train_fold(model_cfg, cfg_b, LABELS, data, None, tmp_path, 0, cpu, epochs=2, progress=False)


def test_speaker_adversary_needs_two_speakers(tmp_path):
    from atfnn.training import train_fold

    model_cfg, train_cfg = tiny_cfgs("train.speaker_adversarial=1")
    data = tiny_split()
    with pytest.raises(ConfigError, match="at least 2 speakers"):
        train_fold(model_cfg, train_cfg, LABELS, data, None, tmp_path, 0, torch.device("cpu"), epochs=1, progress=False)
    data.spk = torch.zeros(len(data), dtype=torch.long)
    with pytest.raises(ConfigError, match="got 1"):
        train_fold(model_cfg, train_cfg, LABELS, data, None, tmp_path, 0, torch.device("cpu"), epochs=1, progress=False)


def test_negative_speaker_adversarial_is_a_config_error():
    with pytest.raises(ConfigError, match="train.speaker_adversarial"):
        load_config(overrides=["train.speaker_adversarial=-0.5"])


def test_adversary_gets_its_own_learning_rate():
    from atfnn.model import build_model
    from atfnn.training import SpeakerAdversary, _optimizer

    model_cfg, same = tiny_cfgs("train.speaker_adversarial=1")
    _, own = tiny_cfgs("train.speaker_adversarial=1", "train.adversary_lr=0.01")
    model = build_model(model_cfg, 2)
    adversary = SpeakerAdversary(model.embedding_size, 3)
    assert [g["lr"] for g in _optimizer(model, same, adversary).param_groups] == [same.lr, same.lr]
    assert [g["lr"] for g in _optimizer(model, own, adversary).param_groups] == [own.lr, 0.01]
    assert len(_optimizer(model, own).param_groups) == 1
    with pytest.raises(ConfigError, match="train.adversary_lr"):
        load_config(overrides=["train.adversary_lr=-1"])


# --- per-speaker standardisation of h' (model.embedding_norm) ------------------------------------------------------

def test_predict_segments_standardises_each_speaker_over_all_its_segments_not_per_batch(monkeypatch):
    from atfnn import training

    model_cfg, _ = tiny_cfgs("model.embedding_norm=speaker")
    torch.manual_seed(0)
    model = training.build_model(model_cfg, len(LABELS)).eval()
    data = speaker_split(10)
    monkeypatch.setattr(training, "EVAL_BATCH", 3)  # statistics must span the batches
    probs = training.predict_segments(model, data.x, torch.device("cpu"), speakers=data.spk)
    with torch.no_grad():
        h, _ = model.embed(data.x)
        expected = torch.softmax(model.classify(h, data.spk), dim=1).numpy()
        ungrouped = torch.softmax(model(data.x), dim=1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert not np.allclose(probs, ungrouped, atol=1e-3)  # without speakers: the running estimates


def test_embedding_norm_trains_on_speaker_groups_and_resumes_exactly(tmp_path):
    from atfnn.training import train_fold

    model_cfg, train_cfg = tiny_cfgs("model.embedding_norm=speaker")
    data, cpu = speaker_split(), torch.device("cpu")
    straight = train_fold(model_cfg, train_cfg, LABELS, data, None, tmp_path / "a", 0, cpu, epochs=3, progress=False)
    assert not torch.equal(straight.model.speaker_norm.running_mean, torch.zeros(16))  # estimates were updated
    train_fold(model_cfg, train_cfg, LABELS, data, None, tmp_path / "b", 0, cpu, epochs=1, progress=False)
    resumed = train_fold(model_cfg, train_cfg, LABELS, data, None, tmp_path / "b", 0, cpu, epochs=3, progress=False)
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value)


def test_embedding_norm_needs_the_speaker_index(tmp_path):
    from atfnn.training import train_fold

    model_cfg, train_cfg = tiny_cfgs("model.embedding_norm=speaker")
    with pytest.raises(ConfigError, match="embedding_norm"):
        train_fold(model_cfg, train_cfg, LABELS, tiny_split(), None, tmp_path, 0, torch.device("cpu"), epochs=1,
                   progress=False)


# --- training control flow: early stopping, the kept epoch, class weights -----------------------------------------

def scripted_validation(monkeypatch, scores: list[dict]):
    """Replace the validation scoring by `scores` (one dict per epoch) and record the weights scored each epoch."""
    from atfnn import training

    seen = []

    def fake_evaluate(model, split, labels, device, precision="fp32", method="mean"):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return scores[len(seen) - 1]

    monkeypatch.setattr(training, "evaluate", fake_evaluate)
    return seen


def uar_scores(values: list[float]) -> list[dict]:
    return [{"loss": 1.0, "war": 0.0, "uar": v} for v in values]


def test_early_stopping_stops_after_patience_epochs_without_a_better_score_and_keeps_the_best(tmp_path, monkeypatch):
    from atfnn.training import train_fold

    model_cfg, train_cfg = tiny_cfgs("train.patience=3", "train.epochs=20")
    seen = scripted_validation(monkeypatch, uar_scores([10, 40, 30, 40, 20, 90, 95]))
    result = train_fold(model_cfg, train_cfg, LABELS, tiny_split(), tiny_split(4, seed=1), tmp_path, 0,
                        torch.device("cpu"), progress=False)
    # Epoch 2 is the best; 3, 4 (equal is not better) and 5 are not better: 3 epochs without one, so it stops.
    assert (result.best_epoch, result.epochs, len(seen)) == (2, 5, 5)
    for name, value in result.model.state_dict().items():
        torch.testing.assert_close(value, seen[1][name])
    assert any(not torch.equal(result.model.state_dict()[n], v) for n, v in seen[-1].items())


@pytest.mark.parametrize("metric, expected", [("uar", 3), ("war", 2), ("loss", 4)])
def test_the_kept_epoch_is_the_best_of_the_chosen_metric(tmp_path, monkeypatch, metric, expected):
    from atfnn.training import train_fold

    model_cfg, train_cfg = tiny_cfgs(f"train.select_metric={metric}", "train.patience=10", "train.epochs=5")
    scores = [{"uar": u, "war": w, "loss": l} for u, w, l in
              [(10, 10, 2.0), (20, 50, 1.5), (60, 30, 1.2), (50, 20, 0.9), (40, 40, 1.1)]]
    seen = scripted_validation(monkeypatch, scores)
    result = train_fold(model_cfg, train_cfg, LABELS, tiny_split(), tiny_split(4, seed=1), tmp_path, 0,
                        torch.device("cpu"), progress=False)
    assert (result.best_epoch, result.epochs) == (expected, 5)
    for name, value in result.model.state_dict().items():
        torch.testing.assert_close(value, seen[expected - 1][name])


def test_class_weights_are_inverse_to_the_training_counts():
    from atfnn.training import class_weights

    y = torch.tensor([0, 1, 1, 1, 2, 2])  # counts 1, 3, 2 and an absent class 3
    weights = class_weights(y, 4)
    torch.testing.assert_close(weights, torch.tensor([6 / 3, 6 / 9, 6 / 6, 0.0]))  # total / (count * classes present)
    counts = torch.tensor([1.0, 3.0, 2.0])
    assert torch.allclose(weights[:3] * counts, torch.full((3,), 2.0)), "weight x count is the same for every class"


def test_the_objective_weights_the_loss_by_the_training_counts_only_when_asked():
    from atfnn.model import build_model
    from atfnn.training import Objective

    data = tiny_split(12)
    data.y = torch.tensor([0] * 9 + [1] * 3)
    model_cfg, weighted = tiny_cfgs("train.class_weighting=true")
    _, plain = tiny_cfgs()
    model = build_model(model_cfg, 2)
    torch.testing.assert_close(Objective(model, data, weighted, 2, torch.device("cpu")).weight,
                               torch.tensor([12 / 18, 12 / 6]))
    assert Objective(model, data, plain, 2, torch.device("cpu")).weight is None


# --- learning-rate schedule and step counts -------------------------------------------------------------------------

def recorded_lrs(tmp_path, monkeypatch, *extra: str, epochs: int = 4) -> list[float]:
    from atfnn import training

    model_cfg, train_cfg = tiny_cfgs(*extra)
    lrs = []
    real_step = training.Trainer.step

    def spy(self, idx, state, progress):
        out = real_step(self, idx, state, progress)
        lrs.append(self.optimizer.param_groups[0]["lr"])
        return out

    monkeypatch.setattr(training.Trainer, "step", spy)
    training.train_fold(model_cfg, train_cfg, LABELS, tiny_split(), None, tmp_path, 0, torch.device("cpu"),
                        epochs=epochs, progress=False)
    return lrs


def test_the_default_schedule_is_the_papers_constant_rate(tmp_path, monkeypatch):
    assert recorded_lrs(tmp_path, monkeypatch) == [5e-4] * 12  # 12 segments, batch 4: 3 steps an epoch


def test_cosine_schedule_with_warmup_ramps_up_then_decays_to_the_floor(tmp_path, monkeypatch):
    lrs = recorded_lrs(tmp_path, monkeypatch, "train.lr_schedule=cosine", "train.warmup_epochs=1",
                       "train.min_lr=0.0001", "train.lr=0.001")
    assert lrs[:3] == pytest.approx([0.0001 + 0.0009 * k / 3 for k in (1, 2, 3)])
    import math
    expected = [0.0001 + 0.0009 * 0.5 * (1 + math.cos(math.pi * k / 9)) for k in range(9)]
    assert lrs[3:] == pytest.approx(expected)


def test_plateau_schedule_halves_the_rate_after_epochs_without_improvement(tmp_path, monkeypatch):
    from atfnn import training

    model_cfg, train_cfg = tiny_cfgs("train.lr_schedule=plateau", "train.patience=20", "train.epochs=6")
    scripted_validation(monkeypatch, uar_scores([50, 40, 40, 40, 40, 40]))
    lrs = []
    real_step = training.Trainer.step
    monkeypatch.setattr(training.Trainer, "step", lambda self, *a: (
        out := real_step(self, *a), lrs.append(self.optimizer.param_groups[0]["lr"]))[0])
    training.train_fold(model_cfg, train_cfg, LABELS, tiny_split(), tiny_split(4, seed=1), tmp_path, 0,
                        torch.device("cpu"), progress=False)
    # Epochs 2-4 are not better than epoch 1: from epoch 5 on, half the rate.
    assert lrs == [5e-4] * 12 + [2.5e-4] * 6


def test_steps_are_counted_in_the_log_and_the_result(tmp_path):
    from atfnn.training import LOG, train_fold

    model_cfg, train_cfg = tiny_cfgs()
    result = train_fold(model_cfg, train_cfg, LABELS, tiny_split(10), None, tmp_path, 0, torch.device("cpu"),
                        epochs=3, progress=False)
    assert result.steps == 9  # 10 segments, batch 4: 3 steps an epoch
    rows = [line.split(",") for line in (tmp_path / LOG).read_text().splitlines()]
    column = rows[0].index("step")
    assert [int(r[column]) for r in rows[1:]] == [3, 6, 9]


def test_schedule_options_are_checked_when_the_config_is_read():
    with pytest.raises(ConfigError, match="train.lr_schedule"):
        load_config(overrides=["train.lr_schedule=linear"])
    assert load_config(overrides=["train.lr_schedule=cosine"]).train.lr_schedule == "cosine"


# --- a corrupt checkpoint, leftovers, divergence --------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated"])
def test_an_unreadable_checkpoint_is_named_and_the_fold_starts_again(tmp_path, damage):
    from atfnn.training import CHECKPOINT, train_fold

    model_cfg, train_cfg = tiny_cfgs()
    data, cpu = tiny_split(), torch.device("cpu")
    straight = train_fold(model_cfg, train_cfg, LABELS, data, None, tmp_path / "a", 0, cpu, epochs=2, progress=False)
    fold = tmp_path / "b"
    train_fold(model_cfg, train_cfg, LABELS, data, None, fold, 0, cpu, epochs=1, progress=False)
    checkpoint = fold / CHECKPOINT
    content = checkpoint.read_bytes()
    checkpoint.write_bytes({"empty": b"", "garbage": b"not a checkpoint at all" * 10,
                            "truncated": content[: len(content) // 2]}[damage])
    (fold / ".last.abc123").write_bytes(b"half a checkpoint")  # what a killed save leaves
    messages = []
    again = train_fold(model_cfg, train_cfg, LABELS, data, None, fold, 0, cpu, epochs=2, progress=False,
                       log=messages.append)
    assert len(messages) == 1 and str(checkpoint) in messages[0] and "from scratch" in messages[0]
    assert again.epochs == 2 and [r["train_loss"] for r in again.history] == [r["train_loss"] for r in straight.history]
    assert not list(fold.glob(".last.*")), "leftover temporary checkpoints are removed"


def test_a_diverging_loss_stops_with_the_epoch_and_the_fix(tmp_path):
    from atfnn.errors import TrainingError
    from atfnn.training import train_fold

    model_cfg, train_cfg = tiny_cfgs("train.lr=1e30")
    with pytest.raises(TrainingError, match=r"training diverged at epoch 1 \((loss|weights) .*\); lower train.lr"):
        train_fold(model_cfg, train_cfg, LABELS, tiny_split(), tiny_split(4, seed=1), tmp_path, 0,
                   torch.device("cpu"), epochs=3, progress=False)


def test_resumed_training_time_counts_every_sitting(tmp_path):
    from atfnn.training import CHECKPOINT, train_fold

    model_cfg, train_cfg = tiny_cfgs()
    data, cpu = tiny_split(), torch.device("cpu")
    train_fold(model_cfg, train_cfg, LABELS, data, None, tmp_path, 0, cpu, epochs=1, progress=False)
    payload = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    payload["seconds"] = 1000.0  # as if the first sitting had taken 1000 s
    torch.save(payload, tmp_path / CHECKPOINT)
    resumed = train_fold(model_cfg, train_cfg, LABELS, data, None, tmp_path, 0, cpu, epochs=2, progress=False)
    assert resumed.seconds - resumed.sitting_seconds == pytest.approx(1000.0)
    assert 1000.0 < resumed.seconds
