"""Held-out prompt sets: fixed JSONL files under `eval.prompts.dir`, versioned with DVC.

Every item is drawn from `random.Random("eval:<seed>:<set>:<split>:<i>")` out of the held-out part
of the world (arm/data/holdout.py), which no training source, tokenizer data or RL prompt ever
draws: `novel` items are scenes (and so image-question pairs, edit sources, riddles) that
training never holds; `novel_composition` items hold an object whose attribute binding training
never shows. Each set has `eval.prompts.<set>` items per split, tagged with their `split`. The
manifest still measures the overlap with the training sources' texts, which must be zero.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from pathlib import Path

from arm.config import ArmConfig, ShapesSourceConfig, WorldConfig, shapes_of
from arm.data import holdout, shapes
from arm.data.holdout import HELD_OUT
from arm.data.shapes import Scene, ShapeObject
from arm.data.sources.fashion_mnist import CLASSES, QUESTION_KINDS
from arm.data.sources.fashion_mnist import caption as fmnist_caption
from arm.data.sources.fashion_mnist import question_answer
from arm.eval import overlap, pope
from arm.eval.answers import question_type
from arm.eval.checks import GENEVAL_CATEGORIES
from arm.eval.fmnist import load_split
from arm.io import atomic_path, atomic_write_json, atomic_write_text, sha256_file

SETS = ("geneval", "geneval_aspect", "wise", "edit", "vqa", "caption", "pope", "fmnist_gen", "fmnist_und")
# Written only when the world has items for them, and read as empty when absent: a square world's
# folder (manifest and checksums) stays what it was, so the gate still compares old and new scores.
OPTIONAL_SETS = ("geneval_aspect",)


class PromptSetError(ValueError):
    """A prompt set that is missing, stale or cannot be built; the message says which and why."""


def _rng(seed: int, name: str, i: int, split: str | None = None) -> random.Random:
    return random.Random(f"eval:{seed}:{name}:{split}:{i}" if split else f"eval:{seed}:{name}:{i}")


def geneval_categories(world: WorldConfig) -> list[str]:
    """The categories this world can express (two-object ones need room for two objects)."""
    two = world.max_objects >= 2 and world.grid * world.grid >= 2
    out = []
    for cat in GENEVAL_CATEGORIES:
        if cat in ("single_object", "colors") and world.min_objects > 1:
            continue
        if cat in ("two_object", "position", "counting") and not two:
            continue
        if cat == "color_attr" and not (two and len(world.kinds) >= 2 and len(world.colors) >= 2):
            continue
        out.append(cat)
    return out


def geneval_scene(rng: random.Random, world: WorldConfig, category: str, grid: tuple[int, int] | None = None) -> Scene:
    """A scene of `category` on the world's square, or on `grid` (rows, cols), one of its shapes."""
    rows, cols = grid or (world.grid, world.grid)
    cells = [(r, c) for r in range(rows) for c in range(cols)]
    if category in ("single_object", "colors"):
        n = 1
    elif category == "counting":
        n = rng.randint(max(2, world.min_objects), world.max_objects)
    else:
        n = 2
    kinds = [rng.choice(world.kinds)] * n if category == "counting" else None
    if kinds is None:
        distinct = category in ("two_object", "position", "color_attr") and len(world.kinds) >= n
        kinds = rng.sample(world.kinds, n) if distinct else [rng.choice(world.kinds) for _ in range(n)]
    colors = rng.sample(world.colors, n) if category == "color_attr" else [rng.choice(world.colors) for _ in range(n)]
    placed = rng.sample(cells, n)
    return Scene.of(
        (ShapeObject(r, c, kinds[j], colors[j], rng.choice(world.sizes)) for j, (r, c) in enumerate(placed)),
        shapes.canonical_grid(grid, world),
    )


def training_keys(cfg: ArmConfig) -> overlap.Keys:
    """Overlap keys of every record the configured shapes training sources produce."""
    from arm.data.sources.shapes import scene_records

    return overlap.collect((r.task, r.meta, r.caption, r.question, r.instruction)
                           for src in cfg.data.sources if isinstance(src, ShapesSourceConfig)
                           for i in range(src.n_scenes) for r in scene_records(src, cfg, i))


def _jsonl(items: list[dict]) -> str:
    return "".join(json.dumps(i, sort_keys=True) + "\n" for i in items)


def _answer_prior(cfg: ArmConfig, seed: int) -> dict[str, dict[str, str]]:
    """The prior-only reader, from training scenes: the majority answer per exact question
    (`by_question`) and per question type (`by_type`, for questions the draws never asked)."""
    world = cfg.world
    by_type: dict[str, Counter] = defaultdict(Counter)
    by_question: dict[str, Counter] = defaultdict(Counter)
    for i in range(cfg.eval.prompts.prior_scenes):
        rng = _rng(seed, "prior", i)
        q, a = holdout.training_vqa(rng, holdout.training_scene(rng, world), world)
        by_type[question_type(q)][a] += 1
        by_question[q][a] += 1
    majority = lambda counts: {k: c.most_common(1)[0][0] for k, c in sorted(counts.items())}  # noqa: E731
    return {"by_question": majority(by_question), "by_type": majority(by_type)}


