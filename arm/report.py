"""The run report: reports/latest/index.html with the metrics table, loss curves and sample grids.

It reads only what the stages wrote (metrics/*.json, plots/*.csv, reports/eval_*/ grids), so it
can be rebuilt at any time and never changes a result.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

from arm.io import atomic_path


def flatten(obj, prefix: str = "") -> dict[str, float | str]:
    out: dict[str, float | str] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(obj, bool):
        out[prefix] = str(obj)
    elif isinstance(obj, (int, float)):
        out[prefix] = float(obj)
    elif isinstance(obj, str) and len(obj) < 80:
        out[prefix] = obj
    return out


def read_curve(path: Path) -> tuple[str, dict[str, list[tuple[float, float]]]]:
    """A DVC-style plot CSV: a step column and one or more numeric series."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return "step", {}
    x = next((c for c in rows[0] if c in ("step", "iteration", "epoch")), next(iter(rows[0])))
    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        for col, val in row.items():
            if col == x:
                continue
            try:
                series.setdefault(col, []).append((float(row[x]), float(val)))
            except (TypeError, ValueError):
                continue
    return x, series


def plot_curves(csv_path: Path, png_path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xlabel, series = read_curve(csv_path)
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    for name, points in series.items():
        xs, ys = zip(*points)
        ax.plot(xs, ys, label=name, linewidth=1.2)
    ax.set_xlabel(xlabel)
    ax.set_title(csv_path.stem)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return True


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


def headline(root: Path) -> list[str]:
    """What a reader wants first: each evaluated model's main scores on held-out items, per split,
    by the learned judge and by the oracle, with 95% intervals, and the gate's decision."""
    from arm.eval.report import ATTRIBUTES, HEADLINE, HEADLINE_COLUMNS, headline_rows

    esc = html.escape
    parts = []
    header = ("<tr><td><b>metric</b></td>" + "".join(f"<td><b>{esc(c)}</b></td>" for c, _ in HEADLINE_COLUMNS)
              + "<td><b>floor</b></td><td><b>reconstruction</b></td></tr>")
    for mf in sorted((root / "metrics").glob("eval_*.json")):
        try:
            metrics = json.loads(mf.read_text())
            rows = headline_rows(metrics, HEADLINE) + ["<tr><td colspan=7><i>per attribute</i></td></tr>"]
            rows += headline_rows(metrics, ATTRIBUTES)
        except (json.JSONDecodeError, KeyError):
            continue
        parts.append(f"<h2>{esc(str(metrics.get('model')))}: held-out items, learned judge, 95% intervals</h2><table>"
                     + header + "".join(rows) + "</table>")
    gate = root / "metrics" / "gate.json"
    if gate.is_file():
        try:
            verdict = json.loads(gate.read_text())
            parts.append(f"<p><b>gate</b>: {'passed' if verdict.get('passed') else 'rejected'}"
                         + (f" (failed: {esc(', '.join(verdict.get('failed', [])))})" if verdict.get("failed") else "")
                         + "</p>")
        except json.JSONDecodeError:
            pass
    return parts


def build_report(root: Path = Path("."), out_dir: Path | None = None) -> Path:
    root = Path(root)
    out_dir = out_dir or root / "reports" / "latest"
    parts = ["<h1>ARM run report</h1>", *headline(root)]
    metric_files = sorted((root / "metrics").glob("*.json"))
    for mf in metric_files:
        try:
            flat = flatten(json.loads(mf.read_text()))
        except json.JSONDecodeError:
            continue
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>" if isinstance(v, float)
            else f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
            for k, v in flat.items()
        )
        parts.append(f"<details open><summary>{html.escape(mf.name)}</summary><table>{rows}</table></details>")
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        parts.append("<h2>Curves</h2>")
        for csv_path in sorted((root / "plots").glob("*.csv")):
            png = tmp / f"{csv_path.stem}.png"
            if plot_curves(csv_path, png):
                parts.append(_img(png))
        grids = sorted((root / "reports").glob("eval_*/**/*.png"))
        if grids:
            parts.append("<h2>Samples</h2>")
        for grid in grids:
            parts.append(f"<figure>{_img(grid)}<figcaption>{html.escape(str(grid.relative_to(root)))}</figcaption></figure>")
        style = (
            "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
            "td{border:1px solid #ddd;padding:2px 8px;font-size:13px}img{margin:6px;image-rendering:pixelated}"
            "figure{display:inline-block}"
        )
        (tmp / "index.html").write_text(f"<!doctype html><meta charset=utf-8><style>{style}</style>" + "".join(parts))
    return out_dir / "index.html"
