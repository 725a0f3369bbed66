"""RL training prompts, drawn from the shapes world on their own seed stream.

Prompt i of a run is a pure function of (rl.seed, i): its task alternates over `rl.tasks` and
its content comes from `random.Random("rl:<seed>:<i>")`, a run's prompt position is just an index.
Like pretraining it draws only the training part of the world (arm/data/holdout.py): no target,
edit source or riddle is a scene, or holds an object, that evaluation holds out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from arm.config import WorldConfig
from arm.data import holdout, shapes
from arm.data.shapes import Scene


@dataclass(frozen=True)
class Prompt:
    index: int  # position in the run's prompt stream
    task: str  # "t2i" or "edit"
    text: str  # the caption / riddle (t2i) or the instruction (edit)
    target: Scene  # what a correct image shows
    source: Scene | None = None  # edit: the scene being edited
    op: str | None = None  # edit: recolor, move, add, remove, resize
    knowledge: bool = False  # t2i: a WISE-style riddle rather than a plain caption
    caption: str = ""  # a plain description of the target (what the alignment reward compares with)


def rl_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"rl:{seed}:{index}")


def draw_prompt(world: WorldConfig, tasks: list[str], seed: int, index: int, knowledge_fraction: float) -> Prompt:
    rng = rl_rng(seed, index)
    task = tasks[index % len(tasks)]
    if task == "t2i":
        if rng.random() < knowledge_fraction:
            text, scene = holdout.training_knowledge(rng, world)
            return Prompt(index, task, text, scene, knowledge=True, caption=shapes.caption(scene, world.grid))
        scene = holdout.training_scene(rng, world)
        text = shapes.caption(scene, world.grid)
        return Prompt(index, task, text, scene, caption=text)
    if task == "edit":
        source, instruction, target, op = holdout.training_edit_triplet(rng, world)
        return Prompt(index, task, instruction, target, source=source, op=op, caption=shapes.caption(target, world.grid))
    raise ValueError(f"unknown RL task {task!r}; known: t2i, edit")


def draw_prompts(world: WorldConfig, tasks: list[str], seed: int, start: int, n: int, knowledge_fraction: float) -> list[Prompt]:
    return [draw_prompt(world, tasks, seed, i, knowledge_fraction) for i in range(start, start + n)]
