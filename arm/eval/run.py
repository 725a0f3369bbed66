"""`arm evaluate`: every benchmark on one model, each score beside its ceiling and its floor.

Ceiling: the same benchmark on ground-truth images passed through the visual tokenizer (encode +
decode), i.e. the best any AR model over these codes could do; for understanding, the oracle's
answers read off those reconstructions (for Fashion-MNIST, the judge classifier's reading, which
a good model can beat: that ceiling is only as strong as the judge). Floor: what the prompt-free model does — its own
unconditional samples (text condition replaced by <uncond>) when the pipeline exposes the token
API, else renders of random training-distribution scenes; for understanding, the majority
answer per question type (the answer prior); for editing, returning the source unchanged.

Works with any object that has `generate`, `describe` and `edit` like ArmPipeline.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from arm.config import ArmConfig
from arm.data import shapes
from arm.data.oracle import parse
from arm.eval.answers import answer_from_scene, exact_match
from arm.eval.images import fmnist_images, render, roundtrip
from arm.eval.modules import as_reference, load
from arm.eval.prompts import load_prompt_sets, prior_answer
from arm.io import atomic_write_json, sha256_file

log = logging.getLogger(__name__)


class Pipeline(Protocol):
    def generate(self, prompts: Sequence[str], n: int = 1, **kw: Any) -> list[Image.Image]: ...
    def describe(self, images: Sequence[Image.Image], questions: Sequence[str] | None = None, **kw: Any) -> list[str]: ...
    def edit(self, images: Sequence[Image.Image], instructions: Sequence[str], **kw: Any) -> list[Image.Image]: ...


class EvalError(RuntimeError):
    """A model or pipeline that cannot be evaluated; the message says which and why."""


Cell = tuple[Image.Image, bool | None]  # an image and whether it passed (None: a reference image)


@dataclass
class Grid:
    name: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)


@dataclass
class BenchResult:
    scores: dict[str, float]
    ceiling: dict[str, float] | None = None
    floor: dict[str, float] | None = None
    grids: list[Grid] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)  # text outputs shown in the report
    info: dict[str, Any] = field(default_factory=dict)


class Runner:
    """Calls the pipeline in fixed batches with per-output seeds, so results do not depend on batching."""

    def __init__(self, cfg: ArmConfig, pipeline: Pipeline, tokenizer, sets: dict, prior: dict):
        self.cfg, self.ecfg, self.world = cfg, cfg.eval, cfg.world
        self.pipe, self.tokenizer, self.sets, self.prior = pipeline, tokenizer, sets, prior
        self.sampling = {k: v for k, v in self.ecfg.sampling.model_dump().items() if v is not None}
        self._uncond: list[Image.Image] | None = None
        self._offset = 0

    def stream(self, name: str) -> None:
        """Each benchmark draws its seeds from its own block, so running a subset of the
        benchmarks (or another order) gives every benchmark the same samples."""
        self._offset = (BENCH_ORDER.index(name) + 1) * 10_000_000

    def _seed(self, count: int) -> int:
        seed = self.ecfg.seed + self._offset
        self._offset += count
        return seed

    def _checked(self, out, want: int, what: str) -> list:
        out = list(out)
        if len(out) != want:
            raise EvalError(f"pipeline.{what} returned {len(out)} outputs for {want} inputs")
        return out

    def generate(self, prompts: Sequence[str]) -> list[list[Image.Image]]:
        n = self.ecfg.samples_per_prompt
        step = max(1, self.ecfg.batch_size // n)
        out: list[list[Image.Image]] = []
        for i in range(0, len(prompts), step):
            batch = list(prompts[i : i + step])
            imgs = self._checked(self.pipe.generate(batch, n=n, seed=self._seed(len(batch) * n), **self.sampling),
                                 len(batch) * n, "generate")
            out += [imgs[j * n : (j + 1) * n] for j in range(len(batch))]
        return out

    def describe(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(images), self.ecfg.batch_size):
            imgs, qs = list(images[i : i + self.ecfg.batch_size]), list(questions[i : i + self.ecfg.batch_size])
            out += [str(a) for a in self._checked(self.pipe.describe(imgs, qs, seed=self._seed(len(imgs))),
                                                  len(imgs), "describe")]
        return out

    def edit(self, images: Sequence[Image.Image], instructions: Sequence[str]) -> list[Image.Image]:
        out: list[Image.Image] = []
        for i in range(0, len(images), self.ecfg.batch_size):
            imgs, ins = list(images[i : i + self.ecfg.batch_size]), list(instructions[i : i + self.ecfg.batch_size])
            out += self._checked(self.pipe.edit(imgs, ins, seed=self._seed(len(imgs)), **self.sampling),
                                 len(imgs), "edit")
        return out

    # ---------------------------------------------------------------- ceilings and floors

    @property
    def ceiling_source(self) -> str:
        return "ground truth through the visual tokenizer" if self.tokenizer is not None else "ground truth (no visual tokenizer)"

    def ceiling_images(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        if self.tokenizer is None:
            return list(images)
        return roundtrip(self.tokenizer, images, self.ecfg.batch_size)[0]

    @property
    def model_uncond(self) -> bool:
        return all(hasattr(self.pipe, a) for a in ("sample_image_tokens", "decode_codes", "layout"))

    @property
    def floor_source(self) -> str:
        return "the model's unconditional samples" if self.model_uncond else "renders of random training-distribution scenes"

    def unconditional(self, count: int) -> list[Image.Image] | None:
        """The model's own samples without a text condition (cached, grown on demand)."""
        if not self.model_uncond:
            return None
        have = self._uncond or []
        if len(have) < count:
            lay = self.pipe.layout
            base = self.ecfg.seed  # block 0: apart from every benchmark's conditional samples
            kw = {k: v for k, v in self.sampling.items() if k != "cfg_scale"}
            for i in range(len(have), count, self.ecfg.batch_size):
                k = min(self.ecfg.batch_size, count - i)
                codes = self.pipe.sample_image_tokens([[lay.bos, lay.uncond, lay.boi]] * k, cfg_scale=1.0,
                                                      seed=[base + i + j for j in range(k)], **kw)
                have = have + list(self.pipe.decode_codes(codes))
            self._uncond = have
        return have[:count]

    def prior_scene_images(self, name: str, count: int) -> list[Image.Image]:
        rng = random.Random(f"floor:{self.cfg.eval.prompts.seed}:{name}")
        return [shapes.render(shapes.random_scene(rng, self.world), self.world) for _ in range(count)]

    def floor_images(self, name: str, count: int) -> list[Image.Image]:
        return self.unconditional(count) or self.prior_scene_images(name, count)


