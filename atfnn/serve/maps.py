"""The attention maps of atfnn.explain as the API returns them: one PNG per panel, the arrays, or Fig. 6 itself.

A panel PNG is the map itself, one pixel per (frame, mel band), band 0 at the bottom, coloured like Fig. 6 (jet,
scaled per panel; the spectrogram's range is the 80 dB below its peak, as in atfnn.explain), so a page can stretch
it over the waveform's time axis.
"""
from __future__ import annotations

import base64
import io

import numpy as np

from atfnn.explain import CMAP, HIGH_BAND, MAP_KEYS, TOP_DB_NATS, Explanation, plot_explanation

ARRAY_DECIMALS = 4


def panel_arrays(explanation: Explanation) -> dict[str, np.ndarray | None]:
    """Panel name -> (n_mels, n_frames), None where the model variant has no such attention."""
    return {"spectrogram": explanation.logmel, **{p: explanation.maps.get(k) for p, k in MAP_KEYS.items()}}


def colour_range(panel: str, data: np.ndarray) -> tuple[float, float]:
    hi = float(data.max())
    lo = max(float(data.min()), hi - TOP_DB_NATS) if panel == "spectrogram" else float(data.min())
    return lo, hi


def panel_png(data: np.ndarray, lo: float, hi: float) -> bytes:
    from matplotlib import colormaps
    from matplotlib.image import imsave

    scaled = (np.clip(data, lo, hi) - lo) / (hi - lo if hi > lo else 1.0)
    buffer = io.BytesIO()
    imsave(buffer, colormaps[CMAP](scaled[::-1]), format="png")  # row 0 of an image is the top: the highest band
    return buffer.getvalue()


def explanation_json(explanation: Explanation, arrays: bool) -> dict:
    """Shapes and time step, each panel as a base64 PNG with its colour range, and the arrays when asked for."""
    fe = explanation.frontend
    out: dict = {
        "n_mels": int(explanation.logmel.shape[0]),
        "n_frames": explanation.n_frames,
        "frame_seconds": fe.hop_length / fe.sample_rate,
        "high_band": HIGH_BAND,
        "variant": explanation.variant,
        "panels": {},
    }
    if arrays:
        out["arrays"] = {}
    for panel, data in panel_arrays(explanation).items():
        if data is None:
            out["panels"][panel] = None
            continue
        lo, hi = colour_range(panel, data)
        png = base64.b64encode(panel_png(data, lo, hi)).decode("ascii")
        out["panels"][panel] = {"png": png, "min": lo, "max": hi}
        if arrays:
            out["arrays"][panel] = np.round(data.astype(np.float64), ARRAY_DECIMALS).tolist()
    return out


def figure_png(explanation: Explanation, title: str) -> bytes:
    """Fig. 6 of atfnn.explain (the CLI's `atfnn explain` PNG) as bytes."""
    buffer = io.BytesIO()
    plot_explanation(explanation, title).savefig(buffer, format="png")
    return buffer.getvalue()
