"""How a tokenizer's FSQ levels carry the attributes of what each token shows.

The AR model embeds an image code as its own row plus one shared row per level digit
(arm/model/factorized.py): whatever is a sum over levels of per-digit parts comes to it almost
for free and composes to unseen combinations; whatever needs an interaction of levels must be
learned code by code. So the question about a tokenizer is not only whether its codes tell the
attributes apart, but whether each attribute is *additive* over the level digits:

- `additive_<attr>`: accuracy of the best additive classifier over one-hot level digits (a
  multinomial logistic regression, fit on the same tokens: a capacity measure, not a held-out
  score). 1.0 means the factorised embedding can express the attribute without any own row.
- `level_purity_<attr>`: the best single level's majority-label purity (how far one level alone
  tells the attribute).

Generic over labelled tokens; the shapes world labels each cell by its object's attributes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def level_digits(codes: torch.Tensor, levels) -> torch.Tensor:
    """[...] codes -> [..., n_levels] digits, first level least significant (vector-quantize-pytorch's
    order). The one digit decomposition: the perfect tokenizer and factorised embeddings use it too."""
    out, rest = [], codes.long()
    for lv in levels:
        out.append(rest % lv)
        rest = rest // lv
    return torch.stack(out, -1)


def _one_hot_levels(digits: torch.Tensor, levels) -> torch.Tensor:
    return torch.cat([F.one_hot(digits[:, i], lv) for i, lv in enumerate(levels)], -1).double()


def additive_accuracy(digits: torch.Tensor, labels: torch.Tensor, levels, steps: int = 200) -> float:
    """Training accuracy of a multinomial logistic regression on one-hot level digits (LBFGS,
    barely regularised: it asks whether an additive rule exists, not how well one generalises)."""
    x = _one_hot_levels(digits, levels)
    classes, y = torch.unique(labels, return_inverse=True)
    if len(classes) < 2:
        return 1.0
    w = torch.zeros(x.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 1e-4 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((x @ w + b).argmax(-1) == y).double().mean())


def level_purity(digits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Per level: the share of tokens whose label is the majority label of their digit."""
    out = []
    for i in range(digits.shape[1]):
        hit = 0
        for d in torch.unique(digits[:, i]):
            hit += int(torch.bincount(labels[digits[:, i] == d]).max())
        out.append(hit / len(labels))
    return out


def attribute_geometry(codes: torch.Tensor, attributes: dict[str, torch.Tensor], levels) -> dict[str, float]:
    """`additive_<attr>` and `level_purity_<attr>` (best level) for each labelled attribute of
    the tokens `codes` [N]; labels are [N] integer class ids."""
    digits = level_digits(codes.flatten(), levels)
    out: dict[str, float] = {}
    for name, labels in attributes.items():
        labels = labels.flatten().long()
        if len(labels) != len(digits):
            raise ValueError(f"attribute {name!r}: {len(labels)} labels for {len(digits)} codes")
        if not len(labels):
            continue
        out[f"additive_{name}"] = additive_accuracy(digits, labels, levels)
        out[f"level_purity_{name}"] = max(level_purity(digits, labels))
    return out


def shapes_attribute_labels(scenes, world) -> dict[str, torch.Tensor]:
    """Per cell of every scene (row-major, scene-major): kind, colour and size ids of its object,
    -1 for an empty cell; `object` marks the cells that hold one."""
    from arm.data.shapes import Scene

    g = world.grid
    rows = {"kind": [], "color": [], "size": []}
    for scene_json in scenes:
        scene = Scene.from_json(scene_json) if not isinstance(scene_json, Scene) else scene_json
        for r in range(g):
            for c in range(g):
                o = scene.at(r, c)
                rows["kind"].append(world.kinds.index(o.kind) if o else -1)
                rows["color"].append(world.colors.index(o.color) if o else -1)
                rows["size"].append(world.sizes.index(o.size) if o else -1)
    return {k: torch.tensor(v, dtype=torch.long) for k, v in rows.items()}


def shapes_geometry(codes: torch.Tensor, scenes, world, levels) -> dict[str, float]:
    """attribute_geometry over the object cells of shapes images (codes [n_images, grid*grid])."""
    labels = shapes_attribute_labels(scenes, world)
    has_object = labels["kind"] >= 0
    flat = codes.reshape(-1)
    if len(flat) != len(has_object):
        raise ValueError(f"{len(flat)} codes for {len(scenes)} scenes of {world.grid}x{world.grid} cells")
    return attribute_geometry(flat[has_object], {k: v[has_object] for k, v in labels.items()}, levels)
