"""The feature cache: full-utterance log-Mel spectrograms computed once, then normalised and cut into segments.

prepare -> FeatureStore -> (normalise_stats) -> build_segments -> Segments (the tensors training reads every epoch).

Cache layout, one directory per log-Mel configuration and one "pack" per set of audio files:

    <cache_dir>/logmel-<config hash>/pack-<hash of the sorted file keys>/
        features.npy   float32 (total_frames, n_mels): every utterance's frames, one after the other
        index.json     uid -> offset, n_frames, file key, path; the files that could not be read, and why; the
                       sha256 of features.npy's data
        complete       written last; a pack without it is ignored and removed

Whole utterances are stored, not segments, so changing the segment hop, padding or normalisation reuses the cache.
A file key hashes (resolved path, size, mtime_ns): editing a file recomputes only that file, the rest is copied from
any older pack of the same configuration. Packs are built in a temporary directory and renamed into place, so an
interrupted prepare never leaves a pack that looks complete. A pack is checked whenever prepare opens it (one read
of features.npy): a features.npy that is truncated, empty, of another shape, holds NaN or infinite values or no longer matches
the checksum written with it, or an unreadable index.json, gets a one-line warning naming the file on stderr and
the pack is rebuilt (from intact packs and the audio). Older packs are kept (another set of files may need them);
deleting `cache_dir` at any time when no prepare is running is safe.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from atfnn.atomic import atomic_write_text
from atfnn.audio import GATHER_CHUNK, gather_segments, load_audio, pad_value, segment_starts, spectrogram, split_hop, too_short
from atfnn.config import FrontEndConfig
from atfnn.corpora.base import Utterance
from atfnn.errors import ATFNNError, AudioError, ConfigError
from atfnn.frontend import NORM_MODES, Moments, NormStats, check_norm, normalise_

# Bump when the stored features change for the same configuration (a fix in the front end, a new layout).
CACHE_VERSION = 1
# The FrontEndConfig fields that change the log-Mel values; segmenting and normalisation happen after the cache.
LOGMEL_FIELDS = ("sample_rate", "win_length", "hop_length", "n_fft", "n_mels", "fmin", "fmax", "log_floor")
# Fields that change the log-Mel values only when set: at their default they stay out of the hash, so the caches of
# configurations written before they existed keep their directory.
OPTIONAL_LOGMEL_FIELDS = {"mel_scale": "slaney", "trim_db": 0.0, "floor_db": 0.0}
FEATURES_FILE = "features.npy"
INDEX_FILE = "index.json"
COMPLETE_FILE = "complete"
TMP_PREFIX = ".tmp-"
SCAN_BYTES = 1 << 24  # features.npy is checked in blocks of 16 MiB

Stats = dict[str, NormStats]


# ----------------------------------------------------------------------------------------------------- the store
class FeatureStore:
    """Full-utterance log-Mel features of one pack, memory-mapped.

    `skipped` lists (path, reason) for every utterance whose audio could not be read: they are not in the store, and
    the caller must report them (the CLI prints them) since nothing else will.
    """

    def __init__(self, path: Path, entries: dict[str, tuple[int, int]], skipped: list[tuple[str, str]], n_mels: int):
        self.path = Path(path)
        self.skipped = skipped
        self.n_mels = n_mels
        self._entries = entries  # uid -> (offset, n_frames)
        self._skip_reasons = dict(skipped)
        self._data: np.ndarray | None = None

    @property
    def uids(self) -> list[str]:
        return list(self._entries)

    @property
    def data(self) -> np.ndarray:
        """The whole pack, (total_frames, n_mels), read-only and memory-mapped (opened on first use)."""
        if self._data is None:
            self._data = _load_features(self.path)
        return self._data

    def __contains__(self, uid: object) -> bool:
        return uid in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def location(self, uid: str) -> tuple[int, int]:
        """(first row in `data`, n_frames) of an utterance."""
        try:
            return self._entries[uid]
        except KeyError:
            raise KeyError(f"{uid} is not in the feature store {self.path}{self._why_missing(uid)}") from None

    def n_frames(self, uid: str) -> int:
        return self.location(uid)[1]

    def logmel(self, uid: str) -> np.ndarray:
        """(n_mels, n_frames) log-Mel of one utterance: a read-only, transposed view into the memory map."""
        offset, n_frames = self.location(uid)
        return self.data[offset : offset + n_frames].T

    def skip_reason(self, uid: str) -> str | None:
        return self._skip_reasons.get(uid)

    def _why_missing(self, uid: str) -> str:
        reason = self.skip_reason(uid)
        return f" (skipped by prepare: {reason})" if reason else " (was it passed to prepare?)"

    def __getstate__(self) -> dict:
        # DataLoader workers and process pools pickle the store: reopen the memory map there, never copy it.
        return {**self.__dict__, "_data": None}


def _load_features(pack: Path) -> np.ndarray:
    return np.load(pack / FEATURES_FILE, mmap_mode="r")


# ----------------------------------------------------------------------------------------------------- prepare
def prepare(
    utterances: Sequence[Utterance],
    frontend: FrontEndConfig,
    cache_dir: str | Path,
    progress: bool = True,
) -> FeatureStore:
    """Log-Mel features of every utterance, from the cache when it holds them, computing only what is missing.

    Audio that cannot be read (AudioError: missing, empty, undecodable, NaN samples, too short) does not stop the
    run: it lands in `store.skipped` as (path, reason) and is left out of the store. The caller must report it.
    """
    config_dir = Path(cache_dir) / f"logmel-{config_hash(frontend)}"
    config_dir.mkdir(parents=True, exist_ok=True)
    _write_config(config_dir, frontend)
    _remove_incomplete(config_dir)

    uid_keys: dict[str, str] = {}  # uid -> file key
    files: dict[str, str] = {}  # file key -> path
    unreadable: dict[str, str] = {}  # uid -> reason, files that cannot even be stat'ed
    for utt in utterances:
        try:
            key = file_key(utt.path)
        except OSError as e:
            unreadable[utt.uid] = f"cannot be read ({e.strerror or e})"
            continue
        uid_keys[utt.uid] = key
        files.setdefault(key, str(utt.path))

    pack = config_dir / f"pack-{_digest(sorted(files))}"
    index = _open_index(pack)
    if index is None:
        _build_pack(pack, files, frontend, progress)
        index = _open_index(pack)
        if index is None:
            raise ATFNNError(f"{pack}: the feature pack just written cannot be read back; is the disk full?")
    return _open_store(pack, index, utterances, uid_keys, unreadable, frontend.n_mels)


def write_store(logmels: Mapping[str, np.ndarray], pack: str | Path) -> FeatureStore:
    """A store from in-memory (n_mels, n_frames) arrays keyed by uid (synthetic data, tests); replaces `pack`."""
    arrays = {uid: np.asarray(a, dtype=np.float32) for uid, a in logmels.items()}
    if any(a.ndim != 2 for a in arrays.values()) or len({a.shape[0] for a in arrays.values()}) > 1:
        shapes = sorted({a.shape for a in arrays.values()})
        raise ATFNNError(f"write_store: expected (n_mels, n_frames) arrays with one n_mels, got shapes {shapes}")
    n_mels = next(iter(arrays.values())).shape[0] if arrays else 0
    pack = Path(pack)
    pack.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(pack, ignore_errors=True)
    located = _write_pack(
        pack, n_mels, {uid: uid for uid in arrays},
        ((uid, a.T, None) for uid, a in arrays.items()), None,
    )
    return FeatureStore(pack, located, [], n_mels)


def config_hash(frontend: FrontEndConfig) -> str:
    """Hash of the fields that change the log-Mel values (not segmenting or normalisation)."""
    return _digest([CACHE_VERSION, _logmel_config(frontend)])


def file_key(path: str | Path) -> str:
    """Hash of (resolved path, size, mtime_ns): changes when the file is replaced or edited."""
    path = Path(path).resolve()
    st = path.stat()
    return _digest([str(path), st.st_size, st.st_mtime_ns])


def _logmel_config(frontend: FrontEndConfig) -> dict:
    config = {name: getattr(frontend, name) for name in LOGMEL_FIELDS}
    config.update({k: getattr(frontend, k) for k, default in OPTIONAL_LOGMEL_FIELDS.items() if getattr(frontend, k) != default})
    return config


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _write_config(config_dir: Path, frontend: FrontEndConfig) -> None:
    """For people browsing the cache: which front end this directory holds."""
    path = config_dir / "config.json"
    if not path.exists():
        _write_json_atomic(path, {"version": CACHE_VERSION, **_logmel_config(frontend)})


def _write_json_atomic(path: Path, data: object) -> None:
    atomic_write_text(path, json.dumps(data, indent=1))


def _open_index(pack: Path) -> dict | None:
    """The index of a complete and intact pack, else None; a damaged pack is removed with a warning naming the file."""
    if not (pack / COMPLETE_FILE).is_file():
        return None
    try:
        index = json.loads((pack / INDEX_FILE).read_text())
        if not isinstance(index, dict) or not {"utterances", "skipped", "total_frames", "n_mels"} <= set(index):
            raise ValueError("not an index of this cache")
    except (OSError, ValueError) as e:
        problem = f"{pack / INDEX_FILE}: unreadable ({e})"
    else:
        reason = _features_problem(pack / FEATURES_FILE, index)
        if reason is None:
            return index
        problem = f"{pack / FEATURES_FILE}: {reason}"
    _warn(f"{problem}; rebuilding the feature pack")
    shutil.rmtree(pack, ignore_errors=True)
    return None


def _features_problem(path: Path, index: dict) -> str | None:
    """Why features.npy does not hold what the index says (shape, size, checksum, finite values), or None."""
    try:
        stat = path.stat()
        with path.open("rb") as handle:
            shape, fortran, dtype = _npy_header(handle)
            expected = (index["total_frames"], index["n_mels"])
            if shape != expected or fortran or dtype != np.dtype("<f4"):
                return f"holds a {dtype} array of shape {shape}, the index says float32 {expected}"
            size, have = expected[0] * expected[1] * 4, stat.st_size - handle.tell()
            if have != size:
                return f"holds {have} bytes of data, {size} expected (truncated or overwritten)"
            digest, finite = _scan(handle)
    except (OSError, ValueError, TypeError, KeyError) as e:
        return f"cannot be read as the pack's features ({e})"
    if not finite:
        return "holds NaN or infinite values"
    if index.get("sha256") not in (None, digest):  # packs written before checksums were recorded have none
        return "content differs from what was written (sha256 mismatch)"
    return None


def _npy_header(handle) -> tuple[tuple, bool, np.dtype]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    return np.lib.format.read_array_header_2_0(handle)


def _scan(handle) -> tuple[str, bool]:
    """sha256 and whether every value is finite, of the rest of an open .npy file, read in blocks."""
    sha, finite = hashlib.sha256(), True
    while block := handle.read(SCAN_BYTES):
        sha.update(block)
        finite = finite and bool(np.isfinite(np.frombuffer(block, dtype="<f4")).all())
    return sha.hexdigest(), finite


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _remove_incomplete(config_dir: Path) -> None:
    """Remove packs without their `complete` marker and temporary dirs of prepares that died (never a live one)."""
    for path in config_dir.iterdir():
        if path.name.startswith("pack-") and path.is_dir() and not (path / COMPLETE_FILE).is_file():
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.startswith(TMP_PREFIX) and not _owner_alive(path.name):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _owner_alive(tmp_name: str) -> bool:
    """Temporary names end in -<pid>-<random>; a dead pid means a killed prepare left it behind.

    (A prepare that raises removes its own temporary dir, so a live pid, ours included, may still be writing.)
    """
    try:
        pid = int(tmp_name.rsplit("-", 2)[-2])
    except (IndexError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _build_pack(pack: Path, files: dict[str, str], frontend: FrontEndConfig, progress: bool) -> None:
    """Write the pack for `files` (key -> path): entries of older packs are copied, the rest computed."""
    reuse, reuse_skipped = _reusable(pack.parent, set(files))
    todo = [(key, path) for key, path in files.items() if key not in reuse and key not in reuse_skipped]

    def blocks() -> Iterator[tuple[str, np.ndarray | None, str | None]]:
        for source, items in _group_by_pack(reuse).items():
            data = _load_features(source)
            for key, (offset, n_frames) in items:
                yield key, data[offset : offset + n_frames], None
        yield from ((key, None, reason) for key, reason in reuse_skipped.items())
        # _compute first: zip then runs it to its end, so its `finally` restores torch's threads here.
        for (rows, reason), (key, _) in zip(_compute(todo, frontend, progress), todo):
            yield key, rows, reason

    _write_pack(pack, frontend.n_mels, files, blocks(), _logmel_config(frontend))


def _write_pack(
    pack: Path,
    n_mels: int,
    paths: dict[str, str],
    blocks: Iterable[tuple[str, np.ndarray | None, str | None]],
    frontend: dict | None,
) -> dict[str, tuple[int, int]]:
    """Write (key, rows (n_frames, n_mels) or None, skip reason) blocks in a temporary dir, then rename it to `pack`.

    Returns key -> (offset, n_frames). `paths` maps each key to its path, which is also its uid in the index.
    """
    tmp = pack.with_name(f"{TMP_PREFIX}{pack.name}-{os.getpid()}-{uuid.uuid4().hex}")
    tmp.mkdir()
    try:
        located: dict[str, tuple[int, int]] = {}
        skipped: dict[str, str] = {}
        with _FeatureWriter(tmp / FEATURES_FILE, n_mels) as writer:
            for key, rows, reason in blocks:
                if rows is None:
                    skipped[key] = reason or "unknown"
                else:
                    located[key] = (writer.append(rows), len(rows))
        index = {
            "version": CACHE_VERSION,
            "frontend": frontend,
            "n_mels": n_mels,
            "total_frames": writer.total,
            "sha256": writer.sha256,
            "utterances": {
                paths[key]: {"offset": off, "n_frames": n, "key": key, "path": paths[key]}
                for key, (off, n) in located.items()
            },
            "skipped": [{"key": key, "path": paths[key], "reason": reason} for key, reason in skipped.items()],
        }
        (tmp / INDEX_FILE).write_text(json.dumps(index))
        (tmp / COMPLETE_FILE).write_text("ok\n")  # last: only a fully written pack carries it
        _move_into_place(tmp, pack)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return located


def _move_into_place(tmp: Path, pack: Path) -> None:
    try:
        os.rename(tmp, pack)
    except OSError:
        if _open_index(pack) is not None:
            return  # another process finished the same pack first; its content is the same
        shutil.rmtree(pack, ignore_errors=True)
        os.rename(tmp, pack)


def _reusable(config_dir: Path, keys: set[str]) -> tuple[dict[str, tuple[Path, int, int]], dict[str, str]]:
    """Entries of `keys` already in complete packs of this configuration: (pack, offset, n_frames), and skip reasons."""
    found: dict[str, tuple[Path, int, int]] = {}
    skipped: dict[str, str] = {}
    packs = sorted(config_dir.glob("pack-*"), key=lambda p: p.stat().st_mtime_ns, reverse=True)  # newest first
    for pack in packs:
        index = _open_index(pack)
        if index is None or index.get("version") != CACHE_VERSION:
            continue
        for entry in index["utterances"].values():
            if entry["key"] in keys and entry["key"] not in found:
                found[entry["key"]] = (pack, entry["offset"], entry["n_frames"])
        for entry in index["skipped"]:
            if entry["key"] in keys and entry["key"] not in found:
                skipped.setdefault(entry["key"], entry["reason"])
        if len(found) + len(skipped) >= len(keys):
            break
    return found, {k: r for k, r in skipped.items() if k not in found}


def _group_by_pack(reuse: dict[str, tuple[Path, int, int]]) -> dict[Path, list[tuple[str, tuple[int, int]]]]:
    groups: dict[Path, list[tuple[str, tuple[int, int]]]] = {}
    for key, (pack, offset, n_frames) in reuse.items():
        groups.setdefault(pack, []).append((key, (offset, n_frames)))
    return groups


class _FeatureWriter:
    """Appends (n_frames, n_mels) blocks to a .npy file whose row count is known only at the end."""

    def __init__(self, path: Path, n_mels: int):
        self.path, self.n_mels, self.total = path, n_mels, 0
        self._sha = hashlib.sha256()  # of the data after the header, recorded in the index and checked on open
        self._file = open(path, "wb")
        # numpy pads the header so the first axis can grow to 21 digits: rewriting it at the end keeps its length.
        self._header_len = self._file.write(self._header())

    def _header(self) -> bytes:
        buf = io.BytesIO()
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
                  "shape": (self.total, self.n_mels)}
        np.lib.format.write_array_header_1_0(buf, header)
        return buf.getvalue()

    def append(self, rows: np.ndarray) -> int:
        """Write one utterance's rows; returns its first row."""
        offset = self.total
        data = np.ascontiguousarray(rows, dtype="<f4").tobytes()
        self._file.write(data)
        self._sha.update(data)
        self.total += len(rows)
        return offset

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def __enter__(self) -> _FeatureWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        try:
            if exc_type is None:
                header = self._header()
                if len(header) != self._header_len:
                    raise ATFNNError(f"{self.path}: .npy header grew; numpy>=1.24 is required for the feature cache")
                self._file.seek(0)
                self._file.write(header)
        finally:
            self._file.close()


