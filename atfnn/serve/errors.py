"""Errors the API answers with: an HTTP status, a stable machine-readable code and a message naming the problem.

Audio errors come from the same loader the CLI uses (atfnn.audio), so the messages are the CLI's; `audio_error_code`
sorts them into codes a client can branch on.
"""
from __future__ import annotations

from atfnn.errors import AudioError

# (code, phrases of atfnn.audio's reasons that mean it); the first match wins.
AUDIO_CODES = (
    ("empty", ("is empty", "contains no samples")),
    ("silence", ("digital silence",)),
    ("nan", ("NaN or infinite",)),
    ("undecodable", ("cannot be decoded",)),
    ("too_short", ("shorter than",)),
)


class ApiError(Exception):
    """A request the server refuses; rendered as {"error": {"code": ..., "message": ...}} with `status`."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


def audio_error_code(error: AudioError) -> str:
    for code, phrases in AUDIO_CODES:
        if any(phrase in error.reason for phrase in phrases):
            return code
    return "invalid_audio"


def from_audio_error(error: AudioError, name: str, private_path: str | None = None) -> ApiError:
    """422 naming the client's file; the server's temporary path, which a decoder may quote, is replaced by it."""
    reason = error.reason.replace(private_path, name) if private_path else error.reason
    return ApiError(422, audio_error_code(error), f"{name}: {reason}")
