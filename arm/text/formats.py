"""Token-level sequence formats of the four tasks (DESIGN §4), over already-tokenized text.

    understand: <bos> <boi> IMG <eoi> question <sep> ANSWER <eos>
    generate:   <bos> caption <boi> IMG <eoi> <eos>      (caption -> <uncond> for CFG)
    edit:       <bos> <boi> SRC <eoi> instruction <boi> TGT <eoi> <eos>
    text:       <bos> TEXT <eos>

`format_example` returns ids and a loss mask (1 on the target part only); `format_prompt` returns
the prefix a sampler continues from, which is exactly the unmasked-off head of the same format.
"""

from __future__ import annotations

from collections.abc import Sequence

from arm.text.vocab import VocabLayout

Ids = list[int]


def _image(layout: VocabLayout, codes: Sequence[int]) -> Ids:
    if len(codes) != layout.tokens_per_image:
        raise ValueError(f"an image has {layout.tokens_per_image} codes, got {len(codes)}")
    return [layout.boi, *(layout.image_offset + int(c) for c in codes), layout.eoi]


def format_prompt(
    task: str,
    layout: VocabLayout,
    *,
    text: Ids | None = None,
    image: Sequence[int] | None = None,
    uncond: bool = False,
) -> Ids:
    """The context before the target: what a sampler is given."""
    if task == "understand":
        return [layout.bos, *_image(layout, _need(image, "image")), *(text or []), layout.sep]
    if task == "generate":
        cond = [layout.uncond] if uncond else _need(text, "text")
        return [layout.bos, *cond, layout.boi]
    if task == "edit":
        cond = [layout.uncond] if uncond else _need(text, "text")
        return [layout.bos, *_image(layout, _need(image, "image")), *cond, layout.boi]
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
) -> tuple[Ids, list[int]]:
    """Full training sequence and its loss mask (1 where the token is predicted and scored)."""
    prompt = format_prompt(task, layout, text=text, image=image, uncond=uncond)
    if task == "understand":
        target = [*_need(target_text, "target_text"), layout.eos]
    elif task in ("generate", "edit"):
        # the prompt already ends with <boi>: the target is the codes, <eoi>, <eos>
        target = _image(layout, _need(target_image, "target_image"))[1:] + [layout.eos]
    else:
        target = [*_need(text, "text"), layout.eos]
    return prompt + target, [0] * len(prompt) + [1] * len(target)


def _need(value, name: str):
    if value is None or (hasattr(value, "__len__") and len(value) == 0):
        raise ValueError(f"missing {name}")
    return value