# ---------------------------------------------------------------------------- benchmarks


def _flatten(samples: list[list[Image.Image]], refs: list) -> tuple[list[Image.Image], list]:
    imgs = [im for group in samples for im in group]
    return imgs, [r for r, group in zip(refs, samples) for _ in group]


def _rows(items, samples, per_sample, gts, ceils, ceil_per, keep: Callable[[dict], bool], limit: int) -> Grid:
    grid = Grid("", ["ground truth", "ceiling"] + [f"sample {k + 1}" for k in range(len(samples[0]) if samples else 0)])
    k = 0
    for idx, (item, group) in enumerate(zip(items, samples)):
        flags = per_sample[k : k + len(group)]
        k += len(group)
        if keep(item) and len(grid.rows) < limit:
            grid.rows.append([(gts[idx], None), (ceils[idx], ceil_per[idx]), *zip(group, flags)])
            grid.captions.append(item.get("prompt") or item.get("instruction", ""))
    return grid


def _score_generation(r: Runner, set_name: str, refs: list[str], flag: str):
    """Samples, ground truth, ceiling and floor of one text-to-image benchmark, scored alike."""
    items = r.sets[set_name]
    m = load(f"shapes_{set_name}")
    samples = r.generate([i["prompt"] for i in items])
    imgs, flat_refs = _flatten(samples, refs)
    scores = m.compute(predictions=imgs, references=flat_refs, world=r.world, return_per_sample=True)
    per = [s[flag] for s in scores.pop("per_sample")]
    gts = [render(i["scene"], r.world) for i in items]
    ceils = r.ceiling_images(gts)
    ceiling = m.compute(predictions=ceils, references=refs, world=r.world, return_per_sample=True)
    ceil_per = [s[flag] for s in ceiling.pop("per_sample")]
    floor = m.compute(predictions=r.floor_images(set_name, len(items)), references=refs, world=r.world)
    return items, samples, scores, per, gts, ceils, ceiling, ceil_per, floor


