"""`arm rl`: GRPO post-training (the Prefect flow of the rl stage, ephemeral, no server)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from arm.commands.common import ParamsOpt, PresetOpt, SetOpt, console, resolve_config
from arm.config import parse_overrides


def _rewards_table(m: dict) -> Table:
    t = Table(title=f"rl: {m['steps']} steps, {m['samples']} samples, tasks {', '.join(m['tasks'])} "
                    f"(seed {m['seed']}, {m['samples_per_s']} samples/s)")
    for col in ("reward", f"first {m['window_steps']} steps", f"last {m['window_steps']} steps", "delta"):
        t.add_column(col, justify="left" if col == "reward" else "right")
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    for name, v in m["rewards"].items():
        t.add_row(name, fmt(v["first"]), fmt(v["last"]), fmt(v["delta"]))
    t.caption = f"final KL to the base: {fmt(m['kl_final']) or 'n/a (beta = 0)'}"
    return t


def register(app: typer.Typer) -> None:
    @app.command("rl", rich_help_panel="Training")
    def rl_cmd(
        params: Path = ParamsOpt, preset: Optional[str] = PresetOpt, set_: Optional[list[str]] = SetOpt,
        stop_after: Optional[int] = typer.Option(
            None, "--stop-after", min=1, help="stop with a checkpoint after this many steps (resume by rerunning)"),
    ) -> None:
        """GRPO post-training of rl.base on T2I / edit prompts; writes rl.output, metrics and the reward curve."""
        cfg = resolve_config(params, preset, set_)  # config errors exit 2 before Prefect starts
        if not Path(cfg.rl.base).is_dir():
            console.print(f"[red]rl: base model dir {cfg.rl.base} not found (run `arm pretrain` first)[/red]",
                          highlight=False)
            raise typer.Exit(1)
        from arm.rl.codec import CodecError
        from arm.rl.rewards import RewardConfigError
        from flows.rl import rl_flow

        try:
            metrics = rl_flow(params=str(params), preset=preset, overrides=parse_overrides(set_), stop_after=stop_after)
        except (CodecError, RewardConfigError, FileNotFoundError, ValueError) as e:
            console.print(f"[red]rl failed: {e}[/red]", highlight=False)
            raise typer.Exit(1) from None
        if metrics.get("stopped") == "stop_after":
            console.print(f"stopped after step {metrics['step']}; checkpoint in {metrics['run_dir']}", highlight=False)
            return
        console.print(_rewards_table(metrics))
        console.print(f"model: {cfg.rl.output}  metrics: {cfg.rl.metrics}  curve: {cfg.rl.plot}", highlight=False)

    @app.command("rl-claims", rich_help_panel="Evaluation")
    def rl_claims_cmd(
        params: Path = ParamsOpt, preset: Optional[str] = typer.Option("small", "--preset", "-p", help="preset"),
        set_: Optional[list[str]] = SetOpt,
        seeds: str = typer.Option("0,1,2", "--seeds", help="comma-separated RL seeds"),
        eval_seeds: str = typer.Option("0,1", "--eval-seeds", help="comma-separated eval sampling seeds per model"),
        tasks: str = typer.Option("both,t2i,edit", "--tasks", help="task sets: both, t2i, edit (comma-separated)"),
        out_root: Path = typer.Option(Path("models/rl-claims"), "--out", help="where the RL model dirs go"),
    ) -> None:
        """Reproduce the paper's RL claims: RL per seed and task set vs the base; reports/rl_claims_<preset>.md."""
        cfg = resolve_config(params, preset, set_)
        try:
            seed_list = [int(s) for s in seeds.split(",") if s.strip()]
            eval_seed_list = [int(s) for s in eval_seeds.split(",") if s.strip()]
        except ValueError:
            console.print(f"[red]--seeds {seeds!r} / --eval-seeds {eval_seeds!r}: expected comma-separated integers[/red]",
                          highlight=False)
            raise typer.Exit(2) from None
        task_sets = [t.strip() for t in tasks.split(",") if t.strip()]
        from arm.rl.claims import TASK_SETS

        bad = [t for t in task_sets if t not in TASK_SETS]
        if bad or not seed_list or not eval_seed_list or not task_sets:
            console.print(f"[red]--tasks {tasks!r} / --seeds {seeds!r}: task sets must be among {list(TASK_SETS)}, "
                          "with at least one seed[/red]", highlight=False)
            raise typer.Exit(2)
        if not Path(cfg.rl.base).is_dir():
            console.print(f"[red]rl-claims: base model dir {cfg.rl.base} not found (run `arm pretrain` first)[/red]",
                          highlight=False)
            raise typer.Exit(1)
        from flows.rl import rl_claims_flow

        result = rl_claims_flow(params=str(params), preset=preset, overrides=parse_overrides(set_), seeds=seed_list,
                                task_sets=task_sets, out_root=str(out_root), eval_seeds=eval_seed_list)
        from arm.rl.claims import render_report

        console.print(render_report(result), highlight=False)
