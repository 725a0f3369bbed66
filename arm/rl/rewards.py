"""The reward registry: plain functions from a batch of rollouts to one score in [0, 1] each.

A reward function takes (rollouts, ctx) and returns a list of floats, one per rollout. Rollouts
carry their prompt, sampled codes, the decoded image and the oracle's reading of it, so every
function is a cheap, exact check of the shapes world (DESIGN §5), and the evaluate stage's
per-sample checks (arm.eval.checks) are reused where they exist: a benchmark and a reward agree
about what "right" means. `combine` forms each task's weighted sum from params.yaml.

Register more (e.g. a learned reward model on the 7b preset) with `@register("name", tasks)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from arm.config import WorldConfig
from arm.data.shapes import Scene, ShapeObject
from arm.eval.checks import edit_check, perceptual_quality
from arm.rl.prompts import Prompt

ATTRIBUTES = ("kind", "color", "size")


@dataclass
class Rollout:
    prompt: Prompt
    codes: torch.Tensor  # [h*w] sampled image codes
    image: Image.Image | None = None  # decoded codes
    parsed: Scene | None = None  # the oracle's reading of `image`


@dataclass
class RewardContext:
    world: WorldConfig
    codec: object  # arm.rl.codec.OracleCodec | LearnedCodec
    pq_tolerance: int = 48
    cache: dict = field(default_factory=dict)  # per-batch results shared between rewards


RewardFn = Callable[[Sequence[Rollout], RewardContext], list[float]]


@dataclass(frozen=True)
class RewardSpec:
    fn: RewardFn
    tasks: tuple[str, ...]  # the tasks it is defined for
    needs_alignment: bool = False  # needs a tokenizer with a contrastive head


REWARDS: dict[str, RewardSpec] = {}


def register(name: str, tasks: tuple[str, ...] = ("t2i", "edit"), needs_alignment: bool = False):
    def deco(fn: RewardFn) -> RewardFn:
        REWARDS[name] = RewardSpec(fn, tuple(tasks), needs_alignment)
        return fn

    return deco


class RewardConfigError(ValueError):
    """Reward weights that name an unknown reward or one that cannot be computed here."""


def check_weights(weights: Mapping[str, Mapping[str, float]], tasks: Sequence[str], codec) -> None:
    for task in tasks:
        for name, w in weights.get(task, {}).items():
            where = f"rl.rewards.{task}.{name}"
            if name not in REWARDS:
                raise RewardConfigError(f"{where}: unknown reward; registered: {sorted(REWARDS)}")
            spec = REWARDS[name]
            if w and task not in spec.tasks:
                raise RewardConfigError(f"{where}: reward {name!r} is defined for {list(spec.tasks)} only")
            if w and spec.needs_alignment and not getattr(codec, "has_alignment", False):
                raise RewardConfigError(
                    f"{where}: needs a visual tokenizer with a contrastive head, this model's is {codec.kind!r}"
                    " (set the weight to 0)"
                )


# ----------------------------------------------------------------------------- the rewards


def cell_agreement(parsed: Scene, target: Scene) -> float:
    """Mean over cells occupied in either scene: 0 if only one side has an object, else the share
    of its attributes (kind, colour, size) that match. Identical scenes score 1, a blank image 0.
    Partial credit keeps the reward dense enough for a weak base model to find a gradient."""
    cells = {(o.row, o.col) for o in parsed.objects} | {(o.row, o.col) for o in target.objects}
    if not cells:
        return 1.0
    total = 0.0
    for rc in cells:
        a, b = parsed.at(*rc), target.at(*rc)
        if a is not None and b is not None:
            total += _attribute_match(a, b)
    return total / len(cells)


def _attribute_match(a: ShapeObject, b: ShapeObject) -> float:
    return sum(getattr(a, k) == getattr(b, k) for k in ATTRIBUTES) / len(ATTRIBUTES)


@register("adherence")
def adherence(rollouts: Sequence[Rollout], ctx: RewardContext) -> list[float]:
    """Instruction adherence: the generated image's scene against the prompt's (t2i) or the
    edit's target scene, cell by cell (`cell_agreement`)."""
    return [cell_agreement(r.parsed, r.prompt.target) for r in rollouts]


