"""One way to reach a file tree that may be local or remote: fsspec, configured from `storage:`.

Training-time I/O (token shards streamed per rank, checkpoints and the exported model mirrored
between nodes) goes through here, so `s3://` (SeaweedFS, MinIO, AWS, selected by endpoint URL)
and local paths share one code path, and gs://, az://, https:// work wherever fsspec has the
driver. Credentials come from the environment (boto's chain) and are never logged.
"""

from __future__ import annotations

from fsspec import AbstractFileSystem, filesystem
from fsspec.core import split_protocol

from arm.config import StorageConfig


def is_remote(url: str) -> bool:
    return split_protocol(str(url))[0] not in (None, "file", "local")


def fs_for(url: str, storage: StorageConfig | None = None) -> tuple[AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path or a URL."""
    protocol, path = split_protocol(str(url))
    if protocol in (None, "file", "local"):
        return filesystem("file"), str(url) if protocol is None else path
    if protocol in ("s3", "s3a"):
        s = storage or StorageConfig()
        client_kwargs = {"region_name": s.region}
        if s.endpoint_url:
            client_kwargs["endpoint_url"] = s.endpoint_url
        config_kwargs = {"connect_timeout": s.connect_timeout_s, "read_timeout": s.read_timeout_s,
                         "retries": {"total_max_attempts": s.max_attempts, "mode": "standard"}}
        # skip_instance_cache: credentials and endpoints may differ between calls (tests, nodes)
        return filesystem("s3", client_kwargs=client_kwargs, config_kwargs=config_kwargs,
                          skip_instance_cache=True), path
    return filesystem(protocol), path


def join(url: str, *parts: str) -> str:
    return "/".join([str(url).rstrip("/"), *(p.strip("/") for p in parts)])