# ----------------------------------------------------------------------------------------------------- computing
def _compute(
    todo: list[tuple[str, str]], frontend: FrontEndConfig, progress: bool
) -> Iterator[tuple[np.ndarray | None, str | None]]:
    """(rows (n_frames, n_mels) or None, skip reason) per file, in the order of `todo`.

    One process: a forked pool of 2 workers was not measurably faster on CASIA (1200 files, 2 cores).
    """
    threads = torch.get_num_threads()
    # One file's STFT is too small to split: on a busy 2-core machine 2 threads took 15x longer than 1.
    torch.set_num_threads(1)
    quiet = not progress or not sys.stderr.isatty()
    try:
        with tqdm(total=len(todo), desc="log-Mel features", unit="file", disable=quiet) as bar:
            for _, path in todo:
                result = _logmel_rows(path, frontend)
                bar.update()
                yield result
    finally:
        torch.set_num_threads(threads)


def _logmel_rows(path: str, frontend: FrontEndConfig) -> tuple[np.ndarray | None, str | None]:
    """(n_frames, n_mels) float32 log-Mel of one file, or (None, why it cannot be read)."""
    try:
        wave = load_audio(path, frontend.sample_rate)
        logmel = spectrogram(wave, frontend, source=path).logmel
    except AudioError as e:
        return None, e.reason
    return np.ascontiguousarray(logmel.numpy().T, dtype=np.float32), None


