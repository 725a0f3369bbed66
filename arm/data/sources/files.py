"""The files of a source (local path or URL) through `arm.fs`, with storage failures as SourceError.

`Files(url, storage)` lists a tree with sizes (so oversized files are refused before reading),
expands a file/folder/glob, reads whole files and opens forward-only streams, all through one
fsspec filesystem. Every failure of the store itself - no credentials, an unreachable or silent
endpoint, a missing bucket, access denied - becomes a SourceError naming the URL and the reason
(never the credentials), so curation stops on it instead of rejecting every record. A missing
single file stays FileNotFoundError: that is a per-record problem.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

from fsspec.core import split_protocol

from arm.config import StorageConfig
from arm.data.sources import SourceError
from arm.fs import fs_for, is_remote

_WILDCARDS = "*?["
_S3 = ("s3", "s3a")
_DENIED = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
           "InvalidToken", "ExpiredToken"}
_MISSING_KEY = {"NoSuchKey", "404", "NotFound"}
# pyarrow's S3 client reports failures as OSError("... AWS Error <CODE> during <Op> operation: ...")
_ARROW_S3 = re.compile(r"AWS Error ([A-Z_]+) during")
_ARROW_CONNECT = {"NETWORK_CONNECTION", "REQUEST_TIMEOUT", "SLOW_DOWN", "SERVICE_UNAVAILABLE", "INTERNAL_FAILURE"}


@dataclass(frozen=True)
class Entry:
    url: str  # local path or URL
    size: int


def _public(endpoint: str | None) -> str:
    """The endpoint without any user:password part, safe to print."""
    if not endpoint:
        return "the default AWS endpoint"
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _hidden(rel: str) -> bool:
    # Editor/OS droppings (.DS_Store) and our own atomic-write temporaries start with a dot.
    return any(part.startswith(".") for part in rel.split("/"))


def _client_error(e: BaseException) -> Any:
    """The botocore ClientError behind an exception (s3fs raises OSError with it as the cause)."""
    from botocore.exceptions import ClientError

    while e is not None and not isinstance(e, ClientError):
        e = e.__cause__
    return e


def relpath_inside(rel: str) -> str | None:
    """`rel` normalised to a POSIX path inside its folder, or None if it is absolute or escapes."""
    if not rel or rel.startswith("/") or "\\" in rel or split_protocol(rel)[0] is not None:
        return None
    norm = posixpath.normpath(rel)
    if norm == "." or norm.startswith("../") or norm == "..":
        return None
    return norm


class Files:
    """One local path or URL (file, folder or glob) and the filesystem that reaches it."""

    def __init__(self, url: str, storage: StorageConfig):
        self.url, self.storage = str(url), storage
        self.remote = is_remote(self.url)
        self.protocol = split_protocol(self.url)[0]
        self.fs, self.path = fs_for(self.url, storage)

    # ------------------------------------------------------------------ errors

    def _endpoint(self) -> str:
        client = getattr(self.fs, "_s3", None)  # s3fs's botocore client, once made
        return _public(client.meta.endpoint_url if client is not None else self.storage.endpoint_url)

    def translate(self, url: str, e: BaseException) -> SourceError | None:
        """The SourceError for a failure of the store itself, or None for anything else."""
        from botocore import exceptions as bex

        if isinstance(e, SourceError):
            return e
        if isinstance(e, bex.NoCredentialsError):
            return SourceError(f"{url}: no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                               "(or AWS_PROFILE) in the environment")
        if isinstance(e, (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.ConnectionClosedError,
                          bex.ProxyConnectionError)):
            return SourceError(f"{url}: cannot connect to endpoint {self._endpoint()}: {e}")
        if isinstance(e, bex.ReadTimeoutError):
            return SourceError(f"{url}: endpoint {self._endpoint()} did not answer in time "
                               f"(read timeout {self.storage.read_timeout_s}s): {e}")
        if isinstance(e, bex.BotoCoreError):
            return SourceError(f"{url}: S3 failure at {self._endpoint()}: {e}")
        ce = _client_error(e)
        if ce is not None:
            err = ce.response.get("Error", {})
            code = str(err.get("Code", "?"))
            if code == "NoSuchBucket":
                return SourceError(f"{url}: bucket does not exist (endpoint {self._endpoint()})")
            if code in _DENIED:
                return SourceError(f"{url}: access denied ({code}) at {self._endpoint()}: check the credentials "
                                   "in the environment and the bucket policy")
            if code in _MISSING_KEY:
                return None  # one missing object: the caller decides
            return SourceError(f"{url}: S3 error {code} at {self._endpoint()}: {err.get('Message', ce)}")
        m = _ARROW_S3.search(str(e)) if isinstance(e, OSError) else None
        if m is not None and (m.group(1) in _ARROW_CONNECT or m.group(1).startswith("ACCESS")):
            return SourceError(f"{url}: S3 failure at {self._endpoint()}: {e}")
        return None

    @contextmanager
    def errors(self, url: str | None = None) -> Iterator[None]:
        """Failures of the store inside the block raise SourceError naming `url`."""
        try:
            yield
        except Exception as e:
            err = self.translate(url or self.url, e)
            if err is None or err is e:
                raise
            raise err from e

    # ------------------------------------------------------------------ names

    def url_of(self, path: str) -> str:
        """The URL (or local path, relative if the source's was) of a path inside the filesystem."""
        if self.remote:
            return f"{self.protocol}://{path}"
        return path if os.path.isabs(self.url) else os.path.relpath(path)

    def join(self, rel: str) -> str:
        """`rel` (POSIX) inside this folder or prefix."""
        return self.url.rstrip("/") + "/" + rel

    # ------------------------------------------------------------------ listing

    def _find(self, path: str) -> dict[str, int]:
        """Files at or under `path` (an fs path) -> size; a missing bucket raises SourceError."""
        with self.errors():
            # find() answers {path: {}} when `path` is itself a local file
            found = {p: info or self.fs.info(p) for p, info in self.fs.find(path, detail=True).items()}
        if not found and self.protocol in _S3:
            self._check_bucket()  # tell a missing bucket from an empty prefix
        return {p: int(info.get("size") or 0) for p, info in found.items()
                if info.get("type") == "file" and not p.endswith("/")}

    def _check_bucket(self) -> None:
        """SourceError if the bucket of an s3:// URL does not exist."""
        bucket = self.path.split("/", 1)[0]
        with self.errors():
            exists = self.fs.exists(bucket)
        if not exists:
            raise SourceError(f"{self.url}: bucket does not exist (endpoint {self._endpoint()})")

    def tree(self) -> dict[str, int]:
        """Files under the folder or prefix: relative POSIX path -> size, sorted by path."""
        if not self.remote and not self.fs.isdir(self.path):
            raise SourceError(f"{self.url}: folder not found" if not self.fs.exists(self.path)
                              else f"{self.url}: not a folder")
        root = self.fs._strip_protocol(self.path).rstrip("/")
        out = {}
        for p, size in self._find(root).items():
            rel = p[len(root):].lstrip("/") if p.startswith(root + "/") else ""
            if rel and not _hidden(rel):
                out[rel] = size
        return dict(sorted(out.items()))

    def expand(self, suffixes: tuple[str, ...] = ()) -> list[Entry]:
        """A file, a folder (recursively, files with `suffixes`) or a glob -> entries, sorted.

        Raises SourceError when nothing matches: an empty source is almost always a wrong path.
        """
        suffixes = tuple(s.lower() for s in suffixes)
        if any(c in self.path for c in _WILDCARDS):
            with self.errors():
                found = self.fs.glob(self.path, detail=True)
            entries = [Entry(self.url_of(p), int(i.get("size") or 0)) for p, i in found.items()
                       if i.get("type") == "file"]
            if not entries and self.protocol in _S3:
                self._check_bucket()
        elif not self.remote and not self.fs.exists(self.path):
            raise SourceError(f"{self.url}: no such file or folder")
        else:
            found = self._find(self.path)
            exact = self.fs._strip_protocol(self.path)
            if exact in found:  # the URL names one file
                entries = [Entry(self.url_of(exact), found[exact])]
            else:
                entries = [Entry(self.url_of(p), size) for p, size in found.items()
                           if not _hidden(p[len(exact):].lstrip("/"))
                           and (not suffixes or p.lower().endswith(suffixes))]
        if not entries:
            kinds = f" ({', '.join(suffixes)})" if suffixes else ""
            raise SourceError(f"{self.url}: no files{kinds} found")
        return sorted(entries, key=lambda e: e.url)

    # ------------------------------------------------------------------ reading

    def size(self, url: str) -> int | None:
        """Size in bytes, or None when the file does not exist."""
        with self.errors(url):
            try:
                return int(self.fs.size(url))
            except FileNotFoundError:
                return None

    def read(self, url: str) -> bytes:
        """The whole file. FileNotFoundError when it does not exist (a per-record problem)."""
        with self.errors(url):
            return self.fs.cat_file(url)

    @contextmanager
    def open_stream(self, url: str) -> Iterator[BinaryIO]:
        """A forward-only binary stream (tar shards, manifests), read in bounded blocks."""
        with self.errors(url), self.fs.open(url, "rb", block_size=8 << 20, cache_type="readahead") as f:
            yield io.BufferedReader(_Guarded(f, url, self), buffer_size=1 << 20)


class _Guarded(io.RawIOBase):
    """A file whose storage failures mid-stream surface as SourceError.

    By hand because fsspec has no hook for it: a reader that takes any OSError for a damaged
    shard (tarfile) would otherwise file an unreachable store as bad data.
    """

    def __init__(self, f: Any, url: str, files: Files):
        super().__init__()
        self._f, self._url, self._files = f, url, files

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        with self._files.errors(self._url):
            data = self._f.read(len(buf))
        n = len(data)
        memoryview(buf).cast("B")[:n] = data
        return n
