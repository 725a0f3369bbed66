"""The validate stage: a Great Expectations suite over the curated store.

    validate(cfg) -> result dict; writes cfg.validation.output; raises DataValidationError on failure.

GE runs in an ephemeral context (nothing written under gx/) over pandas frames read from
DuckDB: the sample rows themselves (schema, non-null, uniqueness, sets, value ranges), subsets
where a column is required only for some tasks, and small summary frames for properties of the
whole store (split proportions, per-task minimum counts, count reconciliation, image integrity),
each validated as a one-row or one-row-per-group table so that the observed value is reported.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from arm.config import ArmConfig
from arm.data.records import TASKS
from arm.data.store import SPLITS, CuratedStore
from arm.io import atomic_write_json

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = [
    "id", "ord", "source", "ref", "task", "split", "caption", "question", "answer", "instruction",
    "image_sha", "width", "height", "aspect", "phash", "pixel_std",
    "source_image_sha", "source_width", "source_height", "source_phash", "source_pixel_std",
    "text_chars", "meta",
]
STAGES = ["read", "stats", "filter", "dedup"]
MAX_STD = 127.5  # of values in 0..255: half black, half white


class DataValidationError(RuntimeError):
    """The curated store failed expectations; `.result` holds the full report."""

    def __init__(self, message: str, result: dict[str, Any]):
        super().__init__(message)
        self.result = result


@dataclass
class Check:
    table: str
    expectation: Any  # a gx.expectations.* instance


@dataclass
class Suite:
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    def add(self, table: str, expectation: Any) -> None:
        self.checks.append(Check(table, expectation))


def _frames(store: CuratedStore, cfg: ArmConfig) -> dict[str, pd.DataFrame]:
    con = store.con
    samples = con.execute(f"SELECT {', '.join(SAMPLE_COLUMNS)} FROM samples ORDER BY ord").df()
    samples["meta"] = samples["meta"].astype("string")
    rejections = con.execute("SELECT * FROM rejections ORDER BY ord").df()
    n = max(len(samples), 1)
    split_counts = samples["split"].value_counts()
    splits = pd.DataFrame([{f"frac_{s}": float(split_counts.get(s, 0)) / n for s in SPLITS}])
    task_counts = samples["task"].value_counts()
    tasks = pd.DataFrame([{f"n_{t}": int(task_counts.get(t, 0)) for t in TASKS}])

    run = con.execute("SELECT counts FROM runs WHERE stage = 'curate' ORDER BY finished_at DESC LIMIT 1").fetchone()
    declared = json.loads(run[0])["by_source"] if run else {}
    kept = samples["source"].value_counts()
    rejected = rejections["source"].value_counts()
    names = sorted(set(declared) | set(kept.index) | set(rejected.index))
    reconcile = pd.DataFrame(
        [{"source": s, "n_in": int(declared.get(s, {}).get("in", -1)), "kept": int(kept.get(s, 0)),
          "rejected": int(rejected.get(s, 0))} for s in names],
        columns=["source", "n_in", "kept", "rejected"],
    )
    reconcile["unaccounted"] = reconcile["n_in"] - reconcile["kept"] - reconcile["rejected"]
    missing = con.execute("""
        SELECT count(*) FROM (SELECT image_sha AS sha FROM samples WHERE image_sha IS NOT NULL
                              UNION SELECT source_image_sha FROM samples WHERE source_image_sha IS NOT NULL) r
        WHERE sha NOT IN (SELECT sha256 FROM images)""").fetchone()[0]
    images = pd.DataFrame([{"missing_images": int(missing), "runs": 1 if run else 0}])
    return {
        "samples": samples,
        "image_samples": samples[samples["task"] != "text"].reset_index(drop=True),
        "edit_samples": samples[samples["task"] == "edit"].reset_index(drop=True),
        "rejections": rejections,
        "split_summary": splits,
        "task_summary": tasks,
        "reconcile": reconcile,
        "integrity": images,
    }


def build_suite(frames: dict[str, pd.DataFrame], cfg: ArmConfig) -> Suite:
    import great_expectations as gx

    E = gx.expectations
    f, v = cfg.data.filters, cfg.validation
    s = Suite(frames)
    s.add("samples", E.ExpectTableColumnsToMatchSet(column_set=SAMPLE_COLUMNS, exact_match=True))
    s.add("samples", E.ExpectTableRowCountToBeBetween(min_value=1))
    for col in ("id", "ord", "source", "ref", "task", "split", "text_chars", "meta"):
        s.add("samples", E.ExpectColumnValuesToNotBeNull(column=col))
    s.add("samples", E.ExpectColumnValuesToBeUnique(column="id"))
    s.add("samples", E.ExpectColumnValuesToBeUnique(column="ord"))
    s.add("samples", E.ExpectColumnValuesToBeInSet(column="task", value_set=list(TASKS)))
    s.add("samples", E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)))
    s.add("samples", E.ExpectColumnValuesToBeBetween(column="text_chars", min_value=f.min_text_chars))
    for col in ("image_sha", "width", "height", "aspect", "phash", "pixel_std"):
        s.add("image_samples", E.ExpectColumnValuesToNotBeNull(column=col))
    for prefix, table in (("", "image_samples"), ("source_", "edit_samples")):
        if prefix:
            for col in ("source_image_sha", "source_width", "source_height", "source_pixel_std"):
                s.add(table, E.ExpectColumnValuesToNotBeNull(column=col))
        for side in ("width", "height"):
            s.add(table, E.ExpectColumnValuesToBeBetween(column=prefix + side, min_value=f.min_side,
                                                         max_value=cfg.data.max_pixels))
        s.add(table, E.ExpectColumnValuesToBeBetween(column=prefix + "pixel_std", min_value=f.min_pixel_std,
                                                     max_value=MAX_STD))
    s.add("image_samples", E.ExpectColumnValuesToBeBetween(column="aspect", min_value=1.0 / f.max_aspect,
                                                           max_value=f.max_aspect))
    s.add("image_samples", E.ExpectColumnValuesToMatchRegex(column="image_sha", regex=r"^[0-9a-f]{64}$"))

    s.add("rejections", E.ExpectTableColumnsToMatchSet(
        column_set=["ord", "source", "ref", "task", "reason", "detail", "stage"], exact_match=True))
    for col in ("ord", "source", "ref", "reason", "detail", "stage"):
        s.add("rejections", E.ExpectColumnValuesToNotBeNull(column=col))
    s.add("rejections", E.ExpectColumnValuesToBeInSet(column="stage", value_set=STAGES))

    expected = {"val": cfg.data.splits.val, "test": cfg.data.splits.test}
    expected["train"] = 1.0 - expected["val"] - expected["test"]
    for split in SPLITS:
        s.add("split_summary", E.ExpectColumnMinToBeBetween(
            column=f"frac_{split}", min_value=max(0.0, expected[split] - v.split_tolerance),
            max_value=min(1.0, expected[split] + v.split_tolerance)))
    for task in TASKS:
        s.add("task_summary", E.ExpectColumnMinToBeBetween(column=f"n_{task}", min_value=v.min_per_task.get(task, 0)))
    s.add("reconcile", E.ExpectColumnValuesToBeBetween(column="unaccounted", min_value=0, max_value=0))
    s.add("reconcile", E.ExpectColumnValuesToBeBetween(column="n_in", min_value=0))
    s.add("integrity", E.ExpectColumnMaxToBeBetween(column="missing_images", min_value=0, max_value=0))
    s.add("integrity", E.ExpectColumnMinToBeBetween(column="runs", min_value=1))
    return s


def _observed(res: Any) -> Any:
    r = res.result or {}
    if "observed_value" in r:
        return r["observed_value"]
    if "unexpected_count" in r:
        return {"unexpected_count": r.get("unexpected_count"), "unexpected_percent": r.get("unexpected_percent"),
                "examples": r.get("partial_unexpected_list", [])[:5]}
    if res.exception_info and res.exception_info.get("raised_exception"):
        return {"exception": res.exception_info.get("exception_message")}
    return r


def run_suite(suite: Suite) -> list[dict[str, Any]]:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    ds = ctx.data_sources.add_pandas("curated_store")
    out: list[dict[str, Any]] = []
    for table, frame in suite.frames.items():
        checks = [c for c in suite.checks if c.table == table]
        if not checks:
            continue
        batch_def = ds.add_dataframe_asset(name=table).add_batch_definition_whole_dataframe(f"{table}_all")
        gsuite = ctx.suites.add(gx.ExpectationSuite(name=f"curated_{table}"))
        for c in checks:
            gsuite.add_expectation(c.expectation)
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"validate_{table}", data=batch_def, suite=gsuite))
        result = vd.run(batch_parameters={"dataframe": frame})
        for r in result.results:
            kw = {k: v for k, v in r.expectation_config.kwargs.items() if k not in ("batch_id",)}
            out.append({
                "table": table,
                "expectation": r.expectation_config.type,
                "column": kw.pop("column", None),
                "kwargs": kw,
                "success": bool(r.success),
                "observed": _observed(r),
            })
    return out


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def format_failures(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        if not r["success"]:
            col = f".{r['column']}" if r["column"] else ""
            lines.append(f"  {r['table']}{col}: {r['expectation']} {r['kwargs']} -> observed {r['observed']}")
    return "\n".join(lines)


def validate(cfg: ArmConfig, logger: logging.Logger | None = None) -> dict[str, Any]:
    logger = logger or log
    store_path = Path(cfg.data.store)
    with CuratedStore(store_path) as store:
        frames = _frames(store, cfg)
    suite = build_suite(frames, cfg)
    results = _jsonable(run_suite(suite))
    failed = [r for r in results if not r["success"]]
    report = {
        "stage": "validate",
        "store": str(store_path),
        "success": not failed,
        "n_expectations": len(results),
        "n_failed": len(failed),
        "n_samples": int(len(frames["samples"])),
        "n_rejections": int(len(frames["rejections"])),
        "results": results,
    }
    atomic_write_json(cfg.validation.output, report)
    logger.info("validate: %d/%d expectations passed on %s -> %s", len(results) - len(failed), len(results),
                store_path, cfg.validation.output)
    if failed:
        raise DataValidationError(
            f"curated store {store_path} failed {len(failed)} of {len(results)} expectations:\n"
            + format_failures(results), report)
    return report
