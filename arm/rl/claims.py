"""Reproducing the ARM paper's two RL claims at small scale (issue item 4).

(a) RL improves its target tasks: RL on T2I + editing, measured against the base on held-out
    prompts (shapes_geneval overall, shapes_wise score, shapes_edit overall), while understanding
    (VQA) drops by no more than a tolerance.
(b) Cross-task synergy: RL on T2I alone measured on editing, and RL on editing alone measured on
    T2I; the table is reported whatever the sign.

Every run is `arm rl` with `rl.seed=S` and `rl.tasks=[...]` into its own model dir, evaluated
by the evaluate stage (arm.eval.run.evaluate); the base is evaluated once. Mean +- std over seeds.
Outputs: metrics/rl_claims_<preset>.json and reports/rl_claims_<preset>.md. Finished RL runs are found again
(their checkpoints) and evaluations whose metrics are newer than the model are reused, so an
interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path

from arm.config import ArmConfig, load_config
from arm.io import atomic_write_json, atomic_write_text

log = logging.getLogger("arm.rl.claims")

TASK_SETS = {"both": ["t2i", "edit"], "t2i": ["t2i"], "edit": ["edit"]}
METRICS = (
    "shapes_geneval.overall",
    "shapes_wise.score",
    "shapes_edit.overall",
    "shapes_edit.success",
    "understanding.vqa_accuracy",
    "understanding.caption_f1",
)
# (a): minimum change of each target metric under RL on both tasks (understanding: a floor)
TARGETS = {
    "shapes_geneval.overall": 0.05,
    "shapes_wise.score": 1e-9,  # "up"
    "shapes_edit.overall": 0.5,
    "understanding.vqa_accuracy": -0.02,
}
# (b): which metrics measure the *other* task of a single-task run
SYNERGY = {"t2i": ("shapes_edit.overall", "shapes_edit.success"), "edit": ("shapes_geneval.overall", "shapes_wise.score")}
BENCHMARKS = ["shapes_geneval", "shapes_wise", "shapes_edit", "understanding"]


def _get(scores: dict, key: str) -> float | None:
    bench, metric = key.split(".", 1)
    v = scores.get(bench, {}).get(metric)
    return None if v is None else float(v)


def _mean_std(xs: list[float]) -> dict:
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def _pipeline_for(cfg: ArmConfig, model_dir: Path):
    """An oracle-tokenizer model needs the oracle as its visual tokenizer; others load as usual."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    ref = manifest.get("visual_tokenizer")
    if not (isinstance(ref, dict) and ref.get("kind") == "oracle"):
        return None
    from arm.device import resolve_placement
    from arm.model.io import load_model
    from arm.rl.codec import OracleVisualTokenizer
    from arm.sample.pipeline import ArmPipeline

    device, dtype = resolve_placement(cfg.sampling.device, cfg.sampling.dtype)
    model, tok, layout, _ = load_model(model_dir, device=device, dtype=dtype)
    return ArmPipeline(model, tok, layout, OracleVisualTokenizer(cfg.world), cfg.sampling)


def evaluate_model(cfg: ArmConfig, model_dir: Path, name: str) -> dict:
    from arm.eval.run import evaluate, metrics_path

    path = metrics_path(cfg, name)
    weights = model_dir / "model.safetensors"
    if path.is_file() and weights.is_file() and path.stat().st_mtime > weights.stat().st_mtime:
        cached = json.loads(path.read_text())
        if cached.get("model_dir") == str(model_dir):
            log.info("reusing %s", path)
            return cached
    return evaluate(cfg, model_dir, pipeline=_pipeline_for(cfg, model_dir), name=name)


def finished_run(cfg: ArmConfig, base_sha256: dict) -> dict | None:
    """The metrics of an RL run that already finished into `rl.output` with this config and base
    weights (`base_sha256`, as arm.rl.trainer.base_identity records them).

    Training again would only re-export the same weights, which makes their evaluation stale, so
    a resumed experiment (or a second process working on other task sets) reuses the run.
    """
    metrics_file, manifest_file = Path(cfg.rl.metrics), Path(cfg.rl.output) / "manifest.json"
    if not (metrics_file.is_file() and manifest_file.is_file()):
        return None
    metrics = json.loads(metrics_file.read_text())
    record = json.loads(manifest_file.read_text()).get("rl", {})
    if (metrics.get("stopped") != "done" or record.get("config") != cfg.rl.model_dump(mode="json")
            or record.get("base", {}).get("sha256") != base_sha256):
        return None
    return metrics


