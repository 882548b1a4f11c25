"""The embedded synthetic emotional-speech corpus: a small, seeded, speech-like stand-in for CASIA or EmoDB.

Speakers differ in base pitch, vocal-tract length, brightness, loudness and tempo; emotions change what the
literature (and the ATFNN paper) says they change: pitch level and range, energy, syllable rate and high-frequency
energy. Every parameter also varies per utterance, so the classes overlap and the task is learnable but not trivial.
Each utterance is a string of syllables: a glottal pulse train with a natural F0 contour (declination, per-syllable
accents, jitter) through 4 formant resonators of a vowel, with short noise consonants and pauses between syllables.
"""
from __future__ import annotations

import csv
import functools
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

from atfnn.corpora.base import CorpusReport
from atfnn.errors import ConfigError, CorpusError

NAME = "synthetic"
LABELS = ("angry", "happy", "neutral", "sad")
MANIFEST = "manifest.csv"
SPEC_FILE = "spec.json"
# Bump when the generator's output changes, so stamped corpora from an older version are regenerated.
GENERATOR_VERSION = 1

# Male formants (Hz) of five vowels after Peterson & Barney (1952); a speaker scales them by its vocal-tract factor.
VOWELS = np.array([
    [730.0, 1090.0, 2440.0, 3400.0],  # a
    [530.0, 1840.0, 2480.0, 3500.0],  # e
    [270.0, 2290.0, 3010.0, 3700.0],  # i
    [570.0, 840.0, 2410.0, 3300.0],   # o
    [300.0, 870.0, 2240.0, 3300.0],   # u
])
F0_RANGE_HZ = {"M": (100.0, 130.0), "F": (190.0, 240.0)}  # base pitch of male and female speakers
FORMANT_BANDWIDTHS = np.array([80.0, 100.0, 150.0, 250.0])
# Fricative noise bands (Hz): s, sh, f, h.
FRICATIVES = ((4000.0, 7500.0), (2300.0, 5000.0), (1200.0, 7500.0), (500.0, 3500.0))
SHELF_HZ = 1500.0            # corner of the high-frequency shelf that carries the emotion's spectral tilt
REFERENCE_RMS_DB = -32.0     # speech level (dBFS RMS) of a neutral utterance before the recording gain
NOISE_DB = -62.0             # background noise level (dBFS RMS) before the recording gain
RECORDING_GAIN_DB = 6.0      # +- range of the random per-utterance gain, so absolute level is not a clean cue
PEAK_LIMIT = 0.99
DEFAULT_SECONDS = (1.5, 2.5)  # utterance length range; longer than one 128-frame (1.28 s) segment
GAP_RATE = 4.2               # syllables/s at which pauses are as drawn; faster speakers pause less


@dataclass(frozen=True)
class EmotionStyle:
    """How an emotion shifts a speaker's voice (means; each utterance draws around them)."""

    f0_shift_st: float    # pitch level, semitones relative to the speaker's base F0
    f0_range_st: float    # size of the per-syllable pitch accents, semitones
    level_db: float       # vocal effort, dB relative to neutral
    syllable_rate: float  # syllables per second
    hf_db: float          # gain of the band above SHELF_HZ, dB (spectral tilt)
    breath: float         # aspiration noise relative to the voiced source
    pause_scale: float    # multiplies pause lengths


EMOTIONS: dict[str, EmotionStyle] = {
    "angry": EmotionStyle(3.0, 4.0, 6.0, 5.4, 8.0, 0.08, 0.7),
    "happy": EmotionStyle(5.0, 6.5, 2.0, 4.8, 3.0, 0.05, 0.85),
    "neutral": EmotionStyle(0.0, 2.5, 0.0, 4.0, 0.0, 0.04, 1.0),
    "sad": EmotionStyle(-3.0, 1.0, -5.0, 3.0, -7.0, 0.07, 1.6),
}
# Stable per-emotion seed component: an emotion's files do not change when the spec lists other emotions.
EMOTION_IDS = {name: i for i, name in enumerate(EMOTIONS)}


