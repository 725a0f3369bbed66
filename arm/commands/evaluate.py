"""`arm eval-prompts`, `arm evaluate MODEL_DIR` and `arm gate`: the Prefect flows of the eval stages."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from arm.commands.common import ParamsOpt, PresetOpt, SetOpt, console, resolve_config
from arm.config import parse_overrides


def _scores_table(metrics: dict) -> Table:
    from arm.eval.report import score_table
    from arm.render import fmt_interval, fmt_score

    t = Table(title=f"eval {metrics['model']}: held-out items, learned judge, 95% intervals "
                    f"(reconstruction: {metrics['reconstruction_source']}; floor: {metrics['floor_source']})")
    for col in ("benchmark", "metric", "score [95%]", "reconstruction", "floor", "normalized"):
        t.add_column(col, justify="left" if col in ("benchmark", "metric") else "right")
    for r in score_table(metrics):
        t.add_row(r["benchmark"], r["metric"], f"[bold]{fmt_interval(r['score'], r['interval'])}[/bold]",
                  fmt_score(r["reconstruction"]), fmt_score(r["floor"]), fmt_score(r["normalized"]))
    return t


def default_candidate(cfg) -> Path:
    """metrics/eval_<name>.json of the first model dir in `sampling.model_dirs` that exists (RL before base)."""
    for d in cfg.sampling.model_dirs:
        if Path(d).is_dir():
            return Path(cfg.eval.metrics_dir) / f"eval_{Path(d).name}.json"
    raise FileNotFoundError(f"no model dir among {cfg.sampling.model_dirs}; pass --candidate")


def register(app: typer.Typer) -> None:
    @app.command("eval-prompts", rich_help_panel="Evaluation")
    def eval_prompts_cmd(params: Path = ParamsOpt, preset: Optional[str] = PresetOpt,
                         set_: Optional[list[str]] = SetOpt) -> None:
        """Write the held-out prompt sets (eval.prompts.dir) from their own seed."""
        resolve_config(params, preset, set_)
        from arm.data.sources import SourceError
        from flows.evaluate import eval_prompts_flow

        try:
            out = eval_prompts_flow(params=str(params), preset=preset, overrides=parse_overrides(set_))
        except (SourceError, ValueError) as e:
            console.print(f"[red]eval-prompts failed: {e}[/red]", highlight=False)
            raise typer.Exit(1) from None
        console.print(f"held-out prompt sets: {out}", highlight=False)

    @app.command("evaluate", rich_help_panel="Evaluation")
    def evaluate_cmd(model_dir: Path = typer.Argument(..., help="model dir (save_pretrained + manifest.json)"),
                     params: Path = ParamsOpt, preset: Optional[str] = PresetOpt,
                     set_: Optional[list[str]] = SetOpt) -> None:
        """Run the benchmarks on MODEL_DIR: metrics/eval_<name>.json and reports/eval_<name>/index.html."""
        cfg = resolve_config(params, preset, set_)
        if not model_dir.is_dir():
            console.print(f"[red]evaluate: model dir {model_dir} not found[/red]", highlight=False)
            raise typer.Exit(1)
        from arm.eval.prompts import PromptSetError
        from arm.eval.run import EvalError
        from flows.evaluate import evaluate_flow

        try:
            metrics = evaluate_flow(str(model_dir), params=str(params), preset=preset, overrides=parse_overrides(set_))
        except (EvalError, PromptSetError, FileNotFoundError) as e:
            console.print(f"[red]evaluate failed: {e}[/red]", highlight=False)
            raise typer.Exit(1) from None
        console.print(_scores_table(metrics))
        name = metrics["model"]
        console.print(f"metrics: {Path(cfg.eval.metrics_dir) / f'eval_{name}.json'}  "
                      f"report: {Path(cfg.eval.reports_dir) / f'eval_{name}' / 'index.html'}", highlight=False)

    @app.command("gate", rich_help_panel="Evaluation")
    def gate_cmd(candidate: Optional[Path] = typer.Option(None, "--candidate", "-c",
                                                           help="eval metrics of the candidate (default: newest model's)"),
                 promoted: Optional[Path] = typer.Option(None, "--promoted", help="promoted record (default gate.promoted)"),
                 promote: bool = typer.Option(False, "--promote/--no-promote", help="record a passing candidate as promoted"),
                 rescore: bool = typer.Option(False, "--rescore-promoted",
                                              help="the candidate metrics are the promoted model re-evaluated on the "
                                                   "current prompt sets: replace its recorded scores (same weights only)"),
                 params: Path = ParamsOpt, preset: Optional[str] = PresetOpt,
                 set_: Optional[list[str]] = SetOpt) -> None:
        """Check a candidate against thresholds and the promoted model; exit 1 if it is rejected."""
        cfg = resolve_config(params, preset, set_)
        from prefect.exceptions import FailedRun

        from arm.eval.gate import GateError, rescore_promoted
        from flows.gate import gate_flow

        try:
            candidate = candidate or default_candidate(cfg)
            if rescore:
                record = rescore_promoted(cfg, candidate, promoted)
                console.print(f"re-scored promoted model {record['model']} from {candidate}", highlight=False)
                return
            state = gate_flow(str(candidate), params=str(params), preset=preset, overrides=parse_overrides(set_),
                              promoted=str(promoted) if promoted else None, promote=promote, return_state=True)
            state.result()  # the gate's own error, or FailedRun for a rejected candidate
        except FailedRun as e:  # rejected: the table is printed and metrics/gate.json written
            console.print(f"[red]{e}[/red]", highlight=False)
            raise typer.Exit(1) from None
        except (GateError, FileNotFoundError) as e:
            console.print(f"[red]gate failed: {e}[/red]", highlight=False)
            raise typer.Exit(1) from None
