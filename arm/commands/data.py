"""CLI commands of this concern; `register` adds them to the `arm` app."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
