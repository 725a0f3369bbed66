"""The human-readable side of `arm evaluate`: PNG sample grids and an index.html with the tables
(rendered from arm/templates/eval_report.html)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageOps

from arm.io import atomic_path
from arm.render import flatten_metrics, render

if TYPE_CHECKING:
    from arm.eval.run import BenchResult, Grid

CELL = 96
PAD = 4
BORDER = {True: (40, 170, 60), False: (220, 40, 40), None: (190, 190, 190)}


def grid_image(grid: "Grid") -> Image.Image:
    """Rows of cells; a green frame marks a sample that passed its check, red one that failed."""
    cols = max((len(r) for r in grid.rows), default=1)
    header = 14
    w = cols * (CELL + 2 * PAD) + PAD
    h = header + max(1, len(grid.rows)) * (CELL + 2 * PAD) + PAD
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(grid.columns[:cols]):
        draw.text((PAD + c * (CELL + 2 * PAD) + 2, 1), title, fill=(0, 0, 0))
    for r, row in enumerate(grid.rows):
        for c, (image, ok) in enumerate(row):
            x = PAD + c * (CELL + 2 * PAD)
            y = header + PAD + r * (CELL + 2 * PAD)
            cell = image.convert("RGB").resize((CELL - 2 * PAD, CELL - 2 * PAD), Image.NEAREST)
            canvas.paste(ImageOps.expand(cell, border=PAD, fill=BORDER[ok]), (x, y))
    return canvas


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def score_table(metrics: dict) -> list[dict]:
    """One row per metric: score, its 95% interval, the reconstruction reference, the floor and
    where the score sits between them."""
    rows = []
    for bench, scores in metrics["scores"].items():
        recon, floor = metrics["reconstruction"].get(bench, {}), metrics["floor"].get(bench, {})
        intervals = metrics.get("intervals", {}).get(bench, {})
        for key, value in scores.items():
            c, f = recon.get(key), floor.get(key)
            norm = (value - f) / (c - f) if c is not None and f is not None and c - f > 1e-9 else None
            rows.append({"benchmark": bench, "metric": key, "score": value, "interval": intervals.get(key),
                         "reconstruction": c, "floor": f, "normalized": norm})
    return rows


# What a reader wants first: the main number of each task, per split, by both judges.
HEADLINE = (("shapes_geneval", "overall"), ("shapes_geneval", "exact_scene"), ("shapes_wise", "score"),
            ("shapes_edit", "success"), ("understanding", "vqa_accuracy"), ("understanding", "pope_f1"),
            ("understanding", "caption_f1"), ("fmnist", "generation_accuracy"))
# Below the headline: each attribute alone, so one at chance cannot hide behind an exact-scene score.
ATTRIBUTES = (*((bench, f"object_{a}") for bench in ("shapes_geneval", "shapes_edit")
                for a in ("color", "kind", "size", "cell")),
              *(("understanding", f"vqa_{t}") for t in ("color_of", "shape_at", "size_of", "exists", "count")),
              *(("shapes_wise", f"{a}_accuracy") for a in ("color", "kind", "size", "position")))
HEADLINE_COLUMNS = (("novel", "novel/"), ("novel_composition", "novel_composition/"), ("all held-out", ""),
                    ("oracle, all", "oracle/"))


def headline_table(metrics: dict, keys=HEADLINE) -> list[dict]:
    """Rows of (benchmark.metric, {column: (score, interval)}, floor, reconstruction) for `keys`."""
    rows = []
    for bench, metric in keys:
        scores = metrics["scores"].get(bench, {})
        if metric not in scores:
            continue
        intervals = metrics.get("intervals", {}).get(bench, {})
        cells = {col: (scores.get(prefix + metric), intervals.get(prefix + metric)) for col, prefix in HEADLINE_COLUMNS}
        rows.append({"metric": f"{bench}.{metric}", "cells": cells,
                     "floor": metrics["floor"].get(bench, {}).get(metric),
                     "reconstruction": metrics["reconstruction"].get(bench, {}).get(metric)})
    return rows


def write_report(folder: str | Path, metrics: dict, results: dict[str, "BenchResult"], timings: dict[str, float]) -> Path:
    """reports/eval_<name>/: index.html (arm/templates/eval_report.html) and one PNG per sample grid."""
    folder = Path(folder)
    columns = [name for name, _ in HEADLINE_COLUMNS]
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        benches = []
        for bench, res in results.items():
            grids = [grid for grid in res.grids if grid.rows]
            for grid in grids:
                (tmp / f"{grid.name}.png").write_bytes(_png(grid_image(grid)))
            benches.append({"name": bench, "grids": grids, "examples": res.examples})
        page = render("eval_report.html", m=metrics, columns=columns, headline=headline_table(metrics, HEADLINE),
                      attributes=headline_table(metrics, ATTRIBUTES), scores=score_table(metrics),
                      judge=flatten_metrics(metrics["judge"]) if metrics.get("judge") else {},
                      timings=timings, benches=benches)
        (tmp / "index.html").write_text(page, encoding="utf-8")
    return folder
