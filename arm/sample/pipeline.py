"""The ARM pipeline: text-to-image, image understanding and editing from one model dir.

    pipe = ArmPipeline.from_pretrained("models/arm-base")
    images = pipe.generate(["a red circle"], n=4, cfg_scale=3.0, seed=0)  # aspect_ratio="4:3" with buckets
    answers = pipe.describe(images, questions=["what colour is the circle?"] * 4)
    edited = pipe.edit(images, ["make the circle blue"] * 4)

A model dir holds the transformers causal LM (safetensors), its tokenizer, `vocab_layout.json`
and `manifest.json`, which names the visual tokenizer dir. `run` takes a mixed list of tasks
and decodes them as one batch (serving batches requests this way); `sample_image_tokens` and
`sample_text_tokens` are the token-level API of RL and evaluation.

Seeds: output k of a call gets seed `seed + k` (for `generate`, k = prompt index * n + sample),
and a request's tokens depend only on its own seed, never on the rest of the batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from PIL import Image

from arm.device import resolve_placement
from arm.model.config import SamplingConfig
from arm.sample.engine import Engine, Request, Result
from arm.sample.images import as_pil, to_pil
from arm.text.formats import format_prompt
from arm.text.vocab import VocabLayout

MANIFEST_FILE = "manifest.json"


@dataclass
class Task:
    """One request of a mixed batch: `text` is the prompt, question or instruction."""

    kind: Literal["generate", "describe", "edit"]
    text: str | None = None
    image: Any = None  # PIL image, path, or float tensor [3, H, W] (describe, edit)
    seed: int | None = None
    cfg_scale: float | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    aspect_ratio: str | None = None  # generate: width:height, drawn at the visual tokenizer's nearest bucket


def read_manifest(model_dir: str | Path) -> dict:
    path = Path(model_dir) / MANIFEST_FILE
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return manifest


def visual_tokenizer_dir(model_dir: str | Path) -> Path | None:
    """The visual tokenizer dir the model dir's manifest refers to (relative to the model dir or cwd)."""
    ref = read_manifest(model_dir).get("visual_tokenizer")
    if isinstance(ref, dict):
        ref = ref.get("path") or ref.get("dir")
    if not ref:
        return None
    for candidate in (Path(model_dir) / ref, Path(ref)):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"{Path(model_dir) / MANIFEST_FILE}: visual tokenizer {ref!r} not found (relative to {model_dir} or the working dir)"
    )


def load_visual_tokenizer(model_dir: str | Path, device: str | torch.device = "cpu"):
    """The visual tokenizer a model was trained with, as its manifest names it, or None.

    A learned tokenizer's files must still hash to the fingerprint recorded at pretraining: codes
    of a retrained tokenizer mean something else to the model. The oracle (perfect shapes
    tokenizer, used to measure the AR model alone) is rebuilt from the recorded world.
    """
    ref = read_manifest(model_dir).get("visual_tokenizer")
    if isinstance(ref, dict) and ref.get("kind") == "oracle":
        from arm.config import WorldConfig
        from arm.rl.codec import OracleVisualTokenizer

        return OracleVisualTokenizer(WorldConfig.model_validate(ref.get("world") or {}))
    vt_dir = visual_tokenizer_dir(model_dir)
    if vt_dir is None:
        return None
    if isinstance(ref, dict) and ref.get("sha256"):
        from arm.tokenizer.tokens import tokenizer_fingerprint

        now = tokenizer_fingerprint(vt_dir)
        if now != ref["sha256"]:
            raise ValueError(
                f"{vt_dir}: visual tokenizer changed since {model_dir} was trained (fingerprint {now[:12]}, "
                f"manifest says {str(ref['sha256'])[:12]}); pass the original tokenizer dir explicitly"
            )
    from arm.tokenizer.model import VisualTokenizer

    return VisualTokenizer.from_pretrained(vt_dir, device=device)


def uncond_prompt(prompt: list[int], layout: VocabLayout) -> list[int]:
    """The unconditional twin of a generate/edit prompt: its text condition replaced by <uncond>.

    An edit prompt keeps its source image (guidance then pushes towards the instruction, not away
    from the source), as in the training format's condition dropout.
    """
    head = prompt[-2:] if prompt and layout.grid_of_token(prompt[-1]) else prompt[-1:]
    if not head or head[0] != layout.boi:
        raise ValueError("an image prompt must end with <boi> (and, with several grids, its grid token)")
    if len(prompt) > 1 and prompt[1] == layout.boi:  # edit: <bos> <boi> SRC <eoi> instruction <boi>
        end = prompt.index(layout.eoi, 2)
        return [*prompt[: end + 1], layout.uncond, *head]
    return [layout.bos, layout.uncond, *head]


