"""atfnn: attentive time-frequency neural network for speech emotion recognition."""
__version__ = "0.1.0"
