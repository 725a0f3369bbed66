"""Config of the text tokenizer, sequences, AR model, pretraining and sampling."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from arm.configbase import Strict

TaskName = Literal["understand", "generate", "edit", "text"]


class TextConfig(Strict):
    """Text tokenizer and the training sequences built from it (params.yaml `text:`)."""

    # "bpe": a byte-level BPE trained on the curated train text; anything else is a hub tokenizer
    # name (e.g. Qwen/Qwen2.5-7B), loaded from the local cache only.
    tokenizer: str = "bpe"
    vocab_size: int = Field(512, ge=260)  # BPE target; for a hub tokenizer its expected size (planning offline)
    min_frequency: int = Field(2, ge=1)
    # relative share of documents per task in the training stream
    task_weights: dict[TaskName, float] = {"understand": 1.6, "generate": 1.0, "edit": 0.8, "text": 0.1}
    cfg_dropout: float = Field(0.1, ge=0, lt=1)  # P(condition -> <uncond>) for generate and edit
    seq_len: int = Field(256, ge=16)  # packed row length
    pack_block: int = Field(256, ge=1)  # documents packed together (bigger = less padding)

    @model_validator(mode="after")
    def _check(self) -> "TextConfig":
        if any(w < 0 for w in self.task_weights.values()) or sum(self.task_weights.values()) <= 0:
            raise ValueError(f"task_weights must be >= 0 with a positive sum, got {self.task_weights}")
        return self


class ModelConfig(Strict):
    """The decoder-only transformer (params.yaml `model:`); vocabulary size comes from the layout."""

    # qwen3 = Llama-style blocks plus QK-norm (per-head RMSNorm of queries and keys), which keeps
    # attention from collapsing onto single tokens early in training (Chameleon, OLMo 2, Qwen3).
    arch: Literal["llama", "qwen2", "qwen3"] = "qwen3"
    hidden_size: int = Field(192, ge=8)
    intermediate_size: int = Field(512, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(4, ge=1)
    max_position_embeddings: int = Field(512, ge=16)
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    # Image code = own row + sum of one row per FSQ level (input and output side); DESIGN §5.
    factorized_image_embeddings: bool = True
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    # Hub weights to start from (7b: Qwen/Qwen2.5-7B); null = from scratch. Local cache only.
    init_from: str | None = None

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.num_kv_heads}")
        return self


class PretrainConfig(Strict):
    """Pretraining on a DeepSpeed engine (params.yaml `pretrain:`)."""

    # Where image codes come from: "tokenizer" = the tokenize stage's shards (data/tokens);
    # "oracle" = a perfect tokenizer (one code per grid cell from the scene), the AR model's ceiling.
    images: Literal["tokenizer", "oracle"] = "tokenizer"
    tokens: str = "data/tokens"
    visual_tokenizer: str = "models/tokenizer"
    output: str = "models/arm-base"
    checkpoints: str = "checkpoints/pretrain"
    # The run store shared by all nodes (s3://bucket/prefix, or a path): the text tokenizer,
    # checkpoints and the export are mirrored there, and nodes read each other's files only from
    # it (arm.train.remote). null = one machine. Required when the ranks span several nodes.
    remote: str | None = None
    metrics: str = "metrics/pretrain.json"
    plot: str = "plots/pretrain"  # dvclive directory of the step curve (arm/curves.py)
    # Where examples come from: "store" = the curated store (data.store); "shapes" = scenes drawn
    # straight from the first shapes source (no store; needs images=oracle): tests and ablations.
    data: Literal["store", "shapes"] = "store"

    max_steps: int = Field(1200, ge=1)  # optimizer steps
    micro_batch: int = Field(4, ge=1)  # packed rows per process per micro-step
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(40, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(1.0, ge=0)  # 0 = off
    zero_stage: int = Field(0, ge=0, le=3)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # Recompute each decoder layer in the backward pass instead of keeping its activations: at 7b,
    # 28 layers x seq 4096 of saved activations would not fit next to the model states.
    activation_checkpointing: bool = False
    # Tokens per chunk of the fp32 cross-entropy: logits stay in the model dtype and only one chunk
    # is upcast (and recomputed in the backward), not [tokens, vocab] in fp32 (2.7 GB at 7b).
    loss_chunk: int = Field(1024, ge=1)
    # Training documents as token shards (arm.train.shards), each rank streaming its own units:
    # documents per Parquet file, and per row group (the unit a rank reads and holds in memory).
    shard_docs: int = Field(65536, ge=1)
    row_group_docs: int = Field(1024, ge=1)
    # Processes on this machine (torchrun, gloo on CPU / NCCL on GPU); `arm pretrain --nproc` overrides.
    # On a 2-core CPU, 2 processes x 1 thread beat 1 process x 2 threads (intra-op threads stall
    # whenever a core is taken by another job; measured in benchmarks/pretrain.py).
    nproc: int = Field(1, ge=1)
    threads: int | None = Field(None, ge=1)  # torch CPU threads per process; null = torch default

    log_every: int = Field(10, ge=1)
    eval_every: int = Field(100, ge=1)
    eval_rows: int = Field(32, ge=1)  # validation rows per evaluation (per task stream)
    checkpoint_every: int = Field(200, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    # a safety net, not a schedule: stop (with a checkpoint) once this much wall time has passed
    time_limit_min: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "PretrainConfig":
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} > max_steps {self.max_steps}")
        if self.data == "shapes" and self.images != "oracle":
            raise ValueError("pretrain.data=shapes has no tokenized images: it needs pretrain.images=oracle")
        if self.betas[0] >= 1 or self.betas[1] >= 1:
            raise ValueError(f"betas must be < 1, got {self.betas}")
        if self.precision != "fp32" and self.zero_stage == 0:
            # gradients must accumulate in fp32 over micro-steps; DeepSpeed does that for 16-bit
            # weights only inside a ZeRO optimizer (stage 0 would sum, and lose, them in 16 bits)
            raise ValueError(f"pretrain.precision={self.precision} needs pretrain.zero_stage >= 1 "
                             "(fp32 gradient accumulation)")
        return self


class SamplingConfig(Strict):
    """Defaults of `arm generate/describe/edit`, the pipeline and serving (params.yaml `sampling:`)."""

    # the first of these that exists is the default model (RL-tuned before base)
    model_dirs: list[str] = Field(default_factory=lambda: ["models/arm-rl", "models/arm-base"])
    # auto = cuda when torch sees a GPU, else cpu; resolved once, in arm.device, by every loader
    device: str = Field("cpu", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    # 16-bit is for GPUs (7b: bfloat16); under `auto` on a CPU-only machine it falls back to float32
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    cfg_scale: float = Field(3.0, ge=0)  # 1 = no guidance; applied to image tokens only
    temperature: float = Field(1.0, ge=0)  # image tokens; 0 = greedy
    top_k: int = Field(0, ge=0)  # 0 = off
    top_p: float = Field(1.0, gt=0, le=1)
    text_temperature: float = Field(0.0, ge=0)  # answers of `describe`; 0 = greedy
    max_new_tokens: int = Field(32, ge=1)  # text answers
    jacobi_window: int = Field(0, ge=0)  # draft tokens per speculative Jacobi step; 0 = plain decoding
    # static KV cache + torch.compile'd decode step (CUDA graphs on a GPU): the same tokens, less
    # per-step overhead, one compile per new batch shape: for long-lived samplers (serving, RL)
    compile: bool = False
    batch_size: int = Field(16, ge=1)
    seed: int = 0
