"""`atfnn serve [MODEL]`: load the model (the packaged one by default) and run the app on uvicorn."""
from __future__ import annotations

import argparse
import ipaddress
import sys

from atfnn.errors import ATFNNError
from atfnn.serve.settings import ServeSettings, settings_from_args


def _require_serve_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (FastAPI's form parser)
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ATFNNError(f"atfnn serve needs the serve extra ({e.name} is missing): pip install 'atfnn[serve]'") from e


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(model: str | None, settings: ServeSettings, device: str | None = None, packaged: str | None = None) -> None:
    """Blocks until interrupted. Without `model`, the packaged model `packaged` (default: the default one). A host
    other than a loopback address is served with a warning on stderr."""
    _require_serve_extra()
    import uvicorn

    import atfnn
    from atfnn.serve.app import create_app

    predictor = atfnn.load(model, device=device, packaged=packaged)
    name = model or f"packaged ({predictor.card.info.get('name', 'atfnn')})"
    if not is_loopback(settings.host):
        print(f"atfnn serve: listening on {settings.host}, reachable from other machines; the API has no "
              "authentication", file=sys.stderr)
    print(f"atfnn serve: {name}, labels {', '.join(predictor.labels)}; open http://{_url_host(settings.host)}:"
          f"{settings.port}/", file=sys.stderr, flush=True)
    app = create_app(predictor, settings, name)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", access_log=False)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def serve_main(args: argparse.Namespace) -> int:
    serve(args.model, settings_from_args(args), device=args.device, packaged=args.packaged)
    return 0
