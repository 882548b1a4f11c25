"""The HTTP API and the page of `atfnn serve`, around one loaded Predictor.

    GET  /                 the page (static files of atfnn/serve/static, no build step)
    GET  /healthz          liveness, answered on the event loop even while every worker is busy
    GET  /api/model        the model card: labels, front end, network, training information, the server's limits
    POST /api/predict      multipart field "file" -> label, probs, duration (+ timeline with ?timeline=true)
    POST /api/explain      multipart field "file" -> log-Mel, F- and T-Attention maps as PNGs (+ arrays unless
                           ?arrays=false); ?format=png returns Fig. 6 as one image

Every refusal is JSON {"error": {"code", "message"}}: 413 for a body over --max-upload-mb, 422 for audio the CLI
would reject (codes empty, silence, nan, undecodable, too_short) or longer than --max-seconds (too_long), 400 for a
request without a file, 503 when the queue is full.
"""
from __future__ import annotations

import json
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from atfnn import __version__
from atfnn.errors import AudioError
from atfnn.explain import Explanation, attention_maps
from atfnn.inference import Prediction, Predictor
from atfnn.serve.errors import ApiError, from_audio_error
from atfnn.serve.limits import BodyLimit
from atfnn.serve.maps import explanation_json, figure_png
from atfnn.serve.pool import InferencePool
from atfnn.serve.settings import ServeSettings
from atfnn.serve.uploads import Upload, decode, display_name

STATIC = Path(__file__).with_name("static")
FILE_FIELD = "file"


@dataclass
class Served:
    """What the routes share: the model, its name, the limits and the workers."""

    predictor: Predictor
    name: str
    settings: ServeSettings
    pool: InferencePool

    def classify(self, upload: Upload) -> Prediction:
        wave = decode(upload, self.predictor.frontend.sample_rate, self.settings.max_seconds)
        try:
            return self.predictor.predict(wave, sample_rate=self.predictor.frontend.sample_rate)
        except AudioError as e:
            raise from_audio_error(e, upload.name) from None

    def explain(self, upload: Upload) -> Explanation:
        if self.predictor.model is None:
            raise ApiError(501, "no_attention", "attention maps need the PyTorch model; this server runs an ONNX file")
        wave = decode(upload, self.predictor.frontend.sample_rate, self.settings.max_seconds)
        try:
            return attention_maps(self.predictor, wave, self.predictor.frontend.sample_rate)
        except AudioError as e:
            raise from_audio_error(e, upload.name) from None

    def explain_json(self, upload: Upload, arrays: bool) -> bytes:
        """Serialised here, in the worker: the arrays of a long file are millions of numbers, too many for the loop."""
        explanation = self.explain(upload)
        body = {**_prediction_json(upload, explanation.prediction, True), **explanation_json(explanation, arrays)}
        return json.dumps(body, separators=(",", ":")).encode()

    def explain_png(self, upload: Upload) -> bytes:
        explanation = self.explain(upload)
        p = explanation.prediction
        return figure_png(explanation, f"{upload.name}: {p.label} (p = {p.confidence:.2f})")


def create_app(predictor: Predictor, settings: ServeSettings | None = None, name: str = "model") -> FastAPI:
    settings = settings or ServeSettings()
    served = Served(predictor, name, settings, InferencePool(settings.workers, settings.max_queue))

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        served.pool.close()

    app = FastAPI(title="atfnn", version=__version__, lifespan=lifespan, docs_url="/api/docs", redoc_url=None,
                  openapi_url="/api/openapi.json")
    app.state.served = served
    _add_error_handlers(app)
    _add_routes(app, served)
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def read_upload(file: UploadFile | None) -> Upload:
    if file is None:
        raise ApiError(400, "no_file", f"send the audio as the multipart/form-data field {FILE_FIELD!r}, "
                                       f"e.g. curl -F {FILE_FIELD}=@speech.wav")
    try:
        return Upload(display_name(file.filename), await file.read())
    finally:
        await file.close()


def _prediction_json(upload: Upload, prediction: Prediction, timeline: bool) -> dict:
    out = prediction.to_dict(timeline)
    out.pop("path")  # the server never had a path of the client's; the file is named by its upload name
    return {"file": upload.name, **out}


def _add_routes(app: FastAPI, served: Served) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "model": served.name, **asdict(served.pool.stats())}

    @app.get("/api/model")
    async def model_card() -> dict:
        card, limits = served.predictor.card, served.settings
        return {
            "name": served.name, "labels": card.labels, "variant": card.model.variant,
            "attention": served.predictor.model is not None,
            "model": asdict(card.model), "frontend": asdict(card.frontend), "info": card.info,
            "limits": {"max_upload_mb": limits.max_upload_mb, "max_seconds": limits.max_seconds},
        }

    @app.post("/api/predict")
    async def predict(file: UploadFile | None = File(None), timeline: bool = False) -> dict:
        upload = await read_upload(file)
        prediction = await served.pool.run(served.classify, upload)
        return _prediction_json(upload, prediction, timeline)

    @app.post("/api/explain", response_model=None)
    async def explain(file: UploadFile | None = File(None), arrays: bool = True, format: str = "json"):
        if format not in ("json", "png"):
            raise ApiError(400, "bad_request", f"format must be json or png, not {format!r}")
        upload = await read_upload(file)
        if format == "png":
            return Response(await served.pool.run(served.explain_png, upload), media_type="image/png")
        return Response(await served.pool.run(served.explain_json, upload, arrays), media_type="application/json")


def _add_error_handlers(app: FastAPI) -> None:
    def error(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse(ApiError(status, code, message).to_dict(), status_code=status)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, e: ApiError) -> JSONResponse:
        return error(e.status, e.code, e.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, e: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, d.get('loc', ())))}: {d.get('msg')}" for d in e.errors())
        return error(400, "bad_request", problems or "invalid request")

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, e: HTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error(e.status_code, codes.get(e.status_code, "http_error"), str(e.detail))

    @app.exception_handler(Exception)
    async def internal(_request: Request, e: Exception) -> JSONResponse:
        return error(500, "internal", f"internal error ({type(e).__name__}); see the server's log")
