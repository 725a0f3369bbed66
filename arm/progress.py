"""Progress of the long loops (curate, tokenizer training, tokenize, pretrain, RL, evaluate,
rl-claims, the eval judge's training): the one way every stage reports how far it is.

On a terminal it is a tqdm bar. Anywhere else (CI, `make demo` piped to a file, Prefect and
DeepSpeed workers) a redrawn bar is carriage-return noise, so the progress is a plain log line
through the stage's logger (the Prefect run logger inside a flow), every `every_s` seconds and
each time another tenth of the work is done, e.g.

    pretrain: 300/1200 step (25%), 4.10step/s, eta 03:39, loss=2.301

Only the process of rank 0 reports (the `RANK` that torchrun, DeepSpeed and Accelerate set), so a
data-parallel run prints one bar, not one per GPU.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

log = logging.getLogger("arm.progress")

EVERY_S = 30.0
EVERY_FRAC = 0.1
LINE = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), {rate_fmt}, eta {remaining}{postfix}"
LINE_NO_TOTAL = "{desc}: {n_fmt} {unit}, {rate_fmt}{postfix}"


class LogLines:
    """tqdm's update / set_postfix / close (and `with`), reported as log lines.

    Written here because tqdm has no line-per-report mode: given a file that is not a terminal
    it still redraws one line with `\\r`. tqdm.format_meter formats the lines, so they read
    like the bar (counts, percentage, rate, time left)."""

    def __init__(self, desc: str, total: int | None, initial: int, unit: str,
                 logger: logging.Logger | logging.LoggerAdapter, every_s: float, every_frac: float):
        if total is not None and total < 0:
            raise ValueError(f"progress {desc!r}: total {total} is negative")
        if every_s <= 0 or not 0 < every_frac <= 1:
            raise ValueError(f"progress {desc!r}: every_s {every_s} must be > 0 and every_frac {every_frac} in (0, 1]")
        self.desc, self.total, self.initial, self.unit = desc, total, initial, unit
        self.logger, self.every_s, self.every_frac = logger, every_s, every_frac
        self.n = initial
        self.postfix = ""
        self.t0 = self._last = time.monotonic()
        self._reported = initial
        self._mark = self._milestone()

    def _milestone(self) -> int:
        """How many whole `every_frac` parts of the total are done (0 without a total)."""
        return int(self.n / (self.total * self.every_frac)) if self.total else 0

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        mark = self._milestone()
        if mark > self._mark or now - self._last >= self.every_s:
            self._mark = mark
            self._emit(now)

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        """The values shown after the counts from the next line on (`refresh`: tqdm's, a redraw)."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self.n != self._reported:
            self._emit(time.monotonic())

    def __enter__(self) -> LogLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _emit(self, now: float) -> None:
        line = tqdm.format_meter(self.n, self.total, now - self.t0, prefix=self.desc, unit=self.unit,
                                 bar_format=LINE if self.total else LINE_NO_TOTAL, postfix=self.postfix or None,
                                 initial=self.initial)
        self.logger.info("%s", " ".join(line.split()))  # format_meter pads the rate to a fixed width
        self._last, self._reported = now, self.n


Bar = tqdm | LogLines  # what progress_bar returns: the same interface either way


def progress_bar(desc: str, total: int | None = None, *, initial: int = 0, unit: str = "it",
                 logger: logging.Logger | logging.LoggerAdapter | None = None, enabled: bool = True,
                 stream: TextIO | None = None, every_s: float = EVERY_S,
                 every_frac: float = EVERY_FRAC) -> Bar:
    """A progress reporter with tqdm's interface: a bar when `stream` (stderr) is a terminal,
    else log lines through `logger` (default `arm.progress`); a silent one when not `enabled`
    or on a rank other than 0."""
    stream = stream if stream is not None else sys.stderr
    if not enabled or os.environ.get("RANK", "0") != "0":
        return tqdm(total=total, disable=True)
    if stream.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream, dynamic_ncols=True,
                    mininterval=0.5)
    return LogLines(desc, total, initial, unit, logger or log, every_s, every_frac)


def quiet_other_bars(stream: TextIO | None = None) -> None:
    """Off a terminal, switch off the Hugging Face libraries' bars (transformers' "Loading weights",
    hub transfers, datasets) through their own environment switches: they read them when first
    imported, so the CLI calls this before any is, and the stage commands it starts (DVC runs
    `arm <stage>`) inherit them. A switch already set is left as it is. DVC's own bars switch
    themselves off a terminal; arm's go through progress_bar."""
    if not (stream if stream is not None else sys.stderr).isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
