"""arm.train.accel: the one checkpoint mechanism of the accelerate loops (tokenizer training, RL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from arm.train import accel


class _Accelerator:
    """What save_state uses of an Accelerator, with a save that can die halfway."""

    is_main_process = True

    def __init__(self):
        self.crash = False

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, out: str) -> None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "model.safetensors").write_text("half" if self.crash else "whole")
        if self.crash:
            raise RuntimeError("killed mid-save")


def test_a_crash_mid_save_keeps_the_previous_checkpoint(tmp_path):
    acc = _Accelerator()
    accel.save_state(acc, tmp_path, 3, keep=2, meta={"step": 3})
    acc.crash = True
    with pytest.raises(RuntimeError, match="mid-save"):
        accel.save_state(acc, tmp_path, 6, keep=2, meta={"step": 6})
    path, meta = accel.latest(tmp_path)
    assert meta == {"step": 3} and (path / "model.safetensors").read_text() == "whole"
    acc.crash = False
    accel.save_state(acc, tmp_path, 9, keep=1, meta={"step": 9})
    assert accel.latest(tmp_path)[1] == {"step": 9}
    # the half-written save was a temporary dir; keep=1 pruned step 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step00000009"]


def test_saving_a_step_again_replaces_it_and_a_kill_mid_swap_finds_the_old_copy(tmp_path):
    acc = _Accelerator()
    accel.save_state(acc, tmp_path, 4, keep=2, meta={"step": 4, "elapsed": 1.0})
    accel.save_state(acc, tmp_path, 4, keep=2, meta={"step": 4, "elapsed": 2.0})
    assert accel.latest(tmp_path)[1]["elapsed"] == 2.0
    (tmp_path / "step00000004").rename(tmp_path / ".step00000004.old")  # killed between the two renames
    assert accel.latest(tmp_path)[1]["elapsed"] == 2.0


def test_no_checkpoint_or_an_incomplete_one_is_none(tmp_path):
    assert accel.latest(tmp_path) is None
    (tmp_path / "latest").write_text("step00000002\n")
    (tmp_path / "step00000002").mkdir()  # no state.json: never completed
    assert accel.latest(tmp_path) is None
