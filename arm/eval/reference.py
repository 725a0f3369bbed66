"""Reference pipelines with known scores, to check the benchmark machinery end to end.

`OraclePipeline` answers from the held-out sets and the scene oracle (ground-truth renders,
oracle answers): every benchmark must rate it at its reconstruction reference without a tokenizer.
`DegradedPipeline` corrupts a share of another pipeline's outputs (noise / blank images, wrong
answers): its scores must drop. Neither is a model; both expose the ArmPipeline task API.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

import numpy as np
from PIL import Image

from arm.config import ArmConfig
from arm.data import shapes
from arm.data.oracle import parse
from arm.data.shapes import Scene
from arm.eval.answers import answer_from_scene
from arm.eval.fmnist import answer_from_label, load_split
from arm.eval.images import fmnist_images, render


class OraclePipeline:
    def __init__(self, cfg: ArmConfig, sets: dict[str, list[dict]]):
        self.world, self.grid = cfg.world, cfg.world.grid
        self.caption_questions = {i["question"] for i in sets["caption"]}
        # keyed by (prompt, aspect ratio): a caption can name a square scene and a 4:3 one alike
        self.scene_of = {(i["prompt"], i.get("aspect_ratio")): i["scene"]
                         for name in ("geneval", "geneval_aspect", "wise") for i in sets.get(name, [])}
        self.edits = {(_key(i["source_scene"]), i["instruction"]): i["target_scene"] for i in sets["edit"]}
        pixels, labels = load_split(cfg.eval.fmnist.root, "t10k")
        self.fmnist_prompt = {i["prompt"]: i["t10k_index"] for i in sets["fmnist_gen"]}
        self.pixels = pixels
        idx = sorted({i["t10k_index"] for i in sets["fmnist_und"]} | set(self.fmnist_prompt.values()))
        self.label_of = {im.tobytes(): int(labels[i]) for i, im in zip(idx, fmnist_images(pixels, idx))}

    def generate(self, prompts: Sequence[str], n: int = 1, aspect_ratio: str | None = None, **_) -> list[Image.Image]:
        out = []
        for p in prompts:
            if p in self.fmnist_prompt:
                im = fmnist_images(self.pixels, [self.fmnist_prompt[p]])[0]
            elif (p, aspect_ratio) in self.scene_of:
                im = render(self.scene_of[(p, aspect_ratio)], self.world)
            else:
                raise KeyError(f"oracle pipeline: unknown prompt {p!r}")
            out += [im] * n
        return out

    def describe(self, images: Sequence[Image.Image], questions: Sequence[str] | None = None, **_) -> list[str]:
        out = []
        for im, q in zip(images, questions or [None] * len(images)):
            label = self.label_of.get(im.tobytes()) if im.mode == "L" else None
            if label is not None:
                out.append(answer_from_label(q, label))
            elif q is None or q in self.caption_questions:
                out.append(shapes.caption(parse(im, self.world), self.grid))
            else:
                out.append(answer_from_scene(q, parse(im, self.world), self.grid))
        return out

    def edit(self, images: Sequence[Image.Image], instructions: Sequence[str], **_) -> list[Image.Image]:
        out = []
        for im, ins in zip(images, instructions):
            target = self.edits[(_key(parse(im, self.world).to_json()), ins)]
            out.append(render(target, self.world))
        return out


def _key(scene_json: list[dict]) -> str:
    return json.dumps(Scene.from_json(scene_json).to_json(), sort_keys=True)


class DegradedPipeline:
    """Each output is corrupted with probability `p` (seeded): heavy pixel noise on images,
    a fixed wrong answer on text."""

    def __init__(self, inner, p: float, seed: int = 0, noise: float = 120.0):
        self.inner, self.p, self.noise = inner, p, noise
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)

    def _image(self, im: Image.Image) -> Image.Image:
        if self.rng.random() >= self.p:
            return im
        arr = np.asarray(im.convert("RGB"), dtype=np.float32)
        arr = arr + self.np_rng.normal(0, self.noise, arr.shape)
        return Image.fromarray(arr.clip(0, 255).astype(np.uint8))

    def generate(self, prompts, n: int = 1, **kw):
        return [self._image(im) for im in self.inner.generate(prompts, n=n, **kw)]

    def edit(self, images, instructions, **kw):
        return [self._image(im) for im in self.inner.edit(images, instructions, **kw)]

    def describe(self, images, questions=None, **kw):
        answers = self.inner.describe(images, questions, **kw)
        return ["seven" if self.rng.random() < self.p else a for a in answers]  # never a right answer here


def noise_weights(model, relative_std: float, seed: int = 0) -> None:
    """Degrades a torch model in place: every parameter gets Gaussian noise with a standard
    deviation of `relative_std` times that parameter's own (seeded, so reproducible)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            scale = float(p.float().std()) if p.numel() > 1 else float(p.abs().mean())
            p.add_((torch.randn(p.shape, generator=gen) * relative_std * scale).to(p.dtype).to(p.device))
