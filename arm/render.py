"""The one Jinja2 environment every report renders through, and the formats the reports share.

Templates are package data in arm/templates/: `.html` ones are autoescaped, `.md` ones (the RL
claims) are not. A name or value a template does not get is an error (StrictUndefined), never an
empty cell.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jinja2


def fmt_score(value: float | None, signed: bool = False) -> str:
    """A score to three decimals; "" where there is none."""
    return "" if value is None else f"{value:{'+' if signed else ''}.3f}"


def fmt_interval(score: float | None, interval: Sequence[float] | None = None, signed: bool = False) -> str:
    """`0.412 [0.380, 0.445]`: a score and its 95% interval (a change: `signed`), "" where there is no score."""
    if score is None:
        return ""
    if interval is None:
        return fmt_score(score, signed)
    return f"{fmt_score(score, signed)} [{fmt_score(interval[0], signed)}, {fmt_score(interval[1], signed)}]"


def fmt_mean_std(stats: dict, signed: bool = False) -> str:
    """`0.412 ± 0.021` from {"mean", "std"} over runs; "n/a" where no run measured it."""
    if stats["mean"] is None:
        return "n/a"
    return f"{fmt_score(stats['mean'], signed)} ± {stats['std']:.3f}"


def fmt_value(value) -> str:
    """A raw metric value: numbers to four significant digits, anything else as it is."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def flatten_metrics(metrics) -> dict:
    """A metrics file as `dvc metrics show` flattens it: dotted keys, lists as their text."""
    from dvc.utils.diff import format_dict
    from dvc.utils.flatten import flatten

    return flatten(format_dict(metrics)) if isinstance(metrics, dict) else {"": metrics}


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("arm", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(score=fmt_score, interval=fmt_interval, mean_std=fmt_mean_std, value=fmt_value)
    return env


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)
