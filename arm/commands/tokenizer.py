"""`arm train-tokenizer`, `arm tokenize` (Prefect flows of the two stages) and `arm tokenizer encode|decode`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from arm.commands.common import ParamsOpt, PresetOpt, SetOpt, console, resolve_config
from arm.config import parse_overrides

# Issue 3's targets for the tiny preset: (metric, comparison, threshold).
TARGETS = (
    ("oracle_scene_accuracy", ">=", 0.95),
    ("shapes_psnr", ">=", 26.0),
    ("code_usage", ">=", 0.60),
    ("fashion_zeroshot_accuracy", ">=", 0.75),
)
SHOWN = ("shapes_psnr", "shapes_ssim", "val_psnr", "oracle_scene_accuracy", "code_usage", "code_perplexity",
         "retrieval_r1", "fashion_zeroshot_accuracy", "fashion_linear_probe_accuracy", "fashion_code_probe_accuracy",
         "train_seconds")

tokenizer_app = typer.Typer(no_args_is_help=True, help="Inspect a trained visual tokenizer.")


def _prefect_env() -> None:
    # Prefect's ephemeral API server gets 20 s to start by default: too tight on a busy 2-core box.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _metrics_table(m: dict[str, Any]) -> Table:
    t = Table(title="visual tokenizer (held-out)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("target", justify="right")
    targets = {k: (op, v) for k, op, v in TARGETS}
    for k in SHOWN:
        if k not in m:
            continue
        v = m[k]
        target = ""
        if k in targets:
            op, thr = targets[k]
            ok = v >= thr
            target = f"[{'green' if ok else 'red'}]{op} {thr}[/]"
        t.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v), target)
    return t


def _load_model(model: Optional[Path], params: Path, preset: Optional[str], set_: Optional[list[str]]):
    from arm.tokenizer.model import VisualTokenizer

    directory = model or Path(resolve_config(params, preset, set_).tokenizer.output)
    try:
        return VisualTokenizer.from_pretrained(directory)
    except (FileNotFoundError, ValueError) as e:
        console.print(f"[red]{e}[/red]", highlight=False)
        raise typer.Exit(2) from None


ModelOpt = typer.Option(None, "--model", "-m", help="tokenizer dir (default: tokenizer.output)")


@tokenizer_app.command("encode")
def encode_cmd(images: list[Path] = typer.Argument(..., help="image files"),
               out: Optional[Path] = typer.Option(None, "--out", "-o", help="write codes as JSON here (default: stdout)"),
               model: Optional[Path] = ModelOpt, params: Path = ParamsOpt, preset: Optional[str] = PresetOpt,
               set_: Optional[list[str]] = SetOpt) -> None:
    """Encode image files into code grids (JSON: file, grid, levels, codes)."""
    from arm.io import atomic_write_json
    from arm.sample.images import ImageInputError, load_image

    tok = _load_model(model, params, preset, set_)
    pil = []
    for p in images:
        try:
            pil.append(load_image(p))  # arm.data.images: decoded as curation decodes training images
        except ImageInputError as e:
            console.print(f"[red]cannot read image: {e}[/red]", highlight=False)
            raise typer.Exit(2) from None
    codes = tok.encode(pil)
    doc = {"grid": list(tok.grid), "levels": tok.levels, "codebook_size": tok.codebook_size,
           "items": [{"file": str(p), "codes": c.tolist()} for p, c in zip(images, codes)]}
    if out:
        atomic_write_json(out, doc)
        console.print(f"wrote codes of {len(images)} image(s) to {out}")
    else:
        typer.echo(json.dumps(doc))


@tokenizer_app.command("decode")
def decode_cmd(codes_file: Path = typer.Argument(..., help="JSON written by `arm tokenizer encode`"),
               out_dir: Path = typer.Option(Path("."), "--out-dir", "-o", help="where the PNGs go"),
               model: Optional[Path] = ModelOpt, params: Path = ParamsOpt, preset: Optional[str] = PresetOpt,
               set_: Optional[list[str]] = SetOpt) -> None:
    """Decode code grids back to images (one PNG per item: <name>.decoded.png)."""
    import io

    import torch
    from PIL import Image

    from arm.io import atomic_write_bytes

    try:
        doc = json.loads(codes_file.read_text())
        items = doc["items"]
        codes = torch.tensor([it["codes"] for it in items], dtype=torch.long)
    except (OSError, ValueError, KeyError, TypeError) as e:
        console.print(f"[red]{codes_file}: not a codes file from `arm tokenizer encode`: {e}[/red]", highlight=False)
        raise typer.Exit(2) from None
    tok = _load_model(model, params, preset, set_)
    try:
        images = tok.decode(codes)
    except ValueError as e:
        console.print(f"[red]{codes_file}: {e}[/red]", highlight=False)
        raise typer.Exit(2) from None
    for i, (it, img) in enumerate(zip(items, images)):
        name = Path(it.get("file") or f"item{i}").stem
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        atomic_write_bytes(out_dir / f"{name}.decoded.png", buf.getvalue())
    console.print(f"wrote {len(items)} image(s) to {out_dir}")


def register(app: typer.Typer) -> None:
    @app.command("train-tokenizer", rich_help_panel="Training")
    def train_tokenizer_cmd(params: Path = ParamsOpt, preset: Optional[str] = PresetOpt,
                            set_: Optional[list[str]] = SetOpt,
                            resume: bool = typer.Option(True, "--resume/--no-resume", help="continue from a checkpoint")) -> None:
        """Train the semantic FSQ visual tokenizer on the curated train split; held-out metrics after."""
        cfg = resolve_config(params, preset, set_)  # config errors exit 2 before Prefect starts
        _prefect_env()
        from flows.train_tokenizer import train_tokenizer_flow

        try:
            metrics = train_tokenizer_flow(params=str(params), preset=preset, overrides=parse_overrides(set_), resume=resume)
        except FileNotFoundError as e:
            console.print(f"[red]{e}[/red]", highlight=False)
            raise typer.Exit(1) from None
        console.print(_metrics_table(metrics))
        console.print(f"model: {cfg.tokenizer.output}  metrics: {cfg.tokenizer.metrics}  curve: {cfg.tokenizer.plots}")

    @app.command("tokenize", rich_help_panel="Training")
    def tokenize_cmd(params: Path = ParamsOpt, preset: Optional[str] = PresetOpt,
                     set_: Optional[list[str]] = SetOpt,
                     nproc: Optional[int] = typer.Option(
                         None, "--nproc", min=1,
                         help="processes on this machine, one per GPU (torchrun; default tokenizer.tokens.nproc)")) -> None:
        """Encode every curated image once into code shards + an index (resumable per shard, data parallel)."""
        import torch

        from arm.tokenizer.launch import check_nproc

        cfg = resolve_config(params, preset, set_)
        try:  # before Prefect starts: a node without enough GPUs is a usage error
            check_nproc(nproc or cfg.tokenizer.tokens.nproc, cfg.tokenizer.device,
                        torch.cuda.device_count() if torch.cuda.is_available() else 0)
        except ValueError as e:
            console.print(f"[red]{e}[/red]", highlight=False)
            raise typer.Exit(2) from None
        _prefect_env()
        from flows.tokenize import tokenize_flow

        try:
            m = tokenize_flow(params=str(params), preset=preset, overrides=parse_overrides(set_), nproc=nproc)
        except (FileNotFoundError, RuntimeError) as e:
            console.print(f"[red]tokenize failed: {e}[/red]", highlight=False)
            raise typer.Exit(1) from None
        console.print(f"{m['images']} images, {m['samples']} samples -> {cfg.tokenizer.tokens.output} "
                      f"({m['shards']} shard(s), {m['images_per_second']} images/s on {m['world_size']} process(es))")

    app.add_typer(tokenizer_app, name="tokenizer", rich_help_panel="Tools")
