"""WebDataset tar shards (file, folder or glob; local or s3://), streamed member by member.

Members are grouped into samples by key as WebDataset does (the path up to the first dot of the
file name; consecutive members with the same key form one sample). The image is the first of
`image_ext` present, the caption the first of `caption_ext`. Read with tarfile in stream mode
from any fsspec stream (local, s3://, ...), so a shard is never held whole in memory or on disk.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice

from arm.config import ArmConfig, WebDatasetSourceConfig
from arm.data.records import RawRecord
from arm.data.sources import register
from arm.data.sources.files import Files

DESCRIBE = "describe the image."
SUFFIXES = (".tar", ".tar.gz", ".tgz")
# webdataset.tariterators.base_plus_ext: key = up to the first dot of the basename.
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


@dataclass
class _Sample:
    key: str
    members: dict[str, bytes] = field(default_factory=dict)  # ext -> data
    errors: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


class _EndCheckedTarInfo(tarfile.TarInfo):
    """Remembers why the member headers stopped.

    tarfile ends iteration silently on a truncated or garbled header after the first one; only a
    zero block (EOFHeaderError) is a real end of archive, so anything else marks a damaged shard.
    """

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as e:
            tar._arm_end = e  # type: ignore[attr-defined]
            raise


def _samples(tar: tarfile.TarFile, shard: str, limit: int) -> Iterator[_Sample]:
    current: _Sample | None = None
    for member in tar:
        if not member.isfile():
            continue
        m = _KEY_EXT.match(member.name)
        if m is None:  # no extension: not part of any sample
            continue
        key, ext = m.group(1), m.group(2).lower()
        if current is None or key != current.key:
            if current is not None:
                yield current
            current = _Sample(key)
        current.names.append(member.name)
        if ext in current.members:
            continue
        if member.size > limit:  # skipped unread: the stream moves past it
            current.errors.append(f"file_too_large: {shard}/{member.name}: {member.size} bytes > "
                                  f"max_file_bytes {limit}")
            continue
        f = tar.extractfile(member)
        current.members[ext] = f.read() if f is not None else b""
    end = getattr(tar, "_arm_end", None)
    if not isinstance(end, tarfile.EOFHeaderError):
        # The last sample may have lost members to the damage: the shard's rejection covers it.
        raise tarfile.ReadError(f"archive is truncated or damaged after {tar.offset} bytes "
                                f"({end or 'no end-of-archive block'})")
    if current is not None:
        yield current


def _record(src: WebDatasetSourceConfig, shard: str, sample: _Sample) -> RawRecord:
    ref = f"{shard}#{sample.key}"
    meta = {"shard": shard, "key": sample.key}
    image_ext = [e.lower().lstrip(".") for e in src.image_ext]
    caption_ext = [e.lower().lstrip(".") for e in src.caption_ext]
    image = next((sample.members[e] for e in image_ext if e in sample.members), None)
    text = next((sample.members[e] for e in caption_ext if e in sample.members), None)
    error = sample.errors[0] if sample.errors else None
    if error is None and image is None:
        error = f"missing_image: {ref}: none of {image_ext} among {sample.names}"
    if error is None and text is None:
        error = f"missing_caption: {ref}: none of {caption_ext} among {sample.names}"
    if error is not None:
        return RawRecord(source=src.name, ref=ref, task=src.task, meta=meta, error=error)
    if src.task == "generate":
        return RawRecord(source=src.name, ref=ref, task="generate", image=image, caption=text, meta=meta)
    return RawRecord(source=src.name, ref=ref, task="understand", image=image, question=DESCRIBE,
                     answer=text, meta=meta)


@register("webdataset")
def read_webdataset(src: WebDatasetSourceConfig, cfg: ArmConfig) -> Iterator[RawRecord]:
    # islice stops pulling at the quota: shards past it are never opened
    return islice(_read_all(src, cfg), src.limit)


def _read_all(src: WebDatasetSourceConfig, cfg: ArmConfig) -> Iterator[RawRecord]:
    files = Files(src.path, cfg.storage)
    for entry in files.expand(SUFFIXES):
        with files.open_stream(entry.url) as stream:
            try:
                with tarfile.open(fileobj=stream, mode="r|*", tarinfo=_EndCheckedTarInfo) as tar:
                    for sample in _samples(tar, entry.url, cfg.data.max_file_bytes):
                        yield _record(src, entry.url, sample)
            except (tarfile.TarError, EOFError, OSError) as e:
                # Samples already yielded stay valid; the rest of this shard is one rejection.
                # A network failure is a SourceError, which tarfile passes through unchanged.
                yield RawRecord(source=src.name, ref=entry.url, task=src.task,
                                meta={"shard": entry.url}, error=f"bad_shard: {entry.url}: {e}")