def bench_geneval(r: Runner) -> BenchResult:
    refs = [as_reference({"category": i["category"], "scene": i["scene"]}) for i in r.sets["geneval"]]
    items, samples, scores, per, gts, ceils, ceiling, ceil_per, floor = _score_generation(r, "geneval", refs, "correct")
    grids = []
    for cat in dict.fromkeys(i["category"] for i in items):
        g = _rows(items, samples, per, gts, ceils, ceil_per, lambda i, c=cat: i["category"] == c, r.ecfg.grid_rows)
        g.name = f"geneval_{cat}"
        grids.append(g)
    return BenchResult(scores, ceiling, floor, grids)


def bench_wise(r: Runner) -> BenchResult:
    refs = [as_reference(i["scene"]) for i in r.sets["wise"]]
    items, samples, scores, per, gts, ceils, ceiling, ceil_per, floor = _score_generation(r, "wise", refs, "match")
    g = _rows(items, samples, per, gts, ceils, ceil_per, lambda i: True, r.ecfg.grid_rows)
    g.name = "wise"
    return BenchResult(scores, ceiling, floor, [g])


def bench_edit(r: Runner) -> BenchResult:
    items = r.sets["edit"]
    refs = [as_reference({k: i[k] for k in ("source_scene", "target_scene", "op")}) for i in items]
    m = load("shapes_edit")
    kw = {"world": r.world, "tolerance": r.ecfg.pq_tolerance}
    sources = [render(i["source_scene"], r.world) for i in items]
    outputs = r.edit(sources, [i["instruction"] for i in items])
    scores = m.compute(predictions=outputs, references=refs, return_per_sample=True, **kw)
    per = [bool(s["fulfilled"]) for s in scores.pop("per_sample")]
    targets = [render(i["target_scene"], r.world) for i in items]
    ceils = r.ceiling_images(targets)
    ceiling = m.compute(predictions=ceils, references=refs, return_per_sample=True, **kw)
    ceil_per = [bool(s["fulfilled"]) for s in ceiling.pop("per_sample")]
    floor = m.compute(predictions=sources, references=refs, **kw)  # the edit that ignores its instruction
    grids = []
    for op in dict.fromkeys(i["op"] for i in items):
        g = Grid(f"edit_{op}", ["source", "target", "ceiling", "output"])
        for idx, i in enumerate(items):
            if i["op"] == op and len(g.rows) < r.ecfg.grid_rows:
                g.rows.append([(sources[idx], None), (targets[idx], None), (ceils[idx], ceil_per[idx]),
                               (outputs[idx], per[idx])])
                g.captions.append(i["instruction"])
        grids.append(g)
    return BenchResult(scores, ceiling, floor, grids, info={"floor": "source image returned unchanged"})


