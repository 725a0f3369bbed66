"""Step curves of the training stages (tokenizer, pretraining, RL) as dvclive directories.

A curve is a dvclive directory: `plots/metrics/<name>.tsv` (columns step, <name>) per metric and
`metrics.json` with the last values, which `dvc plots show/diff` and `dvc exp show` read (dvc.yaml
`plots:`). A trainer opens a `CurveLog` once it knows where its run starts, logs each step as it
is done and flushes the summary at each checkpoint. Opening rebuilds the directory from the
run's checkpointed history, swapped in atomically: steps that an attempt logged after its last
checkpoint and then died are dropped, so a resumed run's curve is the uninterrupted run's, with
no step twice (dvclive's own `resume=True` continues after the last *logged* step instead).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterable, Mapping

from arm.io import atomic_path

STEP = "step"

Row = Mapping[str, float | int | None]


def _live(directory: Path, resume: bool):
    from dvclive import Live

    class CurveLive(Live):
        """A Live that only writes files. Live's own DVC set-up (`_init_dvc`) is for saving
        experiments and writing dvc.yaml, neither of which a pipeline stage's curve does; it
        also runs `dvc init` in a git repo without DVC and raises in a git repo without commits."""

        def _init_dvc(self) -> None:
            pass

    # no dvc.yaml of its own (the pipeline's dvc.yaml declares these plots), no report
    return CurveLive(str(directory), resume=resume, save_dvc_exp=False, dvcyaml=False, report=None)


def _log(live, row: Row, where: Path) -> None:
    """One step's numbers; None or a value that is not finite is no point (a validation loss
    every eval_every steps, a task absent from a batch)."""
    if STEP not in row:
        raise ValueError(f"{where}: a curve row without {STEP!r}: {dict(row)}")
    live.step = int(row[STEP])
    for name, value in row.items():
        if name != STEP and value is not None and math.isfinite(value):
            live.log_metric(name, value, plot=True)


def write_curve(directory: str | Path, history: Iterable[Row]) -> Path:
    """`directory` as a curve of exactly `history` (rows of a `step` plus numbers), atomically."""
    directory = Path(directory)
    with atomic_path(directory) as tmp:
        live = _live(tmp, resume=False)
        for row in history:
            _log(live, row, directory)
        live.make_summary()
    return directory


class CurveLog:
    """The curve of one training run, continued step by step from its checkpointed `history`.

    Appends are not atomic, so a reader during training may see a partial last line; the next
    start rebuilds the directory from the checkpoint, and the run's last flush completes it."""

    def __init__(self, directory: str | Path, history: Iterable[Row] = ()):
        self.directory = write_curve(directory, history)
        self._live = _live(self.directory, resume=True)

    def log(self, row: Row) -> None:
        _log(self._live, row, self.directory)

    def flush(self) -> None:
        """metrics.json: the last value of every metric (`dvc exp show`, `dvc metrics`)."""
        self._live.make_summary()


def read_curve(directory: str | Path) -> list[dict[str, float]]:
    """The rows of a curve, by step: {"step": n, metric: value, ...}; a metric without a point at
    a step is absent from that row."""
    metrics = Path(directory) / "plots" / "metrics"
    if not metrics.is_dir():
        raise FileNotFoundError(f"{directory}: not a curve directory (no plots/metrics/ in it)")
    rows: dict[int, dict[str, float]] = {}
    for tsv in sorted(metrics.rglob("*.tsv")):
        name = tsv.relative_to(metrics).with_suffix("").as_posix()
        with open(tsv, newline="", encoding="utf-8") as f:
            for rec in csv.DictReader(f, delimiter="\t"):
                row = rows.setdefault(int(rec[STEP]), {STEP: int(rec[STEP])})
                if name in row:
                    raise ValueError(f"{tsv}: step {row[STEP]} twice (a curve logged past its checkpoint, not rebuilt)")
                row[name] = float(rec[tsv.stem])
    return [rows[s] for s in sorted(rows)]