def run_claims(
    params: str | Path,
    preset: str | None,
    overrides: list[str] | None,
    seeds: list[int],
    task_sets: list[str],
    out_root: str = "models/rl-claims",
    benchmarks: list[str] | None = None,
    metrics_out: str | None = None,
    report_out: str | None = None,
    plots_dir: str = "plots/rl_claims",
) -> dict:
    from arm.rl.trainer import base_identity, train_rl

    unknown = [t for t in task_sets if t not in TASK_SETS]
    if unknown:
        raise ValueError(f"unknown task sets {unknown}; known: {list(TASK_SETS)}")
    if not seeds:
        raise ValueError("give at least one seed")
    benches = benchmarks or BENCHMARKS
    common = [*(overrides or []), f"eval.benchmarks=[{', '.join(benches)}]"]
    base_cfg = load_config(params, preset, common)
    metrics_out = metrics_out or f"metrics/rl_claims_{base_cfg.preset}.json"
    report_out = report_out or f"reports/rl_claims_{base_cfg.preset}.md"
    base_dir = Path(base_cfg.rl.base)
    if not base_dir.is_dir():
        raise FileNotFoundError(f"rl.base {base_dir}: model dir not found (run `arm pretrain` first)")
    if not (Path(base_cfg.eval.prompts.dir) / "manifest.json").is_file():
        from arm.eval.prompts import build_prompt_sets

        log.info("no held-out prompt sets in %s: building them (arm eval-prompts)", base_cfg.eval.prompts.dir)
        build_prompt_sets(base_cfg)
    base_scores = evaluate_model(base_cfg, base_dir, f"claims_{base_cfg.preset}_base")["scores"]
    base_sha256 = base_identity(base_dir)["sha256"]

    runs: dict[str, dict[int, dict]] = {}
    for ts in task_sets:
        for seed in seeds:
            tag = f"{ts}-s{seed}"
            cfg = load_config(params, preset, [
                *common, f"rl.seed={seed}", f"rl.tasks=[{', '.join(TASK_SETS[ts])}]", f"rl.output={out_root}/{tag}",
                f"rl.metrics={Path(metrics_out).parent}/rl_claims/{tag}.json",
                f"rl.plot={plots_dir}/{tag}.csv",
            ])
            log.info("RL %s (seed %d, tasks %s)", tag, seed, cfg.rl.tasks)
            rl_metrics = finished_run(cfg, base_sha256)
            if rl_metrics is None:
                rl_metrics = train_rl(cfg)
            else:
                log.info("RL %s finished before: reusing %s", tag, cfg.rl.output)
            scores = evaluate_model(cfg, Path(cfg.rl.output), f"claims_{cfg.preset}_{ts}_s{seed}")["scores"]
            runs.setdefault(ts, {})[seed] = {"scores": scores, "rl": {"rewards": rl_metrics["rewards"],
                                                                     "kl_final": rl_metrics["kl_final"],
                                                                     "train_seconds": rl_metrics["train_seconds"]}}

    table = {}
    for ts, by_seed in runs.items():
        table[ts] = {}
        for key in METRICS:
            base = _get(base_scores, key)
            vals = [v for v in (_get(r["scores"], key) for r in by_seed.values()) if v is not None]
            deltas = [v - base for v in vals] if base is not None else []
            table[ts][key] = {"base": base, "rl": _mean_std(vals), "delta": _mean_std(deltas)}

    claims = {}
    if "both" in table:
        checks = {}
        for key, need in TARGETS.items():
            d = table["both"][key]["delta"]["mean"]
            checks[key] = {"delta": d, "target": need, "met": d is not None and d >= need}
        claims["a_rl_improves_targets"] = {"checks": checks, "met": all(c["met"] for c in checks.values())}
    synergy = {}
    for ts, keys in SYNERGY.items():
        if ts in table:
            synergy[f"rl_on_{ts}"] = {k: table[ts][k]["delta"] for k in keys}
    if synergy:
        claims["b_cross_task_synergy"] = synergy

    result = {"preset": base_cfg.preset, "seeds": seeds, "task_sets": task_sets, "base": str(base_dir),
              "overrides": list(overrides or []),
              "base_scores": base_scores, "table": table, "claims": claims,
              "runs": {ts: {str(s): r for s, r in v.items()} for ts, v in runs.items()}}
    atomic_write_json(metrics_out, result)
    atomic_write_text(report_out, render_report(result))
    return result


def _fmt(ms: dict, signed: bool = False) -> str:
    if ms["mean"] is None:
        return "n/a"
    sign = "+" if signed else ""
    return f"{ms['mean']:{sign}.3f} ± {ms['std']:.3f}"


def render_report(result: dict) -> str:
    lines = [
        f"# RL claims at small scale (preset `{result['preset']}`, seeds {result['seeds']})",
        "",
        f"Base model: `{result['base']}`. Each RL run: `arm rl --preset {result['preset']} --set rl.seed=S "
        "--set rl.tasks=[...]" + "".join(f" --set {o}" for o in result.get("overrides", [])) + "`, evaluated on "
        "the held-out prompt sets. Mean ± std over seeds.",
        "",
        "| RL on | metric | base | after RL | change |",
        "|---|---|---|---|---|",
    ]
    for ts, rows in result["table"].items():
        for key, row in rows.items():
            base = "n/a" if row["base"] is None else f"{row['base']:.3f}"
            lines.append(f"| {ts} | {key} | {base} | {_fmt(row['rl'])} | {_fmt(row['delta'], signed=True)} |")
    claims = result["claims"]
    if "a_rl_improves_targets" in claims:
        a = claims["a_rl_improves_targets"]
        lines += ["", f"## (a) RL improves its target tasks: {'met' if a['met'] else 'NOT met'}", ""]
        for key, c in a["checks"].items():
            d = "n/a" if c["delta"] is None else f"{c['delta']:+.3f}"
            lines.append(f"- {key}: change {d}, target >= {c['target']:+g}: {'met' if c['met'] else 'not met'}")
    if "b_cross_task_synergy" in claims:
        lines += ["", "## (b) Cross-task synergy (change on the task RL did not train)", ""]
        for run, keys in claims["b_cross_task_synergy"].items():
            lines.append(f"- {run}: " + ", ".join(f"{k} {_fmt(v, signed=True)}" for k, v in keys.items()))
    return "\n".join(lines) + "\n"
