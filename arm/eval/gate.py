"""The promotion gate: a candidate's eval metrics against thresholds and the promoted model.

Three kinds of check, all from params.yaml `gate:` (keys `benchmark.metric`, higher is better):
`thresholds` (absolute minimum), `min_over_floor` (the score must beat the prior-only floor
measured in the same run by a margin, so a model that ignores its input cannot pass), and
`max_regression` (no metric may drop below the promoted model's recorded score by more than
its tolerance, a fraction of the metric's range: the promoted record's reconstruction - floor, 1 where
none is recorded). A missing metric fails its check, in the candidate or in the promoted record.
Regression needs the promoted model scored on the same held-out prompt sets: other sets fail the
gate, naming both, until the promoted model is re-scored on the current ones (`rescore_promoted`:
the same weights, checked by content hash, evaluated again).

The result records the candidate's content hash (every file of its model dir), so `arm package`
can refuse any model that no passing gate run has vouched for.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.table import Table

from arm.config import ArmConfig
from arm.io import atomic_write_json, sha256_file

RESCORE_HINT = ("re-evaluate the promoted model on the current prompt sets and record it with "
                "`arm gate --candidate <its eval metrics> --rescore-promoted`")


class GateError(ValueError):
    """An unreadable candidate metrics file or promoted record; the message names it."""


@dataclass
class Check:
    kind: str  # threshold | over_floor | regression | comparable
    metric: str
    value: float | None
    limit: float | None
    passed: bool
    reference: float | None = None  # the floor or the promoted model's score
    note: str = ""


@dataclass
class GateResult:
    passed: bool
    candidate: str
    candidate_metrics: str
    promoted: str | None
    checks: list[Check] = field(default_factory=list)
    candidate_sha256: str | None = None  # content hash of the candidate's model dir (None: dir not found)

    def to_json(self) -> dict:
        return {**asdict(self), "failed": [f"{c.kind}:{c.metric}" for c in self.checks if not c.passed]}


def _read(path: str | Path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise GateError(f"{what} {path}: not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise GateError(f"{what} {path}: invalid JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("scores"), dict):
        raise GateError(f"{what} {path}: no `scores` table (is it an `arm evaluate` metrics file?)")
    return data


def model_content_sha256(model_dir: str | Path) -> str:
    """One hash over every file of a model dir (relative path and content): the identity a gate
    verdict and a package are checked against."""
    import hashlib

    root = Path(model_dir)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(root).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def candidate_sha256(metrics: dict) -> str | None:
    model_dir = metrics.get("model_dir")
    return model_content_sha256(model_dir) if model_dir and Path(model_dir).is_dir() else None


def metric_range(record: dict, key: str) -> float:
    """The span a regression tolerance is a fraction of: reconstruction - floor as recorded, else [0, 1]."""
    top, floor = lookup(record, "reconstruction", key), lookup(record, "floor", key)
    return max(0.0, (1.0 if top is None else top) - (0.0 if floor is None else floor))


def lookup(metrics: dict, section: str, key: str) -> float | None:
    bench, _, metric = key.partition(".")
    value = (metrics.get(section) or {}).get(bench, {}).get(metric)
    return None if value is None else float(value)


def gate(
    cfg: ArmConfig,
    candidate_metrics: str | Path,
    promoted_record: str | Path | None = None,
    *,
    output: str | Path | None = None,
    console: Console | None = None,
) -> GateResult:
    """Checks the candidate, prints the table, writes the result (atomically) and returns it."""
    g = cfg.gate
    cand = _read(candidate_metrics, "candidate metrics")
    record_path = Path(promoted_record or g.promoted)
    promoted = _read(record_path, "promoted record") if record_path.is_file() else None
    checks: list[Check] = []

    for key, limit in g.thresholds.items():
        v = lookup(cand, "scores", key)
        checks.append(Check("threshold", key, v, limit, v is not None and v >= limit,
                            note="" if v is not None else "missing from candidate"))
    for key, margin in g.min_over_floor.items():
        v, floor = lookup(cand, "scores", key), lookup(cand, "floor", key)
        ok = v is not None and floor is not None and v - floor >= margin
        note = "" if v is not None and floor is not None else "score or floor missing from candidate"
        checks.append(Check("over_floor", key, v, None if floor is None else floor + margin, ok, floor, note))
    if promoted is not None:
        theirs = (promoted.get("prompts") or {}).get("manifest_sha256")
        ours = (cand.get("prompts") or {}).get("manifest_sha256")
        if theirs != ours:
            checks.append(Check("comparable", "prompts", None, None, False,
                                note=f"promoted model {promoted.get('model')!r} ({record_path}) was scored on prompt "
                                     f"sets {str(theirs)[:12]}, the candidate on {str(ours)[:12]}: {RESCORE_HINT}"))
        else:
            for key, tol in g.max_regression.items():
                v, ref = lookup(cand, "scores", key), lookup(promoted, "scores", key)
                if ref is None:
                    checks.append(Check("regression", key, v, None, False, None,
                                        f"not in the promoted record {record_path}: {RESCORE_HINT}"))
                    continue
                limit = ref - tol * metric_range(promoted, key)
                ok = v is not None and v >= limit
                checks.append(Check("regression", key, v, limit, ok, ref, "" if v is not None else "missing from candidate"))
    result = GateResult(
        passed=all(c.passed for c in checks),
        candidate=str(cand.get("model")),
        candidate_metrics=str(candidate_metrics),
        promoted=None if promoted is None else str(promoted.get("model")),
        checks=checks,
        candidate_sha256=candidate_sha256(cand),
    )
    atomic_write_json(output or g.output, result.to_json())
    print_table(result, console or Console())
    return result


def print_table(result: GateResult, console: Console) -> None:
    table = Table(title=f"gate: {result.candidate} vs {result.promoted or 'thresholds only (nothing promoted)'}")
    for col in ("check", "metric", "value", "limit", "ref", "result"):
        table.add_column(col, justify="right" if col in ("value", "limit", "ref") else "left", no_wrap=True)
    fmt = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
    for c in result.checks:
        verdict = "[green]pass[/green]" if c.passed else "[red]FAIL[/red]"
        table.add_row(c.kind, c.metric, fmt(c.value), fmt(c.limit), fmt(c.reference), verdict)
    console.print(table)
    for c in result.checks:
        if c.note:
            console.print(f"  {c.kind} {c.metric}: {c.note}", highlight=False)
    console.print("limit: the lowest passing value; ref: the floor (over_floor) or the promoted "
                  "model's score (regression)", style="dim", highlight=False)
    console.print("[bold green]PASSED[/bold green]" if result.passed else "[bold red]REJECTED[/bold red]")


def promote(
    cfg: ArmConfig,
    result: GateResult,
    candidate_metrics: str | Path,
    promoted_record: str | Path | None = None,
) -> dict:
    """Records a candidate that passed the gate as the promoted model (its scores travel with it)."""
    if not result.passed:
        raise GateError(f"{result.candidate}: failed the gate ({', '.join(result.to_json()['failed'])}); not promoted")
    if Path(result.candidate_metrics).resolve() != Path(candidate_metrics).resolve():
        raise GateError(f"gate result is for {result.candidate_metrics}, not {candidate_metrics}")
    cand = _read(candidate_metrics, "candidate metrics")
    record = {
        "model": cand.get("model"),
        "model_dir": cand.get("model_dir"),
        "model_sha256": result.candidate_sha256,
        "preset": cand.get("preset"),
        "metrics_path": str(candidate_metrics),
        "metrics_sha256": sha256_file(candidate_metrics),
        "prompts": cand.get("prompts"),
        "scores": cand["scores"],
        "floor": cand.get("floor", {}),
        "reconstruction": cand.get("reconstruction", {}),
        "promoted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "replaced": result.promoted,
    }
    atomic_write_json(promoted_record or cfg.gate.promoted, record)
    return record


def rescore_promoted(cfg: ArmConfig, metrics: str | Path, promoted_record: str | Path | None = None) -> dict:
    """Replace the promoted record's scores with `metrics`, an evaluation of the very same model
    (same content hash) on the current prompt sets, so candidates can be compared with it again."""
    record_path = Path(promoted_record or cfg.gate.promoted)
    record = _read(record_path, "promoted record")
    cand = _read(metrics, "re-scored metrics")
    sha = candidate_sha256(cand)
    if not record.get("model_sha256") or sha != record["model_sha256"]:
        raise GateError(f"{metrics}: model {cand.get('model_dir')!r} (content {str(sha)[:12]}) is not the promoted "
                        f"model of {record_path} (content {str(record.get('model_sha256'))[:12]}); not re-scored")
    record.update({"metrics_path": str(metrics), "metrics_sha256": sha256_file(metrics), "prompts": cand.get("prompts"),
                   "scores": cand["scores"], "floor": cand.get("floor", {}), "reconstruction": cand.get("reconstruction", {}),
                   "rescored_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    atomic_write_json(record_path, record)
    return record
