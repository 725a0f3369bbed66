"""One way to reach a file tree that may be local or remote: fsspec, configured from `storage:`.

Data sources (listing, reading, streaming shards) and training-time I/O (token shards streamed
per rank, checkpoints and the exported model mirrored between nodes) go through here, so
`s3://` (SeaweedFS, MinIO, AWS, selected by endpoint URL) and local paths share one code path,
and gs://, az://, https:// work wherever fsspec has the driver. Parquet is read through
`arrow_fs_for`: pyarrow's own S3 client fetches the column chunks of a row group as coalesced
range requests in parallel, which a Python file object cannot do. Credentials come from the
environment (boto's chain, the AWS SDK's chain) and are never logged.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from fsspec import AbstractFileSystem, filesystem
from fsspec.core import split_protocol

from arm.config import StorageConfig

_S3 = ("s3", "s3a")


def is_remote(url: str) -> bool:
    return split_protocol(str(url))[0] not in (None, "file", "local")


def fs_for(url: str, storage: StorageConfig | None = None) -> tuple[AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path or a URL."""
    protocol, path = split_protocol(str(url))
    if protocol in (None, "file", "local"):
        return filesystem("file"), str(url) if protocol is None else path
    if protocol in _S3:
        s = storage or StorageConfig()
        client_kwargs = {"region_name": s.region}
        if s.endpoint_url:
            client_kwargs["endpoint_url"] = s.endpoint_url
        config_kwargs = {"connect_timeout": s.connect_timeout_s, "read_timeout": s.read_timeout_s,
                         # total_max_attempts counts the first try; "standard" mode caps the backoff
                         # and retries throttling, so a dead endpoint costs max_attempts short tries.
                         "retries": {"total_max_attempts": s.max_attempts, "mode": "standard"}}
        # skip_instance_cache: credentials and endpoints may differ between calls (tests, nodes).
        fs = filesystem("s3", client_kwargs=client_kwargs, config_kwargs=config_kwargs, skip_instance_cache=True)
        # One try in s3fs's own retry loop (a class attribute, not a constructor argument): it
        # would multiply botocore's attempts, 5 x max_attempts on a dead endpoint.
        fs.retries = 1
        return fs, path
    return filesystem(protocol), path


def arrow_fs_for(url: str, storage: StorageConfig | None = None) -> tuple[Any, str]:
    """(pyarrow.fs.FileSystem, path inside it): native local and S3 clients, fsspec for the rest."""
    import pyarrow.fs as pafs

    protocol, path = split_protocol(str(url))
    if protocol in (None, "file", "local"):
        return pafs.LocalFileSystem(), str(url) if protocol is None else path
    if protocol in _S3:
        s = storage or StorageConfig()
        # botocore's order (config, then AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL): the AWS SDK
        # for C++ under pyarrow reads neither variable, and both clients must reach one store.
        url = s.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        endpoint: dict[str, str] = {}
        if url:
            parts = urlsplit(url)
            endpoint = {"scheme": parts.scheme or "https", "endpoint_override": parts.netloc + parts.path.rstrip("/")}
        return pafs.S3FileSystem(
            region=s.region, connect_timeout=s.connect_timeout_s, request_timeout=s.read_timeout_s,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=s.max_attempts), **endpoint,
        ), path
    fs, path = fs_for(url, storage)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join(url: str, *parts: str) -> str:
    return "/".join([str(url).rstrip("/"), *(p.strip("/") for p in parts)])
