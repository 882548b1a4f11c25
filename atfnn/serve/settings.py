"""What `atfnn serve` can be told: where it listens, how much it accepts, how much inference runs at once.

Kept free of FastAPI so that `atfnn --help` and the argument parser work without the serve extra installed.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from atfnn.errors import ConfigError

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 8000
MIB = 1024 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """Limits of one server. An upload is the whole request body; a file's duration is measured after decoding."""

    host: str = LOOPBACK
    port: int = DEFAULT_PORT
    max_upload_mb: float = 20.0  # request body, multipart framing included
    max_seconds: float = 60.0  # decoded audio
    workers: int = 1  # inferences running at once (threads); torch already uses every core inside one
    max_queue: int = 32  # requests waiting for a worker before new ones get 503

    def __post_init__(self) -> None:
        checks = {
            "port": 0 <= self.port <= 65535,
            "max_upload_mb": self.max_upload_mb > 0,
            "max_seconds": self.max_seconds > 0,
            "workers": self.workers >= 1,
            "max_queue": self.max_queue >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"--{name.replace('_', '-')} {getattr(self, name)}" for name in bad)
            raise ConfigError(f"invalid serve setting(s): {values} (ports 0-65535; limits and workers positive)")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MIB)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `atfnn serve` options; their defaults are ServeSettings'."""
    d = ServeSettings()
    parser.add_argument("model", nargs="?", help="a model directory or .onnx file (default: the packaged model)")
    parser.add_argument("--host", default=d.host, help=f"address to bind (default {d.host}: this machine only)")
    parser.add_argument("--port", type=int, default=d.port)
    parser.add_argument("--max-upload-mb", type=float, default=d.max_upload_mb, help="largest request body in MiB")
    parser.add_argument("--max-seconds", type=float, default=d.max_seconds, help="longest audio accepted, seconds")
    parser.add_argument("--workers", type=int, default=d.workers, help="inferences running at once")
    parser.add_argument("--max-queue", type=int, default=d.max_queue,
                        help="requests waiting for a worker; beyond this they get 503 at once")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    return ServeSettings(
        host=args.host, port=args.port, max_upload_mb=args.max_upload_mb, max_seconds=args.max_seconds,
        workers=args.workers, max_queue=args.max_queue,
    )