def bench_understanding(r: Runner) -> BenchResult:
    grid_n = r.world.grid
    vqa, cap = r.sets["vqa"], r.sets["caption"]
    mv, mc = load("understanding", "vqa"), load("understanding", "caption")
    # VQA
    v_imgs = [render(i["scene"], r.world) for i in vqa]
    questions = [i["question"] for i in vqa]
    answers = r.describe(v_imgs, questions)
    refs = [i["answer"] for i in vqa]
    scores = mv.compute(predictions=answers, references=refs, questions=questions, return_per_sample=True)
    v_per = [s["correct"] for s in scores.pop("per_sample")]
    v_ceil = [answer_from_scene(q, parse(im, r.world), grid_n) for q, im in zip(questions, r.ceiling_images(v_imgs))]
    v_floor = [prior_answer(r.prior["vqa"], q) for q in questions]
    ceiling = mv.compute(predictions=v_ceil, references=refs, questions=questions)
    floor = mv.compute(predictions=v_floor, references=refs, questions=questions)
    # captions
    c_imgs = [render(i["scene"], r.world) for i in cap]
    c_refs = [as_reference(i["scene"]) for i in cap]
    captions = r.describe(c_imgs, [i["question"] for i in cap])
    c_scores = mc.compute(predictions=captions, references=c_refs, grid=grid_n, return_per_sample=True)
    c_per = [s["f1"] >= 1.0 for s in c_scores.pop("per_sample")]
    c_ceil = [shapes.caption(parse(im, r.world), grid_n) for im in r.ceiling_images(c_imgs)]
    rng = random.Random(f"floor:{r.cfg.eval.prompts.seed}:caption")
    c_floor = [shapes.caption(shapes.random_scene(rng, r.world), grid_n) for _ in cap]
    scores.update(c_scores)
    ceiling.update(mc.compute(predictions=c_ceil, references=c_refs, grid=grid_n))
    floor.update(mc.compute(predictions=c_floor, references=c_refs, grid=grid_n))
    g = Grid("understanding_vqa", ["image"])
    for im, ok in list(zip(v_imgs, v_per))[: r.ecfg.grid_rows]:
        g.rows.append([(im, ok)])
    g.captions = [f"{q} -> {a!r} (ref {ref!r})" for q, a, ref in zip(questions, answers, refs)][: r.ecfg.grid_rows]
    gc = Grid("understanding_caption", ["image"])
    for im, ok in list(zip(c_imgs, c_per))[: r.ecfg.grid_rows]:
        gc.rows.append([(im, ok)])
    gc.captions = [f"{c!r}" for c in captions][: r.ecfg.grid_rows]
    examples = [{"task": "vqa", "question": q, "answer": a, "reference": ref, "correct": ok}
                for q, a, ref, ok in zip(questions, answers, refs, v_per)][: 4 * r.ecfg.grid_rows]
    examples += [{"task": "caption", "question": i["question"], "answer": c, "reference": i["caption"], "correct": ok}
                 for i, c, ok in zip(cap, captions, c_per)][: 2 * r.ecfg.grid_rows]
    return BenchResult(scores, ceiling, floor, [g, gc], examples,
                       info={"floor": "majority answer per question type; captions of random scenes"})


