"""Config of GRPO post-training (params.yaml `rl:`).

Reward names are checked against the registry when training starts (arm.rl.rewards imports the
oracle and the world config, which would make this module circular with arm.config).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from arm.configbase import Strict

RLTask = Literal["t2i", "edit"]


class LoraSpec(Strict):
    """Low-rank adapters (PEFT) on the policy's linear layers; the frozen base with the adapters
    disabled is the KL reference, so no second copy of the weights is held."""

    r: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class RLConfig(Strict):
    base: str = "models/arm-base"  # the model dir RL starts from (and the KL reference)
    output: str = "models/arm-rl"
    checkpoints: str = "checkpoints/rl"
    metrics: str = "metrics/rl.json"
    plot: str = "plots/rl"  # dvclive directory of the step curve (arm/curves.py)

    # which tasks are trained (t2i alone / edit alone is the cross-task synergy experiment)
    tasks: list[RLTask] = ["t2i", "edit"]
    # training prompts come from their own stream "rl:<seed>:<i>", never the eval or pretraining ones
    seed: int = 0
    knowledge_fraction: float = Field(0.2, ge=0, le=1)  # t2i prompts that are WISE-style riddles

    steps: int = Field(80, ge=1)  # RL steps (one sampled batch each)
    prompts_per_step: int = Field(8, ge=1)  # tasks alternate over the prompts of a step
    group_size: int = Field(4, ge=2)  # K samples per prompt; advantages are normalised within the group
    temperature: float = Field(1.0, gt=0)  # sampling and log-probs use the same temperature
    # classifier-free guidance of the rollouts; 1 = none. With guidance the log-probs are those of
    # the guided distribution (cond and uncond rows), so the update stays on-policy for the sampler
    # that evaluation and serving use, at twice the forward cost.
    cfg_scale: float = Field(1.0, ge=0)
    sample_batch: int = Field(64, ge=1)  # sequences decoded together

    # the GRPO objective
    clip_eps: float = Field(0.2, gt=0, lt=1)
    beta: float = Field(0.02, ge=0)  # KL to the frozen base; 0 = no reference model is held
    scale_rewards: bool = True  # divide by the group's std (False: Dr. GRPO's mean-centring only)
    updates_per_batch: int = Field(1, ge=1)  # passes over a sampled batch (PPO epochs)
    minibatch_size: int = Field(16, ge=1)  # sequences per optimizer step
    logprob_chunk: int = Field(512, ge=1)  # image positions per LM-head chunk

    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "constant"
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, ge=0)  # 0 = off

    # weights of the registered reward functions per task (arm.rl.rewards.REWARDS)
    rewards: dict[RLTask, dict[str, float]] = {
        "t2i": {"adherence": 1.0, "cleanliness": 0.2, "consistency": 0.2, "alignment": 0.2},
        "edit": {"adherence": 1.0, "preservation": 1.0, "cleanliness": 0.2, "consistency": 0.2},
    }
    pq_tolerance: int = Field(48, ge=0, le=255)  # per-channel distance still counted as clean ink

    log_every: int = Field(5, ge=1)
    checkpoint_every: int = Field(20, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    time_limit_min: float | None = Field(None, gt=0)  # safety net: stop (with a checkpoint) after this
    threads: int | None = Field(None, ge=1)  # torch CPU threads; null = torch default
    device: Literal["auto", "cpu", "cuda"] = "cpu"  # auto: one GPU per process when there are GPUs

    # scale (DESIGN §7): how the policy is held and updated; the CPU presets keep fp32 on one process
    nproc: int = Field(1, ge=1)  # processes on this machine (torchrun); prompts are split over them
    # bf16: bf16 forward/backward with fp32 master weights (DeepSpeed's bf16 optimizer under ZeRO-3,
    # autocast over fp32 parameters otherwise), so an lr-1e-6 update is not rounded away
    precision: Literal["no", "bf16"] = "no"
    zero_stage: Literal[0, 3] = 0  # 3: policy (and reference) sharded over the processes by DeepSpeed ZeRO-3
    activation_checkpointing: bool = False
    lora: LoraSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> "RLConfig":
        if not self.tasks:
            raise ValueError("rl.tasks must name at least one of t2i, edit")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"rl.tasks has duplicates: {self.tasks}")
        for task in self.tasks:
            weights = self.rewards.get(task)
            if not weights:
                raise ValueError(f"rl.rewards.{task}: task {task} is trained but has no reward weights")
            if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
                raise ValueError(f"rl.rewards.{task}: weights must be >= 0 with one > 0, got {weights}")
        if self.warmup_steps > self.steps:
            raise ValueError(f"rl.warmup_steps {self.warmup_steps} > rl.steps {self.steps}")
        if self.prompts_per_step % self.nproc:
            raise ValueError(f"rl.prompts_per_step {self.prompts_per_step} must be a multiple of rl.nproc {self.nproc}")
        if self.minibatch_size % self.nproc:
            raise ValueError(f"rl.minibatch_size {self.minibatch_size} must be a multiple of rl.nproc {self.nproc}")
        if self.betas[0] >= 1 or self.betas[1] >= 1:
            raise ValueError(f"rl.betas must be < 1, got {self.betas}")
        return self
