"""The `arm` command: one subcommand per stage plus inspection tools. Logic lives in arm/."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer
import yaml

import arm
from arm.commands import data as data_commands
from arm.commands import evaluate as evaluate_commands
from arm.commands import model as model_commands
from arm.commands import pipeline as pipeline_commands
from arm.commands import rl as rl_commands
from arm.commands import sample as sample_commands
from arm.commands import serve as serve_commands
from arm.commands import tokenizer as tokenizer_commands
from arm.commands.common import ParamsOpt, PresetOpt, SetOpt, resolve_config
from arm.progress import quiet_other_bars

app = typer.Typer(no_args_is_help=True, add_completion=True, help=__doc__)
config_app = typer.Typer(no_args_is_help=True, help="Inspect the run configuration.")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"arm-platform {arm.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the installed version and exit."),
) -> None:
    # The stages report progress and steps through `arm.*` loggers: shown at INFO, on stderr
    # (Prefect, once imported, replaces this root handler with its own console handler).
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s - %(message)s")
    logging.getLogger("arm").setLevel(logging.INFO)
    quiet_other_bars()


@config_app.command("show")
def config_show(params: Path = ParamsOpt, preset: Optional[str] = PresetOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Print the resolved configuration as YAML."""
    cfg = resolve_config(params, preset, set_)
    sys.stdout.write(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


# Registered in the order of their help panels: Data, Training, Evaluation, Serving, Tools.
for _commands in (data_commands, tokenizer_commands, model_commands, evaluate_commands, rl_commands,
                  sample_commands, serve_commands, pipeline_commands):
    _commands.register(app)
app.add_typer(config_app, name="config", rich_help_panel="Tools")

if __name__ == "__main__":
    app()
