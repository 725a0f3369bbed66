"""`arm` itself: --version, help grouped into panels with every command in one, shell completion, and
no carriage-return progress noise in its log when stderr is not a terminal."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from arm.cli import app

PANELS = ("Data", "Training", "Evaluation", "Serving", "Tools")
runner = CliRunner()


def _help() -> str:
    res = runner.invoke(app, ["--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert res.exit_code == 0, res.output
    return res.output


def test_version_prints_the_installed_distribution():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0
    assert res.output == f"arm-platform {importlib.metadata.version('arm-platform')}\n"


def test_every_command_is_listed_under_one_of_the_panels():
    out = _help()
    titles = re.findall(r"^╭─ (\w[\w ]*?) ─", out, flags=re.M)
    assert titles == ["Options", *PANELS]  # no "Commands" panel of leftovers, in this order
    listed: dict[str, str] = {}
    panel = None
    for line in out.splitlines():
        m = re.match(r"^╭─ (\w[\w ]*?) ─", line)
        if m:
            panel = m.group(1)
        elif panel in PANELS and (cmd := re.match(r"^│ ([a-z][a-z-]*)\s", line)):
            assert cmd.group(1) not in listed, f"{cmd.group(1)} listed twice"
            listed[cmd.group(1)] = panel
    names = set(typer.main.get_command(app).commands)
    assert set(listed) == names
    assert {"curate", "pretrain", "evaluate", "serve", "demo", "config"} <= names
    assert (listed["curate"], listed["pretrain"], listed["evaluate"], listed["serve"], listed["config"]) == PANELS


def test_shell_completion_is_offered_and_completes_commands():
    out = _help()
    assert "--install-completion" in out and "--show-completion" in out
    # what the installed bash hook runs on <TAB>: the completions of `arm cur`
    res = runner.invoke(app, [], prog_name="arm",
                        env={"_ARM_COMPLETE": "complete_bash", "COMP_WORDS": "arm cur", "COMP_CWORD": "1"})
    assert res.exit_code == 0
    assert res.output.split() == ["curate"]
    res = runner.invoke(app, ["--show-completion", "bash"], prog_name="arm")
    assert res.exit_code == 0 and "_ARM_COMPLETE=complete_bash" in res.output


def _random_model_dir(root: Path) -> Path:
    """A random model dir as pretraining exports one (a transformers causal LM, its tokenizer, a visual tokenizer)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from arm.config import load_config
    from arm.text.tokenizer import save_tokenizer, train_bpe, wrap
    from arm.tokenizer.model import VisualTokenizer
    from arm.tokenizer.vocab import SPECIALS

    torch.manual_seed(0)
    vt = VisualTokenizer.build(load_config(preset="micro").tokenizer, caption_vocab=[*SPECIALS, "a"], text_dim=8,
                               distill_dim=8)
    vt.save_pretrained(root / "tokenizer")
    tok, layout = wrap(train_bpe(["a red circle", "a blue square on the left"] * 10, 300, 1), vt.codebook_size,
                       tuple(vt.grid), tuple(vt.levels))
    model_dir = root / "arm-base"
    save_tokenizer(tok, layout, model_dir)
    LlamaForCausalLM(LlamaConfig(vocab_size=layout.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
                     ).save_pretrained(model_dir)
    (model_dir / "manifest.json").write_text(json.dumps({"visual_tokenizer": {"path": "../tokenizer"}}))
    return model_dir


@pytest.mark.slow
def test_off_a_terminal_the_log_has_no_carriage_returns(tmp_path):
    """`arm generate` loads a model through transformers, whose "Loading weights" bar would redraw
    itself with \\r into a log; a fresh process, as DVC and CI run it, with stderr to a pipe."""
    model_dir = _random_model_dir(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")}
    res = subprocess.run([sys.executable, "-m", "arm.cli", "generate", "a red circle", "-o", str(tmp_path / "x.png"),
                          "--model", str(model_dir), "--seed", "1"], capture_output=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr.decode()
    assert (tmp_path / "x.png").is_file()
    assert b"\r" not in res.stderr, res.stderr.decode()  # bytes: text mode would turn \r into \n


def test_generate_at_an_aspect_ratio_a_square_model_lacks_exits_2(tmp_path):
    from typer.testing import CliRunner

    from arm.cli import app

    model_dir = _random_model_dir(tmp_path)
    res = CliRunner().invoke(app, ["generate", "a red circle", "-o", str(tmp_path / "x.png"), "--model", str(model_dir),
                                   "--aspect-ratio", "4:3"])
    assert res.exit_code == 2, res.output
    assert "aspect_ratio '4:3'" in res.output and "no aspect buckets" in res.output
    assert not (tmp_path / "x.png").exists()
