"""`arm curate` and `arm validate`: run the Prefect flows of the data stages (ephemeral, no server)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from arm.commands.common import ParamsOpt, PresetOpt, SetOpt, console, resolve_config
from arm.config import parse_overrides


def _curate_table(m: dict[str, Any]) -> Table:
    t = Table(title=f"curated store {m['store']}: {m['n_kept']} kept, {m['n_rejected']} rejected "
                    f"({m['samples_per_s']} samples/s)")
    for col in ("source", "in", "kept", "rejected", "reasons"):
        t.add_column(col, justify="right" if col in ("in", "kept", "rejected") else "left")
    for name, c in m["by_source"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in c["rejected_by_reason"].items())
        t.add_row(name, str(c["in"]), str(c["kept"]), str(c["rejected"]), reasons)
    t.caption = "by task: " + ", ".join(f"{k} {v}" for k, v in m["kept_by_task"].items()) + \
        " | by split: " + ", ".join(f"{k} {v}" for k, v in m["kept_by_split"].items())
    return t


def _validation_table(results: list[dict[str, Any]], only_failed: bool) -> Table:
    t = Table(title="data validation" + (" failures" if only_failed else ""))
    for col in ("ok", "table", "column", "expectation", "expected", "observed"):
        t.add_column(col, overflow="fold")
    for r in results:
        if only_failed and r["success"]:
            continue
        expected = ", ".join(f"{k}={v}" for k, v in r["kwargs"].items() if v is not None)
        t.add_row("[green]yes[/green]" if r["success"] else "[red]NO[/red]", r["table"], r["column"] or "",
                  r["expectation"].removeprefix("expect_"), expected[:60], str(r["observed"])[:80])
    return t


@contextmanager
def _prefect_settings() -> Iterator[None]:
    """Prefect's ephemeral API server gets 20 s to start by default: too tight on a busy 2-core box.
    Settings are read when prefect is imported, so the longer wait is set here, not in the env."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as timeout
    from prefect.settings import temporary_settings

    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in os.environ:
        yield
        return
    with temporary_settings(updates={timeout: max(timeout.value(), 120)}):
        yield


def register(app: typer.Typer) -> None:
    @app.command("curate", rich_help_panel="Data")
    def curate_cmd(params: Path = ParamsOpt, preset: Optional[str] = PresetOpt,
                   set_: Optional[list[str]] = SetOpt) -> None:
        """Curate the configured sources into the DuckDB store (stats, filters, dedup, splits)."""
        resolve_config(params, preset, set_)  # config errors exit 2 before Prefect starts
        from arm.data.curate import CurateError
        from flows.curate import curate_flow

        try:
            with _prefect_settings():
                metrics = curate_flow(params=str(params), preset=preset, overrides=parse_overrides(set_))
        except CurateError as e:
            console.print(f"[red]curate failed: {e}[/red]", highlight=False)
            raise typer.Exit(1) from None
        console.print(_curate_table(metrics))

    @app.command("validate", rich_help_panel="Data")
    def validate_cmd(params: Path = ParamsOpt, preset: Optional[str] = PresetOpt,
                     set_: Optional[list[str]] = SetOpt) -> None:
        """Validate the curated store with the Great Expectations suite; exit 1 on failure."""
        cfg = resolve_config(params, preset, set_)
        from arm.data.validate import DataValidationError
        from flows.validate import validate_flow

        try:
            with _prefect_settings():
                report = validate_flow(params=str(params), preset=preset, overrides=parse_overrides(set_))
        except DataValidationError as e:
            console.print(_validation_table(e.result["results"], only_failed=True))
            console.print(f"[red]{e.result['n_failed']} of {e.result['n_expectations']} expectations failed "
                          f"on {e.result['store']}; report: {cfg.validation.output}[/red]", highlight=False)
            raise typer.Exit(1) from None
        except FileNotFoundError as e:
            console.print(f"[red]{e}[/red]", highlight=False)
            raise typer.Exit(1) from None
        console.print(_validation_table(report["results"], only_failed=False))
        console.print(f"[green]all {report['n_expectations']} expectations passed on {report['store']}; "
                      f"report: {cfg.validation.output}[/green]", highlight=False)

    @app.command("export-dataset", rich_help_panel="Data")
    def export_dataset_cmd(
        out: Path = typer.Argument(..., help="output dir (replaced atomically)"),
        store: Optional[Path] = typer.Option(None, "--store", help="curated store (default: data.store)"),
        max_shard_mb: int = typer.Option(256, "--max-shard-mb", min=1, help="image + text MB per Parquet file"),
        params: Path = ParamsOpt, preset: Optional[str] = PresetOpt, set_: Optional[list[str]] = SetOpt,
    ) -> None:
        """Write the curated store as a Hugging Face `datasets` dataset (Parquet + dataset card)."""
        from arm.data.export import ExportError, export_dataset

        root = store if store is not None else Path(resolve_config(params, preset, set_).data.store)
        try:
            result = export_dataset(root, out, max_shard_bytes=max_shard_mb << 20)
        except (ExportError, FileNotFoundError) as e:
            console.print(f"[red]export-dataset failed: {e}[/red]", highlight=False)
            raise typer.Exit(1) from None
        t = Table(title=f"{result['out']}: {result['rows']} rows")
        for col in ("split", "rows", "files"):
            t.add_column(col, justify="left" if col == "split" else "right")
        for split, c in result["splits"].items():
            t.add_row(split, str(c["rows"]), str(c["files"]))
        console.print(t)