@dataclass(frozen=True)
class SpeakerParams:
    """One synthetic speaker's voice."""

    name: str
    gender: str            # "F" or "M"
    f0_hz: float           # base pitch
    tract: float           # vocal-tract factor multiplying the male formants (shorter tract = higher formants)
    level_db: float        # habitual loudness offset
    rate: float            # habitual tempo factor
    hf_db: float           # habitual brightness offset
    breath: float          # habitual breathiness
    range_scale: float     # habitual pitch-range factor


@dataclass(frozen=True)
class SyntheticSpec:
    """What `generate` builds; stamped into spec.json so a matching corpus is reused."""

    speakers: int = 4
    utterances_per_class: int = 12
    emotions: tuple[str, ...] = LABELS
    sample_rate: int = 16000
    min_seconds: float = DEFAULT_SECONDS[0]
    max_seconds: float = DEFAULT_SECONDS[1]
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "emotions", tuple(self.emotions))  # a list from a config file is fine too
        unknown = [e for e in self.emotions if e not in EMOTIONS]
        if unknown:
            raise ConfigError(f"Unknown synthetic emotion(s) {unknown}; available: {', '.join(EMOTIONS)}")
        if not self.emotions or len(set(self.emotions)) != len(self.emotions):
            raise ConfigError(f"emotions must be a non-empty list without repeats, got {list(self.emotions)}")
        if self.speakers < 1 or self.utterances_per_class < 1:
            raise ConfigError("speakers and utterances_per_class must be at least 1, "
                              f"got {self.speakers} and {self.utterances_per_class}")
        if self.sample_rate < 8000:
            raise ConfigError(f"sample_rate must be at least 8000 Hz, got {self.sample_rate}")
        if not 0.5 <= self.min_seconds <= self.max_seconds:
            raise ConfigError("need 0.5 <= min_seconds <= max_seconds, "
                              f"got min_seconds={self.min_seconds}, max_seconds={self.max_seconds}")

    def stamp(self) -> dict:
        """The JSON-ready identity of the corpus this spec produces."""
        return {"generator_version": GENERATOR_VERSION, **asdict(self), "emotions": list(self.emotions)}


# ----------------------------------------------------------------------------------------------- speakers

def _draw_speaker(rng: np.random.Generator, name: str, gender: str, f0_hz: float) -> SpeakerParams:
    """One speaker's voice around a given base pitch; speaker spread is about as large as the emotion effects."""
    return SpeakerParams(
        name=name,
        gender=gender,
        f0_hz=f0_hz,
        tract=rng.uniform(1.12, 1.22) if gender == "F" else rng.uniform(0.94, 1.04),
        level_db=rng.uniform(-3.0, 3.0),
        rate=rng.uniform(0.85, 1.15),
        hf_db=rng.uniform(-3.0, 3.0),
        breath=rng.uniform(0.02, 0.06),
        range_scale=rng.uniform(0.75, 1.25),
    )


def make_speakers(spec: SyntheticSpec) -> list[SpeakerParams]:
    """The spec's speakers, alternating male and female, each seeded from (seed, index) alone.

    Speakers of one gender split its F0 range into equal slots, one each, so no two share a base pitch.
    """
    genders = ["M" if i % 2 == 0 else "F" for i in range(spec.speakers)]
    speakers = []
    for i, gender in enumerate(genders):
        rng = np.random.default_rng([spec.seed, 1, i])
        low, high = F0_RANGE_HZ[gender]
        slot, slots = genders[:i].count(gender), genders.count(gender)
        f0_hz = low + (slot + rng.uniform(0.2, 0.8)) / slots * (high - low)
        speakers.append(_draw_speaker(rng, f"spk{i + 1:02d}", gender, f0_hz))
    return speakers


# ----------------------------------------------------------------------------------------------- synthesis

@dataclass
class _Plan:
    """One utterance's draws: the emotion style realised for this speaker and this utterance."""

    f0_st: float       # base pitch, semitones re 1 Hz
    range_st: float
    level_db: float
    rate: float
    hf_db: float
    breath: float
    pause_scale: float
    jitter: float
    declination_st: float


