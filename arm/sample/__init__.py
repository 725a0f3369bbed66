"""Sampling: KV-cached batched decoding, CFG, grammar constraints, speculative Jacobi decoding."""

from arm.sample.engine import Engine, Request, Result, Stats

__all__ = ["Engine", "Request", "Result", "Stats"]
