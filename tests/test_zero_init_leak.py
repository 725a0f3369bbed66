"""A process that built a ZeRO-3 model before importing the visual tokenizer (the GPU smoke:
pretrain, RL, then serving) must still be able to define it: DeepSpeed 0.19's zero.Init leaves
nn.Module owning object's bound __init_subclass__, which refuses the hub mixin's class keywords."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

LEAK = "import torch.nn as nn; nn.Module.__init_subclass__ = nn.Module.__init_subclass__"  # what zero.Init's exit does


def _import_after_leak(module: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", f"{LEAK}; import {module}"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_the_leak_breaks_a_hub_mixin_class_statement():
    code = (f"{LEAK}\nfrom huggingface_hub import PyTorchModelHubMixin\n"
            "class M(nn.Module, PyTorchModelHubMixin, library_name='x'):\n    pass\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "takes no keyword arguments" in res.stderr


def test_visual_tokenizer_imports_after_the_leak():
    res = _import_after_leak("arm.tokenizer.model")
    assert res.returncode == 0, res.stderr
