"""Object storage access for the data sources: s3:// URLs through boto3, local paths alike.

One code path for AWS S3, SeaweedFS and MinIO, selected by endpoint URL (`storage.endpoint_url`,
else boto3's own AWS_ENDPOINT_URL). Credentials come only from the environment (boto3's
standard chain) and never appear in messages. Timeouts and retries stay small so that an
unreachable endpoint fails in seconds, not minutes.

`Storage` lets readers treat local paths and s3:// URLs the same way: expand a file/folder/glob,
list a tree with sizes (so oversized files are refused before reading), read, stream, or open a
seekable range-reading file (for parquet footers and row groups).
"""

from __future__ import annotations

import fnmatch
import glob as globlib
import io
import os
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

from arm.config import StorageConfig
from arm.data.sources import SourceError

_WILDCARDS = "*?["


def is_s3_url(path: str) -> bool:
    return str(path).startswith("s3://")


def split_url(url: str) -> tuple[str, str]:
    """`s3://bucket/key/part` -> ("bucket", "key/part")."""
    if not is_s3_url(url):
        raise SourceError(f"{url}: not an s3:// URL")
    bucket, _, key = url[len("s3://"):].partition("/")
    if not bucket:
        raise SourceError(f"{url}: no bucket in the URL (expected s3://bucket/key)")
    return bucket, key


