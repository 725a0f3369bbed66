"""`arm package` (model store + bento, as a Prefect flow) and `arm serve` (wraps `bentoml serve`)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Optional

import typer

from arm.commands.common import ParamsOpt, PresetOpt, SetOpt, console, resolve_config
from arm.config import parse_overrides


def register(app: typer.Typer) -> None:
    @app.command("package", rich_help_panel="Serving")
    def package_cmd(
        model_dir: Optional[Path] = typer.Argument(None, help="exported model dir (default: the gate's promoted model)"),
        version: Optional[str] = typer.Option(None, "--version", help="model/bento version (default: generated)"),
        visual_tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="visual tokenizer dir (default: from the model's manifest.json)"),
        metrics: Optional[Path] = typer.Option(None, "--metrics", help="eval metrics JSON (default: metrics/eval_<model dir name>.json if it exists)"),
        build: bool = typer.Option(True, "--build/--no-build", help="also build the bento (bentoml build)"),
        record: Optional[Path] = typer.Option(None, "--record", help="where to write the tags (default: serve.record)"),
        ungated: bool = typer.Option(False, "--ungated", help="package a model no passing gate run vouches for (a test build)"),
        params: Path = ParamsOpt, preset: Optional[str] = PresetOpt, set_: Optional[list[str]] = SetOpt,
    ) -> None:
        """Save the gated model (AR model + visual tokenizer + vocabulary) into the BentoML model store and build a bento."""
        resolve_config(params, preset, set_)  # config errors exit 2 before Prefect starts
        from arm.serve.store import PackageError
        from flows.package import package_flow

        try:
            result = package_flow(
                params=str(params), preset=preset, overrides=parse_overrides(set_),
                model_dir=str(model_dir) if model_dir else None, version=version,
                visual_tokenizer=str(visual_tokenizer) if visual_tokenizer else None,
                metrics=str(metrics) if metrics else None, build=build, record=str(record) if record else None,
                ungated=ungated,
            )
        except PackageError as e:
            console.print(f"[red]package failed: {e}[/red]", highlight=False)
            raise typer.Exit(1) from None
        console.print(f"model [bold]{result['model_tag']}[/bold] from {result['model_dir']} ({result['gate']})", highlight=False)
        for k, v in result["labels"].items():
            console.print(f"  {k} = {v}", highlight=False)
        if result["bento_tag"]:
            console.print(f"bento [bold]{result['bento_tag']}[/bold]: `bentoml serve {result['bento_tag']}`", highlight=False)

    @app.command("serve", rich_help_panel="Serving")
    def serve_cmd(
        bento: Optional[str] = typer.Option(None, "--bento", help="serve a built bento (e.g. arm_service:latest) instead of the source"),
        model_tag: Optional[str] = typer.Option(None, "--model", help="model store tag (default: serve.model_tag)"),
        host: Optional[str] = typer.Option(None, "--host", help="default: serve.host"),
        port: Optional[int] = typer.Option(None, "--port", help="default: serve.port"),
        params: Path = ParamsOpt, preset: Optional[str] = PresetOpt, set_: Optional[list[str]] = SetOpt,
    ) -> None:
        """Run the HTTP service with `bentoml serve` (page at /, API at /generate /describe /edit)."""
        cfg = resolve_config(params, preset, set_)
        from arm.serve.launch import SERVICE, serve_command, serve_env

        env = serve_env(model_tag=model_tag, preset=preset, overrides=list(set_ or []))
        if params != Path("params.yaml"):
            env["ARM_PARAMS"] = str(params.resolve())
        cmd = serve_command(bento or SERVICE, host or cfg.serve.host, port or cfg.serve.port)
        console.print(" ".join(cmd[1:]), highlight=False)
        raise typer.Exit(subprocess.call(cmd, env=env))
