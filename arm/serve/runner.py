"""Runs batches of service items through the sampling pipeline, one outcome per item.

A batch that BentoML's adaptive batcher assembled holds items of unrelated requests, each with
its own settings and seed. `ArmPipeline.run` decodes such a mixed list as one batch and a row's
tokens depend only on its own seed, so batching never changes an answer. A batch that raises
is bisected until the failing items are alone: one bad request costs its batch-mates a retry,
never their answer.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any, Sequence

from arm.serve.config import LimitsConfig, ServeConfig
from arm.serve.images import open_image, png_base64
from arm.serve.schemas import DescribeItem, EditItem, GenerateItem, Outcome

log = logging.getLogger("arm.serve")

Item = GenerateItem | EditItem | DescribeItem


class BatchRunner:
    def __init__(self, pipeline: Any, limits: LimitsConfig):
        self.pipeline = pipeline
        self.limits = limits

    def generate(self, items: Sequence[GenerateItem]) -> list[Outcome]:
        return self._isolated("generate", list(items))

    def edit(self, items: Sequence[EditItem]) -> list[Outcome]:
        return self._isolated("edit", list(items))

    def describe(self, items: Sequence[DescribeItem]) -> list[Outcome]:
        return self._isolated("describe", list(items))

    # ------------------------------------------------------------------ internals

    def _image(self, b64: str):
        # already checked by the front service; checked again because this process trusts no input
        return open_image(base64.b64decode(b64, validate=True), "image", self.limits)

    def _task(self, kind: str, item: Any):
        from arm.sample.pipeline import Task

        if kind == "generate":
            return Task("generate", item.prompt, seed=item.seed, cfg_scale=item.cfg_scale,
                        temperature=item.temperature, top_k=item.top_k, top_p=item.top_p,
                        aspect_ratio=item.aspect_ratio)
        if kind == "edit":
            return Task("edit", item.instruction, self._image(item.image), seed=item.seed, cfg_scale=item.cfg_scale,
                        temperature=item.temperature, top_k=item.top_k, top_p=item.top_p)
        return Task("describe", item.question, self._image(item.image), seed=item.seed,
                    temperature=item.temperature, max_new_tokens=item.max_new_tokens)

    def _call(self, kind: str, items: list[Any]) -> list[Outcome]:
        tasks = [self._task(kind, it) for it in items]
        results = self.pipeline.run(tasks)
        if len(results) != len(items):
            raise RuntimeError(f"pipeline.run returned {len(results)} results for {len(items)} tasks")
        if kind == "describe":
            return [Outcome(ok=True, text=str(r)) for r in results]
        return [Outcome(ok=True, image=png_base64(r)) for r in results]

    def _isolated(self, kind: str, items: list[Any]) -> list[Outcome]:
        if not items:
            return []
        try:
            return self._call(kind, items)
        except Exception as e:
            if len(items) == 1:
                log.exception("%s failed for one request", kind)
                return [Outcome(ok=False, error=f"{kind} failed: {type(e).__name__}: {e}"[:500])]
            log.warning("%s batch of %d failed (%s: %s); bisecting to isolate the failing items",
                        kind, len(items), type(e).__name__, e)
            mid = len(items) // 2
            return self._isolated(kind, items[:mid]) + self._isolated(kind, items[mid:])


def start_worker(stored: Any, serve: ServeConfig, sampling: Any) -> BatchRunner:
    """A model worker's one-time start, for a BentoML model-store entry: the package checked
    against `arm package`'s record (`serve.verify`; quick = sizes and mtimes, no hashing unless
    one moved), then the pipeline loaded, which the worker keeps for its lifetime."""
    from arm.serve import store

    model_dir = Path(stored.path) / store.MODEL_SUBDIR
    if serve.verify != "off":
        store.verify_package(model_dir, stored.info.metadata or {}, full=serve.verify == "full")
    return BatchRunner(load_pipeline(model_dir, sampling, serve.torch_threads, serve.device), serve.limits)


def load_pipeline(model_dir: str | Path, sampling: Any, torch_threads: int | None = None,
                  device: str | None = None) -> Any:
    """ArmPipeline from a packaged model dir (safetensors only, no remote code), on `device`
    (default `sampling.device`; "auto" = CUDA when BentoML gave this process a GPU) in
    `sampling.dtype` (7b: bf16), both resolved by arm.device as everywhere else.

    `arm package` checked the visual tokenizer against the model's training fingerprint and the
    service checked the files against the package's record (store.verify_package), so the
    tokenizer is loaded as it is: nothing is hashed here.
    """
    import torch

    from arm.sample.pipeline import ArmPipeline

    if torch_threads:
        torch.set_num_threads(torch_threads)
    if device and device != sampling.device:
        sampling = type(sampling).model_validate({**sampling.model_dump(), "device": device})
    return ArmPipeline.from_pretrained(model_dir, config=sampling,
                                       visual_tokenizer=packaged_visual_tokenizer(model_dir, sampling.device))


def packaged_visual_tokenizer(model_dir: str | Path, device: str) -> Any:
    """The learned visual tokenizer a package holds, or None: no tokenizer, or the shapes oracle,
    which the pipeline's own loader rebuilds from the recorded world."""
    from arm.device import resolve_device
    from arm.sample.pipeline import read_manifest, visual_tokenizer_dir
    from arm.tokenizer.model import VisualTokenizer

    ref = read_manifest(model_dir).get("visual_tokenizer")
    if not ref or (isinstance(ref, dict) and ref.get("kind") == "oracle"):
        return None
    return VisualTokenizer.from_pretrained(visual_tokenizer_dir(model_dir), device=resolve_device(device))
