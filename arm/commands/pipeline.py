"""`arm pipeline`, `arm report` and `arm demo`: the whole lifecycle and its report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from arm.commands.common import console


def register(app: typer.Typer) -> None:
    @app.command("pipeline", rich_help_panel="Tools")
    def pipeline_cmd(
        preset: Optional[str] = typer.Option(None, "--preset", "-p", help="sets `preset:` in params.yaml first"),
        until: Optional[str] = typer.Option(None, help="last stage to run (default: package)"),
    ) -> None:
        """Run every stale stage in order (DVC decides what is stale; Prefect runs and records it)."""
        from arm.orchestration.stages import PIPELINE_STAGES
        from flows.pipeline import pipeline_flow

        if until and until not in PIPELINE_STAGES:
            console.print(f"[red]--until {until!r}: not a stage; stages: {', '.join(PIPELINE_STAGES)}[/red]")
            raise typer.Exit(2)
        states = pipeline_flow(root=".", preset=preset, until=until)
        console.print(", ".join(f"{stage}: {state}" for stage, state in states.items()))

    @app.command("report", rich_help_panel="Tools")
    def report_cmd(out: Path = typer.Option(Path("reports/latest"), help="output folder")) -> None:
        """Rebuild the run report (metrics table, loss curves, sample grids) from what the stages wrote."""
        from arm.report import build_report

        console.print(f"report: {build_report(Path('.'), out)}")

    @app.command("demo", rich_help_panel="Tools")
    def demo_cmd(preset: str = typer.Option("tiny", "--preset", "-p")) -> None:
        """The whole lifecycle on one preset, then the report and how to serve the model."""
        from arm.report import build_report
        from flows.pipeline import pipeline_flow

        try:
            states = pipeline_flow(root=".", preset=preset)
        finally:  # a rejected gate stops the pipeline: its report (scores, gate decision) matters most then
            index = build_report(Path("."))
            console.print(f"\n[bold]report:[/bold] {index.resolve()}")
        console.print(", ".join(f"{stage}: {state}" for stage, state in states.items()))
        console.print("[bold]serve the packaged model:[/bold] arm serve   (or: bentoml serve services.service:ArmService)")
