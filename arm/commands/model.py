"""CLI commands of the AR model: `arm pretrain`, `arm plan` (and the sampling commands).

Each command group lives in its own function, called from `register`.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from arm.commands.common import ParamsOpt, PresetOpt, SetOpt, console, resolve_config
from arm.config import parse_overrides


# ----------------------------------------------------------------------------- pretraining


def _pretrain_table(m: dict) -> Table:
    t = Table(title=f"pretrain: {m['parameters'] / 1e6:.2f}M parameters, {m['steps']} steps, "
                    f"{m['tokens_seen']:,} tokens ({m['world_size']} process(es))")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("tokens/s", f"{m['tokens_per_s']:,.0f}")
    t.add_row("MFU (vs measured matmul peak)", f"{m['mfu']:.3f}")
    t.add_row("padding waste", f"{m['padding_waste']:.1%}")
    t.add_row("final train loss", f"{m['final_train_loss']:.4f}")
    for task, v in m["val_loss"].items():
        t.add_row(f"val loss {task}", f"{v:.4f}")
    return t


def register_pretrain(app: typer.Typer) -> None:
    @app.command("pretrain", rich_help_panel="Training")
    def pretrain_cmd(
        params: Path = ParamsOpt,
        preset: Optional[str] = PresetOpt,
        set_: Optional[list[str]] = SetOpt,
        nproc: Optional[int] = typer.Option(None, "--nproc", min=1,
                                            help="processes on this machine (torchrun; default pretrain.nproc)"),
        stop_after: Optional[int] = typer.Option(None, "--stop-after", min=1, help="stop with a checkpoint after N steps"),
    ) -> None:
        """Pretrain the AR model (DeepSpeed), resuming from its last checkpoint; export to pretrain.output."""
        cfg = resolve_config(params, preset, set_)  # config errors exit 2 before Prefect starts
        from flows.pretrain import pretrain_flow

        try:
            metrics = pretrain_flow(params=str(params), preset=preset, overrides=parse_overrides(set_),
                                    nproc=nproc, stop_after=stop_after)
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            console.print(f"[red]pretrain failed: {e}[/red]", highlight=False)
            raise typer.Exit(1) from None
        if metrics.get("stopped") == "stop_after":
            console.print(f"stopped after step {metrics['step']}; checkpoint in {metrics['run_dir']}")
            return
        console.print(_pretrain_table(metrics))
        console.print(f"model: {cfg.pretrain.output}  metrics: {cfg.pretrain.metrics}  curve: {cfg.pretrain.plot}")


# ----------------------------------------------------------------------------- planning


def _memory_table(r: dict) -> Table:
    t = Table(title=f"memory per GPU in GB (1e9 bytes), limit {r['gpu_memory_gb']:g} GB; "
                    f"pretraining over {r['nodes']} node(s) x {r['gpus_per_node']} GPUs")
    for col, justify in (("stage", "left"), ("GPUs", "right"), ("dominated by (all parts, GB)", "left"),
                         ("GB per GPU", "right"), ("fits", "left")):
        t.add_column(col, justify=justify)
    for s in r["stages"]:
        parts = sorted(s["parts_gb"].items(), key=lambda kv: -kv[1])
        detail = "; ".join(f"{k} {v:.2f}" for k, v in parts)
        t.add_row(s["stage"], str(s["gpus"]), f"{s['dominant']}\n[dim]{detail}[/dim]", f"{s['per_gpu_gb']:.2f}",
                  "yes" if s["fits"] else "[red]no[/red]")
    return t


def _stage_list(text: Optional[str]) -> Optional[list[str]]:
    from arm.model.plan import STAGES

    if text is None:
        return None
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if not names or unknown:
        raise typer.BadParameter(f"unknown stage(s) {unknown or [text]}; known: {', '.join(STAGES)}", param_hint="--stages")
    return names


def register_plan(app: typer.Typer) -> None:
    @app.command("plan", rich_help_panel="Training")
    def plan_cmd(
        params: Path = ParamsOpt,
        preset: Optional[str] = PresetOpt,
        set_: Optional[list[str]] = SetOpt,
        gpus_per_node: Optional[int] = typer.Option(None, "--gpus-per-node", min=1,
                                                    help="processes (GPUs) per node; default pretrain.nproc"),
        nodes: int = typer.Option(1, "--nodes", min=1),
        stages: Optional[str] = typer.Option(None, "--stages", help="comma-separated stages to plan and check "
                                             "(pretrain, train_tokenizer, tokenize, rl, evaluate, serve); default all"),
        gpu_memory: float = typer.Option(80.0, "--gpu-memory", min=0.0, help="GB (1e9 bytes) per GPU; a stage above it exits 1"),
        as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
    ) -> None:
        """Parameters, FLOPs per token and each stage's memory per GPU, measured on fake tensors (no memory used)."""
        cfg = resolve_config(params, preset, set_)
        names = _stage_list(stages)
        from arm.model.build import human
        from arm.model.plan import plan

        try:
            # DeepSpeed logs to stdout when it is first imported: keep stdout for the plan (--json)
            with contextlib.redirect_stdout(sys.stderr):
                r = plan(cfg, gpus_per_node=gpus_per_node or cfg.pretrain.nproc, nodes=nodes, stages=names,
                         gpu_memory_gb=gpu_memory)
        except ValueError as e:  # e.g. a hub model that is neither cached nor of a known shape
            console.print(f"[red]plan failed: {e}[/red]", highlight=False)
            raise typer.Exit(2) from None
        over = [s["stage"] for s in r["stages"] if not s["fits"]]
        if as_json:
            typer.echo(json.dumps(r, indent=2))
        else:
            v = r["vocab"]
            typer.echo(f"preset {r['preset']}: {r['arch']}, {r['parameters']:,} parameters ({human(r['parameters'])})")
            typer.echo(f"vocabulary: {v['text']:,} text + 7 special + {v['image_codes']:,} image codes = {v['total']:,}; "
                       f"{v['tokens_per_image']} tokens per image")
            typer.echo(f"training FLOPs per token at seq_len {r['seq_len']}: {human(r['flops_per_token'])} "
                       f"(6 x {human(r['matmul_params'])} matmul params + {human(r['attention_flops'])} attention)")
            typer.echo(f"global batch {r['global_batch_tokens']:,} tokens -> {human(r['flops_per_step'])}FLOP per step")
            ds = next(row for row in r["zero3_model_states"] if not row["offload_optimizer"] and row["zero_init"])
            typer.echo(f"DeepSpeed's own ZeRO-3 model-state estimate (no offload): {ds['gpu_gib'] * 2**30 / 1e9:.1f} GB per GPU")
            from rich.console import Console

            Console().print(_memory_table(r))
            for s in r["stages"]:
                typer.echo(f"  {s['stage']}: {s['method']}")
        if over:
            # stderr, so that --json output stays parseable
            typer.echo(f"over {gpu_memory:g} GB per GPU: {', '.join(over)}", err=True)
            raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    register_pretrain(app)
    register_plan(app)