def join_url(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def make_client(storage: StorageConfig) -> Any:
    """A boto3 S3 client for `storage`; boto3 imported here so config-only commands stay light."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=storage.connect_timeout_s,
        read_timeout=storage.read_timeout_s,
        # total_max_attempts counts the first try (botocore's max_attempts would not); "standard"
        # mode caps the backoff, so a dead endpoint costs max_attempts short tries, then fails.
        retries={"total_max_attempts": storage.max_attempts, "mode": "standard"},
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=storage.endpoint_url or None, region_name=storage.region, config=config
    )


def _public_endpoint(client: Any) -> str:
    """The endpoint without any user:password part, safe to print."""
    parts = urlsplit(client.meta.endpoint_url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


_DENIED = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
           "InvalidToken", "ExpiredToken"}


@contextmanager
def s3_errors(url: str, client: Any) -> Iterator[None]:
    """Turns boto3/botocore failures into a SourceError naming the URL and the reason."""
    from botocore import exceptions as bex

    try:
        yield
    except SourceError:
        raise
    except bex.NoCredentialsError:
        raise SourceError(
            f"{url}: no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE) in the environment"
        ) from None
    except (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.ConnectionClosedError,
            bex.ProxyConnectionError) as e:
        raise SourceError(f"{url}: cannot connect to endpoint {_public_endpoint(client)}: {e}") from e
    except bex.ReadTimeoutError as e:
        raise SourceError(
            f"{url}: endpoint {_public_endpoint(client)} did not answer in time "
            f"(read timeout {client.meta.config.read_timeout}s): {e}"
        ) from e
    except bex.ClientError as e:
        err = e.response.get("Error", {})
        code = str(err.get("Code", "?"))
        if code == "NoSuchBucket":
            raise SourceError(f"{url}: bucket does not exist (endpoint {_public_endpoint(client)})") from e
        if code in _DENIED:
            raise SourceError(
                f"{url}: access denied ({code}) at {_public_endpoint(client)}: check the credentials "
                "in the environment and the bucket policy"
            ) from e
        raise SourceError(f"{url}: S3 error {code} at {_public_endpoint(client)}: {err.get('Message', e)}") from e
    except bex.BotoCoreError as e:
        raise SourceError(f"{url}: S3 failure at {_public_endpoint(client)}: {e}") from e


@dataclass(frozen=True)
class Entry:
    path: str  # local path or s3:// URL
    size: int


def _has_suffix(name: str, suffixes: tuple[str, ...]) -> bool:
    low = name.lower()
    return not suffixes or any(low.endswith(s) for s in suffixes)


def _hidden(rel: str) -> bool:
    # Editor/OS droppings (.DS_Store) and our own atomic-write temporaries start with a dot.
    return any(part.startswith(".") for part in rel.split("/"))


class _RangeFile(io.RawIOBase):
    """A seekable read-only view of one S3 object; each read is one ranged GET."""

    def __init__(self, client: Any, url: str, size: int):
        super().__init__()
        self._client, self._url, self._size, self._pos = client, url, size, 0
        self._bucket, self._key = split_url(url)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"{self._url}: negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buf: Any) -> int:
        if self._pos >= self._size or len(buf) == 0:
            return 0
        end = min(self._size, self._pos + len(buf)) - 1
        with s3_errors(self._url, self._client):
            data = self._client.get_object(Bucket=self._bucket, Key=self._key,
                                           Range=f"bytes={self._pos}-{end}")["Body"].read()
        n = len(data)
        memoryview(buf).cast("B")[:n] = data
        self._pos += n
        return n


class Storage:
    """Local paths and s3:// URLs behind one interface; the S3 client is made on first use."""

    def __init__(self, storage: StorageConfig):
        self.config = storage
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client(self.config)
        return self._client

    # ------------------------------------------------------------------ listing

    def _s3_list(self, url: str, prefix: str) -> Iterator[Entry]:
        bucket, _ = split_url(url)
        with s3_errors(url, self.client):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    yield Entry(join_url(bucket, obj["Key"]), int(obj["Size"]))

    def tree(self, root: str) -> dict[str, int]:
        """Files under a folder or s3:// prefix: relative POSIX path -> size, sorted by path."""
        out: dict[str, int] = {}
        if is_s3_url(root):
            bucket, key = split_url(root)
            prefix = key.rstrip("/") + "/" if key.strip("/") else ""
            for e in self._s3_list(root, prefix):
                rel = split_url(e.path)[1][len(prefix):]
                if rel and not rel.endswith("/") and not _hidden(rel):
                    out[rel] = e.size
            if not out:
                self._check_bucket(root)  # tell a missing bucket from an empty prefix
        else:
            base = Path(root)
            if not base.is_dir():
                raise SourceError(f"{root}: folder not found" if not base.exists() else f"{root}: not a folder")
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in filenames:
                    full = Path(dirpath, name)
                    rel = full.relative_to(base).as_posix()
                    if not _hidden(rel) and full.is_file():
                        out[rel] = full.stat().st_size
        return dict(sorted(out.items()))

    def expand(self, pattern: str, suffixes: tuple[str, ...] = ()) -> list[Entry]:
        """A file, a folder (recursively, files with `suffixes`) or a glob -> entries, sorted.

        Raises SourceError when nothing matches: an empty source is almost always a wrong path.
        """
        suffixes = tuple(s.lower() for s in suffixes)
        if is_s3_url(pattern):
            entries = self._s3_expand(pattern, suffixes)
        else:
            entries = self._local_expand(pattern, suffixes)
        if not entries:
            kinds = f" ({', '.join(suffixes)})" if suffixes else ""
            raise SourceError(f"{pattern}: no files{kinds} found")
        return sorted(entries, key=lambda e: e.path)

    def _local_expand(self, pattern: str, suffixes: tuple[str, ...]) -> list[Entry]:
        if any(c in pattern for c in _WILDCARDS):
            paths = [p for p in globlib.glob(pattern, recursive=True) if os.path.isfile(p)]
            return [Entry(p, os.path.getsize(p)) for p in paths]
        p = Path(pattern)
        if p.is_file():
            return [Entry(pattern, p.stat().st_size)]
        if p.is_dir():
            return [Entry(str(p / rel), size) for rel, size in self.tree(pattern).items()
                    if _has_suffix(rel, suffixes)]
        raise SourceError(f"{pattern}: no such file or folder")

    def _s3_expand(self, pattern: str, suffixes: tuple[str, ...]) -> list[Entry]:
        bucket, key = split_url(pattern)
        cut = min((key.index(c) for c in _WILDCARDS if c in key), default=None)
        if cut is not None:  # list from the literal part, then match the whole key
            listed = list(self._s3_list(pattern, key[:cut]))
            found = [e for e in listed if fnmatch.fnmatchcase(split_url(e.path)[1], key)]
        else:
            folder = key.rstrip("/") + "/" if key.strip("/") else ""
            listed = list(self._s3_list(pattern, key if key and not key.endswith("/") else folder))
            exact = [e for e in listed if split_url(e.path)[1] == key]
            if exact:
                return exact
            found = []
            for e in listed:
                rel = split_url(e.path)[1][len(folder):]
                if split_url(e.path)[1].startswith(folder) and rel and not _hidden(rel) \
                        and _has_suffix(rel, suffixes):
                    found.append(e)
        if not listed:
            self._check_bucket(pattern)
        return found

    def _check_bucket(self, url: str) -> None:
        """SourceError if the bucket of `url` does not exist (HEAD answers a bare 404 for that)."""
        from botocore.exceptions import ClientError

        bucket, _ = split_url(url)
        with s3_errors(url, self.client):
            try:
                self.client.head_bucket(Bucket=bucket)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
                    raise SourceError(
                        f"{url}: bucket does not exist (endpoint {_public_endpoint(self.client)})"
                    ) from e
                raise

    # ------------------------------------------------------------------ reading

    def size(self, path: str) -> int | None:
        """Size in bytes, or None when the file/object does not exist."""
        if not is_s3_url(path):
            try:
                return os.stat(path).st_size
            except FileNotFoundError:
                return None
        from botocore.exceptions import ClientError

        bucket, key = split_url(path)
        with s3_errors(path, self.client):
            try:
                return int(self.client.head_object(Bucket=bucket, Key=key)["ContentLength"])
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    self._check_bucket(path)  # a missing bucket is a whole-source error
                    return None
                raise

    def read(self, path: str) -> bytes:
        """The whole file. FileNotFoundError when it does not exist (a per-record problem)."""
        if not is_s3_url(path):
            return Path(path).read_bytes()
        from botocore.exceptions import ClientError

        bucket, key = split_url(path)
        with s3_errors(path, self.client):
            try:
                return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") == "NoSuchKey":
                    raise FileNotFoundError(path) from None
                raise

    @contextmanager
    def open_stream(self, path: str) -> Iterator[BinaryIO]:
        """A forward-only binary stream (tar shards, manifests), never held whole in memory."""
        if not is_s3_url(path):
            with open(path, "rb") as f:
                yield f
            return
        bucket, key = split_url(path)
        with s3_errors(path, self.client):
            body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
            try:
                yield _GuardedStream(body, path, self.client)
            finally:
                body.close()

    @contextmanager
    def open_random(self, path: str, size: int) -> Iterator[BinaryIO]:
        """A seekable file; for S3, ranged GETs behind a 1 MiB read buffer."""
        if not is_s3_url(path):
            with open(path, "rb") as f:
                yield f
            return
        raw = _RangeFile(self.client, path, size)
        with io.BufferedReader(raw, buffer_size=1 << 20) as f:
            yield f


class _GuardedStream(io.RawIOBase):
    """An S3 body whose network failures mid-stream surface as SourceError."""

    def __init__(self, body: Any, url: str, client: Any):
        super().__init__()
        self._body, self._url, self._client = body, url, client

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        with s3_errors(self._url, self._client):
            data = self._body.read(len(buf))
        n = len(data)
        memoryview(buf).cast("B")[:n] = data
        return n


def relpath_inside(rel: str) -> str | None:
    """`rel` normalised to a POSIX path inside its folder, or None if it is absolute or escapes."""
    if not rel or rel.startswith("/") or "\\" in rel or is_s3_url(rel):
        return None
    norm = posixpath.normpath(rel)
    if norm == "." or norm.startswith("../") or norm == "..":
        return None
    return norm


def join(root: str, rel: str) -> str:
    """`rel` (POSIX) inside a local folder or s3:// prefix."""
    if is_s3_url(root):
        return root.rstrip("/") + "/" + rel
    return str(Path(root) / rel)
