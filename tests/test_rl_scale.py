"""GRPO on the 7b code path at reduced size (DESIGN §7, issue 15): the `7b-mini` preset's RL keeps
every switch of `7b` (2 processes, DeepSpeed ZeRO-3 over gloo, bf16 with fp32 master weights,
activation checkpointing, a sharded reference) and shrinks only the model and the batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from arm.config import load_config
from arm.curves import read_curve
from tests.conftest import REPO
from tests.test_rl import build_model_dir

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("deepspeed")]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A random qwen2 of 7b-mini's shape over the oracle codec, saved in bf16 like a 7b base."""
    cfg = load_config(REPO / "params.yaml", preset="7b-mini")
    model_cfg = cfg.model.model_copy(update={"init_from": None})
    return build_model_dir(tmp_path_factory.mktemp("rl7b") / "arm-base", cfg.world, model_cfg=model_cfg,
                           dtype=torch.bfloat16)


def _overrides(base: Path, out: Path, *extra: str) -> list[str]:
    return [f"rl.base={base}", f"rl.output={out}/arm-rl", f"rl.checkpoints={out}/ck", f"rl.metrics={out}/rl.json",
            f"rl.plot={out}/curve", "rl.rewards.t2i.alignment=0", *extra]


def _run(base: Path, out: Path, *extra: str, stop_after: int | None = None) -> dict:
    from arm.rl.trainer import train_rl_multiprocess

    return train_rl_multiprocess(str(REPO / "params.yaml"), "7b-mini", _overrides(base, out, *extra), 2, stop_after)


def _curve(out: Path) -> list[dict]:
    return read_curve(out / "curve")


def _master_weights(run_root: Path) -> dict[str, torch.Tensor]:
    """The fp32 master weights of the newest checkpoint, consolidated from every rank's ZeRO-3 shards."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    (run_dir,) = [p for p in (run_root / "ck").iterdir() if p.is_dir()]
    tag = (run_dir / "latest").read_text().strip()
    return get_fp32_state_dict_from_zero_checkpoint(str(run_dir / tag), tag="pytorch_model")


def test_7b_rl_config_keeps_the_scale_switches():
    big, mini = load_config(REPO / "params.yaml", preset="7b"), load_config(REPO / "params.yaml", preset="7b-mini")
    for c in (big, mini):
        assert (c.rl.zero_stage, c.rl.precision, c.rl.activation_checkpointing, c.rl.device) == (3, "bf16", True, "auto")
    assert big.rl.nproc == 8 and mini.rl.nproc == 2 and mini.rl.lr == big.rl.lr == 1e-6


def test_one_bf16_step_at_lr_1e6_moves_the_master_weights_and_resume_is_exact(base_dir, tmp_path):
    from safetensors.torch import load_file

    base = {k: v.float() for k, v in load_file(str(base_dir / "model.safetensors")).items()}
    split = tmp_path / "split"
    stopped = _run(base_dir, split, stop_after=1)
    assert stopped["stopped"] == "stop_after"
    master = _master_weights(split)
    # an lr-1e-6 Adam step moves every weight with a gradient by ~1e-6: below bf16's resolution
    # (~1e-4 at these magnitudes), so it survives only in fp32 master weights
    name = "lm.model.layers.0.self_attn.q_proj.weight"
    delta = (master[name] - base[name.removeprefix("lm.")]).abs()
    assert (delta > 0).float().mean() > 0.9, "the update was lost"
    assert 1e-7 < float(delta.median()) < 1e-5
    seen_in_bf16 = (master[name].bfloat16().float() != base[name.removeprefix("lm.")]).float().mean()
    assert seen_in_bf16 < 0.05, "bf16 weights alone would have rounded nearly all of it away"

    metrics = _run(base_dir, split)  # resumes at step 1, ends at step 2
    straight = tmp_path / "straight"
    _run(base_dir, straight)
    assert metrics["steps"] == 2 and metrics["samples"] == 2 * 2 * 2
    keys = ["reward", "loss", "kl", "clip_fraction", "ratio", "lr", "reward_t2i", "reward_edit"]
    a, b = _curve(straight), _curve(split)
    assert [[r.get(k) for k in keys] for r in a] == [[r.get(k) for k in keys] for r in b]
    wa, wb = load_file(str(straight / "arm-rl" / "model.safetensors")), load_file(str(split / "arm-rl" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert {k: v.dtype for k, v in wa.items()} == {k: torch.bfloat16 for k in wa}  # exported like the base
    ma, mb = _master_weights(straight), _master_weights(split)
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert json.loads((straight / "arm-rl" / "manifest.json").read_text())["rl"]["config"]["zero_stage"] == 3


def test_lora_adapters_train_and_the_reference_is_the_base_without_them(base_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    metrics = _run(base_dir, out, "rl.lora={r: 4}", "rl.lr=0.01", "rl.beta=0.1")
    assert metrics["steps"] == 2
    master = _master_weights(out)
    lora_b = [v for k, v in master.items() if "lora_B" in k]
    assert lora_b and all(float(v.abs().max()) > 0 for v in lora_b)  # B starts at zero
    # the optimizer keeps fp32 master weights of the adapters only; the base stays frozen in bf16
    assert {k for k, v in master.items() if v.dtype == torch.float32} == {k for k in master if "lora_" in k}
    rows = _curve(out)
    assert rows[0]["kl"] == 0.0 < rows[1]["kl"]  # the adapters moved the policy off the base
    model = AutoModelForCausalLM.from_pretrained(out / "arm-rl", local_files_only=True)
    assert not any("lora" in k for k in model.state_dict())  # merged: a stock model
