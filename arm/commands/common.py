"""Options and config resolution shared by command modules (importable without arm.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from arm.config import ArmConfig, ConfigError, load_config

console = Console(stderr=True)

ParamsOpt = typer.Option(Path("params.yaml"), "--params", help="params file")
PresetOpt = typer.Option(None, "--preset", "-p", help="preset: micro, tiny, small, 7b")
SetOpt = typer.Option(None, "--set", "-s", help="override: key.path=value (repeatable)")


def resolve_config(params: Path, preset: Optional[str], overrides: Optional[list[str]]) -> ArmConfig:
    """The resolved config, or exit code 2 with the key paths that fail validation."""
    try:
        return load_config(params, preset, overrides)
    except ConfigError as e:
        console.print(f"[red]{e}[/red]", highlight=False)
        raise typer.Exit(2) from None
