"""CLI commands of the AR model: `arm pretrain`, `arm plan` (and the sampling commands).

Each command group lives in its own function, called from `register`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from arm.commands.common import ParamsOpt, PresetOpt, SetOpt, console, resolve_config


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
    @app.command("pretrain")
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
            metrics = pretrain_flow(params=str(params), preset=preset, overrides=list(set_ or []),
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


def register_plan(app: typer.Typer) -> None:
    @app.command("plan")
    def plan_cmd(
        params: Path = ParamsOpt,
        preset: Optional[str] = PresetOpt,
        set_: Optional[list[str]] = SetOpt,
        gpus_per_node: Optional[int] = typer.Option(None, "--gpus-per-node", min=1,
                                                    help="processes (GPUs) per node; default pretrain.nproc"),
        nodes: int = typer.Option(1, "--nodes", min=1),
        as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
    ) -> None:
        """Parameters, FLOPs per token and DeepSpeed's ZeRO-3 memory estimate per GPU (meta device)."""
        cfg = resolve_config(params, preset, set_)
        from arm.model.build import human
        from arm.model.plan import plan

        r = plan(cfg, gpus_per_node=gpus_per_node or cfg.pretrain.nproc, nodes=nodes)
        if as_json:
            typer.echo(json.dumps(r, indent=2))
            return
        v = r["vocab"]
        typer.echo(f"preset {r['preset']}: {r['arch']}, {r['parameters']:,} parameters ({human(r['parameters'])})")
        typer.echo(f"vocabulary: {v['text']:,} text + 7 special + {v['image_codes']:,} image codes = {v['total']:,}; "
                   f"{v['tokens_per_image']} tokens per image")
        typer.echo(f"training FLOPs per token at seq_len {r['seq_len']}: {human(r['flops_per_token'])} "
                   f"(6 x {human(r['matmul_params'])} matmul params + {human(r['attention_flops'])} attention)")
        typer.echo(f"global batch {r['global_batch_tokens']:,} tokens -> {human(r['flops_per_step'])}FLOP per step")
        t = Table(title=f"ZeRO-3 model states (params + grads + Adam), {r['nodes']} node(s) x {r['gpus_per_node']} GPUs; "
                        "activations not included")
        for col in ("offload optimizer", "offload params", "zero.Init", "per GPU (GiB)", "per CPU node (GiB)"):
            t.add_column(col, justify="right")
        for row in r["zero3_model_states"]:
            t.add_row(*("yes" if row[k] else "no" for k in ("offload_optimizer", "offload_params", "zero_init")),
                      f"{row['gpu_gib']:.1f}", f"{row['cpu_gib']:.1f}")
        from rich.console import Console

        Console().print(t)


def register(app: typer.Typer) -> None:
    register_pretrain(app)
    register_plan(app)
