"""dvc.yaml is consistent with params.yaml and with the pipeline's stage order."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from arm.orchestration.stages import PIPELINE_STAGES
from repo_copy import REPO, run


def _paths(entries: list) -> list[str]:
    return [e if isinstance(e, str) else next(iter(e)) for e in entries]


def test_every_stage_param_key_exists_in_params_yaml_for_every_preset():
    """`dvc exp run -S preset=P` templates `presets.${preset}`: the key must exist for each P."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert "tiny" in params["presets"]
    missing = []
    for preset in params["presets"]:
        for name, stage in stages.items():
            for key in stage.get("params", []):
                node = params
                for part in key.replace("${preset}", preset).split("."):
                    if not isinstance(node, dict) or part not in node:
                        missing.append(f"{preset}: {name}: {key}")
                        break
                    node = node[part]
    assert not missing


def _dvc_status(root: Path) -> dict:
    return json.loads(run(["dvc", "status", "--json"], root) or "{}")


def _edit_params(root: Path, edit) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    edit(params)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_editing_one_preset_stales_only_runs_of_that_preset(tmp_path):
    """dvc.yaml and params.yaml in a fresh DVC repo whose deps and outs are small files, recorded
    in dvc.lock by `dvc commit` as if the pipeline had run; then only params change."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    for stage in stages.values():
        for rel in _paths(sum((stage.get(k, []) for k in ("deps", "outs", "metrics", "plots")), [])):
            path = root / rel if Path(rel).suffix else root / rel / "content"  # a folder: arm/data, models/...
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(rel)
    run(["dvc", "commit", "-f", "-q"], root)
    assert _dvc_status(root) == {}

    def bump_7b(params):
        params["presets"]["7b"]["rl"]["steps"] += 1
        params["presets"]["micro"]["rl"]["steps"] += 1

    _edit_params(root, bump_7b)
    assert _dvc_status(root) == {}  # the tiny run ignores every other preset

    _edit_params(root, lambda params: params["rl"].update(steps=params["rl"]["steps"] + 1))
    assert set(_dvc_status(root)) == {"rl"}  # a base value stales the stages that read its section

    _edit_params(root, lambda params: params.update(preset="micro"))
    run(["dvc", "commit", "-f", "-q"], root)
    assert _dvc_status(root) == {}
    _edit_params(root, bump_7b)
    assert set(_dvc_status(root)) == set(stages)  # every micro stage reads presets.micro
    changed = _dvc_status(root)["curate"][0]["changed deps"]["params.yaml"]
    assert changed == {"presets.micro": "modified"}, changed


def test_gate_record_artifacts_and_plots_are_stage_outputs():
    from arm.config import load_config

    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    outs = {p: name for name, stage in dvc["stages"].items() for p in _paths(stage.get("outs", []))}
    cfg = load_config(REPO / "params.yaml")
    assert outs[cfg.gate.promoted] == "gate"  # `arm gate --promote` writes it: an out, kept across runs
    gate_outs = dvc["stages"]["gate"]["outs"]
    assert {cfg.gate.promoted: {"persist": True}} in gate_outs
    artifacts = dvc["artifacts"]
    assert {a["path"] for a in artifacts.values()} == {cfg.tokenizer.output, cfg.pretrain.output, cfg.rl.output}
    assert all(a["type"] == "model" and a["path"] in outs for a in artifacts.values())
    for plot in dvc["plots"]:
        (props,) = plot.values()
        assert props["x"] == "step"
        for path in props["y"]:
            assert path in outs or any(path.startswith(o + "/") for o in outs), path


def test_pipeline_order_covers_every_dvc_stage_after_its_deps():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert set(stages) == set(PIPELINE_STAGES)
    produced_by = {}
    for name, stage in stages.items():
        for out in stage.get("outs", []) + stage.get("metrics", []):
            produced_by[out if isinstance(out, str) else next(iter(out))] = name
    for name, stage in stages.items():
        for dep in stage.get("deps", []):
            if dep in produced_by:
                assert PIPELINE_STAGES.index(produced_by[dep]) < PIPELINE_STAGES.index(name), (dep, name)


def test_every_stage_command_is_an_arm_command_the_pipeline_runs_in_process():
    """The pipeline flow runs a stale stage's dvc.yaml command through the `arm` CLI in its own process."""
    import typer

    from arm.cli import app
    from arm.orchestration.stages import stage_command

    commands = typer.main.get_command(app).commands
    for stage in PIPELINE_STAGES:
        args = stage_command(REPO, stage)
        assert args[0] in commands, (stage, args)


def test_presets_tiny_exists_for_dvc_and_refuses_overrides(tmp_path):
    """tiny is the base values: an override put under presets.tiny would be silently ignored."""
    import pytest

    from arm.config import ConfigError, load_config

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["presets"]["tiny"] == {}
    params["presets"]["tiny"] = {"rl": {"steps": 1}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="presets.tiny must stay empty"):
        load_config(path)


def _logged_metrics() -> dict[str, set[str]]:
    """What each trainer logs per step (arm.curves), by its curve directory in params.yaml."""
    from arm.config import load_config
    from arm.rl.trainer import curve_columns
    from arm.text.sequences import TASKS
    from arm.tokenizer.train import LOSS_NAMES

    cfg = load_config(REPO / "params.yaml")
    return {cfg.tokenizer.plots: {"loss", *LOSS_NAMES, "lr"},
            cfg.pretrain.plot: {"tokens", "lr", "loss", *(f"loss_{t}" for t in TASKS), *(f"val_{t}" for t in TASKS)},
            cfg.rl.plot: set(curve_columns(cfg)) - {"step"}}


def test_dvc_plots_draw_the_curves_the_trainers_write(tmp_path):
    from arm.curves import write_curve

    logged = _logged_metrics()
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    for plot in plots:
        (props,) = plot.values()
        for path, column in props["y"].items():
            curve_dir = path.removesuffix(f"/plots/metrics/{column}.tsv")
            assert column in logged.get(curve_dir, ()), (path, column)

    root = tmp_path / "repo"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    run(["git", "init", "-q"], root)  # no commit yet: writing a curve must not need one
    run(["dvc", "init", "-q"], root)
    for curve_dir, names in logged.items():
        write_curve(root / curve_dir, [{"step": s, **{n: s / 10 for n in names}} for s in (1, 2, 3)])
    shown = json.loads(run(["dvc", "plots", "show", "--json"], root))
    assert "errors" not in shown, shown.get("errors")
    for plot in plots:
        ((plot_id, props),) = plot.items()
        (view,) = shown["data"][plot_id]
        values = view["content"]["data"]["values"]
        for path, column in props["y"].items():
            points = [v for v in values if column in v]  # each point carries its own file's column
            assert [(v["step"], v[column]) for v in points] == [("1", "0.1"), ("2", "0.2"), ("3", "0.3")], (plot_id, path)