def bench_fmnist(r: Runner) -> BenchResult:
    from arm.eval.fmnist import answer_from_label, load_or_train, load_split

    judge = load_or_train(r.ecfg.fmnist)
    pixels, _ = load_split(r.ecfg.fmnist.root, "t10k")
    gen, und = r.sets["fmnist_gen"], r.sets["fmnist_und"]
    mg, mu = load("fmnist", "generation"), load("fmnist", "understanding")
    labels = [i["label"] for i in gen]
    samples = r.generate([i["prompt"] for i in gen])
    imgs, flat_labels = _flatten(samples, labels)
    scores = mg.compute(predictions=imgs, references=flat_labels, judge=judge, return_per_sample=True)
    per = [s["correct"] for s in scores.pop("per_sample")]
    gts = fmnist_images(pixels, [i["t10k_index"] for i in gen])
    ceils = r.ceiling_images(gts)
    ceiling = mg.compute(predictions=ceils, references=labels, judge=judge, return_per_sample=True)
    ceil_per = [s["correct"] for s in ceiling.pop("per_sample")]
    floor_imgs = r.unconditional(len(gen))
    if floor_imgs is None:  # prior samples: real t10k images of random classes
        rng = random.Random(f"floor:{r.cfg.eval.prompts.seed}:fmnist")
        floor_imgs = fmnist_images(pixels, [rng.randrange(len(pixels)) for _ in gen])
    floor = mg.compute(predictions=floor_imgs, references=labels, judge=judge)
    # understanding
    u_imgs = fmnist_images(pixels, [i["t10k_index"] for i in und])
    questions, refs, kinds = [i["question"] for i in und], [i["answer"] for i in und], [i["kind"] for i in und]
    answers = r.describe(u_imgs, questions)
    u = mu.compute(predictions=answers, references=refs, kinds=kinds, return_per_sample=True)
    u.pop("per_sample")
    read = judge.predict(r.ceiling_images(u_imgs))
    u_ceil = [answer_from_label(q, int(k)) for q, k in zip(questions, read)]
    u_floor = [r.prior["fmnist"][k] for k in kinds]
    scores.update(u)
    ceiling.update(mu.compute(predictions=u_ceil, references=refs, kinds=kinds))
    floor.update(mu.compute(predictions=u_floor, references=refs, kinds=kinds))
    g = _rows(gen, samples, per, gts, ceils, ceil_per, lambda i: True, len(gen))
    # one row per class, so the grid shows every class
    seen, rows, caps = set(), [], []
    for row, cap, item in zip(g.rows, g.captions, gen):
        if item["label"] not in seen:
            seen.add(item["label"])
            rows.append(row)
            caps.append(cap)
    g.name, g.rows, g.captions = "fmnist_generation", rows, caps
    examples = [{"task": "fmnist", "question": q, "answer": a, "reference": ref, "correct": exact_match(a, ref)}
                for q, a, ref in zip(questions, answers, refs)][: 2 * r.ecfg.grid_rows]
    return BenchResult(scores, ceiling, floor, [g], examples,
                       info={"judge": r.ecfg.fmnist.classifier, "judge_test_accuracy": round(judge.test_accuracy, 6)})


