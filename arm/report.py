"""The run report: reports/latest/index.html (arm/templates/run_report.html).

It opens on what a reader wants first: one table of each benchmark's main score for every
evaluated model (base, RL) with its 95% interval, the floor and the reference, and the gate's
checks and decision. Then each model by split and judge, the loss curves and the sample grids;
every metrics file, flattened as `dvc metrics show` does, is collapsed at the end.

It reads only what the stages wrote (metrics/*.json, plots/<stage>/ curves, reports/eval_*/ grids), so it
can be rebuilt at any time and never changes a result. Curves and grids are embedded, so the page
is one self-contained file.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from arm.curves import STEP, read_curve as read_curve_rows
from arm.io import atomic_path
from arm.render import flatten_metrics, render


def plot_curve(curve_dir: Path, png_path: Path) -> bool:
    """A stage's step curve (a dvclive directory, arm.curves) as small multiples: one panel per
    metric, each on its own scale (a loss, a learning rate and a token count share no axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, tuple[list[float], list[float]]] = {}
    for row in read_curve_rows(curve_dir):
        for name, value in row.items():
            if name != STEP:
                xs, ys = series.setdefault(name, ([], []))
                xs.append(row[STEP])
                ys.append(value)
    if not series:
        return False
    cols = min(4, len(series))
    rows = -(-len(series) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 1.9 * rows), dpi=100, squeeze=False)
    for ax, (name, (xs, ys)) in zip(axes.flat, series.items()):
        ax.plot(xs, ys, linewidth=1.0)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(series):]:
        ax.set_visible(False)
    fig.suptitle(f"{curve_dir.name} (x: {STEP})", fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return True


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def read_json(path: Path, what: str, required: tuple[str, ...] = ()) -> dict:
    """A metrics file the report shows; a broken one is an error that names it, never a silent gap."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path}: invalid JSON: {e}") from None
    missing = [k for k in required if not (isinstance(data, dict) and k in data)]
    if missing:
        raise ValueError(f"{what} {path}: no {', '.join(missing)} (is it what `arm` wrote?)")
    return data


def _distinct(values) -> list[float]:
    """Floors and references are candidate-free, so every model records the same ones; should two
    evaluations differ (other prompt sets, another tokenizer), the table shows each."""
    return sorted({v for v in values if v is not None})


def headline(evals: list[dict], gate: dict | None) -> dict:
    """The report's first table: per headline metric (and every metric the gate checks), each
    model's score [95% interval] on all held-out items by the learned judge, the floor, the
    reference (reconstruction) and the gate's checks of it."""
    from arm.eval.report import HEADLINE

    checks: dict[str, list[dict]] = {}
    for check in (gate or {}).get("checks", []):
        checks.setdefault(check["metric"], []).append(check)
    keys = [f"{bench}.{metric}" for bench, metric in HEADLINE]
    keys += [k for k in checks if "." in k and k not in keys]  # not the `comparable` check on "prompts"
    rows = []
    for key in keys:
        bench, metric = key.split(".", 1)
        scores = [(m["scores"].get(bench, {}).get(metric), m.get("intervals", {}).get(bench, {}).get(metric))
                  for m in evals]
        if key not in checks and all(s is None for s, _ in scores):
            continue  # a benchmark no model ran
        rows.append({"metric": key, "scores": scores,
                     "floor": _distinct(m.get("floor", {}).get(bench, {}).get(metric) for m in evals),
                     "reference": _distinct(m.get("reconstruction", {}).get(bench, {}).get(metric) for m in evals),
                     "checks": checks.get(key, [])})
    return {"models": [m["model"] for m in evals], "rows": rows}


def build_report(root: Path = Path("."), out_dir: Path | None = None) -> Path:
    from arm.eval.report import ATTRIBUTES, HEADLINE, HEADLINE_COLUMNS, headline_table
    from arm.rl.claims import EVAL_PREFIX

    root = Path(root)
    out_dir = out_dir or root / "reports" / "latest"
    metric_files = sorted((root / "metrics").glob("*.json"))
    evals = [read_json(f, "eval metrics", ("model", "scores")) for f in metric_files if f.name.startswith("eval_")]
    gate_file = root / "metrics" / "gate.json"
    gate = read_json(gate_file, "gate result", ("passed", "candidate", "checks")) if gate_file.is_file() else None
    # the RL claims' many per-seed evaluations have their own report (arm.rl.claims)
    evals = [m for m in evals if not m["model"].startswith(EVAL_PREFIX)]
    splits = [{"model": m["model"], "headline": headline_table(m, HEADLINE), "attributes": headline_table(m, ATTRIBUTES)}
              for m in evals]
    raw = [(f.relative_to(root).as_posix(), flatten_metrics(read_json(f, "metrics"))) for f in metric_files]
    samples = [(d.name, [{"src": _data_uri(p), "caption": p.relative_to(root).as_posix()} for p in sorted(d.rglob("*.png"))])
               for d in sorted((root / "reports").glob("eval_*")) if d.is_dir()]
    tok_file = root / "metrics" / "tokenizer.json"
    decoders = read_json(tok_file, "tokenizer metrics").get("decoders") if tok_file.is_file() else None
    grid_png = root / "reports" / "tokenizer" / "decoders.png"
    decoder_grid = {"src": _data_uri(grid_png), "caption": grid_png.relative_to(root).as_posix()} if grid_png.is_file() else None
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        plots = []
        for curve_dir in sorted(d.parents[1] for d in (root / "plots").glob("*/plots/metrics")):
            png = tmp / f"{curve_dir.name}.png"
            if plot_curve(curve_dir, png):
                plots.append({"name": curve_dir.name, "src": _data_uri(png)})
        page = render("run_report.html", headline=headline(evals, gate), gate=gate, splits=splits,
                      columns=[name for name, _ in HEADLINE_COLUMNS], curves=plots,
                      samples=[(name, figs) for name, figs in samples if figs], decoders=decoders,
                      decoder_grid=decoder_grid, raw=raw)
        (tmp / "index.html").write_text(page, encoding="utf-8")
    return out_dir / "index.html"
