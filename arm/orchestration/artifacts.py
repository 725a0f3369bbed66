"""What a run shows on its Prefect page: the stage results as table, Markdown and link artifacts.

Each artifact has a fixed key, so the UI's Artifacts page keeps one history per result (curation
counts, validation failures, scores per model, gate decision) across runs; the rows are built by
pure functions here and published by the stage flows, inside their flow run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

CURATION = "curation-counts"
VALIDATION = "data-validation-failures"
GATE = "gate-decision"
STAGES = "pipeline-stages"


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from free text such as a model name."""
    key = re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
    if not key:
        raise ValueError(f"artifact key from {parts!r} is empty")
    return key


def eval_scores_key(model: str) -> str:
    return artifact_key("eval-scores", model)


def eval_report_key(model: str) -> str:
    return artifact_key("eval-report", model)


# ----------------------------------------------------------------------------- rows


def curation_rows(metrics: dict) -> list[dict[str, Any]]:
    """One row per source (records in, kept, rejected and why), then the total."""
    def reasons(by_reason: dict[str, int]) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(by_reason.items())) or "-"

    rows = [{"source": name, "in": s["in"], "kept": s["kept"], "rejected": s["rejected"],
             "rejected by reason": reasons(s.get("rejected_by_reason", {}))}
            for name, s in sorted(metrics["by_source"].items())]
    rows.append({"source": "total", "in": metrics["n_in"], "kept": metrics["n_kept"], "rejected": metrics["n_rejected"],
                 "rejected by reason": reasons(metrics.get("rejected_by_reason", {}))})
    return rows


def validation_failures(result: dict) -> list[dict[str, Any]]:
    """The failed expectations of a validation report (arm.data.validate), observed values as JSON."""
    return [{"table": r.get("table"), "column": r.get("column"), "expectation": r["expectation"],
             "kwargs": json.dumps(r.get("kwargs", {}), sort_keys=True, default=str),
             "observed": json.dumps(r.get("observed"), sort_keys=True, default=str)}
            for r in result["results"] if not r["success"]]


def score_rows(metrics: dict) -> list[dict[str, Any]]:
    """The evaluation's headline scores per split with their 95% intervals, floor and reconstruction."""
    from arm.eval.report import headline_table
    from arm.render import fmt_interval

    rows = []
    for row in headline_table(metrics):
        cells = {col: fmt_interval(*cell) or "-" for col, cell in row["cells"].items()}
        rows.append({"metric": row["metric"], **cells, "floor": fmt_interval(row["floor"]) or "-",
                     "reconstruction": fmt_interval(row["reconstruction"]) or "-"})
    return rows


def gate_markdown(result: dict) -> str:
    """The gate's verdict and every check it made."""
    verdict = "PASSED" if result["passed"] else "REJECTED"
    lines = [f"## {result['candidate']}: {verdict}", ""]
    if result.get("promoted"):
        lines += [f"Compared with the promoted model `{result['promoted']}`.", ""]
    for c in result["checks"]:
        mark = "pass" if c["passed"] else "**FAIL**"
        ref = f", promoted {c['reference']}" if c.get("reference") is not None else ""
        note = f" ({c['note']})" if c.get("note") else ""
        lines.append(f"- {mark} {c['kind']} `{c['metric']}`: {c['value']} (limit {c['limit']}{ref}){note}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- publishing (inside a run)


def publish_curation(metrics: dict) -> None:
    split = ", ".join(f"{k} {v}" for k, v in sorted(metrics["kept_by_split"].items()))
    task = ", ".join(f"{k} {v}" for k, v in sorted(metrics["kept_by_task"].items()))
    create_table_artifact(curation_rows(metrics), key=CURATION,
                          description=f"Curated into `{metrics['store']}`: kept by split {split}; by task {task}.")


def publish_validation(result: dict) -> None:
    verdict = "all passed" if not result["n_failed"] else f"{result['n_failed']} failed"
    create_table_artifact(validation_failures(result), key=VALIDATION,
                          description=f"{result['n_expectations']} expectations on `{result['store']}`: {verdict}.")


def publish_evaluation(metrics: dict, report: Path) -> None:
    model = metrics["model"]
    create_table_artifact(score_rows(metrics), key=eval_scores_key(model),
                          description=f"Headline scores of `{model}` (95% intervals over items).")
    create_link_artifact(report.resolve().as_uri(), link_text=f"evaluation report of {model}",
                         key=eval_report_key(model))


def publish_gate(result: dict) -> None:
    create_markdown_artifact(gate_markdown(result), key=GATE, description=f"Gate decision on {result['candidate']}")


def publish_stages(states: dict[str, str]) -> None:
    create_table_artifact([{"stage": s, "state": st} for s, st in states.items()], key=STAGES,
                          description="Stages run or skipped (up to date in dvc.lock) by this pipeline run.")
