"""atfnn: attentive time-frequency neural network for speech emotion recognition.

    import atfnn
    result = atfnn.load("runs/casia/seed-0/liuchanhg/model").predict("speech.wav")
    print(result.label, result.probs)
"""
__version__ = "0.1.0"

from atfnn.audio import load_audio, log_mel_spectrogram
from atfnn.inference import Failure, Prediction, Predictor, Segment, load
from atfnn.model import ATFNN, build_model

__all__ = [
    "ATFNN",
    "Failure",
    "Prediction",
    "Predictor",
    "Segment",
    "__version__",
    "build_model",
    "load",
    "load_audio",
    "log_mel_spectrogram",
]
