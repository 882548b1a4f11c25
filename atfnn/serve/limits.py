"""The upload limit, applied to the raw request body before anything parses or spools it.

A declared Content-Length over the limit is refused without reading the body; a chunked body is read into memory up
to the limit and refused as soon as it passes it, so no request makes the server hold more than `max_bytes`.
"""
from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from atfnn.serve.errors import ApiError
from atfnn.serve.settings import MIB

WITH_BODY = ("POST", "PUT", "PATCH")


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WITH_BODY:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and not declared.isdigit():
            await self._refuse(ApiError(400, "bad_request", "Content-Length is not a number"), scope, receive, send)
            return
        if declared is not None and int(declared) > self.max_bytes:
            await self._refuse(self._too_large(int(declared)), scope, receive, send)
            return
        body = await self._read(receive)
        if body is None:
            await self._refuse(self._too_large(None), scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or None once it passes max_bytes (or the client left)."""
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self, size: int | None) -> ApiError:
        got = f" ({size / MIB:.1f} MiB)" if size is not None else ""
        return ApiError(413, "too_large", f"request body{got} is larger than this server's limit of "
                                          f"{self.max_bytes / MIB:g} MiB (atfnn serve --max-upload-mb)")

    @staticmethod
    async def _refuse(error: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse(error.to_dict(), status_code=error.status)(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the buffered body to the app once, then passes on what the client sends next."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
