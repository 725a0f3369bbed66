"""The `arm` command: one subcommand per stage plus inspection tools. Logic lives in arm/."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
import yaml
from rich.console import Console

from arm.commands import data as data_commands
from arm.commands import evaluate as evaluate_commands
from arm.commands import model as model_commands
from arm.commands import rl as rl_commands
from arm.commands import sample as sample_commands
from arm.commands import serve as serve_commands
from arm.commands import tokenizer as tokenizer_commands
from arm.config import ArmConfig, ConfigError, load_config

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
config_app = typer.Typer(no_args_is_help=True, help="Inspect the run configuration.")
app.add_typer(config_app, name="config")
console = Console(stderr=True)

ParamsOpt = typer.Option(Path("params.yaml"), "--params", help="params file")
PresetOpt = typer.Option(None, "--preset", "-p", help="preset: micro, tiny, small, 7b")
SetOpt = typer.Option(None, "--set", "-s", help="override: key.path=value (repeatable)")


def resolve_config(params: Path, preset: Optional[str], overrides: Optional[list[str]]) -> ArmConfig:
    try:
        return load_config(params, preset, overrides)
    except ConfigError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None


@config_app.command("show")
def config_show(params: Path = ParamsOpt, preset: Optional[str] = PresetOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Print the resolved configuration as YAML."""
    cfg = resolve_config(params, preset, set_)
    sys.stdout.write(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


for _commands in (data_commands, tokenizer_commands, model_commands, sample_commands, evaluate_commands, rl_commands, serve_commands):
    _commands.register(app)

if __name__ == "__main__":
    app()
