"""ARM: a unified autoregressive multimodal model platform."""

__version__ = "0.1.0"
