"""Step curves of the training stages (tokenizer, pretraining, RL) as dvclive directories.

A curve is a dvclive directory: `plots/metrics/<name>.tsv` (columns step, <name>) per metric and
`metrics.json` with the last values, which `dvc plots show/diff` and `dvc exp show` read (dvc.yaml
`plots:`). The trainers keep their history in the checkpoint, and `write_curve` rebuilds the whole
directory from it at every checkpoint and at the end, swapped in atomically: a resumed run writes
the same curve as an uninterrupted one, and a crash between logging and checkpointing cannot leave
a step twice (dvclive's own `resume=True` appends after the last *logged* step, which may be past
the last checkpointed one).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterable, Mapping

from arm.io import atomic_path

STEP = "step"


def _live(directory: Path):
    from dvclive import Live

    class CurveLive(Live):
        """A Live that only writes files. Live's own DVC set-up (`_init_dvc`) is for saving
        experiments and writing dvc.yaml, neither of which a pipeline stage's curve does; it
        also runs `dvc init` in a git repo without DVC and raises in a git repo without commits."""

        def _init_dvc(self) -> None:
            pass

    # no dvc.yaml of its own (the pipeline's dvc.yaml declares these plots), no report
    return CurveLive(str(directory), save_dvc_exp=False, dvcyaml=False, report=None)


def write_curve(directory: str | Path, history: Iterable[Mapping[str, float | int | None]]) -> Path:
    """Logs each history row (a `step` plus numbers) through dvclive into a fresh `directory`.

    A value that is None or not finite is not logged: that metric has no point at that step (a
    validation loss every eval_every steps, a task absent from a batch)."""
    directory = Path(directory)
    with atomic_path(directory) as tmp:
        live = _live(tmp)
        for row in history:
            if STEP not in row:
                raise ValueError(f"{directory}: a curve row without {STEP!r}: {dict(row)}")
            live.step = int(row[STEP])
            for name, value in row.items():
                if name == STEP or value is None or not math.isfinite(value):
                    continue
                live.log_metric(name, value, plot=True)
        live.make_summary()
    return directory


def read_curve(directory: str | Path) -> list[dict[str, float]]:
    """The rows of a curve that `write_curve` wrote, by step: {"step": n, metric: value, ...};
    a metric without a point at a step is absent from that row."""
    metrics = Path(directory) / "plots" / "metrics"
    if not metrics.is_dir():
        raise FileNotFoundError(f"{directory}: not a curve directory (no plots/metrics/ in it)")
    rows: dict[int, dict[str, float]] = {}
    for tsv in sorted(metrics.rglob("*.tsv")):
        name = tsv.relative_to(metrics).with_suffix("").as_posix()
        with open(tsv, newline="", encoding="utf-8") as f:
            for rec in csv.DictReader(f, delimiter="\t"):
                step = int(rec[STEP])
                rows.setdefault(step, {STEP: step})[name] = float(rec[tsv.stem])
    return [rows[s] for s in sorted(rows)]
