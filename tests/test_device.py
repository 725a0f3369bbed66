"""Where inference runs and in what precision (arm.device): `sampling.device: auto` and the
sampling dtype, resolved once for evaluation, generate/describe/edit and serving."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from arm.config import ConfigError, load_config
from arm.device import resolve_device, resolve_placement

REPO = Path(__file__).resolve().parents[1]


def test_auto_is_cuda_when_torch_sees_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_placement("auto", "bfloat16") == (torch.device("cuda"), torch.bfloat16)
    assert resolve_placement("cuda:1", "float16") == (torch.device("cuda", 1), torch.float16)


def test_auto_without_a_gpu_falls_back_to_cpu_float32_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="arm.device"):
        assert resolve_placement("auto", "bfloat16") == (torch.device("cpu"), torch.float32)
    assert "float32 instead of bfloat16" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="arm.device"):
        assert resolve_placement("auto", "float32") == (torch.device("cpu"), torch.float32)
        # an explicit cpu keeps the precision asked for
        assert resolve_placement("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)
    assert caplog.text == ""
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="dtype 'fp8'"):
        resolve_placement("cpu", "fp8")


def test_7b_samples_on_the_gpu_in_bf16_and_cpu_presets_stay_fp32():
    for preset in ("7b", "7b-mini"):
        s = load_config(REPO / "params.yaml", preset=preset).sampling
        assert (s.device, s.dtype) == ("auto", "bfloat16")
    for preset in ("micro", "tiny", "small"):
        s = load_config(REPO / "params.yaml", preset=preset).sampling
        assert (s.device, s.dtype) == ("cpu", "float32")
    serve = load_config(REPO / "params.yaml", preset="7b").serve
    assert serve.device is None and serve.resources["gpu"] == 1  # serving samples as `sampling:` says
    with pytest.raises(ConfigError, match="sampling.device"):
        load_config(REPO / "params.yaml", overrides=["sampling.device=gpu"])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from arm.serve.smoke import build_random_model

    cfg = load_config(REPO / "params.yaml", preset="micro")
    return build_random_model(cfg, tmp_path_factory.mktemp("device") / "artifacts")


@pytest.mark.parametrize("device, dtype, expect", [
    ("auto", "bfloat16", torch.float32),  # the 7b setting on a CPU-only machine
    ("cpu", "bfloat16", torch.bfloat16),  # asked for explicitly: bf16 sampling on the CPU
])
def test_pipeline_loads_and_samples_where_the_config_says(model_dir, monkeypatch, device, dtype, expect):
    """The one loader of evaluate, generate/describe/edit and serving (ArmPipeline.from_pretrained)."""
    from arm.model.config import SamplingConfig
    from arm.sample.pipeline import ArmPipeline

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pipe = ArmPipeline.from_pretrained(model_dir, config=SamplingConfig(device=device, dtype=dtype, batch_size=4))
    assert pipe.model.device == torch.device("cpu") and pipe.model.dtype == expect
    images = pipe.generate(["a red circle", "a blue square"], cfg_scale=3.0, seed=0)
    assert [im.size for im in images] == [(48, 48)] * 2
    assert isinstance(pipe.describe(images[:1], max_new_tokens=2)[0], str)
