"""The front end of section III-C: loading, resampling, log-Mel and segmenting."""
from __future__ import annotations

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from atfnn.audio import features, load_audio, log_mel_spectrogram, prepare_waveform, segment, segment_starts
from atfnn.config import FrontEndConfig
from atfnn.errors import AudioError, ATFNNError


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
