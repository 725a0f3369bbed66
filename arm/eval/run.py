"""`arm evaluate`: every benchmark on one model, on held-out items, by an independent judge.

Items come from the held-out part of the world (arm/eval/prompts.py); every score is given on all
items and per split (`novel/<metric>`, `novel_composition/<metric>`), with a 95% interval from a
bootstrap over items (`intervals`). Generated and edited images are read by the learned judge
(arm/eval/judge.py), which RL never optimises: its scores are the headline and what the gate
decides on; the oracle's reading (what RL's rewards use) is reported as `oracle/<metric>`, with
the two judges' agreement.

References, fixed and independent of the candidate: the *reconstruction* reference is the same
benchmark on ground-truth images passed through the visual tokenizer (what an AR model over
these codes could at best reach, as read by the same judge); the *floor* is the best of
candidate-free answers: blank and constant-colour images for generation, those and the source
returned unchanged for editing, the majority answer per question (from training scenes) for
understanding, captions of random training scenes for captioning.

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

from arm.config import PALETTE, ArmConfig
from arm.data import holdout, shapes
from arm.data.oracle import parse
from arm.eval.answers import answer_from_scene, exact_match
from arm.eval.images import fmnist_images, render, roundtrip
from arm.eval.modules import as_reference, load
from arm.eval.pope import score_pope, summarize_pope
from arm.eval.scoring import summarize_captions, summarize_edit, summarize_geneval, summarize_vqa, summarize_wise
from arm.eval.prompts import load_prompt_sets, prior_answer
from arm.io import atomic_write_json, sha256_file
from arm.progress import Bar, progress_bar

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
    reconstruction: dict[str, float] | None = None
    floor: dict[str, float] | None = None
    grids: list[Grid] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)  # text outputs shown in the report
    info: dict[str, Any] = field(default_factory=dict)
    intervals: dict[str, list[float]] = field(default_factory=dict)  # metric -> 95% bootstrap interval


class Runner:
    """Calls the pipeline in fixed batches with per-output seeds, so results do not depend on batching;
    `bar` counts the pipeline's outputs (the run's progress)."""

    def __init__(self, cfg: ArmConfig, pipeline: Pipeline, tokenizer, sets: dict, prior: dict, bar: Bar):
        self.cfg, self.ecfg, self.world = cfg, cfg.eval, cfg.world
        self.pipe, self.tokenizer, self.sets, self.prior = pipeline, tokenizer, sets, prior
        self.sampling = {k: v for k, v in self.ecfg.sampling.model_dump().items() if v is not None}
        self._judge = None
        self._offset = 0
        self.bar = bar

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
        self.bar.update(want)
        return out

    def generate(self, prompts: Sequence[str], aspect_ratios: Sequence[str] | None = None) -> list[list[Image.Image]]:
        """`samples_per_prompt` images per prompt; `aspect_ratios` (width:height per prompt) draws
        each at its ratio, in batches of one ratio (a square-only pipeline is never passed one)."""
        n = self.ecfg.samples_per_prompt
        step = max(1, self.ecfg.batch_size // n)
        ratios = list(aspect_ratios) if aspect_ratios is not None else [None] * len(prompts)
        out: list[list[Image.Image] | None] = [None] * len(prompts)
        for ratio in dict.fromkeys(ratios):
            members = [i for i, a in enumerate(ratios) if a == ratio]
            kw = {} if ratio is None else {"aspect_ratio": ratio}
            for k in range(0, len(members), step):
                batch = members[k : k + step]
                imgs = self._checked(self.pipe.generate([prompts[i] for i in batch], n=n, seed=self._seed(len(batch) * n),
                                                        **self.sampling, **kw), len(batch) * n, "generate")
                for j, i in enumerate(batch):
                    out[i] = imgs[j * n : (j + 1) * n]
        return out  # type: ignore[return-value]

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

    # ---------------------------------------------------------------- judge and references

    @property
    def judge(self):
        """The learned scene judge (trained once per settings and cached)."""
        if self._judge is None:
            from arm.eval.judge import load_or_train

            self._judge = load_or_train(self.ecfg.judge, self.world)
        return self._judge

    @property
    def judge_report(self) -> dict | None:
        """The judge's own accuracy (held-out and corrupted renders), once a benchmark has used it."""
        return None if self._judge is None else self._judge.report

    @property
    def reconstruction_source(self) -> str:
        return "ground truth through the visual tokenizer" if self.tokenizer is not None else "ground truth (no visual tokenizer)"

    def reconstructions(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        """Each image through the visual tokenizer, in batches of one size (one aspect bucket)."""
        if self.tokenizer is None:
            return list(images)
        out: list[Image.Image | None] = [None] * len(images)
        for size in dict.fromkeys(im.size for im in images):
            members = [i for i, im in enumerate(images) if im.size == size]
            for i, rec in zip(members, roundtrip(self.tokenizer, [images[i] for i in members], self.ecfg.batch_size)[0]):
                out[i] = rec
        return out  # type: ignore[return-value]

    def constant_images(self, count: int, sizes: Sequence[tuple[int, int]] | None = None) -> dict[str, list[Image.Image]]:
        """Candidate-free images: blank, and one flat image per world colour; square, or one of each
        (width, height) in `sizes` (the items' own shapes)."""
        sizes = list(sizes) if sizes is not None else [(self.world.image_size, self.world.image_size)] * count
        fills = {"blank": tuple(self.world.background)} | {c: PALETTE[c] for c in self.world.colors}
        return {name: [Image.new("RGB", size, fill) for size in sizes] for name, fill in fills.items()}


# ---------------------------------------------------------------------------- benchmarks


def _flatten(samples: list[list[Image.Image]], refs: list) -> tuple[list[Image.Image], list]:
    imgs = [im for group in samples for im in group]
    return imgs, [r for r, group in zip(refs, samples) for _ in group]


def _rows(items, samples, per_sample, gts, recons, recon_per, keep: Callable[[dict], bool], limit: int) -> Grid:
    grid = Grid("", ["ground truth", "reconstruction"] + [f"sample {k + 1}" for k in range(len(samples[0]) if samples else 0)])
    k = 0
    for idx, (item, group) in enumerate(zip(items, samples)):
        flags = per_sample[k : k + len(group)]
        k += len(group)
        if keep(item) and len(grid.rows) < limit:
            grid.rows.append([(gts[idx], None), (recons[idx], recon_per[idx]), *zip(group, flags)])
            grid.captions.append(f"[{item.get('split', '')}] " + (item.get("prompt") or item.get("instruction", "")))
    return grid


# ------------------------------------------------------------------ splits, intervals, judges


def _group(rows: list[dict], sizes: list[int]) -> list[list[dict]]:
    """Per-sample rows back into one group per item (an item may have several samples)."""
    out, k = [], 0
    for n in sizes:
        out.append(rows[k : k + n])
        k += n
    return out


def _split_groups(groups: list[list[dict]], splits: list[str | None]) -> dict[str, list[list[dict]]]:
    """'' (every item) and each split present, as prefixes of the metric keys."""
    out = {"": groups}
    for split in sorted({s for s in splits if s}):
        out[f"{split}/"] = [g for g, s in zip(groups, splits) if s == split]
    return out


def summarize_splits(groups: list[list[dict]], splits: list[str | None], summarize: Callable) -> dict[str, float]:
    return {f"{prefix}{k}": v for prefix, gs in _split_groups(groups, splits).items()
            for k, v in summarize([row for g in gs for row in g]).items()}


def split_intervals(groups: list[list[dict]], splits: list[str | None], summarize: Callable, seed: int) -> dict[str, list[float]]:
    """95% intervals from a bootstrap over items (an item's samples are resampled together)."""
    from arm.eval.intervals import summary_intervals

    flat = lambda gs: summarize([row for g in gs for row in g])  # noqa: E731
    return {f"{prefix}{k}": [round(float(lo), 6), round(float(hi), 6)]
            for prefix, gs in _split_groups(groups, splits).items() if gs
            for k, (lo, hi) in summary_intervals(gs, flat, seed=seed).items()}


@dataclass
class Judged:
    """One benchmark's images read by the learned judge (headline) and by the oracle."""

    scores: dict[str, float]
    intervals: dict[str, list[float]]
    judge_rows: list[dict]


def judge_both(r: Runner, module, images: list[Image.Image], refs: list, sizes: list[int], splits: list,
               summarize: Callable, **kw) -> Judged:
    j = module.compute(predictions=images, references=refs, reader=r.judge.read, return_per_sample=True, **kw)["per_sample"]
    o = module.compute(predictions=images, references=refs, return_per_sample=True, **kw)["per_sample"]
    jg, og = _group(j, sizes), _group(o, sizes)
    scores = summarize_splits(jg, splits, summarize)
    scores |= {f"oracle/{k}": v for k, v in summarize_splits(og, splits, summarize).items()}
    scores["judge_agreement"] = sum(a["parsed"] == b["parsed"] for a, b in zip(j, o)) / len(j)
    intervals = split_intervals(jg, splits, summarize, r.ecfg.seed)
    intervals |= {f"oracle/{k}": v for k, v in split_intervals(og, splits, summarize, r.ecfg.seed).items()}
    return Judged(scores, intervals, j)


def reference_scores(r: Runner, module, images: list[Image.Image], refs: list, splits: list, summarize: Callable,
                     **kw) -> dict[str, float]:
    """A reference image set (one per item) read by the judge, summarised per split."""
    rows = module.compute(predictions=images, references=refs, reader=r.judge.read, return_per_sample=True, **kw)["per_sample"]
    return summarize_splits([[row] for row in rows], splits, summarize)


def best_of(*summaries: dict[str, float]) -> dict[str, float]:
    """Per metric, the best of several candidate-free references (every metric is higher-is-better)."""
    return {k: max(s[k] for s in summaries if k in s) for k in dict.fromkeys(k for s in summaries for k in s)}


def _score_generation(r: Runner, set_name: str, refs: list[str], flag: str, summarize: Callable,
                      module: str | None = None):
    """Samples, ground truth, reconstruction reference and floor of one text-to-image benchmark, scored alike.
    Items with an `aspect_ratio` are drawn at it and their references have their own shapes."""
    items = r.sets[set_name]
    splits = [i.get("split") for i in items]
    m = load(module or f"shapes_{set_name}")
    ratios = [i["aspect_ratio"] for i in items] if any("aspect_ratio" in i for i in items) else None
    samples = r.generate([i["prompt"] for i in items], ratios)
    imgs, flat_refs = _flatten(samples, refs)
    judged = judge_both(r, m, imgs, flat_refs, [len(g) for g in samples], splits, summarize, world=r.world)
    per = [s[flag] for s in judged.judge_rows]
    gts = [render(i["scene"], r.world) for i in items]
    recons = r.reconstructions(gts)
    recon_rows = m.compute(predictions=recons, references=refs, world=r.world, reader=r.judge.read,
                           return_per_sample=True)["per_sample"]
    recon = summarize_splits([[row] for row in recon_rows], splits, summarize)
    floor = best_of(*(reference_scores(r, m, fill, refs, splits, summarize, world=r.world)
                      for fill in r.constant_images(len(items), [im.size for im in gts]).values()))
    res = BenchResult(judged.scores, recon, floor, intervals=judged.intervals,
                      info={"floor": "best of a blank and a flat image per world colour"})
    return items, samples, per, gts, recons, [row[flag] for row in recon_rows], res


def bench_geneval(r: Runner) -> BenchResult:
    refs = [as_reference({"category": i["category"], "scene": i["scene"]}) for i in r.sets["geneval"]]
    items, samples, per, gts, recons, recon_per, res = _score_generation(r, "geneval", refs, "correct", summarize_geneval)
    for cat in dict.fromkeys(i["category"] for i in items):
        g = _rows(items, samples, per, gts, recons, recon_per, lambda i, c=cat: i["category"] == c, r.ecfg.grid_rows)
        g.name = f"geneval_{cat}"
        res.grids.append(g)
    return res


def bench_geneval_aspect(r: Runner) -> BenchResult | str:
    """GenEval-style prompts on the world's non-square scene shapes, each drawn at its scene's
    aspect ratio (the tokenizer's aspect buckets); scored as `shapes_geneval`, plus per shape."""
    items = r.sets["geneval_aspect"]
    if not items:
        return "world.grids is empty: the world has no non-square scenes to draw"
    refs = [as_reference({"category": i["category"], "scene": i["scene"]}) for i in items]
    items, samples, per, gts, recons, recon_per, res = _score_generation(r, "geneval_aspect", refs, "correct",
                                                                         summarize_geneval, module="shapes_geneval")
    shape_of = [f"{i['grid'][0]}x{i['grid'][1]}" for i in items]
    per_item = [[float(x) for x in g] for g in _group(per, [len(g) for g in samples])]  # the judge's verdicts
    for shape in dict.fromkeys(shape_of):
        picked = [sum(g) / len(g) for g, s in zip(per_item, shape_of) if s == shape]
        res.scores[f"{shape}/overall"] = sum(picked) / len(picked)
        from arm.eval.intervals import bootstrap_interval

        res.intervals[f"{shape}/overall"] = [round(v, 6) for v in bootstrap_interval(picked, seed=r.ecfg.seed)]
        g = _rows(items, samples, per, gts, recons, recon_per, lambda i, s=shape: f"{i['grid'][0]}x{i['grid'][1]}" == s,
                  r.ecfg.grid_rows)
        g.name = f"geneval_aspect_{shape}"
        res.grids.append(g)
    return res


def bench_wise(r: Runner) -> BenchResult:
    refs = [as_reference(i["scene"]) for i in r.sets["wise"]]
    items, samples, per, gts, recons, recon_per, res = _score_generation(r, "wise", refs, "match", summarize_wise)
    g = _rows(items, samples, per, gts, recons, recon_per, lambda i: True, r.ecfg.grid_rows)
    g.name = "wise"
    res.grids.append(g)
    return res


def bench_edit(r: Runner) -> BenchResult:
    items = r.sets["edit"]
    splits = [i.get("split") for i in items]
    refs = [as_reference({k: i[k] for k in ("source_scene", "target_scene", "op")}) for i in items]
    m = load("shapes_edit")
    kw = {"world": r.world, "tolerance": r.ecfg.pq_tolerance}
    sources = [render(i["source_scene"], r.world) for i in items]
    outputs = r.edit(sources, [i["instruction"] for i in items])
    judged = judge_both(r, m, outputs, refs, [1] * len(items), splits, summarize_edit, **kw)
    per = [bool(s["success"]) for s in judged.judge_rows]
    targets = [render(i["target_scene"], r.world) for i in items]
    recons = r.reconstructions(targets)
    recon_rows = m.compute(predictions=recons, references=refs, reader=r.judge.read, return_per_sample=True, **kw)["per_sample"]
    recon = summarize_splits([[row] for row in recon_rows], splits, summarize_edit)
    recon_per = [bool(s["success"]) for s in recon_rows]
    fills = r.constant_images(len(items)) | {"source": sources}  # the edit that ignores its instruction
    floor = best_of(*(reference_scores(r, m, imgs, refs, splits, summarize_edit, **kw) for imgs in fills.values()))
    grids = []
    for op in dict.fromkeys(i["op"] for i in items):
        g = Grid(f"edit_{op}", ["source", "target", "reconstruction", "output"])
        for idx, i in enumerate(items):
            if i["op"] == op and len(g.rows) < r.ecfg.grid_rows:
                g.rows.append([(sources[idx], None), (targets[idx], None), (recons[idx], recon_per[idx]),
                               (outputs[idx], per[idx])])
                g.captions.append(f"[{i['split']}] {i['instruction']}")
        grids.append(g)
    return BenchResult(judged.scores, recon, floor, grids, intervals=judged.intervals,
                       info={"floor": "best of the source returned unchanged, a blank and a flat image per colour"})


def bench_understanding(r: Runner) -> BenchResult:
    grid_n = r.world.grid
    vqa, cap = r.sets["vqa"], r.sets["caption"]
    v_splits, c_splits = [i.get("split") for i in vqa], [i.get("split") for i in cap]
    mv, mc = load("understanding", "vqa"), load("understanding", "caption")
    seed = r.ecfg.seed

    def text_scores(module, preds, refs, splits, summarize, **kw) -> tuple[dict, list[dict]]:
        rows = module.compute(predictions=preds, references=refs, return_per_sample=True, **kw)["per_sample"]
        return summarize_splits([[x] for x in rows], splits, summarize), rows

    # VQA
    v_imgs = [render(i["scene"], r.world) for i in vqa]
    questions = [i["question"] for i in vqa]
    answers = r.describe(v_imgs, questions)
    refs = [i["answer"] for i in vqa]
    scores, v_rows = text_scores(mv, answers, refs, v_splits, summarize_vqa, questions=questions)
    intervals = split_intervals([[x] for x in v_rows], v_splits, summarize_vqa, seed)
    v_per = [x["correct"] for x in v_rows]
    v_recon = [answer_from_scene(q, parse(im, r.world), grid_n) for q, im in zip(questions, r.reconstructions(v_imgs))]
    v_floor = [prior_answer(r.prior["vqa"], q) for q in questions]
    recon = text_scores(mv, v_recon, refs, v_splits, summarize_vqa, questions=questions)[0]
    floor = text_scores(mv, v_floor, refs, v_splits, summarize_vqa, questions=questions)[0]
    # captions
    c_imgs = [render(i["scene"], r.world) for i in cap]
    c_refs = [as_reference(i["scene"]) for i in cap]
    captions = r.describe(c_imgs, [i["question"] for i in cap])
    c_scores, c_rows = text_scores(mc, captions, c_refs, c_splits, summarize_captions, grid=grid_n)
    intervals |= split_intervals([[x] for x in c_rows], c_splits, summarize_captions, seed)
    c_per = [x["f1"] >= 1.0 for x in c_rows]
    c_recon = [shapes.caption(parse(im, r.world), grid_n) for im in r.reconstructions(c_imgs)]
    rng = random.Random(f"floor:{r.cfg.eval.prompts.seed}:caption")
    c_floor = [shapes.caption(holdout.training_scene(rng, r.world), grid_n) for _ in cap]
    scores.update(c_scores)
    recon.update(text_scores(mc, c_recon, c_refs, c_splits, summarize_captions, grid=grid_n)[0])
    floor.update(text_scores(mc, c_floor, c_refs, c_splits, summarize_captions, grid=grid_n)[0])
    # POPE: yes/no existence questions, items of one scene resampled together
    items = r.sets["pope"]
    if items:
        p_imgs = {i["scene_index"]: render(i["scene"], r.world) for i in items}
        p_questions = [i["question"] for i in items]
        p_answers = r.describe([p_imgs[i["scene_index"]] for i in items], p_questions)
        by_scene: dict[str, list[int]] = {}
        for k, i in enumerate(items):
            by_scene.setdefault(i["scene_index"], []).append(k)

        def pope_scores(preds: list[str]) -> tuple[dict, list[list[dict]], list]:
            rows = score_pope(preds, items)[1]
            groups = [[rows[k] for k in ks] for ks in by_scene.values()]
            splits = [items[ks[0]]["split"] for ks in by_scene.values()]
            return summarize_splits(groups, splits, summarize_pope), groups, splits

        p_scores, p_groups, p_splits = pope_scores(p_answers)
        scores.update(p_scores)
        intervals |= split_intervals(p_groups, p_splits, summarize_pope, seed)
        recon_imgs = dict(zip(p_imgs, r.reconstructions(list(p_imgs.values()))))
        recon.update(pope_scores([answer_from_scene(q, parse(recon_imgs[i["scene_index"]], r.world), grid_n)
                                  for q, i in zip(p_questions, items)])[0])
        floor.update(pope_scores([prior_answer(r.prior["vqa"], q) for q in p_questions])[0])
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
    return BenchResult(scores, recon, floor, [g, gc], examples, intervals=intervals,
                       info={"floor": "majority answer per question over training scenes; captions of random training scenes"})


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
    recons = r.reconstructions(gts)
    recon = mg.compute(predictions=recons, references=labels, judge=judge, return_per_sample=True)
    recon_per = [s["correct"] for s in recon.pop("per_sample")]
    floor = best_of(*({"generation_accuracy": mg.compute(predictions=fill, references=labels, judge=judge)["generation_accuracy"]}
                      for fill in r.constant_images(len(gen)).values()))
    accuracy = lambda rows: {"generation_accuracy": sum(x["correct"] for x in rows) / len(rows)}  # noqa: E731
    intervals = split_intervals(_group([{"correct": c} for c in per], [len(g) for g in samples]), [None] * len(gen),
                                accuracy, r.ecfg.seed)
    # understanding
    u_imgs = fmnist_images(pixels, [i["t10k_index"] for i in und])
    questions, refs, kinds = [i["question"] for i in und], [i["answer"] for i in und], [i["kind"] for i in und]
    answers = r.describe(u_imgs, questions)
    u = mu.compute(predictions=answers, references=refs, kinds=kinds, return_per_sample=True)
    u_rows = u.pop("per_sample")
    intervals |= split_intervals([[x] for x in u_rows], [None] * len(u_rows),
                                 lambda rows: {"vqa_accuracy": sum(x["correct"] for x in rows) / len(rows)}, r.ecfg.seed)
    read = judge.predict(r.reconstructions(u_imgs))
    u_recon = [answer_from_label(q, int(k)) for q, k in zip(questions, read)]
    u_floor = [r.prior["fmnist"][k] for k in kinds]
    scores.update(u)
    recon.update(mu.compute(predictions=u_recon, references=refs, kinds=kinds))
    floor.update(mu.compute(predictions=u_floor, references=refs, kinds=kinds))
    g = _rows(gen, samples, per, gts, recons, recon_per, lambda i: True, len(gen))
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
    return BenchResult(scores, recon, floor, [g], examples, intervals=intervals,
                       info={"judge": r.ecfg.fmnist.classifier, "judge_test_accuracy": round(judge.test_accuracy, 6),
                             "floor": "generation: best of a blank and flat images; understanding: majority answer per kind"})


def bench_tokenizer(r: Runner) -> BenchResult | None:
    from arm.eval.fmnist import load_split

    if r.tokenizer is None:
        return None
    m = load("tokenizer")
    scenes = [i["scene"] for name in ("geneval", "caption", "vqa") for i in r.sets[name]]
    gts = [render(s, r.world) for s in scenes]
    recons, codes = roundtrip(r.tokenizer, gts, r.ecfg.batch_size)
    size = getattr(r.tokenizer, "codebook_size", None)
    scores = m.compute(predictions=recons, references=gts, codes=codes.numpy(), codebook_size=size)
    scores["oracle_exact"] = sum(parse(im, r.world) == shapes.Scene.from_json(s) for im, s in zip(recons, scenes)) / len(scenes)
    pixels, _ = load_split(r.ecfg.fmnist.root, "t10k")
    f_gts = fmnist_images(pixels, [i["t10k_index"] for i in r.sets["fmnist_gen"]])
    f_recons, f_codes = roundtrip(r.tokenizer, f_gts, r.ecfg.batch_size)
    f = m.compute(predictions=f_recons, references=f_gts, codes=f_codes.numpy(), codebook_size=size)
    scores.update({f"fmnist_{k}": v for k, v in f.items()})
    g = Grid("tokenizer", ["original", "reconstruction"])
    for a, b in list(zip(gts, recons))[: r.ecfg.grid_rows // 2] + list(zip(f_gts, f_recons))[: r.ecfg.grid_rows // 2]:
        g.rows.append([(a, None), (b, None)])
        g.captions.append("")
    return BenchResult(scores, grids=[g])


# Appended, never inserted: a benchmark's seeds come from its position (Runner.stream).
BENCH_ORDER = ("shapes_geneval", "shapes_wise", "shapes_edit", "understanding", "fmnist", "tokenizer", "shapes_geneval_aspect")
BENCHES: dict[str, Callable[[Runner], BenchResult | str | None]] = {  # str: why it was skipped
    "shapes_geneval": bench_geneval,
    "shapes_geneval_aspect": bench_geneval_aspect,
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
    `tokenizer` (encode/decode) gives the reconstruction references, by default the pipeline's own.
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
    runner = Runner(cfg, pipeline, tokenizer, sets, prior, progress_bar(f"evaluate {name}", unit="output", logger=logger))

    results: dict[str, BenchResult] = {}
    skipped: dict[str, str] = {}
    timings: dict[str, float] = {}
    for bench in cfg.eval.benchmarks:
        t0 = time.perf_counter()
        runner.bar.set_postfix(benchmark=bench)
        runner.stream(bench)
        res = BENCHES[bench](runner)
        timings[bench] = round(time.perf_counter() - t0, 2)
        logger.info("evaluate %s: %s done in %.1f s", name, bench, timings[bench])
        if res is None:
            skipped[bench] = "no visual tokenizer"
        elif isinstance(res, str):
            skipped[bench] = res
        else:
            results[bench] = res
    runner.bar.close()
    prompts_dir = Path(prompts_dir or cfg.eval.prompts.dir)
    metrics = {
        "model": name,
        "model_dir": str(model_dir) if model_dir is not None else None,
        "preset": cfg.preset,
        "prompts": {"dir": str(prompts_dir), "seed": manifest["seed"], "counts": manifest["counts"],
                    "manifest_sha256": sha256_file(prompts_dir / "manifest.json"),
                    "training_overlap": manifest["training_overlap"]},
        "sampling": {"samples_per_prompt": cfg.eval.samples_per_prompt, **runner.sampling},
        "reconstruction_source": runner.reconstruction_source,
        "floor_source": "fixed candidate-free references (see info.<benchmark>.floor)",
        "judge": runner.judge_report,
        "scores": {b: _round(r.scores) for b, r in results.items()},
        "reconstruction": {b: _round(r.reconstruction) for b, r in results.items() if r.reconstruction is not None},
        "floor": {b: _round(r.floor) for b, r in results.items() if r.floor is not None},
        "intervals": {b: r.intervals for b, r in results.items() if r.intervals},
        "info": {b: r.info for b, r in results.items() if r.info},
        "skipped": skipped,
    }
    atomic_write_json(metrics_path(cfg, name), metrics)
    from arm.eval.report import write_report

    write_report(Path(cfg.eval.reports_dir) / f"eval_{name}", metrics, results, timings)
    return metrics


def _round(d: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in d.items()}
