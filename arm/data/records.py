"""The record every source yields and curation consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Task = Literal["understand", "generate", "edit", "text"]
TASKS: tuple[str, ...] = ("understand", "generate", "edit", "text")
Text = str | bytes | None  # bytes when read from a file: curation decodes and rejects bad UTF-8


@dataclass
class RawRecord:
    """One input record, before any checks.

    `image` is the encoded image (for `edit`, the target); `source_image` is the edit's input.
    `error` marks a record the source could not read (missing file, unreadable object): it is
    still yielded so that curation files it under `rejections` and the counts reconcile.
    """

    source: str
    ref: str  # where it came from: path, URL, index
    task: Task
    image: bytes | None = None
    source_image: bytes | None = None
    caption: Text = None
    question: Text = None
    answer: Text = None
    instruction: Text = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # "reason: detail"
