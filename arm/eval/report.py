"""The human-readable side of `arm evaluate`: PNG sample grids and an index.html with the table."""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageOps

from arm.io import atomic_path

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


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _fmt(v) -> str:
    return "" if v is None else f"{v:.3f}"


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


def headline_rows(metrics: dict, keys) -> list[str]:
    """HTML table rows of `headline_table` (the eval report and the run report share them)."""
    return [f"<tr><td>{html.escape(row['metric'])}</td>"
            + "".join(f"<td>{html.escape(fmt_interval(*row['cells'][c]))}</td>" for c, _ in HEADLINE_COLUMNS)
            + f"<td>{_fmt(row['floor'])}</td><td>{_fmt(row['reconstruction'])}</td></tr>"
            for row in headline_table(metrics, keys)]


def fmt_interval(score, interval) -> str:
    if score is None:
        return ""
    return f"{score:.3f}" + ("" if interval is None else f" [{interval[0]:.2f}, {interval[1]:.2f}]")


def write_report(folder: str | Path, metrics: dict, results: dict[str, "BenchResult"], timings: dict[str, float]) -> Path:
    folder = Path(folder)
    esc = html.escape
    parts = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>eval {esc(metrics['model'])}</title>",
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:right}"
        "td:first-child,td:nth-child(2){text-align:left}tr:nth-child(even){background:#f4f4f4}"
        ".ok{color:#287a3c}.bad{color:#c02020}</style>",
        f"<h1>Evaluation of {esc(metrics['model'])}</h1>",
        f"<p>model dir: <code>{esc(str(metrics['model_dir']))}</code> · preset {esc(metrics['preset'])} · "
        f"prompts: <code>{esc(metrics['prompts']['dir'])}</code> (seed {metrics['prompts']['seed']})</p>",
        "<h2>Headline: held-out items, learned judge, 95% bootstrap intervals</h2>",
        "<p>Every item is held out of training by construction: <b>novel</b> scenes never occur in training; "
        "<b>novel_composition</b> scenes hold an attribute binding training never shows. Images are read by the "
        "learned judge (the gate's); the oracle is what RL's rewards use.</p>",
        "<table><tr><th>metric</th>" + "".join(f"<th>{esc(c)}</th>" for c, _ in HEADLINE_COLUMNS)
        + "<th>floor</th><th>reconstruction</th></tr>",
    ]
    parts += headline_rows(metrics, HEADLINE)
    parts.append("</table><h2>Per attribute: share of stated objects drawn with it, VQA per question type</h2><table>"
                 "<tr><th>metric</th>" + "".join(f"<th>{esc(c)}</th>" for c, _ in HEADLINE_COLUMNS)
                 + "<th>floor</th><th>reconstruction</th></tr>")
    parts += headline_rows(metrics, ATTRIBUTES)
    parts.append("</table>")
    judge = metrics.get("judge")
    if judge:
        parts.append("<p>learned judge's own accuracy: " + esc(", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in _flat(judge).items())) + "</p>")
    parts += [
        f"<h2>All scores</h2><p><b>reconstruction</b>: {esc(metrics['reconstruction_source'])}. <b>floor</b>: "
        f"{esc(metrics['floor_source'])}. <b>normalized</b> = (score - floor) / (reconstruction - floor).</p>",
        "<table><tr><th>benchmark</th><th>metric</th><th>score [95% interval]</th><th>reconstruction</th>"
        "<th>floor</th><th>normalized</th></tr>",
    ]
    for row in score_table(metrics):
        parts.append(
            f"<tr><td>{esc(row['benchmark'])}</td><td>{esc(row['metric'])}</td>"
            f"<td><b>{esc(fmt_interval(row['score'], row['interval']))}</b></td>"
            f"<td>{_fmt(row['reconstruction'])}</td><td>{_fmt(row['floor'])}</td><td>{_fmt(row['normalized'])}</td></tr>"
        )
    parts.append("</table>")
    if metrics.get("skipped"):
        parts.append("<p>skipped: " + esc(", ".join(f"{k} ({v})" for k, v in metrics["skipped"].items())) + "</p>")
    overlap = metrics["prompts"].get("training_overlap", {})
    if overlap:
        parts.append("<p>share of eval items found in the training sources (the partition makes it 0): "
                     + esc(", ".join(f"{k} {v:.2f}" for k, v in overlap.items())) + "</p>")
    parts.append("<p>seconds per benchmark: " + esc(", ".join(f"{k} {v}" for k, v in timings.items())) + "</p>")
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        for bench, res in results.items():
            parts.append(f"<h2>{esc(bench)}</h2>")
            for grid in res.grids:
                if not grid.rows:
                    continue
                (tmp / f"{grid.name}.png").write_bytes(_png(grid_image(grid)))
                parts.append(f"<h3>{esc(grid.name)}</h3><img src='{esc(grid.name)}.png' alt='{esc(grid.name)}'>")
                parts.append("<ol>" + "".join(f"<li>{esc(c)}</li>" for c in grid.captions) + "</ol>")
            if res.examples:
                parts.append("<table><tr><th>task</th><th>question</th><th>answer</th><th>reference</th></tr>")
                for ex in res.examples:
                    cls = "ok" if ex["correct"] else "bad"
                    parts.append(f"<tr class='{cls}'><td>{esc(ex['task'])}</td><td>{esc(ex['question'])}</td>"
                                 f"<td>{esc(ex['answer'])}</td><td>{esc(ex['reference'])}</td></tr>")
                parts.append("</table>")
        (tmp / "index.html").write_text("\n".join(parts) + "\n", encoding="utf-8")
    return folder
