"""Data sources: a registry from the `type` in params.yaml to a reader of RawRecords.

A reader is `fn(source_config, arm_config) -> Iterator[RawRecord]`. It must be deterministic
and yield a RawRecord with `error` set (rather than raise) for a record it cannot read.
Add a source by decorating a reader with `@register("type")` and adding its config model to
`arm.config.SourceConfig`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from arm.data.records import RawRecord

Reader = Callable[[Any, Any], Iterator[RawRecord]]
_REGISTRY: dict[str, Reader] = {}


class SourceError(RuntimeError):
    """A whole source cannot be read (unreachable bucket, missing root): names source and reason."""


def register(kind: str) -> Callable[[Reader], Reader]:
    def deco(fn: Reader) -> Reader:
        if kind in _REGISTRY:
            raise ValueError(f"source type {kind!r} registered twice")
        _REGISTRY[kind] = fn
        return fn

    return deco


def get_reader(kind: str) -> Reader:
    _load_builtin()
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise KeyError(f"unknown source type {kind!r}; known: {sorted(_REGISTRY)}") from None


def iter_source(source_cfg: Any, cfg: Any) -> Iterator[RawRecord]:
    return get_reader(source_cfg.type)(source_cfg, cfg)


def _load_builtin() -> None:
    # Imported lazily so that `arm config show` does not pay for s3fs/pyarrow imports.
    from arm.data.sources import shapes  # noqa: F401
    from arm.data.sources import fashion_mnist, image_folder, parquet, webdataset  # noqa: F401
