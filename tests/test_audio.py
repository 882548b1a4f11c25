"""The front end of section III-C: loading, resampling, log-Mel and segmenting."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from atfnn.audio import (
    TruncatedAudioWarning, band_centres, features, load_audio, log_mel_spectrogram, pad_value, prepare_waveform, segment,
    segment_starts, spectrogram,
)
from atfnn.config import FrontEndConfig
from atfnn.errors import ATFNNError, AudioError, ConfigError


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_paper_defaults():
    cfg = FrontEndConfig()
    assert (cfg.sample_rate, cfg.win_length, cfg.hop_length, cfg.n_fft, cfg.n_mels, cfg.segment_frames) == (
        16000, 320, 160, 512, 80, 128,
    )


def test_log_mel_matches_librosa():
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    ours = log_mel_spectrogram(wave).numpy()
    ref = librosa.feature.melspectrogram(
        y=wave, sr=16000, n_fft=512, win_length=320, hop_length=160, window="hamming", n_mels=80
    )
    assert ours.shape == (80, 1 + 16000 // 160)
    np.testing.assert_allclose(ours, np.log(np.maximum(ref, 1e-6)), atol=1e-3)


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0])
def test_sine_peaks_in_its_mel_band(freq):
    logmel = log_mel_spectrogram(tone(freq, 1.0, 16000))
    peak = int(logmel[:, 20:-20].mean(dim=1).argmax())
    centres = librosa.mel_frequencies(n_mels=80 + 2, fmin=0, fmax=8000)[1:-1]
    assert abs(peak - int(np.argmin(np.abs(centres - freq)))) <= 1


def test_batched_log_mel_equals_single():
    waves = torch.randn(3, 8000)
    batch = log_mel_spectrogram(waves)
    assert batch.shape == (3, 80, 51)
    assert torch.allclose(batch[1], log_mel_spectrogram(waves[1]), atol=1e-4)


@pytest.mark.parametrize("rate", [22050, 44100, 48000, 8000])
def test_resampling_to_16k(tmp_path, rate):
    path = tmp_path / f"a{rate}.wav"
    sf.write(path, tone(1000.0, 2.0, rate), rate)
    wave = load_audio(path)
    assert abs(len(wave) - 32000) <= 2
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) * 16000 / len(wave) - 1000.0) < 2.0


def test_stereo_is_downmixed(tmp_path):
    left, right = tone(440, 0.5, 16000), tone(880, 0.5, 16000)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([left, right], axis=1), 16000)
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-4)
    # a (channels, samples) array is recognised too
    np.testing.assert_allclose(prepare_waveform(np.stack([left, right]), 16000), (left + right) / 2, atol=1e-6)


def test_ogg_loads(tmp_path):
    path = tmp_path / "a.ogg"
    sf.write(path, tone(500, 1.0, 16000), 16000, format="OGG", subtype="VORBIS")
    assert abs(len(load_audio(path)) - 16000) < 200


@pytest.mark.parametrize(
    ("n_frames", "count"), [(1, 1), (127, 1), (128, 1), (129, 2), (1000, 15), (256, 3), (192, 2)]
)
def test_segment_counts(n_frames, count):
    starts = segment_starts(n_frames, 128, 64)
    assert len(starts) == count
    out = segment(torch.randn(80, n_frames))
    assert out.shape == (count, 80, 128)
    if n_frames >= 128:
        assert starts[-1] == n_frames - 128  # the tail is covered, aligned to the end


def test_segments_are_slices_and_padding_modes():
    logmel = torch.arange(80 * 300, dtype=torch.float32).reshape(80, 300)
    segs = segment(logmel)
    assert torch.equal(segs[1], logmel[:, 64:192]) and torch.equal(segs[-1], logmel[:, -128:])
    short = torch.randn(80, 50)
    padded = segment(short)
    assert torch.equal(padded[0, :, :50], short)
    assert torch.allclose(padded[0, :, 50:], torch.full((80, 78), float(np.log(1e-6))))
    repeated = segment(short, FrontEndConfig(pad_short="repeat"))
    assert torch.equal(repeated[0, :, 50:100], short)
    with pytest.raises(AudioError, match="shorter than one 128-frame segment"):
        segment(short, FrontEndConfig(pad_short="drop"), source="short.wav")
    assert segment_starts(300, 128, 128) == [0, 128, 172]


def test_features_end_to_end_from_array_at_other_rate():
    segs = features(tone(300, 3.0, 48000), sample_rate=48000)
    assert segs.shape == (4, 80, 128)  # 301 frames -> starts 0, 64, 128, 173


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"RIFF....WAVEfmt garbage", "cannot be decoded"),
    ],
)
def test_bad_files_raise_audio_error_naming_the_file(tmp_path, content, reason):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match=f"bad.wav.*{reason}") as info:
        load_audio(path)
    assert isinstance(info.value, ATFNNError) and info.value.source.endswith("bad.wav")


def test_missing_zero_length_nan_silent_and_too_short(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "nope.wav")
    empty = tmp_path / "zero.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="zero.wav.*no samples"):
        load_audio(empty)
    nan = tmp_path / "nan.wav"
    data = tone(100, 0.5, 16000)
    data[100] = np.nan
    sf.write(nan, data, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav.*NaN"):
        load_audio(nan)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="silent.wav.*silence"):
        load_audio(silent)
    short = tmp_path / "short.wav"
    sf.write(short, tone(100, 0.01, 16000), 16000)
    with pytest.raises(AudioError, match="short.wav.*shorter than one 320-sample"):
        features(short)


# ----------------------------------------------------------------------------------------------------- front-end options
def test_htk_scale_puts_band_50_where_the_paper_does():
    slaney, htk = band_centres(FrontEndConfig()), band_centres(FrontEndConfig(mel_scale="htk"))
    assert slaney.shape == htk.shape == (80,)
    assert abs(htk[50] - 2721.2) < 1 and abs(slaney[50] - 2527.7) < 1  # "mel band 50 ... around 2 700Hz"
    np.testing.assert_allclose(htk, librosa.mel_frequencies(82, fmax=8000, htk=True)[1:-1])
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    ref = librosa.feature.melspectrogram(
        y=wave, sr=16000, n_fft=512, win_length=320, hop_length=160, window="hamming", n_mels=80, htk=True
    )
    ours = log_mel_spectrogram(wave, FrontEndConfig(mel_scale="htk")).numpy()
    np.testing.assert_allclose(ours, np.log(np.maximum(ref, 1e-6)), atol=1e-3)
    assert not np.allclose(ours, log_mel_spectrogram(wave).numpy(), atol=1e-3)
    logmel = log_mel_spectrogram(tone(2721.0, 1.0, 16000), FrontEndConfig(mel_scale="htk"))
    assert abs(int(logmel[:, 20:-20].mean(dim=1).argmax()) - 50) <= 1


@pytest.mark.parametrize(
    ("key", "value"),
    [("mel_scale", "bark"), ("trim_db", -3.0), ("floor_db", float("nan")), ("train_segment_hop", 500),
     ("pad_short", "zero")],
)
def test_unknown_front_end_values_name_their_key(key, value):
    with pytest.raises(ConfigError, match=f"frontend.{key}"):
        log_mel_spectrogram(tone(300, 0.5, 16000), FrontEndConfig(**{key: value}))


def padded_tone(lead: float, tail: float, gain: float = 1.0) -> np.ndarray:
    """Digital silence, a 1 s tone with a little noise, digital silence."""
    voiced = tone(440, 1.0, 16000) + 0.01 * np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    return np.concatenate([np.zeros(int(lead * 16000)), gain * voiced, np.zeros(int(tail * 16000))]).astype(np.float32)


def test_trim_db_drops_leading_and_trailing_silence_on_frames():
    wave = padded_tone(0.5, 0.3)
    full = log_mel_spectrogram(wave)
    cfg = FrontEndConfig(trim_db=60)
    spec = spectrogram(wave, cfg)
    # The tone spans frames 50..150; a frame is centred on its sample, so its window reaches 1-2 frames either side.
    assert 47 <= spec.first_frame <= 50 and 100 <= spec.logmel.shape[1] <= 106
    torch.testing.assert_close(spec.logmel, full[:, spec.first_frame : spec.first_frame + spec.logmel.shape[1]])
    assert torch.equal(log_mel_spectrogram(wave, cfg), spec.logmel)
    assert spectrogram(wave, FrontEndConfig()).logmel.shape == full.shape  # 0 = off
    assert torch.equal(features(wave), segment(full))
    assert features(wave, cfg).shape[0] < features(wave).shape[0]


def test_floor_db_makes_the_features_independent_of_the_recording_level():
    loud, quiet = padded_tone(0.4, 0.4), padded_tone(0.4, 0.4, gain=0.01)  # quiet is 40 dB lower
    relative = FrontEndConfig(floor_db=80)
    shift = log_mel_spectrogram(quiet, relative) - log_mel_spectrogram(loud, relative)
    torch.testing.assert_close(shift, torch.full_like(shift, float(np.log(1e-4))), atol=2e-3, rtol=0)
    absolute = log_mel_spectrogram(quiet) - log_mel_spectrogram(loud)
    # The absolute floor does not move with the level: the silence stays at log(1e-6) while the voice drops 40 dB.
    assert float(absolute.max()) == 0.0 and float(absolute.min()) < float(np.log(1e-4)) + 0.01
    logmel = log_mel_spectrogram(loud, relative)
    assert float(logmel.min()) == pytest.approx(float(logmel.max()) - 80 * np.log(10) / 10, abs=1e-4)
    # Silence padding of a short utterance is its own floor.
    short = segment(logmel[:, :50], relative)
    assert float(short[0, 0, 60]) == pytest.approx(pad_value(logmel[:, :50], relative))
    assert pad_value(logmel, FrontEndConfig()) == pytest.approx(np.log(1e-6))


# ----------------------------------------------------------------------------------------------------- audio warts
def test_truncated_wav_is_used_with_a_warning_naming_it(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, tone(300, 1.0, 16000), 16000, subtype="PCM_16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_audio(path)) == 16000  # intact: no warning
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.warns(TruncatedAudioWarning, match=r"cut.wav: truncated: its header declares 32000 bytes"):
        wave = load_audio(path)
    assert 7900 < len(wave) < 8100


def test_resampling_cannot_expand_a_tiny_file_without_limit(tmp_path):
    path = tmp_path / "tiny.wav"
    sf.write(path, tone(10, 1.0, 100), 100)  # a header claiming 100 Hz: 160-fold at 16 kHz
    with pytest.raises(AudioError, match=r"tiny.wav: sample rate 100 Hz is too low.*160-fold.*at most 16-fold"):
        load_audio(path)
    with pytest.raises(AudioError, match=r"<array>: sample rate 1 Hz"):
        prepare_waveform(np.ones(244, dtype=np.float32), 1)
    assert len(prepare_waveform(tone(100, 1.0, 1000), 1000)) == 16000  # 16-fold is the limit, still allowed


def test_permission_denied_is_reported_as_such(tmp_path, monkeypatch):
    path = tmp_path / "locked.wav"
    sf.write(path, tone(300, 0.5, 16000), 16000)
    real_open = Path.open

    def denied(self, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(AudioError, match=r"locked.wav: cannot be read \(Permission denied\)") as info:
        load_audio(path)
    assert "decoded" not in str(info.value)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_permission_denied_on_a_real_file(tmp_path):
    path = tmp_path / "locked.wav"
    sf.write(path, tone(300, 0.5, 16000), 16000)
    path.chmod(0)
    with pytest.raises(AudioError, match=r"locked.wav: cannot be read \(Permission denied\)"):
        load_audio(path)
