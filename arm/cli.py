"""The `arm` command: one subcommand per stage plus inspection tools. Logic lives in arm/."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
import yaml

from arm.commands import data as data_commands
from arm.commands import evaluate as evaluate_commands
from arm.commands import model as model_commands
from arm.commands import pipeline as pipeline_commands
from arm.commands import rl as rl_commands
from arm.commands import sample as sample_commands
from arm.commands import serve as serve_commands
from arm.commands import tokenizer as tokenizer_commands
from arm.commands.common import ParamsOpt, PresetOpt, SetOpt, resolve_config

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
config_app = typer.Typer(no_args_is_help=True, help="Inspect the run configuration.")
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(params: Path = ParamsOpt, preset: Optional[str] = PresetOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Print the resolved configuration as YAML."""
    cfg = resolve_config(params, preset, set_)
    sys.stdout.write(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


for _commands in (data_commands, tokenizer_commands, model_commands, sample_commands, evaluate_commands,
                  rl_commands, serve_commands, pipeline_commands):
    _commands.register(app)

if __name__ == "__main__":
    app()