def _plan(rng: np.random.Generator, speaker: SpeakerParams, style: EmotionStyle) -> _Plan:
    return _Plan(
        f0_st=12.0 * np.log2(speaker.f0_hz) + style.f0_shift_st + rng.normal(0.0, 1.2),
        range_st=style.f0_range_st * speaker.range_scale * rng.lognormal(0.0, 0.25),
        level_db=style.level_db + speaker.level_db + rng.normal(0.0, 2.0),
        rate=style.syllable_rate * speaker.rate * rng.lognormal(0.0, 0.1),
        hf_db=style.hf_db + speaker.hf_db + rng.normal(0.0, 2.0),
        breath=(style.breath + speaker.breath) * rng.lognormal(0.0, 0.3),
        pause_scale=style.pause_scale * rng.lognormal(0.0, 0.2),
        jitter=rng.uniform(0.004, 0.012),
        declination_st=rng.uniform(1.0, 3.5),
    )


def _smooth_noise(rng: np.random.Generator, n: int, sample_rate: int, rate_hz: float) -> np.ndarray:
    """Unit-variance noise that changes about `rate_hz` times per second (linear interpolation of knots)."""
    knots = max(2, int(n * rate_hz / sample_rate) + 2)
    return np.interp(np.linspace(0.0, knots - 1, n), np.arange(knots), rng.standard_normal(knots))


