"""arm.curves: the one step-curve writer (dvclive) and reader of the training stages."""

from __future__ import annotations

import json
import math

import pytest

from arm.curves import CurveLog, read_curve, write_curve


def _history(n: int) -> list[dict]:
    # sparse like the trainers': a validation loss every 3 steps, a task absent from step 2 (nan)
    return [{"step": s, "tokens": 100 * s, "lr": 1e-3 / s, "loss": 3.0 / s,
             "loss_edit": math.nan if s == 2 else 2.0 / s, "val_loss": 3.3 / s if s % 3 == 0 else None}
            for s in range(1, n + 1)]


def _files(directory) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_curve_reads_back_exactly_with_absent_points_left_out(tmp_path):
    write_curve(tmp_path / "curve", _history(6))
    rows = read_curve(tmp_path / "curve")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0] == {"step": 1, "tokens": 100.0, "lr": 1e-3, "loss": 3.0, "loss_edit": 2.0}
    assert "loss_edit" not in rows[1] and rows[2]["val_loss"] == 3.3 / 3 and rows[5]["val_loss"] == 3.3 / 6
    assert rows[4]["lr"] == 1e-3 / 5  # floats round-trip bit for bit
    # dvclive's layout, which dvc.yaml `plots:` and `dvc exp show` read
    assert (tmp_path / "curve" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()[:2] == ["step\tloss", "1\t3.0"]
    summary = json.loads((tmp_path / "curve" / "metrics.json").read_text())
    assert summary["step"] == 6 and summary["loss"] == 0.5 and summary["val_loss"] == 3.3 / 6


def _train(directory, history, steps, checkpoint_every=3, die_after=None):
    """A trainer's use of CurveLog: open at the checkpointed history, log each step, flush at
    each checkpoint; `die_after` stops without a checkpoint (a crash). Returns the checkpoint."""
    curve = CurveLog(directory, history)
    done = list(history)
    for row in steps:
        curve.log(row)
        if row["step"] == die_after:
            return history
        done.append(row)
        if row["step"] % checkpoint_every == 0 or row is steps[-1]:
            curve.flush()
            history = list(done)
    return history


def test_a_resumed_run_logs_the_uninterrupted_curve_even_after_a_crash_past_its_checkpoint(tmp_path):
    full = _history(9)
    _train(tmp_path / "uninterrupted", [], full)
    # the interrupted run checkpointed at step 3 and died after logging step 5; the resumed run
    # opens the curve at the checkpoint's history and logs on
    cut = tmp_path / "interrupted"
    checkpoint = _train(cut, [], full, die_after=5)
    assert [r["step"] for r in checkpoint] == [1, 2, 3]
    assert [r["step"] for r in read_curve(cut)] == [1, 2, 3, 4, 5]  # logged live, past the checkpoint
    _train(cut, checkpoint, full[3:])
    assert _files(cut) == _files(tmp_path / "uninterrupted")
    assert [r["step"] for r in read_curve(cut)] == list(range(1, 10))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind


def test_a_curve_with_a_step_twice_is_refused(tmp_path):
    curve = CurveLog(tmp_path / "curve", _history(2))
    curve.log(_history(2)[1])  # what continuing after the last logged, not checkpointed, step gives
    with pytest.raises(ValueError, match="loss.tsv: step 2 twice"):
        read_curve(tmp_path / "curve")


def test_a_failed_write_leaves_the_previous_curve(tmp_path):
    write_curve(tmp_path / "curve", _history(3))
    before = _files(tmp_path / "curve")
    with pytest.raises(ValueError, match="without 'step'"):
        write_curve(tmp_path / "curve", [*_history(4), {"loss": 1.0}])
    assert _files(tmp_path / "curve") == before


def test_reading_a_path_that_is_no_curve_names_it(tmp_path):
    (tmp_path / "loss.csv").write_text("step,loss\n1,2.0\n")
    with pytest.raises(FileNotFoundError, match="loss.csv: not a curve directory"):
        read_curve(tmp_path / "loss.csv")


def test_writing_a_curve_leaves_the_repository_alone(tmp_path, monkeypatch):
    """In a git repo without DVC and without commits (a fresh clone's first run, a test sandbox),
    a curve is only files: no `dvc init`, no experiment, no error."""
    import subprocess

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    write_curve("plots/pretrain", _history(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".git", "plots"]
    assert [r["step"] for r in read_curve("plots/pretrain")] == [1, 2]
