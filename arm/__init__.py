"""ARM: a unified autoregressive multimodal model platform."""

from importlib.metadata import version

__version__ = version("arm-platform")  # one version: pyproject.toml's