def bench_tokenizer(r: Runner) -> BenchResult | None:
    from arm.eval.fmnist import load_split

    if r.tokenizer is None:
        return None
    m = load("tokenizer")
    scenes = [i["scene"] for name in ("geneval", "caption", "vqa") for i in r.sets[name]]
    gts = [render(s, r.world) for s in scenes]
    recons, codes = roundtrip(r.tokenizer, gts, r.ecfg.batch_size)
    size = getattr(r.tokenizer, "codebook_size", None)
    scores = m.compute(predictions=recons, references=gts, codes=codes.numpy(), codebook_size=size,
                       psnr_cap=r.ecfg.psnr_cap)
    scores["oracle_exact"] = sum(parse(im, r.world) == shapes.Scene.from_json(s) for im, s in zip(recons, scenes)) / len(scenes)
    pixels, _ = load_split(r.ecfg.fmnist.root, "t10k")
    f_gts = fmnist_images(pixels, [i["t10k_index"] for i in r.sets["fmnist_gen"]])
    f_recons, f_codes = roundtrip(r.tokenizer, f_gts, r.ecfg.batch_size)
    f = m.compute(predictions=f_recons, references=f_gts, codes=f_codes.numpy(), codebook_size=size,
                  psnr_cap=r.ecfg.psnr_cap)
    scores.update({f"fmnist_{k}": v for k, v in f.items()})
    g = Grid("tokenizer", ["original", "reconstruction"])
    for a, b in list(zip(gts, recons))[: r.ecfg.grid_rows // 2] + list(zip(f_gts, f_recons))[: r.ecfg.grid_rows // 2]:
        g.rows.append([(a, None), (b, None)])
        g.captions.append("")
    return BenchResult(scores, grids=[g])


BENCH_ORDER = ("shapes_geneval", "shapes_wise", "shapes_edit", "understanding", "fmnist", "tokenizer")
BENCHES: dict[str, Callable[[Runner], BenchResult | None]] = {
    "shapes_geneval": bench_geneval,
    "shapes_wise": bench_wise,
    "shapes_edit": bench_edit,
    "understanding": bench_understanding,
    "fmnist": bench_fmnist,
    "tokenizer": bench_tokenizer,
}


# ---------------------------------------------------------------------------- entry point


def load_pipeline(cfg: ArmConfig, model_dir: str | Path) -> Pipeline:
    from arm.sample.pipeline import ArmPipeline

    try:
        pipe = ArmPipeline.from_pretrained(model_dir, config=cfg.sampling)
    except (OSError, ValueError) as e:
        raise EvalError(f"model dir {model_dir}: cannot load it: {e}") from e
    if pipe.visual is None:
        raise EvalError(f"model dir {model_dir}: manifest.json names no visual tokenizer (images cannot be read or drawn)")
    return pipe


def find_tokenizer(pipeline) -> Any:
    for name in ("visual", "visual_tokenizer"):
        tok = getattr(pipeline, name, None)
        if tok is not None and hasattr(tok, "encode") and hasattr(tok, "decode"):
            return tok
    return None


def metrics_path(cfg: ArmConfig, name: str) -> Path:
    return Path(cfg.eval.metrics_dir) / f"eval_{name}.json"


def evaluate(
    cfg: ArmConfig,
    model_dir: str | Path | None,
    *,
    pipeline: Pipeline | None = None,
    tokenizer: Any = None,
    name: str | None = None,
    prompts_dir: str | Path | None = None,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
) -> dict:
    """Runs `cfg.eval.benchmarks`, writes metrics/eval_<name>.json and reports/eval_<name>/.

    `pipeline` (any object with generate/describe/edit) replaces loading `model_dir`;
    `tokenizer` (encode/decode) gives the ceilings, by default the pipeline's own.
    """
    if pipeline is None:
        if model_dir is None or not Path(model_dir).is_dir():
            raise EvalError(f"model dir {model_dir}: not found")
        pipeline = load_pipeline(cfg, model_dir)
    name = name or (Path(model_dir).name if model_dir is not None else None)
    if not name:
        raise EvalError("evaluate: give a model_dir or a name for the results")
    for method in ("generate", "describe", "edit"):
        if not callable(getattr(pipeline, method, None)):
            raise EvalError(f"pipeline {type(pipeline).__name__} has no {method}() method")
    logger = logger or log
    tokenizer = tokenizer if tokenizer is not None else find_tokenizer(pipeline)
    sets, prior, manifest = load_prompt_sets(cfg, prompts_dir)
    runner = Runner(cfg, pipeline, tokenizer, sets, prior)

    results: dict[str, BenchResult] = {}
    skipped: dict[str, str] = {}
    timings: dict[str, float] = {}
    for bench in cfg.eval.benchmarks:
        t0 = time.perf_counter()
        runner.stream(bench)
        res = BENCHES[bench](runner)
        timings[bench] = round(time.perf_counter() - t0, 2)
        logger.info("evaluate %s: %s done in %.1f s", name, bench, timings[bench])
        if res is None:
            skipped[bench] = "no visual tokenizer"
        else:
            results[bench] = res
    prompts_dir = Path(prompts_dir or cfg.eval.prompts.dir)
    metrics = {
        "model": name,
        "model_dir": str(model_dir) if model_dir is not None else None,
        "preset": cfg.preset,
        "prompts": {"dir": str(prompts_dir), "seed": manifest["seed"], "counts": manifest["counts"],
                    "manifest_sha256": sha256_file(prompts_dir / "manifest.json"),
                    "training_overlap": manifest["training_overlap"]},
        "sampling": {"samples_per_prompt": cfg.eval.samples_per_prompt, **runner.sampling},
        "ceiling_source": runner.ceiling_source,
        "floor_source": runner.floor_source,
        "scores": {b: _round(r.scores) for b, r in results.items()},
        "ceiling": {b: _round(r.ceiling) for b, r in results.items() if r.ceiling is not None},
        "floor": {b: _round(r.floor) for b, r in results.items() if r.floor is not None},
        "info": {b: r.info for b, r in results.items() if r.info},
        "skipped": skipped,
    }
    atomic_write_json(metrics_path(cfg, name), metrics)
    from arm.eval.report import write_report

    write_report(Path(cfg.eval.reports_dir) / f"eval_{name}", metrics, results, timings)
    return metrics


def _round(d: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in d.items()}
