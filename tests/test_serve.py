"""`atfnn serve`: the API in process (every endpoint, every error, the limits, the worker pool), the real server on a
loopback port, and the page in headless Chromium. A tiny random-init model; the packaged one is test_serve_packaged.

Skipped where fastapi (or, for the browser test, Chromium and Playwright) is missing, unless ATFNN_REQUIRE_BROWSER=1.
ATFNN_SCREENSHOT=PATH keeps the browser test's screenshot there (docs/img/serve.png); ATFNN_BROWSER_MODEL=DIR serves
another model to it (docs/serve.md says how the README's screenshot is taken).
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REQUIRED = os.environ.get("ATFNN_REQUIRE_BROWSER") == "1"


def require(module: str):
    try:
        return __import__(module)
    except ImportError as e:
        reason = f"{module} is not installed (pip install 'atfnn[serve,test]')"
        if REQUIRED:
            pytest.fail(f"{reason}; ATFNN_REQUIRE_BROWSER=1 makes this an error: {e}", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


require("fastapi")
require("python_multipart")
httpx = require("httpx")

import atfnn  # noqa: E402
from conftest import speechlike, tiny_model_dir  # noqa: E402
from atfnn.errors import ConfigError  # noqa: E402
from atfnn.serve.app import create_app  # noqa: E402
from atfnn.serve.main import is_loopback  # noqa: E402
from atfnn.serve.settings import MIB, ServeSettings  # noqa: E402
from atfnn.serve import uploads  # noqa: E402
from atfnn.serve.uploads import display_name  # noqa: E402

with warnings.catch_warnings():  # Starlette's notice that its test client will move to another HTTP package
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

REPO = Path(__file__).resolve().parents[1]
LABELS = ["angry", "fear", "happy", "neutral", "sad", "surprise"]
SR = 16000
PANELS = ("spectrogram", "f_attention", "t_attention")


# ----------------------------------------------------------------------------------------------------- fixtures
def encoded(samples: np.ndarray, rate: int = SR, format: str = "WAV", subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=format, subtype=subtype)
    return buffer.getvalue()


def make_model(root: Path, variant: str = "atfnn") -> Path:
    return tiny_model_dir(root / f"tiny-{variant}", LABELS, variant=variant, info={"note": "serve tests"})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def wav3() -> bytes:
    return encoded(speechlike(3.0))


@pytest.fixture
def client(predictor):
    with TestClient(create_app(predictor, name="tiny")) as c:
        yield c


def post(client, path: str, data: bytes, name: str = "speech.wav", **params):
    return client.post(path, params=params, files={"file": (name, data, "audio/wav")})


def assert_error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    return error["message"]


# ----------------------------------------------------------------------------------------------------- endpoints
def test_healthz_and_model_card(client):
    assert client.get("/healthz").json() == {"status": "ok", "model": "tiny", "workers": 1, "capacity": 33,
                                             "in_flight": 0}
    card = client.get("/api/model").json()
    assert card["labels"] == LABELS and card["variant"] == "atfnn" and card["attention"] is True
    assert card["frontend"]["sample_rate"] == SR and card["info"] == {"note": "serve tests"}
    assert card["limits"] == {"max_upload_mb": 20.0, "max_seconds": 60.0}


def test_page_and_its_static_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for ref in ('id="file"', 'id="record"', 'id="bars"', "/static/app.js", "/static/style.css"):
        assert ref in page.text
    assert "encodeWav" in client.get("/static/app.js").text
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")


def test_predict_equals_the_library_and_omits_the_timeline_unless_asked(client, predictor, wav3):
    body = post(client, "/api/predict", wav3).json()
    expected = predictor.predict(sf.read(io.BytesIO(wav3), dtype="float32")[0], sample_rate=SR)
    assert body["file"] == "speech.wav" and body["label"] == expected.label
    assert body["probs"] == pytest.approx(expected.probs, abs=1e-6)
    assert sum(body["probs"].values()) == pytest.approx(1.0)
    assert body["duration"] == pytest.approx(3.0, abs=1e-3)
    assert "timeline" not in body and "path" not in body


def test_predict_timeline_covers_the_file(client, wav3):
    timeline = post(client, "/api/predict", wav3, timeline="true").json()["timeline"]
    assert len(timeline) == 4  # 301 frames: starts 0, 64, 128 and the end-aligned 173
    assert timeline[0]["start"] == 0.0 and timeline[-1]["end"] == pytest.approx(3.0, abs=1e-3)
    assert all(s["label"] == max(s["probs"], key=s["probs"].get) for s in timeline)


def test_other_formats_and_rates_are_decoded_like_the_cli(client, predictor, tmp_path):
    wave = speechlike(2.0, rate=44100)
    path = tmp_path / "a.flac"
    sf.write(path, wave, 44100)
    body = post(client, "/api/predict", path.read_bytes(), name="a.flac").json()
    assert body["probs"] == pytest.approx(predictor.predict(path).probs, abs=1e-6)


def png_size(data: str) -> tuple[int, int]:
    raw = base64.b64decode(data)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")  # IHDR width, height


def test_explain_returns_the_three_maps_as_png_and_arrays(client, wav3):
    body = post(client, "/api/explain", wav3).json()
    assert body["n_mels"] == 80 and body["n_frames"] == 301 and body["frame_seconds"] == 0.01
    assert body["high_band"] == 50 and len(body["timeline"]) == 4 and body["label"] in LABELS
    for panel in PANELS:
        assert png_size(body["panels"][panel]["png"]) == (301, 80)
        values = np.array(body["arrays"][panel])
        assert values.shape == (80, 301) and np.isfinite(values).all()
    f = np.array(body["arrays"]["f_attention"])
    assert 0 <= f.min() and f.max() <= 1  # sigmoid attention weights
    lean = post(client, "/api/explain", wav3, arrays="false").json()
    assert "arrays" not in lean and lean["panels"]["spectrogram"] == body["panels"]["spectrogram"]


def test_explain_png_is_fig6_and_unknown_formats_are_refused(client, wav3):
    response = post(client, "/api/explain", wav3, format="png")
    assert response.headers["content-type"] == "image/png" and response.content[:4] == b"\x89PNG"
    assert "png" in assert_error(post(client, "/api/explain", wav3, format="svg"), 400, "bad_request")


def test_explain_marks_maps_a_variant_does_not_have(tmp_path, wav3):
    with TestClient(create_app(atfnn.load(make_model(tmp_path, "tfnn"), device="cpu"))) as c:
        panels = post(c, "/api/explain", wav3).json()["panels"]
    assert panels["f_attention"] is None and panels["t_attention"] is None and panels["spectrogram"]


def test_a_model_without_the_pytorch_network_predicts_but_does_not_explain(predictor, wav3):
    logits_only = atfnn.Predictor(predictor.backend, predictor.card)  # what an ONNX file loads as
    with TestClient(create_app(logits_only)) as c:
        assert c.get("/api/model").json()["attention"] is False
        assert post(c, "/api/predict", wav3).status_code == 200
        assert "ONNX" in assert_error(post(c, "/api/explain", wav3), 501, "no_attention")


# ----------------------------------------------------------------------------------------------------- bad input
BAD_AUDIO = {
    "empty": (b"", "file is empty"),
    "undecodable": (b"RIFF this is not audio" * 20, "cannot be decoded"),
    "silence": (encoded(np.zeros(SR, dtype=np.float32)), "digital silence"),
    "nan": (encoded(np.full(SR, np.nan, dtype=np.float32), subtype="FLOAT"), "NaN"),
    "too_short": (encoded(speechlike(0.01)), "shorter than one 320-sample analysis window"),
}


@pytest.mark.parametrize("code", list(BAD_AUDIO))
@pytest.mark.parametrize("path", ["/api/predict", "/api/explain"])
def test_every_audio_error_is_a_422_naming_the_upload(client, code, path):
    data, phrase = BAD_AUDIO[code]
    message = assert_error(post(client, path, data, name="bad.wav"), 422, code)
    assert message.startswith("bad.wav: ") and phrase in message
    assert "atfnn-serve-" not in message and tempfile.gettempdir() not in message  # no server path leaks


def test_audio_over_the_duration_limit_is_refused(predictor, wav3):
    with TestClient(create_app(predictor, ServeSettings(max_seconds=2.5))) as c:
        message = assert_error(post(c, "/api/predict", wav3), 422, "too_long")
        assert "3.0 s" in message and "2.5 s" in message and "--max-seconds" in message
        assert post(c, "/api/predict", encoded(speechlike(2.0))).status_code == 200


def test_the_duration_is_checked_after_decoding_too(predictor, wav3, monkeypatch):
    """A header that understates the length (or a format without one) is caught on the decoded samples."""
    monkeypatch.setattr(uploads, "_check_declared_length", lambda *args: None)
    with TestClient(create_app(predictor, ServeSettings(max_seconds=2.5))) as c:
        assert "3.0 s" in assert_error(post(c, "/api/explain", wav3), 422, "too_long")


def test_bodies_over_the_upload_limit_are_refused_declared_or_chunked(predictor, wav3):
    with TestClient(create_app(predictor, ServeSettings(max_upload_mb=64 / 1024))) as c:  # 64 KiB; wav3 is 94 KiB
        message = assert_error(post(c, "/api/predict", wav3), 413, "too_large")
        assert "0.1 MiB" in message and "--max-upload-mb" in message

        def chunks():
            for i in range(0, len(wav3), 8192):
                yield wav3[i : i + 8192]

        chunked = c.post("/api/predict", content=chunks(), headers={"content-type": "audio/wav"})
        assert chunked.request.headers["transfer-encoding"] == "chunked"  # no Content-Length to refuse it by
        assert_error(chunked, 413, "too_large")
        assert post(c, "/api/predict", encoded(speechlike(1.5))).status_code == 200


def test_requests_without_an_audio_file(client, wav3):
    assert "curl -F file=@" in assert_error(client.post("/api/predict"), 400, "no_file")
    other_field = client.post("/api/predict", files={"audio": ("a.wav", wav3)})
    assert_error(other_field, 400, "no_file")
    assert "timeline" in assert_error(post(client, "/api/predict", wav3, timeline="maybe"), 400, "bad_request")
    assert_error(client.get("/api/nothing"), 404, "not_found")
    assert_error(client.get("/api/predict"), 405, "method_not_allowed")


def test_a_client_supplied_path_is_never_read(client, tmp_path, wav3):
    real = tmp_path / "real.wav"
    real.write_bytes(wav3)
    # The name points at a readable audio file, the content is not audio: the content is what gets decoded.
    message = assert_error(post(client, "/api/predict", b"not audio" * 50, name=str(real)), 422, "undecodable")
    assert str(tmp_path) not in message and message.startswith("real.wav: ")
    assert post(client, "/api/predict", wav3, name="../../etc/passwd").json()["file"] == "passwd"


def test_display_names_keep_only_the_last_component():
    assert display_name("C:\\Users\\x\\a b.wav") == "a b.wav"
    assert display_name("../../<script>.wav") == "_script_.wav"
    assert display_name(None) == display_name("") == display_name("/") == "upload"
    assert len(display_name("x" * 500)) == 100


def test_uploads_leave_no_file_behind(client, wav3, tmp_path, monkeypatch):
    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    assert post(client, "/api/predict", wav3).status_code == 200
    assert post(client, "/api/explain", wav3).status_code == 200
    assert post(client, "/api/predict", b"junk" * 100).status_code == 422
    assert list(spool.iterdir()) == []


# ----------------------------------------------------------------------------------------------------- workers
class Gate:
    """Makes predictor.predict wait until released, so a test can hold every worker busy without timing."""

    def __init__(self, predictor, monkeypatch):
        self.release = threading.Event()
        original = predictor.predict

        def held(*args, **kwargs):
            assert self.release.wait(30), "the test never released the gate"
            return original(*args, **kwargs)

        monkeypatch.setattr(predictor, "predict", held)


async def wait_for_in_flight(app, n: int) -> None:
    for _ in range(3000):  # a guard against a hang, not a timing assertion
        if app.state.served.pool.stats().in_flight == n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never {n} job(s) in flight")


def test_healthz_answers_and_excess_requests_get_503_while_workers_are_busy(predictor, wav3, monkeypatch):
    app = create_app(predictor, ServeSettings(workers=1, max_queue=1))
    gate = Gate(predictor, monkeypatch)
    files = {"file": ("a.wav", wav3, "audio/wav")}

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            running = asyncio.create_task(c.post("/api/predict", files=files))
            queued = asyncio.create_task(c.post("/api/predict", files=files))
            await wait_for_in_flight(app, 2)
            health = await c.get("/healthz")
            refused = await c.post("/api/predict", files=files)
            gate.release.set()
            return health, refused, await running, await queued

    try:
        health, refused, first, second = asyncio.run(scenario())
    finally:
        gate.release.set()
        app.state.served.pool.close()
    assert health.status_code == 200 and health.json()["in_flight"] == 2 and health.json()["capacity"] == 2
    assert "--workers" in assert_error(refused, 503, "busy")
    assert first.status_code == second.status_code == 200
    assert app.state.served.pool.stats().in_flight == 0


def test_settings_are_validated_and_default_to_loopback():
    assert ServeSettings().host == "127.0.0.1" and ServeSettings(max_upload_mb=2).max_upload_bytes == 2 * MIB
    with pytest.raises(ConfigError, match="--max-seconds -1, --workers 0"):
        ServeSettings(workers=0, max_seconds=-1)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")


def test_serve_command_line_defaults():
    from atfnn.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert (args.model, args.host, args.port, args.workers) == (None, "127.0.0.1", 8000, 1)
    args = build_parser().parse_args(["serve", "m", "--host", "0.0.0.0", "--max-seconds", "5", "--workers", "2"])
    assert (args.model, args.host, args.max_seconds, args.workers) == ("m", "0.0.0.0", 5.0, 2)


# ----------------------------------------------------------------------------------------------------- live server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, log: Path) -> None:
    for _ in range(600):  # a guard against a server that never starts, not a timing assertion
        if process.poll() is not None:
            raise AssertionError(f"atfnn serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"atfnn serve did not answer at {url}:\n{log.read_text()}")


@pytest.fixture(scope="module")
def live_server(model_dir, tmp_path_factory):
    """`python -m atfnn serve MODEL --port P` as its own process; yields its URL and its log file."""
    model = os.environ.get("ATFNN_BROWSER_MODEL") or str(model_dir)
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "atfnn", "serve", model, "--port", str(port), "--device",
                                    "cpu"], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process, log)
        yield url, log
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_real_server_answers_on_loopback(live_server, wav3):
    url, log = live_server
    assert "Uvicorn running on http://127.0.0.1:" in log.read_text()
    body = httpx.post(f"{url}/api/predict", files={"file": ("a.wav", wav3)}, params={"timeline": "true"},
                      timeout=120).json()
    assert list(body["probs"]) == LABELS and len(body["timeline"]) == 4
    assert httpx.post(f"{url}/api/predict", files={"file": ("a.wav", b"")}, timeout=60).status_code == 422
    assert "<title>atfnn" in httpx.get(url, timeout=30).text


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = "Chromium is not installed (apt-get install chromium)"
        if REQUIRED:
            pytest.fail(f"{reason}; ATFNN_REQUIRE_BROWSER=1 makes this an error", pytrace=False)
        pytest.skip(reason)
    return path


def test_the_page_classifies_a_casia_file_in_chromium(live_server, casia_root, tmp_path):
    executable = chromium_path()
    sync_api = pytest.importorskip("playwright.sync_api") if not REQUIRED else __import__(
        "playwright.sync_api", fromlist=["sync_playwright"])
    url, _ = live_server
    audio = casia_root / "wangzhe" / "happy" / "201.wav"
    shot = Path(os.environ.get("ATFNN_SCREENSHOT") or tmp_path / "serve.png")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(url)
            page.wait_for_function("document.getElementById('model').textContent.includes('angry')", timeout=60_000)
            page.set_input_files("#file", str(audio))
            page.wait_for_function("document.getElementById('label').textContent.length > 0", timeout=120_000)
            page.wait_for_function("document.getElementById('map-t_attention').src.startsWith('data:image/png')",
                                   timeout=120_000)
            label = page.text_content("#label")
            bars = page.eval_on_selector_all("#bars .bar", "rows => rows.map(r => r.dataset.label)")
            widths = page.eval_on_selector_all("#bars .fill", "fills => fills.map(f => parseFloat(f.style.width))")
            assert page.is_hidden("#error")
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert label in LABELS and sorted(bars) == sorted(LABELS) and bars[0] == label  # sorted, the decision first
    assert sum(widths) == pytest.approx(100, abs=0.5) and widths == sorted(widths, reverse=True)
    assert shot.stat().st_size > 10_000


def test_the_load_benchmark_runs_each_level_and_stops(model_dir, tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve_load", REPO / "benchmarks" / "serve_load.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "serve_load", bench)  # its dataclasses look their module up there
    spec.loader.exec_module(bench)
    argv = ["--model", str(model_dir), "--clients", "1", "3", "--requests", "4", "--time-limit", "60",
            "--health-limit", "60", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    levels = json.loads((tmp_path / "results.json").read_text())["levels"]
    assert [(r["clients"], r["requests"], r["errors"], r["healthz_failures"]) for r in levels] == [
        (1, 4, 0, 0), (3, 4, 0, 0)]
    assert all(r["p50_s"] <= r["p95_s"] for r in levels) and "| 3 | 4 |" in (tmp_path / "results.md").read_text()