def _open_store(
    pack: Path,
    index: dict,
    utterances: Sequence[Utterance],
    uid_keys: dict[str, str],
    unreadable: dict[str, str],
    n_mels: int,
) -> FeatureStore:
    """Map the caller's uids onto the pack by file key (the same files may be listed under other uids)."""
    by_key = {e["key"]: (e["offset"], e["n_frames"]) for e in index["utterances"].values()}
    skip_reason = {e["key"]: e["reason"] for e in index["skipped"]}
    entries: dict[str, tuple[int, int]] = {}
    skipped: dict[str, str] = {}
    for utt in utterances:
        key = uid_keys.get(utt.uid)
        if key in by_key:
            entries[utt.uid] = by_key[key]
        else:
            skipped[utt.uid] = unreadable.get(utt.uid) or skip_reason.get(key, "missing from the feature pack")
    return FeatureStore(pack, entries, list(skipped.items()), n_mels)


# ----------------------------------------------------------------------------------------------------- normalising
def normalise_stats(store: FeatureStore, utterances: Sequence[Utterance], mode: str) -> Stats:
    """Per-utterance NormStats for every utterance in the store; {} for modes "none" and "global".

    "utterance": statistics of the utterance's own frames. "speaker": statistics pooled over all frames of every
    utterance of that speaker among `utterances` -- transductive, since a test speaker's statistics come from their
    own unlabelled test audio (no labels are used). Not in the paper. "global" is fitted per fold on its training
    split (atfnn.frontend.fit_global_stats) and applied to the fold's splits, not here.
    """
    if mode not in NORM_MODES:
        raise ConfigError(f"frontend.norm={mode!r} is not one of {', '.join(NORM_MODES)}")
    present = [u for u in utterances if u.uid in store]
    if mode in ("none", "global"):
        return {}
    if mode == "utterance":
        return {u.uid: Moments.of(store.logmel(u.uid)).finish() for u in present}
    pooled: dict[str, Moments] = {}
    seen: set[str] = set()
    for u in present:
        if u.uid in seen:
            continue
        seen.add(u.uid)
        moments = Moments.of(store.logmel(u.uid))
        pooled[u.speaker] = pooled[u.speaker].combine(moments) if u.speaker in pooled else moments
    per_speaker = {speaker: m.finish() for speaker, m in pooled.items()}
    return {u.uid: per_speaker[u.speaker] for u in present}