def _envelope(n: int, attack: int, decay: int) -> np.ndarray:
    """Raised-cosine attack and decay around a flat sustain."""
    env = np.ones(n)
    attack, decay = min(attack, n // 2), min(decay, n // 2)
    env[:attack] = 0.5 - 0.5 * np.cos(np.pi * np.arange(attack) / max(attack, 1))
    env[n - decay:] = 0.5 + 0.5 * np.cos(np.pi * np.arange(decay) / max(decay, 1))
    return env


def _formant_sos(formants: np.ndarray, sample_rate: int) -> np.ndarray:
    """Cascade of unity-DC-gain digital resonators (Klatt 1980), one second-order section per formant."""
    keep = formants < 0.45 * sample_rate
    f, bw = formants[keep], FORMANT_BANDWIDTHS[: len(formants)][keep]
    c = -np.exp(-2.0 * np.pi * bw / sample_rate)
    b = 2.0 * np.exp(-np.pi * bw / sample_rate) * np.cos(2.0 * np.pi * f / sample_rate)
    a = 1.0 - b - c
    zeros = np.zeros_like(a)
    return np.stack([a, zeros, zeros, np.ones_like(a), -b, -c], axis=1)


def _syllable(rng: np.random.Generator, f0_hz: np.ndarray, formants: np.ndarray, plan: _Plan,
              sample_rate: int) -> np.ndarray:
    """One voiced syllable: pulse train at the given F0 track, glottal shaping, aspiration, vowel formants."""
    n = len(f0_hz)
    phase = np.cumsum(f0_hz / sample_rate)
    pulses = np.flatnonzero(np.diff(np.floor(phase), prepend=0.0) > 0)
    source = np.zeros(n)
    source[pulses] = 1.0 + 0.05 * rng.standard_normal(len(pulses))  # shimmer
    # Glottal pulse: a double pole near DC (-12 dB/oct), then lip radiation (+6 dB/oct).
    source = signal.lfilter([1.0], [1.0, -1.9, 0.9025], source)
    source = np.diff(source, prepend=0.0)
    rms = np.sqrt(np.mean(source**2)) + 1e-12
    # Aspiration: noise gated by the glottal cycle, so breathy voice stays voiced.
    gate = 0.6 + 0.4 * np.cos(2.0 * np.pi * phase)
    source += plan.breath * rms * 4.0 * gate * rng.standard_normal(n)
    attack = int(rng.uniform(0.01, 0.03) * sample_rate)
    decay = int(rng.uniform(0.03, 0.07) * sample_rate)
    source *= _envelope(n, attack, decay)
    tail = int(0.03 * sample_rate)  # let the resonators ring out
    return signal.sosfilt(_formant_sos(formants, sample_rate), np.concatenate([source, np.zeros(tail)]))


@functools.lru_cache(maxsize=None)
def _fricative_sos(index: int, sample_rate: int) -> np.ndarray:
    """Band-pass of one fricative (cached: designing it costs more than filtering with it)."""
    low, high = FRICATIVES[index]
    high = min(high, 0.45 * sample_rate)
    low = min(low, 0.5 * high)
    return signal.butter(2, [low, high], btype="bandpass", fs=sample_rate, output="sos")


def _consonant(rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """A short unvoiced fricative: band-passed noise under a smooth envelope."""
    n = int(rng.uniform(0.04, 0.10) * sample_rate)
    sos = _fricative_sos(int(rng.integers(len(FRICATIVES))), sample_rate)
    noise = signal.sosfilt(sos, rng.standard_normal(n))
    return noise * _envelope(n, n // 3, n // 3)


def _f0_track(rng: np.random.Generator, plan: _Plan, n: int, total: int, start: int,
              sample_rate: int) -> np.ndarray:
    """F0 (Hz) over one syllable: declination over the utterance + a rise-fall accent + drift and jitter."""
    t = (start + np.arange(n)) / total
    accent = plan.range_st * rng.uniform(0.2, 1.0) * (1.0 if rng.random() < 0.8 else -0.5)
    peak = rng.uniform(0.3, 0.7)  # where in the syllable the accent peaks
    u = np.arange(n) / max(n - 1, 1)
    bump = np.exp(-0.5 * ((u - peak) / 0.25) ** 2)
    drift = 0.3 * _smooth_noise(rng, n, sample_rate, 8.0)
    st = plan.f0_st - plan.declination_st * t + accent * bump + drift
    jitter = 1.0 + plan.jitter * _smooth_noise(rng, n, sample_rate, 200.0)
    return 2.0 ** (st / 12.0) * jitter


def _high_shelf(x: np.ndarray, gain_db: float, sample_rate: int) -> np.ndarray:
    """Scale the band above SHELF_HZ by gain_db: complementary one-pole split, so 0 dB leaves x unchanged."""
    pole = np.exp(-2.0 * np.pi * SHELF_HZ / sample_rate)
    low = signal.lfilter([1.0 - pole], [1.0, -pole], x)
    return low + 10.0 ** (gain_db / 20.0) * (x - low)


def synthesize_utterance(rng: np.random.Generator, speaker_params: SpeakerParams, emotion: str,
                         sample_rate: int = 16000, seconds: float | None = None) -> np.ndarray:
    """One utterance of `speaker_params` speaking with `emotion`, as float32 in [-1, 1].

    `seconds` defaults to a draw from DEFAULT_SECONDS. All randomness comes from `rng`, so a seeded rng gives the
    same array.
    """
    if emotion not in EMOTIONS:
        raise ConfigError(f"Unknown synthetic emotion '{emotion}'; available: {', '.join(EMOTIONS)}")
    seconds = rng.uniform(*DEFAULT_SECONDS) if seconds is None else seconds
    plan = _plan(rng, speaker_params, EMOTIONS[emotion])
    total = int(round(seconds * sample_rate))
    voiced = np.zeros(total + sample_rate)  # headroom for tails; cut at the end
    unvoiced = np.zeros_like(voiced)
    formant_scale = speaker_params.tract * rng.uniform(0.97, 1.03)
    pos = int(rng.uniform(0.05, 0.2) * sample_rate)
    end = total - int(0.1 * sample_rate)
    while True:
        consonant = _consonant(rng, sample_rate) if rng.random() < 0.6 else None
        syllable_s = rng.uniform(0.55, 0.8) / plan.rate
        n = int(syllable_s * sample_rate)
        need = n + (len(consonant) if consonant is not None else 0)
        if pos + need > end:
            break
        if consonant is not None:
            unvoiced[pos:pos + len(consonant)] += consonant * rng.uniform(0.2, 0.5)
            pos += len(consonant)
        vowel = VOWELS[rng.integers(len(VOWELS))] * formant_scale
        f0 = _f0_track(rng, plan, n, total, pos, sample_rate)
        stress = 10.0 ** (rng.uniform(-4.0, 2.0) / 20.0)
        syllable = _syllable(rng, f0, vowel, plan, sample_rate) * stress
        voiced[pos:pos + len(syllable)] += syllable
        pos += n
        # Short gaps inside a phrase, a longer pause now and then.
        gap = rng.uniform(0.15, 0.35) if rng.random() < 0.15 else rng.uniform(0.0, 0.05)
        pos += int(gap * plan.pause_scale * GAP_RATE / plan.rate * sample_rate)
    voiced, unvoiced = voiced[:total], unvoiced[:total]
    return _mix(rng, voiced, unvoiced, plan, sample_rate)


def _mix(rng: np.random.Generator, voiced: np.ndarray, unvoiced: np.ndarray, plan: _Plan,
         sample_rate: int) -> np.ndarray:
    """Set the vocal effort and tilt, add room noise, apply a random recording gain, limit the peak."""
    voiced_rms = np.sqrt(np.mean(voiced**2)) + 1e-12
    speech = voiced + unvoiced * voiced_rms  # consonants ~10-20 dB under the vowels at any effort
    speech = _high_shelf(speech, plan.hf_db, sample_rate)
    speech *= 10.0 ** ((REFERENCE_RMS_DB + plan.level_db) / 20.0) / (np.sqrt(np.mean(speech**2)) + 1e-12)
    # Room noise: pinkish (one-pole low-pass of white noise).
    noise = signal.lfilter([1.0], [1.0, -0.9], rng.standard_normal(len(speech)))
    noise *= 10.0 ** (NOISE_DB / 20.0) / (np.sqrt(np.mean(noise**2)) + 1e-12)
    audio = (speech + noise) * 10.0 ** (rng.uniform(-RECORDING_GAIN_DB, RECORDING_GAIN_DB) / 20.0)
    peak = np.max(np.abs(audio))
    if peak > PEAK_LIMIT:
        audio *= PEAK_LIMIT / peak
    return audio.astype(np.float32)


# ----------------------------------------------------------------------------------------------- corpus

def _read_stamp(root: Path) -> dict | None:
    try:
        return json.loads((root / SPEC_FILE).read_text())
    except (OSError, ValueError):
        return None


def _write_corpus(tmp: Path, spec: SyntheticSpec) -> None:
    """Every wav, then the manifest, then the stamp, into `tmp`."""
    rows = []
    for s, speaker in enumerate(make_speakers(spec)):
        (tmp / speaker.name).mkdir()
        for emotion in spec.emotions:
            for i in range(spec.utterances_per_class):
                # One seed per file: a file does not depend on how many others the spec asks for.
                rng = np.random.default_rng([spec.seed, 2, s, EMOTION_IDS[emotion], i])
                seconds = rng.uniform(spec.min_seconds, spec.max_seconds)
                audio = synthesize_utterance(rng, speaker, emotion, spec.sample_rate, seconds)
                rel = f"{speaker.name}/{emotion}_{i:03d}.wav"
                sf.write(tmp / rel, audio, spec.sample_rate, subtype="PCM_16")
                rows.append((rel, emotion, speaker.name, speaker.gender))
    with open(tmp / MANIFEST, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "label", "speaker", "gender"))
        writer.writerows(rows)
    (tmp / SPEC_FILE).write_text(json.dumps(spec.stamp(), indent=2) + "\n")


def generate(root: str | Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write the corpus to `root` (wavs, manifest.csv, spec.json) and return the manifest path.

    A corpus already at `root` with the same spec stamp is reused. The corpus is built in a temporary folder beside
    `root` and renamed into place, so an interrupted run never leaves a half corpus that looks complete.
    """
    root = Path(root)
    stamp = spec.stamp()
    if (root / MANIFEST).is_file() and _read_stamp(root) == stamp:
        return root / MANIFEST
    if root.exists() and any(root.iterdir()) and _read_stamp(root) is None:
        raise CorpusError(f"{root}: exists and is not a synthetic corpus (no {SPEC_FILE}); "
                          "choose an empty or new folder so nothing of yours is overwritten")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _write_corpus(tmp, spec)
        if root.exists():
            # An empty folder or an older synthetic corpus: move it aside first so the swap is one rename.
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, old / "corpus")
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root / MANIFEST


def load(root: str | Path, **options) -> CorpusReport:
    """Read a generated corpus through its manifest (see atfnn.corpora.manifest)."""
    root = Path(root)
    if not (root / MANIFEST).is_file():
        raise CorpusError(f"{root / MANIFEST}: not found; create the corpus with "
                          "atfnn.corpora.synthetic.generate(root) or `atfnn demo`")
    from atfnn.corpora import manifest  # lazily: the manifest loader is the generic reader of such corpora

    return manifest.load(root, **options)
