"""`arm generate`, `arm describe`, `arm edit`: sampling from a trained model dir.

Inputs are checked before the model loads, and every bad input exits with code 2 and a message
naming it (missing or unreadable image, empty prompt, unknown output format, missing model).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from arm.config import ConfigError, load_config
from arm.model.config import SamplingConfig

_PARAMS = typer.Option(Path("params.yaml"), "--params", help="params file")
_PRESET = typer.Option(None, "--preset", "-p", help="preset: micro, tiny, small, 7b")
_SET = typer.Option(None, "--set", "-s", help="override: key.path=value (repeatable)")
_MODEL = typer.Option(None, "--model", "-m", help="model dir (default: the first existing of sampling.model_dirs)")
_VT = typer.Option(None, "--tokenizer", help="visual tokenizer dir (default: from the model's manifest.json)")
_CFG = typer.Option(None, "--cfg-scale", help="classifier-free guidance scale (1 = off)")
_TEMP = typer.Option(None, "--temperature", "-t", help="sampling temperature (0 = greedy)")
_TOPK = typer.Option(None, "--top-k", help="top-k filter (0 = off)")
_TOPP = typer.Option(None, "--top-p", help="nucleus filter (1 = off)")
_SEED = typer.Option(None, "--seed", help="seed (output k uses seed + k)")
_JACOBI = typer.Option(None, "--jacobi", help="speculative Jacobi window (0 = plain decoding; same output)")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _sampling(params: Path, preset: Optional[str], overrides: Optional[list[str]], **fields) -> SamplingConfig:
    try:
        cfg = load_config(params, preset, overrides).sampling
    except ConfigError as e:
        raise _fail(str(e)) from None
    given = {k: v for k, v in fields.items() if v is not None}
    try:
        return SamplingConfig.model_validate({**cfg.model_dump(), **given})
    except ValueError as e:
        raise _fail(f"invalid sampling option: {e}") from None


def _model_dir(model: Optional[Path], cfg: SamplingConfig) -> Path:
    if model is not None:
        if not model.is_dir():
            raise _fail(f"--model {model}: no such model dir")
        return model
    for d in cfg.model_dirs:
        if Path(d).is_dir():
            return Path(d)
    raise _fail(f"no model found (tried {', '.join(cfg.model_dirs)}); train one with `arm pretrain` or pass --model")


def _pipeline(model: Optional[Path], tokenizer: Optional[Path], cfg: SamplingConfig, needs_images: bool):
    from arm.sample.pipeline import ArmPipeline

    model_dir = _model_dir(model, cfg)
    if tokenizer is not None and not tokenizer.is_dir():
        raise _fail(f"--tokenizer {tokenizer}: no such visual tokenizer dir")
    try:
        pipe = ArmPipeline.from_pretrained(model_dir, tokenizer, config=cfg)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise _fail(f"cannot load model {model_dir}: {e}") from None
    if needs_images and pipe.visual is None:
        raise _fail(f"model {model_dir}: its manifest names no visual tokenizer; pass --tokenizer DIR")
    return pipe


def _check_image(path: Path):
    from arm.sample.images import ImageInputError, load_image

    try:
        return load_image(path)
    except ImageInputError as e:
        raise _fail(str(e)) from None


def _check_text(text: str, what: str) -> str:
    if not text or not text.strip():
        raise _fail(f"{what} is empty")
    return text


def _outputs(output: Path, n: int) -> list[Path]:
    from arm.sample.images import ImageInputError, image_format

    try:
        image_format(output)
    except ImageInputError as e:
        raise _fail(f"-o {e}") from None
    if n == 1:
        return [output]
    return [output.with_name(f"{output.stem}_{k}{output.suffix}") for k in range(n)]


def _save(images, paths: list[Path]) -> None:
    from arm.sample.images import save_image

    for im, p in zip(images, paths):
        save_image(im, p)
        typer.echo(str(p))


def _run(fn):
    """Errors of the model stage itself (after input checks) still exit 2 with their message."""
    try:
        return fn()
    except (ValueError, RuntimeError) as e:
        raise _fail(str(e)) from None


def register(app: typer.Typer) -> None:
    @app.command("generate", rich_help_panel="Serving")
    def generate(
        prompt: str = typer.Argument(..., help="what to draw"),
        output: Path = typer.Option(..., "--output", "-o", help="output image (with -n > 1: NAME_k.EXT)"),
        n: int = typer.Option(1, "-n", min=1, help="images to sample"),
        model: Optional[Path] = _MODEL, tokenizer: Optional[Path] = _VT,
        cfg_scale: Optional[float] = _CFG, temperature: Optional[float] = _TEMP,
        top_k: Optional[int] = _TOPK, top_p: Optional[float] = _TOPP,
        seed: Optional[int] = _SEED, jacobi: Optional[int] = _JACOBI,
        aspect_ratio: Optional[str] = typer.Option(None, "--aspect-ratio", help="width:height, e.g. 4:3 "
                                                   "(a model whose tokenizer has aspect buckets)"),
        params: Path = _PARAMS, preset: Optional[str] = _PRESET, set_: Optional[list[str]] = _SET,
    ) -> None:
        """Text to image."""
        _check_text(prompt, "prompt")
        paths = _outputs(output, n)
        cfg = _sampling(params, preset, set_, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k,
                        top_p=top_p, seed=seed, jacobi_window=jacobi)
        pipe = _pipeline(model, tokenizer, cfg, needs_images=True)
        _save(_run(lambda: pipe.generate([prompt], n=n, aspect_ratio=aspect_ratio)), paths)

    @app.command("describe", rich_help_panel="Serving")
    def describe(
        image: Path = typer.Argument(..., help="image to describe"),
        question: Optional[str] = typer.Option(None, "--question", "-q", help="a question about the image"),
        max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1),
        model: Optional[Path] = _MODEL, tokenizer: Optional[Path] = _VT,
        temperature: Optional[float] = _TEMP, seed: Optional[int] = _SEED, jacobi: Optional[int] = _JACOBI,
        params: Path = _PARAMS, preset: Optional[str] = _PRESET, set_: Optional[list[str]] = _SET,
    ) -> None:
        """Image to text: a caption, or the answer to --question."""
        im = _check_image(image)
        if question is not None:
            _check_text(question, "--question")
        cfg = _sampling(params, preset, set_, text_temperature=temperature, max_new_tokens=max_new_tokens,
                        seed=seed, jacobi_window=jacobi)
        pipe = _pipeline(model, tokenizer, cfg, needs_images=True)
        sys.stdout.write(_run(lambda: pipe.describe([im], [question]))[0] + "\n")

    @app.command("edit", rich_help_panel="Serving")
    def edit(
        image: Path = typer.Argument(..., help="source image"),
        instruction: str = typer.Argument(..., help="what to change"),
        output: Path = typer.Option(..., "--output", "-o", help="output image"),
        model: Optional[Path] = _MODEL, tokenizer: Optional[Path] = _VT,
        cfg_scale: Optional[float] = _CFG, temperature: Optional[float] = _TEMP,
        top_k: Optional[int] = _TOPK, top_p: Optional[float] = _TOPP,
        seed: Optional[int] = _SEED, jacobi: Optional[int] = _JACOBI,
        params: Path = _PARAMS, preset: Optional[str] = _PRESET, set_: Optional[list[str]] = _SET,
    ) -> None:
        """Instruction-guided image editing."""
        im = _check_image(image)
        _check_text(instruction, "instruction")
        paths = _outputs(output, 1)
        cfg = _sampling(params, preset, set_, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k,
                        top_p=top_p, seed=seed, jacobi_window=jacobi)
        pipe = _pipeline(model, tokenizer, cfg, needs_images=True)
        _save(_run(lambda: pipe.edit([im], [instruction])), paths)