@register("exact")
def exact(rollouts: Sequence[Rollout], ctx: RewardContext) -> list[float]:
    """1 when the image parses to exactly the target scene (sparse; the benchmarks' strictest view)."""
    return [float(r.parsed == r.prompt.target) for r in rollouts]


@register("cleanliness")
def cleanliness(rollouts: Sequence[Rollout], ctx: RewardContext) -> list[float]:
    """Visual quality: the evaluate stage's perceptual quality / 10 (how much of the ink is what a
    clean render of the parsed scene draws). A render scores 1; an image with no ink 0."""
    return [perceptual_quality(r.image, ctx.world, ctx.pq_tolerance) / 10.0 for r in rollouts]


@register("consistency")
def consistency(rollouts: Sequence[Rollout], ctx: RewardContext) -> list[float]:
    """Decoder consistency: the share of codes that survive decode -> re-encode. Codes the decoder
    cannot draw faithfully (or, with the oracle tokenizer, codes naming no valid object) fail."""
    if not rollouts:
        return []
    again = ctx.codec.encode_images([r.image for r in rollouts])
    sampled = torch.stack([r.codes.reshape(-1) for r in rollouts])
    return (again == sampled).float().mean(1).tolist()


@register("preservation", tasks=("edit",))
def preservation(rollouts: Sequence[Rollout], ctx: RewardContext) -> list[float]:
    """Edit consistency: the share of cells the instruction does not touch (and that hold an
    object before or after) that kept their state, as in the shapes_edit benchmark. With no such
    cell nothing could be broken: 1."""
    out = []
    for r in rollouts:
        kept = edit_check(r.prompt.source, r.prompt.target, r.parsed, ctx.world.grid)["preservation"]
        out.append(1.0 if kept is None else float(kept))
    return out


@register("alignment", needs_alignment=True)
def alignment(rollouts: Sequence[Rollout], ctx: RewardContext) -> list[float]:
    """Text-image alignment from the visual tokenizer's contrastive head: the match probability of
    the codes with a plain caption of the target scene (an edit instruction describes no image)."""
    if not rollouts:
        return []
    codes = torch.stack([r.codes.reshape(-1) for r in rollouts])
    return ctx.codec.alignment(codes, [r.prompt.caption for r in rollouts]).tolist()


# ----------------------------------------------------------------------------- combining


def score(
    rollouts: Sequence[Rollout], weights: Mapping[str, Mapping[str, float]], ctx: RewardContext
) -> tuple[list[float], list[dict[str, float]]]:
    """Each rollout's weighted reward (weights of its task, normalised to sum 1 so every task's
    reward stays in [0, 1]) and its components. Each reward runs once per batch, over the rollouts
    of the tasks that weight it."""
    components: list[dict[str, float]] = [{} for _ in rollouts]
    names = sorted({n for task_w in weights.values() for n, w in task_w.items() if w})
    for name in names:
        idx = [i for i, r in enumerate(rollouts) if weights.get(r.prompt.task, {}).get(name, 0.0)]
        if not idx:
            continue
        values = REWARDS[name].fn([rollouts[i] for i in idx], ctx)
        if len(values) != len(idx):
            raise RuntimeError(f"reward {name!r} returned {len(values)} values for {len(idx)} rollouts")
        for i, v in zip(idx, values):
            components[i][name] = float(v)
    totals = []
    for r, comp in zip(rollouts, components):
        w = {n: v for n, v in weights[r.prompt.task].items() if v}
        totals.append(sum(w[n] * comp[n] for n in w) / sum(w.values()))
    return totals, components
