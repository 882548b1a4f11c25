"""Exception types of atfnn: every failure the user can fix is one of these, with the file and the reason."""
from __future__ import annotations

from pathlib import Path


class ATFNNError(Exception):
    """Base class of every error atfnn raises on purpose."""


class AudioError(ATFNNError):
    """An audio file (or array) cannot be turned into features; the message names the file and the reason."""

    def __init__(self, source: str | Path, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


class CorpusError(ATFNNError):
    """A corpus root, layout, label or manifest is wrong."""


class ConfigError(ATFNNError):
    """A configuration value or override is invalid, or a run directory belongs to another configuration."""


class ModelFileError(ATFNNError):
    """A saved model (directory, card, weights or ONNX file) is missing, unreadable or corrupt; names the file."""


class TrainingError(ATFNNError):
    """Training cannot go on with these settings (a loss that is no longer finite); the message names the fix."""