# ----------------------------------------------------------------------------------------------------- segmenting
@dataclass
class Segments:
    """Training input: every segment of every utterance, in memory.

    x[i] is a segment of utterance utterance_uids[utt[i]]; `utterance_uids` is the `utterances` list given to
    build_segments, in order, so `utt` also indexes that list (labels: np.asarray(labels)[segments.utt]).
    `dropped` lists (uid, reason) for utterances that gave no segment.
    """

    x: torch.Tensor  # (N, n_mels, segment_frames) float32, contiguous
    utt: np.ndarray  # (N,) int64
    utterance_uids: list[str]
    dropped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.utt)


def build_segments(
    store: FeatureStore,
    utterances: Sequence[Utterance],
    frontend: FrontEndConfig,
    stats: Stats | None = None,
    split: str = "evaluation",
) -> Segments:
    """Normalise (frontend.norm) and cut every utterance with atfnn.audio's segmenting, as a prediction does.

    `split` names the hop: "train" cuts with frontend.train_segment_hop (0 = segment_hop), "evaluation"
    (validation, test, prediction) with segment_hop. Utterances that prepare skipped, or that pad_short="drop"
    leaves without a segment, go to `dropped`. `stats` defaults to normalise_stats(store, utterances,
    frontend.norm); pass stats computed over a larger set (e.g. the whole corpus for "speaker") to build the
    segments of a subset. norm="global" is not applied here: a fold normalises its splits with the statistics of
    its training split (atfnn.frontend.fit_global_stats, apply_stats).
    Normalisation uses the statistics of the real frames; "silence" padding is the floor normalised the same way,
    so padding still reads as silence after normalising.
    """
    if store.n_mels != frontend.n_mels:
        raise ATFNNError(
            f"feature store {store.path} holds {store.n_mels} mel bands but frontend.n_mels={frontend.n_mels}; "
            "prepare the features with this front end"
        )
    if stats is None:
        stats = normalise_stats(store, utterances, check_norm(frontend))
    layout = _layout(store, [u.uid for u in utterances], frontend, split_hop(frontend, split))
    x = gather_segments(store.data, layout.base, layout.valid, layout.fill, frontend)
    if frontend.norm in ("utterance", "speaker"):
        _normalise_inplace(x, layout.utt, layout.uids, stats, frontend.n_mels)
    return Segments(x=x, utt=layout.utt, utterance_uids=layout.uids, dropped=layout.dropped)


