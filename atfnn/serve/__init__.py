"""`atfnn serve`: an HTTP API and a web page around one model (FastAPI on uvicorn; the `serve` extra).

    from atfnn.serve.app import create_app          # an ASGI app around any atfnn.Predictor
    app = create_app(atfnn.load(), ServeSettings(max_seconds=30))

settings (no FastAPI), errors, uploads (decoding within limits), limits (request body), pool (workers), maps
(attention PNGs), app (routes), main (the command). docs/serve.md documents the API.
"""
from atfnn.serve.settings import ServeSettings

__all__ = ["ServeSettings"]
