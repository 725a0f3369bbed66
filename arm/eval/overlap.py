"""Overlap between training data and the held-out eval sets, measured on what training holds.

One key vocabulary for both sides, so a record of the curated store (or of a source, or an RL
prompt) and an eval item meet exactly when they are the same item:

- `text`: a generation prompt (caption or riddle);
- `scene`: the canonical scene of an image a model trains on or is scored against;
- `image_question`: (image scene, question) of understanding;
- `source_instruction`: (source scene, instruction) of an edit.

Whatever the seeds, the partition (arm/data/holdout.py) should make every count zero; the
manifest reports the counts and tests/test_holdout.py asserts them on the curated store.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping

from arm.config import WorldConfig
from arm.data.holdout import is_training, scene_key
from arm.data.shapes import Scene

Keys = dict[str, set[str]]


def _key(scene_json) -> str:
    return scene_key(Scene.from_json(scene_json))


def record_keys(task: str, meta: Mapping, caption: str | None = None, question: str | None = None,
                instruction: str | None = None) -> list[tuple[str, str]]:
    """The keys of one training record (a curated row, a source record or an RL prompt)."""
    scene, target = meta.get("scene"), meta.get("target_scene")
    if task == "generate":
        return [("text", caption or "")] + ([("scene", _key(scene))] if scene is not None else [])
    if task == "understand":
        return [("scene", _key(scene)), ("image_question", f"{_key(scene)}|{question}")] if scene is not None else []
    if task == "edit":
        return [("scene", _key(scene)), ("scene", _key(target)), ("source_instruction", f"{_key(scene)}|{instruction}")]
    return []


def item_keys(set_name: str, item: Mapping) -> list[tuple[str, str]]:
    """The keys of one eval item, the ones training must never hold."""
    if set_name in ("geneval", "geneval_aspect", "wise"):
        return [("text", item["prompt"]), ("scene", _key(item["scene"]))]
    if set_name in ("vqa", "caption", "pope"):
        return [("scene", _key(item["scene"])), ("image_question", f"{_key(item['scene'])}|{item['question']}")]
    if set_name == "edit":  # a compositional edit may start from a training scene: the pair is what is new
        return [("source_instruction", f"{_key(item['source_scene'])}|{item['instruction']}")]
    return []


def collect(records: Iterable[tuple[str, Mapping, str | None, str | None, str | None]]) -> Keys:
    """Keys of (task, meta, caption, question, instruction) records."""
    keys: Keys = defaultdict(set)
    for task, meta, caption, question, instruction in records:
        for kind, key in record_keys(task, meta, caption, question, instruction):
            keys[kind].add(key)
    return keys


def overlap(sets: Mapping[str, list[dict]], keys: Keys) -> dict[str, int]:
    """Per eval set, how many items share any key with training."""
    return {name: sum(any(key in keys.get(kind, ()) for kind, key in item_keys(name, item)) for item in items)
            for name, items in sets.items() if items and item_keys(name, items[0])}


def held_out_scenes(keys: Keys, world: WorldConfig) -> int:
    """Training scenes that belong to the held-out partition (must be 0)."""
    return sum(not is_training(Scene.from_json(json.loads(k)), world) for k in keys.get("scene", ()))
