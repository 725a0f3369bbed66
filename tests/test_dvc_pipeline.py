"""dvc.yaml is consistent with params.yaml and with the pipeline's stage order."""

from __future__ import annotations

from pathlib import Path

import yaml

from arm.orchestration.stages import PIPELINE_STAGES
from repo_copy import REPO


def test_every_stage_param_key_exists_in_params_yaml():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    missing = []
    for name, stage in stages.items():
        for key in stage.get("params", []):
            node = params
            for part in key.split("."):
                if not isinstance(node, dict) or part not in node:
                    missing.append(f"{name}: {key}")
                    break
                node = node[part]
    assert not missing


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


def test_stage_commands_find_this_environments_arm_without_an_activated_venv():
    """`make demo` calls .venv/bin/arm with a bare PATH; DVC's `arm <stage>` must still resolve."""
    import subprocess
    import sys

    code = ("import shutil; from arm.orchestration.stages import put_own_scripts_on_path; "
            "put_own_scripts_on_path(); put_own_scripts_on_path(); import os; "
            "print(shutil.which('arm')); print(os.environ['PATH'])")
    out = subprocess.run([sys.executable, "-c", code], env={"PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == str(Path(sys.executable).parent / "arm")
    assert out[1] == f"{Path(sys.executable).parent}:/usr/bin:/bin"  # prepended once, nothing lost