@dataclass
class _Layout:
    """Where each segment comes from: utterance index, first row in the store, valid rows, silence value."""

    uids: list[str]
    utt: np.ndarray
    base: np.ndarray
    valid: np.ndarray
    fill: np.ndarray
    dropped: list[tuple[str, str]]


def _layout(store: FeatureStore, uids: list[str], frontend: FrontEndConfig, hop: int) -> _Layout:
    length = frontend.segment_frames
    dropped: list[tuple[str, str]] = []
    seg_utt, seg_base, seg_len, seg_fill = [], [], [], []
    for i, uid in enumerate(uids):
        if uid not in store:
            reason = store.skip_reason(uid)
            if reason is None:
                raise ATFNNError(f"{uid} is not in the feature store {store.path}; pass every utterance to prepare()")
            dropped.append((uid, reason))
            continue
        offset, n_frames = store.location(uid)
        starts = segment_starts(n_frames, length, hop, frontend.pad_short)
        if not starts:
            dropped.append((uid, too_short(n_frames, frontend)))
            continue
        # Only an utterance shorter than one segment is padded; its silence value may depend on its frames.
        fill = pad_value(store.logmel(uid), frontend) if n_frames < length else 0.0
        seg_utt.extend([i] * len(starts))
        seg_base.extend(offset + s for s in starts)
        seg_len.extend([min(n_frames, length)] * len(starts))
        seg_fill.extend([fill] * len(starts))
    as_int = lambda values: np.asarray(values, dtype=np.int64)  # noqa: E731
    return _Layout(uids, as_int(seg_utt), as_int(seg_base), as_int(seg_len), np.asarray(seg_fill), dropped)


def _normalise_inplace(x: torch.Tensor, utt: np.ndarray, uids: list[str], stats: Stats, n_mels: int) -> None:
    used = np.unique(utt)
    missing = [uids[i] for i in used if uids[i] not in stats]
    if missing:
        raise ATFNNError(f"no normalisation statistics for {len(missing)} utterance(s), e.g. {missing[0]}")
    mean = torch.zeros((len(uids), n_mels, 1))
    std = torch.ones((len(uids), n_mels, 1))
    for i in used:
        mean[i], std[i] = torch.from_numpy(stats[uids[i]].mean), torch.from_numpy(stats[uids[i]].std)
    for lo in range(0, len(utt), GATHER_CHUNK):
        index = torch.from_numpy(utt[lo : lo + GATHER_CHUNK])
        normalise_(x[lo : lo + len(index)], mean[index], std[index])
