"""The bento as a container: services/bentofile.yaml lists every third-party package the service
imports (or `bentoml containerize` builds an image that fails at import), its `docker:` section
builds on a CUDA base image, and `bentoml build` of a packaged model writes that image's
Dockerfile and requirements offline."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from arm.config import load_config

REPO = Path(__file__).resolve().parents[1]
BENTOFILE = REPO / "services" / "bentofile.yaml"
FIRST_PARTY = {"arm", "services"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def bento_packages() -> set[str]:
    packages = yaml.safe_load(BENTOFILE.read_text())["python"]["packages"]
    return {_norm(re.split(r"[<>=!~\[; ]", p, maxsplit=1)[0]) for p in packages}


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of the non-stdlib, non-project modules a file imports (module level and
    inside functions: a lazy import runs in the worker all the same)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in FIRST_PARTY and n != "__future__"}


def distributions(modules: set[str]) -> dict[str, set[str]]:
    """Import name -> the installed distributions that provide it (PIL -> pillow)."""
    provided = importlib.metadata.packages_distributions()
    return {m: {_norm(d) for d in provided.get(m, [m])} for m in modules}


def _missing(files: list[Path]) -> dict[str, list[str]]:
    listed = bento_packages()
    missing: dict[str, list[str]] = {}
    for f in files:
        for module, dists in distributions(third_party_imports(f)).items():
            if not dists & listed:
                missing.setdefault(module, []).append(str(f.relative_to(REPO)))
    return missing


def test_bentofile_lists_every_import_of_service_py():
    assert _missing([REPO / "services" / "service.py"]) == {}
    assert {"fastapi", "bentoml"} <= bento_packages()


# A model worker's life in one process: the service module imported, a packaged model started as
# the worker starts it, one request of each kind; then the project modules that were loaded.
WORKER = """
import json, sys
import bentoml
import services.service as svc
from PIL import Image
from arm.serve.images import png_base64
from arm.serve.runner import start_worker
from arm.serve.schemas import DescribeItem, EditItem, GenerateItem

runner = start_worker(bentoml.models.get(sys.argv[1]), svc.SERVE, svc.SAMPLING)
png = png_base64(Image.new("RGB", (48, 48), (200, 0, 0)))
knobs = dict(cfg_scale=3.0, temperature=1.0, top_k=0, top_p=1.0, seed=1)
outs = (runner.generate([GenerateItem(prompt="a red circle", **knobs)])
        + runner.edit([EditItem(image=png, instruction="make it blue", **knobs)])
        + runner.describe([DescribeItem(image=png, question=None, max_new_tokens=2, temperature=0.0, seed=1)]))
assert all(o.ok for o in outs), outs
print(json.dumps(sorted({m.__file__ for name, m in list(sys.modules.items())
                         if name.split(".")[0] in ("arm", "services") and getattr(m, "__file__", None)})))
"""


def test_bentofile_lists_every_import_of_the_arm_modules_a_worker_loads(tmp_path):
    from arm.serve.smoke import build_random_model
    from arm.serve.store import package_model

    cfg = load_config(REPO / "params.yaml", preset="micro")
    model_dir = build_random_model(cfg, tmp_path / "artifacts")
    tag, _ = package_model(model_dir, name="armimports", repo=tmp_path)
    env = {**os.environ, "ARM_PRESET": "micro", "ARM_SET": f"serve.model_tag={tag}"}
    out = subprocess.run([sys.executable, "-c", WORKER, tag], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = [Path(f) for f in json.loads(out.stdout.strip().splitlines()[-1])]
    assert REPO / "arm" / "sample" / "engine.py" in loaded and REPO / "arm" / "tokenizer" / "model.py" in loaded
    assert _missing(loaded) == {}


def test_bentofile_docker_section_is_a_cuda_image():
    from bentoml._internal.bento.build_config import BentoBuildConfig
    from bentoml._internal.container.frontend.dockerfile import get_cuda_base_image

    with BENTOFILE.open() as f:
        docker = BentoBuildConfig.from_yaml(f).docker.with_defaults()
    assert (docker.distro, docker.python_version) == ("debian", "3.11")
    assert get_cuda_base_image(docker.distro, docker.cuda_version).startswith("nvidia/cuda:12.8.1-cudnn-runtime")
    assert docker.env["HF_HUB_OFFLINE"] == "1"


@pytest.mark.slow
def test_bento_build_writes_a_cuda_dockerfile_offline(tmp_path):
    """`bentoml build` of a packaged model (as `arm package` runs it): the bento's Dockerfile
    starts from the CUDA image and its requirements hold the service's imports."""
    import bentoml

    from arm.serve.package import build_bento
    from arm.serve.smoke import build_random_model
    from arm.serve.store import package_model

    cfg = load_config(REPO / "params.yaml", preset="micro")
    tag, _ = package_model(build_random_model(cfg, tmp_path / "artifacts"), name="armbuild", repo=tmp_path)
    bento = bentoml.get(build_bento(REPO, tag, name="armbuildsvc", preset="micro"))
    dockerfile = (Path(bento.path) / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04" in dockerfile
    requirements = (Path(bento.path) / "env" / "python" / "requirements.txt").read_text()
    assert {"fastapi", "httpx", "torch", "bentoml"} <= {_norm(re.split(r"[<>=]", r)[0]) for r in requirements.split()}
    assert tag in {str(m.tag) for m in bento.info.all_models}
