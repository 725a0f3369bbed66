"""The procedural shapes source: per scene, captions, VQA pairs, edit triplets, knowledge prompts.

Only the training part of the world is drawn (arm/data/holdout.py): no scene, edit target,
knowledge prompt or question here belongs to what evaluation holds out.

Each scene's shape is drawn uniformly from the world's shapes (`world.grids` besides the square);
all records of a scene share it, and a non-square scene's JSON in meta carries it.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator

from PIL import Image

from arm.config import ArmConfig, ShapesSourceConfig
from arm.data import holdout, shapes
from arm.data.records import RawRecord
from arm.data.sources import register


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def scene_records(src: ShapesSourceConfig, cfg: ArmConfig, index: int) -> list[RawRecord]:
    """All records of scene `index`; a pure function of (seed, index), so shards are independent."""
    world = cfg.world
    rng = random.Random(f"{src.seed}:{index}")
    # its own stream, so adding shapes to a world leaves its square scenes' records as they were
    grid = shapes.random_grid(random.Random(f"{src.seed}:{index}:grid"), world)
    scene = holdout.training_scene(rng, world, grid=grid)
    image = png_bytes(shapes.render(scene, world))
    ref = f"shapes:{src.seed}:{index}"
    meta = {"scene": scene.to_json()}
    # its own stream, so the order draws leave every other record of the scene as it was
    order_rng = random.Random(f"{src.seed}:{index}:order") if src.attribute_order == "varied" else None
    recs: list[RawRecord] = []

    def rec(task, suffix, **kw) -> None:
        recs.append(RawRecord(source=src.name, ref=f"{ref}:{suffix}", task=task, **kw))

    if rng.random() < src.knowledge_fraction:
        prompt, kscene = holdout.training_knowledge(rng, world, grid)
        kimage = png_bytes(shapes.render(kscene, world))
        rec("generate", "knowledge", image=kimage, caption=prompt,
            meta={"scene": kscene.to_json(), "knowledge": True})
    else:
        rec("generate", "caption", image=image, caption=shapes.caption(scene, world.grid, order_rng), meta=meta)
    for j in range(src.captions_per_scene):
        rec("understand", f"describe{j}", image=image, question="describe the image.",
            answer=shapes.caption(scene, world.grid, order_rng), meta=meta)
    asked: set[str] = set()
    for j in range(src.vqa_per_scene):
        for _ in range(8):  # a repeated question would only be dropped as a duplicate
            q, a = holdout.training_vqa(rng, scene, world)
            if q not in asked:
                break
        asked.add(q)
        rec("understand", f"vqa{j}", image=image, question=q, answer=a, meta=meta)
    for j in range(src.edits_per_scene):
        edit = holdout.training_edit(rng, scene, world)
        if edit is None:
            continue
        instruction, target, op = edit
        rec("edit", f"edit{j}", image=png_bytes(shapes.render(target, world)), source_image=image,
            instruction=instruction, meta={"scene": scene.to_json(), "target_scene": target.to_json(), "op": op})
    if rng.random() < src.text_fraction:
        facts = shapes.knowledge_facts(world)
        text = " ".join(rng.sample(facts, k=min(3, len(facts))))
        rec("text", "text", caption=f"{shapes.caption(scene, world.grid, order_rng)}. {text}", meta={})
    for r in recs:
        r.meta = json.loads(json.dumps(r.meta))  # plain JSON types only
    return recs


@register("shapes")
def read_shapes(src: ShapesSourceConfig, cfg: ArmConfig) -> Iterator[RawRecord]:
    for i in range(src.n_scenes):
        yield from scene_records(src, cfg, i)
