"""Atomic, durable file writes: a reader (or a rerun after a crash) sees the old file or the new one, never a part.

Everything is written to a hidden temporary sibling (`.NAME.<random>.tmp`, so the rename stays on one file system),
flushed to disk with fsync, renamed over the target, and the directory is fsynced so the rename itself survives a
power cut. A failed write removes its temporary file and leaves the target as it was.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

TMP_SUFFIX = ".tmp"
FILE_MODE = 0o644  # mkstemp creates 0600; results and models are meant to be shared


def temporary_name(path: Path) -> str:
    """The prefix of `path`'s temporary siblings (for finding leftovers of a killed write)."""
    return f".{path.name}."


def fsync_dir(directory: str | Path) -> None:
    """Make a rename or a new entry in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write `path`'s new content to (for writers that take a path: torch.save, onnx.save);
    renamed into place when the block ends without an error, removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=temporary_name(path), suffix=TMP_SUFFIX)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fsync_file(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8, newlines as given) atomically and durably."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_directory(directory: str | Path) -> Iterator[Path]:
    """A temporary directory to fill with `directory`'s new content; it replaces `directory` (and whatever was there)
    when the block ends without an error, and is removed otherwise.

    The old directory is first renamed aside, so at every moment the target is either the old or the new one, or
    (between two renames) absent with both kept as hidden siblings.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=temporary_name(directory), suffix=TMP_SUFFIX))
    try:
        yield tmp
        for item in tmp.rglob("*"):
            if item.is_file():
                fsync_file(item)
        fsync_dir(tmp)
        os.chmod(tmp, 0o755)
        _replace_directory(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_directory(new: Path, directory: Path) -> None:
    if not directory.exists() and not directory.is_symlink():
        os.replace(new, directory)
        fsync_dir(directory.parent)
        return
    old = Path(tempfile.mkdtemp(dir=directory.parent, prefix=temporary_name(directory), suffix=".old"))
    os.replace(directory, old / directory.name)
    os.replace(new, directory)
    fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)
