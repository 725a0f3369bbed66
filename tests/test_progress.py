"""arm.progress: a tqdm bar on a terminal, plain log lines (no carriage returns) anywhere else, rank 0
only; and the long stages (curate, tokenize, judge training, evaluate) report through it."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from tqdm import tqdm

from arm import progress as progress_mod
from arm.progress import LogLines, progress_bar

REPO = Path(__file__).resolve().parents[1]
LOGGER = "arm.test_progress"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    """A monotonic clock the test moves by hand, so rates and time-based lines are exact."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", c)
    return c


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="arm")
    return lambda name=LOGGER: [r.getMessage() for r in caplog.records if r.name == name]


def test_off_a_terminal_a_line_per_tenth_with_counts_rate_and_postfix(clock, lines, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    stream = io.StringIO()
    bar = progress_bar("pretrain", 20, unit="step", logger=logging.getLogger(LOGGER), stream=stream, every_s=1e9)
    assert isinstance(bar, LogLines)
    for i in range(20):
        clock.now += 0.5
        bar.set_postfix(loss=f"{2 - i / 10:.3f}")
        bar.update(1)
    bar.close()
    got = lines()
    assert len(got) == 10  # every 2 steps is another tenth; close() adds nothing already reported
    assert got[0] == "pretrain: 2/20 step (10%), 2.00step/s, eta 00:09, loss=1.900"
    assert got[-1] == "pretrain: 20/20 step (100%), 2.00step/s, eta 00:00, loss=0.100"
    assert all("\r" not in line for line in got)
    assert stream.getvalue() == ""  # the stream only decides: lines go through the logger


def test_without_a_total_lines_come_every_every_s_and_at_close(clock, lines):
    bar = progress_bar("curate", unit="rec", logger=logging.getLogger(LOGGER), stream=io.StringIO(), every_s=30)
    for _ in range(5):
        clock.now += 10
        bar.update(100)
    assert lines() == ["curate: 300 rec, 10.00rec/s"]  # 30 s in
    clock.now += 10
    bar.update(40)  # 60 s: the next line is due
    clock.now += 5
    bar.update(10)
    bar.close()
    assert lines() == ["curate: 300 rec, 10.00rec/s", "curate: 540 rec, 9.00rec/s", "curate: 550 rec, 8.46rec/s"]


def test_a_resumed_run_counts_from_its_start_step(clock, lines):
    bar = progress_bar("rl", 100, initial=50, unit="step", logger=logging.getLogger(LOGGER), stream=io.StringIO(),
                       every_s=1e9)
    clock.now += 5
    bar.update(5)  # 55: still in the sixth tenth
    assert lines() == []
    clock.now += 5
    bar.update(5)
    bar.close()
    assert lines() == ["rl: 60/100 step (60%), 1.00step/s, eta 00:40"]  # the rate of this run's 10 steps


def test_on_a_terminal_a_tqdm_bar_and_no_log_lines(lines):
    term = Terminal()
    with progress_bar("tokenize", 4, unit="img", logger=logging.getLogger(LOGGER), stream=term) as bar:
        assert isinstance(bar, tqdm) and not bar.disable
        bar.update(4)
    assert "\r" in term.getvalue() and "4/4" in term.getvalue()
    assert lines() == []


@pytest.mark.parametrize("rank, enabled", [("1", True), ("0", False)])
def test_silent_on_other_ranks_and_when_disabled(monkeypatch, lines, rank, enabled):
    monkeypatch.setenv("RANK", rank)
    for stream in (io.StringIO(), Terminal()):
        bar = progress_bar("pretrain", 10, logger=logging.getLogger(LOGGER), stream=stream, enabled=enabled,
                           every_s=1e-9)
        bar.update(10)
        bar.close()
        assert stream.getvalue() == ""
    assert lines() == []


def test_bad_settings_name_the_bar():
    with pytest.raises(ValueError, match="progress 'pretrain': every_s 30 must be > 0 and every_frac 0"):
        progress_bar("pretrain", 10, stream=io.StringIO(), every_s=30, every_frac=0)
    with pytest.raises(ValueError, match="progress 'curate': total -1 is negative"):
        progress_bar("curate", -1, stream=io.StringIO())


# ------------------------------------------------------------------ the stages, run for real off a terminal


@pytest.fixture
def no_transformers_bar():
    """transformers' "Loading weights" bar, switched off as `arm` does off a terminal (arm.progress.
    quiet_other_bars; in-process its import-time switch is too late, so the runtime one)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()


def test_curate_tokenizer_training_and_tokenize_report_lines_and_write_no_carriage_returns(
        tmp_path, capfd, lines, monkeypatch, no_transformers_bar):
    from arm.config import load_config
    from arm.data.curate import curate
    from arm.tokenizer.tokens import tokenize
    from arm.tokenizer.train import train_tokenizer

    monkeypatch.delenv("RANK", raising=False)
    cfg = load_config(REPO / "params.yaml", preset="micro", overrides=[
        f"data.store={tmp_path}/curated", f"data.metrics={tmp_path}/curate.json", f"tokenizer.output={tmp_path}/model",
        f"tokenizer.metrics={tmp_path}/tokenizer.json", f"tokenizer.plots={tmp_path}/plots", f"tokenizer.report={tmp_path}/report",
        f"tokenizer.checkpoint_dir={tmp_path}/ckpt", f"tokenizer.tokens.output={tmp_path}/tokens",
        f"tokenizer.tokens.metrics={tmp_path}/tokens.json", "tokenizer.tokens.workers=0"])
    metrics = curate(cfg)
    train_tokenizer(cfg, evaluate=False)
    manifest = tokenize(cfg)

    assert "\r" not in capfd.readouterr().err
    curate_lines = [m for m in lines("arm.data.curate") if m.startswith("curate: ") and " rec, " in m]
    assert curate_lines and curate_lines[-1].startswith(f"curate: {metrics['n_in']} rec, ")
    steps = cfg.tokenizer.train.steps
    tokenizer_lines = [m for m in lines("arm.tokenizer.train") if m.startswith("tokenizer: ")]
    counts = [m.split(" (")[0] for m in tokenizer_lines]  # a slow box may add a line every 30 s between tenths
    assert {f"tokenizer: {k * steps // 10}/{steps} step" for k in range(1, 11)} <= set(counts)
    assert counts[-1] == f"tokenizer: {steps}/{steps} step"
    assert "loss=" in tokenizer_lines[-1]
    n = manifest["images_encoded"]
    assert n > 0
    tokenize_lines = [m for m in lines("arm.tokenizer.tokens") if m.startswith("tokenize (rank 0 of 1): ")]
    assert tokenize_lines and tokenize_lines[-1].startswith(f"tokenize (rank 0 of 1): {n}/{n} img (100%), ")


def test_judge_training_reports_its_steps(lines, capfd):
    from arm.config import WorldConfig
    from arm.eval.judge import SceneJudgeConfig, train_judge

    cfg = SceneJudgeConfig(train_images=96, batch_size=32, epochs=2, holdout_images=8, cache_dir="unused")
    train_judge(cfg, WorldConfig())
    got = lines("arm.progress")
    assert [m.split(",")[0] for m in got] == [f"eval judge training: {k}/6 step ({round(100 * k / 6)}%)"
                                              for k in range(1, 7)]
    assert all("loss=" in m for m in got)
    assert "\r" not in capfd.readouterr().err


def test_evaluate_counts_the_pipelines_outputs(tmp_path, lines):
    from arm.config import load_config
    from arm.eval.prompts import build_prompt_sets, load_prompt_sets
    from arm.eval.reference import OraclePipeline
    from arm.eval.run import evaluate

    cfg = load_config(REPO / "params.yaml", preset="micro", overrides=[
        f"eval.prompts.dir={tmp_path / 'prompts'}", f"eval.metrics_dir={tmp_path / 'metrics'}",
        f"eval.reports_dir={tmp_path / 'reports'}", f"eval.fmnist.cache_dir={tmp_path / 'cache'}",
        "eval.benchmarks=[shapes_geneval, shapes_edit]"])
    build_prompt_sets(cfg)
    sets, _, _ = load_prompt_sets(cfg)
    evaluate(cfg, None, pipeline=OraclePipeline(cfg, sets), name="oracle")
    n = len(sets["geneval"]) * cfg.eval.samples_per_prompt + len(sets["edit"])  # images drawn + images edited
    got = [m for m in lines("arm.eval.run") if m.startswith("evaluate oracle: ") and " output, " in m]
    assert got and got[-1].startswith(f"evaluate oracle: {n} output, ") and got[-1].endswith("benchmark=shapes_edit")