def _grids(visual_tokenizer) -> tuple[tuple[int, int], ...]:
    """A visual tokenizer's grids; one without aspect buckets (the oracle) has its one grid."""
    grids = getattr(visual_tokenizer, "grids", None) or [visual_tokenizer.grid]
    return tuple(tuple(int(v) for v in g) for g in grids)


class ArmPipeline:
    def __init__(self, model, tokenizer, layout: VocabLayout, visual_tokenizer=None, config: SamplingConfig | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.layout = layout
        self.visual = visual_tokenizer
        self.config = config or SamplingConfig()
        if int(model.config.vocab_size) < layout.vocab_size:
            raise ValueError(f"model vocabulary {model.config.vocab_size} < layout vocabulary {layout.vocab_size}")
        if visual_tokenizer is not None:
            grids = _grids(visual_tokenizer)
            if visual_tokenizer.codebook_size != layout.codebook_size or grids != layout.grids:
                raise ValueError(
                    f"visual tokenizer ({visual_tokenizer.codebook_size} codes, grids {grids}) does not match the "
                    f"model's layout ({layout.codebook_size} codes, grids {layout.grids})"
                )
        self.engine = Engine(model, layout, jacobi_window=self.config.jacobi_window, max_batch=self.config.batch_size,
                             compile=self.config.compile)

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        tokenizer_dir: str | Path | None = None,
        *,
        config: SamplingConfig | None = None,
        visual_tokenizer=None,
    ) -> "ArmPipeline":
        from transformers import AutoModelForCausalLM

        from arm.text.tokenizer import load_tokenizer

        config = config or SamplingConfig()
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"{model_dir}: model dir not found")
        tokenizer, layout = load_tokenizer(model_dir)
        # the AR model in the sampling dtype (7b: bf16 on the GPU); the visual tokenizer stays fp32
        device, dtype = resolve_placement(config.device, config.dtype)
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), local_files_only=True, use_safetensors=True, dtype=dtype
        ).to(device)
        if visual_tokenizer is None:
            if tokenizer_dir is not None:
                from arm.tokenizer.model import VisualTokenizer

                visual_tokenizer = VisualTokenizer.from_pretrained(tokenizer_dir, device=device)
            else:
                visual_tokenizer = load_visual_tokenizer(model_dir, device)
        return cls(model, tokenizer, layout, visual_tokenizer, config)

    # ------------------------------------------------------------------ token-level API

    def encode_text(self, text: str, what: str = "text") -> list[int]:
        if not text or not text.strip():
            raise ValueError(f"{what} is empty")
        # user text is text: a literal "<eos>" in it must not become the special token
        ids = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        bad = [i for i in ids if i >= self.layout.n_text]
        if bad:
            raise ValueError(f"{what} {text!r} encodes to non-text token ids {bad[:5]}")
        return ids

    def encode_images(self, images: Sequence[Any]) -> list[torch.Tensor]:
        """Each image's codes, LongTensor [h, w] at its grid (its aspect bucket, with several)."""
        vt = self._visual()
        pil = [as_pil(im) for im in images]
        if self.layout.multi_grid:
            return [c.long() for c in vt.encode_each(pil)]
        return list(vt.encode(pil).long()) if pil else []

    def decode_codes(self, codes: Sequence[torch.Tensor] | torch.Tensor) -> list[Image.Image]:
        """Images of code grids ([h, w] each, or one [B, h*w] tensor at the default grid)."""
        vt = self._visual()
        if isinstance(codes, torch.Tensor) and codes.dim() == 2:
            codes = list(codes.reshape(-1, *self.layout.grid))
        out: list[Image.Image | None] = [None] * len(codes)
        by_grid: dict[tuple[int, int], list[int]] = {}
        for i, c in enumerate(codes):
            by_grid.setdefault(self.layout.check_grid(tuple(c.shape)), []).append(i)
        for members in by_grid.values():  # one decoder batch per grid
            pixels = vt.decode(torch.stack([codes[i] for i in members]).long())
            for i, p in zip(members, pixels):
                out[i] = to_pil(p)
        return out  # type: ignore[return-value]

    def grid_for(self, aspect_ratio: str | None) -> tuple[int, int]:
        """The (h, w) grid an image of `aspect_ratio` (width:height, e.g. "4:3") is drawn at."""
        if aspect_ratio is None:
            return self.layout.grid
        if not self.layout.multi_grid:
            raise ValueError(f"aspect_ratio {aspect_ratio!r}: this model draws only {self.layout.grid[1]}x"
                             f"{self.layout.grid[0]} token grids (its tokenizer has no aspect buckets)")
        return self.layout.check_grid(self._visual().buckets.for_ratio(aspect_ratio))

    def sample(self, requests: list[Request]) -> list[Result]:
        return self.engine.run(requests)

    def sample_image_tokens(
        self,
        prompt_ids_batch: Sequence[Sequence[int]],
        uncond_ids_batch: Sequence[Sequence[int] | None] | None = None,
        *,
        cfg_scale: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Codes LongTensor [B, h*w] for image prompts (each ends with <boi>). Without
        `uncond_ids_batch` the unconditional twins come from `uncond_prompt`."""
        prompts = [list(p) for p in prompt_ids_batch]
        if uncond_ids_batch is None:
            uncond_ids_batch = [None] * len(prompts)
        if len(uncond_ids_batch) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(uncond_ids_batch)} uncond prompts")
        seeds = self._seeds(seed, len(prompts))
        c = self.config
        scale = c.cfg_scale if cfg_scale is None else cfg_scale
        reqs = [
            Request(
                prompt=p,
                uncond_prompt=(list(u) if u is not None else uncond_prompt(p, self.layout)) if scale != 1 else None,
                cfg_scale=scale,
                temperature=c.temperature if temperature is None else temperature,
                top_k=c.top_k if top_k is None else top_k,
                top_p=c.top_p if top_p is None else top_p,
                seed=s,
                mode="image",
            )
            for p, u, s in zip(prompts, uncond_ids_batch, seeds)
        ]
        results = self.engine.run(reqs)
        if not results:
            return torch.empty(0, self.layout.tokens_per_image, dtype=torch.long)
        return torch.stack([r.codes(self.layout).flatten() for r in results])

    def sample_text_tokens(
        self,
        prompt_ids_batch: Sequence[Sequence[int]],
        *,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        seed: int | Sequence[int] | None = None,
    ) -> list[list[int]]:
        """Text ids (without the closing <eos>) for text prompts, e.g. understand prompts ending with <sep>."""
        c = self.config
        seeds = self._seeds(seed, len(prompt_ids_batch))
        reqs = [
            Request(
                prompt=list(p),
                temperature=c.text_temperature if temperature is None else temperature,
                top_k=c.top_k if top_k is None else top_k,
                top_p=c.top_p if top_p is None else top_p,
                max_new_tokens=c.max_new_tokens if max_new_tokens is None else max_new_tokens,
                seed=s,
                mode="text",
            )
            for p, s in zip(prompt_ids_batch, seeds)
        ]
        return [r.text_ids(self.layout) for r in self.engine.run(reqs)]

    # ------------------------------------------------------------------ task-level API

    def run(self, tasks: Sequence[Task], seed: int | None = None) -> list[Image.Image | str]:
        """Decode a mixed list of tasks as one batch: an image for generate/edit, a string for describe."""
        base = self.config.seed if seed is None else seed
        needs_image = [i for i, t in enumerate(tasks) if t.kind in ("describe", "edit")]
        for i in needs_image:
            if tasks[i].image is None:
                raise ValueError(f"task {i} ({tasks[i].kind}) needs an image")
        for i, t in enumerate(tasks):
            if t.aspect_ratio is not None and t.kind != "generate":
                raise ValueError(f"task {i} ({t.kind}): aspect_ratio applies to generate only (an edit keeps its source's)")
        codes = self.encode_images([tasks[i].image for i in needs_image]) if needs_image else []
        code_of = dict(zip(needs_image, codes))
        reqs = [self._request(i, t, code_of.get(i), base + i if t.seed is None else t.seed) for i, t in enumerate(tasks)]
        results = self.engine.run(reqs)
        out: list[Image.Image | str] = [None] * len(tasks)  # type: ignore[list-item]
        image_rows = [i for i, t in enumerate(tasks) if t.kind != "describe"]
        if image_rows:
            images = self.decode_codes([results[i].codes(self.layout) for i in image_rows])
            for i, im in zip(image_rows, images):
                out[i] = im
        for i, t in enumerate(tasks):
            if t.kind == "describe":
                out[i] = self.tokenizer.decode(results[i].text_ids(self.layout), skip_special_tokens=True).strip()
        return out

    def generate(self, prompts: str | Sequence[str], n: int = 1, *, cfg_scale: float | None = None,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, aspect_ratio: str | None = None) -> list[Image.Image]:
        """n images per prompt, prompt-major; `aspect_ratio` (width:height) picks the nearest bucket."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        tasks = [Task("generate", p, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p,
                      aspect_ratio=aspect_ratio)
                 for p in prompts for _ in range(n)]
        return self.run(tasks, seed=seed)  # type: ignore[return-value]

    def describe(self, images: Sequence[Any], questions: Sequence[str | None] | None = None, *,
                 temperature: float | None = None, max_new_tokens: int | None = None,
                 seed: int | None = None) -> list[str]:
        """A caption per image, or the answer to its question."""
        images = list(images)
        questions = list(questions) if questions is not None else [None] * len(images)
        if len(questions) != len(images):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        tasks = [Task("describe", q, im, temperature=temperature, max_new_tokens=max_new_tokens)
                 for im, q in zip(images, questions)]
        return self.run(tasks, seed=seed)  # type: ignore[return-value]

    def edit(self, images: Sequence[Any], instructions: Sequence[str], *, cfg_scale: float | None = None,
             temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
             seed: int | None = None) -> list[Image.Image]:
        images, instructions = list(images), list(instructions)
        if len(instructions) != len(images):
            raise ValueError(f"{len(images)} images but {len(instructions)} instructions")
        tasks = [Task("edit", s, im, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p)
                 for im, s in zip(images, instructions)]
        return self.run(tasks, seed=seed)  # type: ignore[return-value]

    # ------------------------------------------------------------------ internals

    def _visual(self):
        if self.visual is None:
            raise RuntimeError(
                "no visual tokenizer: the model dir's manifest.json names none; pass tokenizer_dir to from_pretrained"
            )
        return self.visual

    def _seeds(self, seed: int | Sequence[int] | None, n: int) -> list[int]:
        if seed is None or isinstance(seed, int):
            base = self.config.seed if seed is None else seed
            return [base + i for i in range(n)]
        seeds = [int(s) for s in seed]
        if len(seeds) != n:
            raise ValueError(f"{n} prompts but {len(seeds)} seeds")
        return seeds

    def _request(self, i: int, t: Task, codes: torch.Tensor | None, seed: int) -> Request:
        c, lay = self.config, self.layout
        flat, grid = (codes.flatten().tolist(), tuple(codes.shape)) if codes is not None else (None, None)
        if t.kind == "generate":
            try:
                target = self.grid_for(t.aspect_ratio)
            except ValueError as err:
                raise ValueError(f"task {i}: {err}") from None
            prompt = format_prompt("generate", lay, text=self.encode_text(t.text or "", f"task {i}: prompt"),
                                   target_grid=target)
        elif t.kind == "edit":
            text = self.encode_text(t.text or "", f"task {i}: instruction")
            prompt = format_prompt("edit", lay, image=flat, text=text, image_grid=grid, target_grid=grid)
        elif t.kind == "describe":
            question = self.encode_text(t.text, f"task {i}: question") if t.text is not None else None
            prompt = format_prompt("understand", lay, image=flat, text=question, image_grid=grid)
        else:
            raise ValueError(f"task {i}: unknown kind {t.kind!r}")
        if t.kind == "describe":
            return Request(
                prompt, temperature=c.text_temperature if t.temperature is None else t.temperature,
                top_k=c.top_k if t.top_k is None else t.top_k, top_p=c.top_p if t.top_p is None else t.top_p,
                max_new_tokens=c.max_new_tokens if t.max_new_tokens is None else t.max_new_tokens,
                seed=seed, mode="text",
            )
        scale = c.cfg_scale if t.cfg_scale is None else t.cfg_scale
        return Request(
            prompt, uncond_prompt(prompt, lay) if scale != 1 else None, cfg_scale=scale,
            temperature=c.temperature if t.temperature is None else t.temperature,
            top_k=c.top_k if t.top_k is None else t.top_k, top_p=c.top_p if t.top_p is None else t.top_p,
            seed=seed, mode="image",
        )
