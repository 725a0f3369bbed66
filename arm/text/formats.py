"""Token-level sequence formats of the four tasks (DESIGN §4), over already-tokenized text.

    understand: <bos> <boi> IMG <eoi> question <sep> ANSWER <eos>
    generate:   <bos> caption <boi> IMG <eoi> <eos>      (caption -> <uncond> for CFG)
    edit:       <bos> <boi> SRC <eoi> instruction <boi> TGT <eoi> <eos>
    text:       <bos> TEXT <eos>

IMG is the image's codes in row-major order. With several grid buckets (VocabLayout.grids) every
image opens with its grid token, `<boi> <grid_HxW> codes <eoi>`; for a target image the grid token
belongs to the prompt: the aspect ratio is what the user asks for, the model never draws it.

`format_example` returns ids and a loss mask (1 on the target part only); `format_prompt` returns
the prefix a sampler continues from, which is exactly the unmasked-off head of the same format.
"""

from __future__ import annotations

from collections.abc import Sequence

from arm.text.vocab import VocabLayout

Ids = list[int]


def image_head(layout: VocabLayout, grid: Sequence[int] | None = None) -> Ids:
    """What opens an image span: <boi>, then its grid token when the layout has several grids."""
    token = layout.grid_token(grid)
    return [layout.boi] if token is None else [layout.boi, token]


def _image(layout: VocabLayout, codes: Sequence[int], grid: Sequence[int] | None) -> Ids:
    n = layout.n_codes(grid)
    if len(codes) != n:
        raise ValueError(f"an image of grid {list(layout.check_grid(grid))} has {n} codes, got {len(codes)}")
    return [*image_head(layout, grid), *(layout.image_offset + int(c) for c in codes), layout.eoi]


def format_prompt(
    task: str,
    layout: VocabLayout,
    *,
    text: Ids | None = None,
    image: Sequence[int] | None = None,
    uncond: bool = False,
    image_grid: Sequence[int] | None = None,
    target_grid: Sequence[int] | None = None,
) -> Ids:
    """The context before the target: what a sampler is given. Grids default to the layout's."""
    if task == "understand":
        return [layout.bos, *_image(layout, _need(image, "image"), image_grid), *(text or []), layout.sep]
    if task == "generate":
        cond = [layout.uncond] if uncond else _need(text, "text")
        return [layout.bos, *cond, *image_head(layout, target_grid)]
    if task == "edit":
        cond = [layout.uncond] if uncond else _need(text, "text")
        return [layout.bos, *_image(layout, _need(image, "image"), image_grid), *cond, *image_head(layout, target_grid)]
    if task == "text":
        return [layout.bos]
    raise ValueError(f"unknown task {task!r}")


def format_example(
    task: str,
    layout: VocabLayout,
    *,
    text: Ids | None = None,
    image: Sequence[int] | None = None,
    target_text: Ids | None = None,
    target_image: Sequence[int] | None = None,
    uncond: bool = False,
    image_grid: Sequence[int] | None = None,
    target_grid: Sequence[int] | None = None,
) -> tuple[Ids, list[int]]:
    """Full training sequence and its loss mask (1 where the token is predicted and scored)."""
    prompt = format_prompt(task, layout, text=text, image=image, uncond=uncond, image_grid=image_grid,
                           target_grid=target_grid)
    if task == "understand":
        target = [*_need(target_text, "target_text"), layout.eos]
    elif task in ("generate", "edit"):
        # the prompt already ends with the image head: the target is the codes, <eoi>, <eos>
        span = _image(layout, _need(target_image, "target_image"), target_grid)
        target = span[len(image_head(layout, target_grid)):] + [layout.eos]
    else:
        target = [*_need(text, "text"), layout.eos]
    return prompt + target, [0] * len(prompt) + [1] * len(target)


def _need(value, name: str):
    if value is None or (hasattr(value, "__len__") and len(value) == 0):
        raise ValueError(f"missing {name}")
    return value