def prior_answer(prior: dict, question: str) -> str:
    """What the prior-only reader answers: the question's own majority, else its type's."""
    return prior["by_question"].get(question) or prior["by_type"].get(question_type(question), "nothing")


def _fmnist_prior(cfg: ArmConfig, seed: int) -> dict[str, str]:
    """Majority answer per question kind over Fashion-MNIST train labels."""
    _, labels = load_split(cfg.eval.fmnist.root, "train", cfg.eval.prompts.prior_scenes)
    counts: dict[str, Counter] = defaultdict(Counter)
    for i, label in enumerate(labels):
        rng = _rng(seed, "fmnist_prior", i)
        for kind in QUESTION_KINDS:
            counts[kind][question_answer(kind, int(label), rng)[1]] += 1
    return {k: c.most_common(1)[0][0] for k, c in sorted(counts.items())}


def _splits(world: WorldConfig) -> tuple[str, ...]:
    """The held-out splits this world has (`novel_composition` needs configured bindings)."""
    on = {"novel": world.holdout.scenes > 0, "novel_composition": bool(world.holdout.bindings)}
    splits = tuple(s for s in HELD_OUT if on[s])
    if not splits:
        raise PromptSetError("world.holdout holds nothing out (scenes: 0, no bindings): the eval sets would "
                             "be drawn from training scenes")
    return splits


def make_sets(cfg: ArmConfig) -> dict[str, list[dict]]:
    world, p = cfg.world, cfg.eval.prompts
    seed = p.seed
    sets: dict[str, list[dict]] = {name: [] for name in SETS}
    any_scene = lambda r: shapes.random_scene(r, world)  # noqa: E731
    # POPE's popular / co-occurring negatives come from what training shows (its own scenes)
    prior_rng = _rng(seed, "pope/stats", 0)
    stats = pope.object_stats(holdout.training_scene(prior_rng, world) for _ in range(p.prior_scenes))
    for split in _splits(world):
        for cat in geneval_categories(world):
            for i in range(p.geneval_per_category):
                scene = holdout.heldout_scene(_rng(seed, f"geneval/{cat}", i, split), world, split,
                                              lambda r, c=cat: geneval_scene(r, world, c))
                sets["geneval"].append({"id": f"geneval/{split}/{cat}/{i}", "split": split, "category": cat,
                                        "prompt": shapes.caption(scene, world.grid), "scene": scene.to_json()})
        # the same categories on the world's other scene shapes (aspect buckets), drawn at their ratio
        for rows, cols in shapes_of(world)[1:]:
            for cat in geneval_categories(world):
                for i in range(p.geneval_per_category):
                    scene = holdout.heldout_scene(_rng(seed, f"geneval_aspect/{rows}x{cols}/{cat}", i, split), world, split,
                                                  lambda r, c=cat, g=(rows, cols): geneval_scene(r, world, c, g))
                    sets["geneval_aspect"].append({
                        "id": f"geneval_aspect/{split}/{rows}x{cols}/{cat}/{i}", "split": split, "category": cat,
                        "grid": [rows, cols], "aspect_ratio": f"{cols}:{rows}",
                        "prompt": shapes.caption(scene, world.grid), "scene": scene.to_json()})
        for i in range(p.wise):
            text, scene = holdout.heldout_knowledge(_rng(seed, "wise", i, split), world, split)
            sets["wise"].append({"id": f"wise/{split}/{i}", "split": split, "prompt": text, "scene": scene.to_json()})
        for i in range(p.edit):
            source, instruction, target, op = holdout.heldout_edit(_rng(seed, "edit", i, split), world, split)
            sets["edit"].append({"id": f"edit/{split}/{i}", "split": split, "instruction": instruction, "op": op,
                                 "source_scene": source.to_json(), "target_scene": target.to_json()})
        for i in range(p.vqa):
            rng = _rng(seed, "vqa", i, split)
            scene = holdout.heldout_scene(rng, world, split, any_scene)
            q, a = shapes.vqa_pair(rng, scene, world)
            sets["vqa"].append({"id": f"vqa/{split}/{i}", "split": split, "question": q, "answer": a,
                                "type": question_type(q), "scene": scene.to_json()})
        for i in range(p.caption):
            scene = holdout.heldout_scene(_rng(seed, "caption", i, split), world, split, any_scene)
            sets["caption"].append({"id": f"caption/{split}/{i}", "split": split, "question": cfg.eval.caption_question,
                                    "caption": shapes.caption(scene, world.grid), "scene": scene.to_json()})
        scenes = [holdout.heldout_scene(_rng(seed, "pope", i, split), world, split, any_scene) for i in range(p.pope)]
        for item in pope.pope_items(scenes, world, stats, _rng(seed, "pope/items", 0, split), p.pope_per_scene):
            j = item["scene_index"]
            sets["pope"].append({**item, "id": f"pope/{split}/{j}/{item['sampling']}/{item['pair'][0]}-{item['pair'][1]}",
                                 "split": split, "scene_index": f"{split}/{j}", "scene": scenes[j].to_json()})
    # Fashion-MNIST comes from t10k, which no training source reads.
    _, labels = load_split(cfg.eval.fmnist.root, "t10k")
    by_class = {k: [int(i) for i in (labels == k).nonzero()[0]] for k in range(len(CLASSES))}
    for k in range(len(CLASSES)):
        rng = _rng(seed, f"fmnist/{k}", 0)
        picks = rng.sample(by_class[k], min(2 * p.fmnist_per_class, len(by_class[k])))
        gen, und = picks[: p.fmnist_per_class], picks[p.fmnist_per_class :]
        for j, idx in enumerate(gen):
            sets["fmnist_gen"].append({"id": f"fmnist_gen/{k}/{j}", "label": k, "class": CLASSES[k],
                                       "prompt": fmnist_caption(k), "t10k_index": idx})
        for j, idx in enumerate(und):
            kind = rng.choice([q for q in QUESTION_KINDS if q != "what"])
            for qkind in ("what", kind):
                q, a = question_answer(qkind, k, rng)
                sets["fmnist_und"].append({"id": f"fmnist_und/{k}/{j}/{qkind}", "label": k, "t10k_index": idx,
                                           "question": q, "answer": a, "kind": qkind})
    return {name: items for name, items in sets.items() if items or name not in OPTIONAL_SETS}


def build_prompt_sets(cfg: ArmConfig, out_dir: str | Path | None = None) -> Path:
    """Writes every held-out set plus `prior.json` and `manifest.json`; returns the folder."""
    p = cfg.eval.prompts
    train_seeds = {s.seed for s in cfg.data.sources if isinstance(s, ShapesSourceConfig)}
    if p.seed in train_seeds:
        raise PromptSetError(f"eval.prompts.seed {p.seed} equals a training source seed; pick another")
    out = Path(out_dir or p.dir)
    sets = make_sets(cfg)
    keys = training_keys(cfg)
    training_overlap = {name: round(n / len(sets[name]), 4) for name, n in overlap.overlap(sets, keys).items()}
    prior = {"vqa": _answer_prior(cfg, p.seed), "fmnist": _fmnist_prior(cfg, p.seed)}
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        for name, items in sets.items():
            atomic_write_text(tmp / f"{name}.jsonl", _jsonl(items))
        atomic_write_json(tmp / "prior.json", prior)
        manifest = {
            "seed": p.seed,
            "world": cfg.world.model_dump(mode="json"),
            "prompts": p.model_dump(mode="json", exclude={"dir"}),
            "caption_question": cfg.eval.caption_question,
            "counts": {name: len(items) for name, items in sets.items()},
            "geneval_categories": geneval_categories(cfg.world),
            "training_overlap": training_overlap,
            "held_out_scenes_in_training": overlap.held_out_scenes(keys, cfg.world),
            "sha256": {f"{name}.jsonl": sha256_file(tmp / f"{name}.jsonl") for name in sets},
        }
        atomic_write_json(tmp / "manifest.json", manifest)
    return out


def load_prompt_sets(cfg: ArmConfig, folder: str | Path | None = None) -> tuple[dict[str, list[dict]], dict, dict]:
    """(sets, prior, manifest); refuses a folder built for another world or other settings."""
    folder = Path(folder or cfg.eval.prompts.dir)
    if not (folder / "manifest.json").is_file():
        raise PromptSetError(f"{folder}: no held-out prompt sets here; build them with `arm eval-prompts`")
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest.get("world") != cfg.world.model_dump(mode="json"):
        raise PromptSetError(f"{folder}: prompt sets were built for another world config; rebuild with `arm eval-prompts`")
    want = cfg.eval.prompts.model_dump(mode="json", exclude={"dir"})
    if manifest.get("prompts") != want:
        raise PromptSetError(f"{folder}: prompt sets were built with other eval.prompts settings "
                             f"({manifest.get('prompts')} != {want}); rebuild with `arm eval-prompts`")
    sets = {}
    for name in SETS:
        path = folder / f"{name}.jsonl"
        if f"{name}.jsonl" not in manifest.get("sha256", {}):
            if name in OPTIONAL_SETS:
                sets[name] = []
                continue
            raise PromptSetError(f"{folder}: no {name!r} set in its manifest; rebuild with `arm eval-prompts`")
        if sha256_file(path) != manifest["sha256"][f"{name}.jsonl"]:
            raise PromptSetError(f"{path}: contents differ from the manifest's checksum (edited by hand?)")
        sets[name] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    prior = json.loads((folder / "prior.json").read_text())
    return sets, prior, manifest
