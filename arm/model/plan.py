"""Size a preset before training it: parameters, FLOPs per token, and memory per GPU of every stage.

Models are instantiated on the meta device or under torch's FakeTensorMode (shapes, no memory),
so this plans the 7b preset on a laptop. Activation memory is *measured*, not estimated from a
formula: the real transformers modules run forward (and backward) on fake tensors while torch's
MemTracker counts the bytes of every tensor alive, so recomputation (activation checkpointing),
the attention kernel's saved tensors and the chunked fp32 loss are all what the code does.

Fake runs of a 28-layer model are slow (MemTracker's bookkeeping grows with the module count),
so a run is measured at 2 and 3 layers and extrapolated linearly (`_by_depth`): in training
every layer adds the same tensors (its checkpointed input, or all its saved activations
without checkpointing) and everything else (embeddings, logits, loss, one layer's
recomputation) is depth-independent; in inference the peak no longer grows past 2 layers.

Memory is reported in GB = 1e9 bytes, the unit GPU vendors sell (an "80 GB" H100 has 85.9e9).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from arm.config import ArmConfig
from arm.model.build import count_parameters, flops_per_token, hf_config, largest_layer_params, meta_model, use_factorized
from arm.text.vocab import VocabLayout

GB = 10**9
STAGES = ("pretrain", "train_tokenizer", "tokenize", "rl", "evaluate", "serve")

# Architectures of hub models the 7b preset names, for planning offline (the hub's config.json
# wins when it is in the local cache). Source: config.json of google/siglip2-so400m-patch16-384
# on the Hugging Face hub: the so400m shape of Alabdulmohsin et al. 2023 ("Getting ViT in Shape"),
# a Gemma-vocabulary text tower of the same width.
HUB_SIGLIP_SHAPES: dict[str, dict[str, dict]] = {
    "google/siglip2-so400m-patch16-384": {
        "vision": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                   "num_attention_heads": 16, "image_size": 384, "patch_size": 16},
        "text": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                 "num_attention_heads": 16, "vocab_size": 256000, "max_position_embeddings": 64},
    },
}
# Tokens of an edit instruction (generous: the shapes world's are under 20); with two images it
# makes the longest document RL, evaluation and serving decode.
INSTRUCTION_TOKENS = 64
# ZeRO-3 model states per parameter and GPU partition: bf16 weights (2) + fp32 gradient
# accumulation (4, `grad_accum_dtype: fp32`) + fp32 master weights (4) + AdamW m and v (8).
ZERO3_BYTES_PER_PARAM = 18
BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------- vocabulary


def planned_layout(cfg: ArmConfig) -> VocabLayout:
    if cfg.pretrain.images == "oracle":
        from arm.train.perfect import PerfectTokenizer

        v = PerfectTokenizer(cfg.world)
        codebook, grid, levels, grids = v.codebook_size, v.grid, v.levels, ()
    else:
        t = cfg.tokenizer
        codebook, grid, levels, grids = t.codebook_size, tuple(t.grid), tuple(t.levels), tuple(t.grids)
    n_text = cfg.text.vocab_size
    if cfg.text.tokenizer != "bpe":
        try:
            from arm.text.tokenizer import hub_text_tokenizer

            n_text = hub_text_tokenizer(cfg.text.tokenizer).get_vocab_size(with_added_tokens=True)
        except FileNotFoundError:
            pass  # offline without the hub files: plan with the configured size
    return VocabLayout(n_text=n_text, codebook_size=codebook, grid=grid, levels=levels, grids=grids)


def edit_document_tokens(layout: VocabLayout) -> int:
    """<bos> <boi> SRC <eoi> instruction <boi> TGT <eoi> <eos> (DESIGN §4), at the largest bucket."""
    return 2 * layout.image_span_tokens + INSTRUCTION_TOKENS + 2


# ----------------------------------------------------------------------------- hub shapes


def siglip_config(name: str, tower: str):
    """The vision or text tower config of a SigLIP(2) model: from the local cache / dir when there,
    else from HUB_SIGLIP_SHAPES."""
    from transformers import AutoConfig, SiglipTextConfig, SiglipVisionConfig

    try:
        hub = AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        hub = None
    if hub is not None:
        sub = getattr(hub, f"{tower}_config", None)
        if sub is not None:
            return sub
        if hub.model_type == f"siglip_{tower}_model":
            return hub
    if name not in HUB_SIGLIP_SHAPES:
        raise ValueError(f"SigLIP model {name!r}: not in the local cache and not among the shapes known "
                         f"offline ({sorted(HUB_SIGLIP_SHAPES)}); download it or plan with a known one")
    cls = SiglipVisionConfig if tower == "vision" else SiglipTextConfig
    return cls(**HUB_SIGLIP_SHAPES[name][tower])


# ----------------------------------------------------------------------------- measuring


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    # modules built under FakeTensorMode cannot be cast afterwards (.to swaps tensors that
    # the fake mode holds weak references to), so they are born in their dtype
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@contextlib.contextmanager
def _fake() -> Iterator[None]:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers.initialization import no_init_weights

    # no init: values are meaningless here, and some initialisers (truncated normal) loop on data
    with FakeTensorMode(), no_init_weights(), warnings.catch_warnings():
        # MemTracker warns on the None outputs of some hooks; transformers on deprecated names
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _meta() -> Iterator[None]:
    """Modules on the meta device, for counting parameters (no init: it loops on data)."""
    from transformers.initialization import no_init_weights

    with torch.device("meta"), no_init_weights():
        yield


def _transient_bytes(run: Callable[[], None], *external) -> int:
    """Peak bytes above the parameters and buffers while `run` executes (in a fake mode)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(*external)
    with tracker:
        run()
    snap = next(iter(tracker.get_tracker_snapshot("peak").values()))
    held = sum(v for k, v in snap.items() if getattr(k, "value", k) in ("Parameter", "Buffer"))
    return int(snap["Total"] - held)


def _free_grads_on_arrival(model: torch.nn.Module) -> None:
    """Drop each gradient as soon as it is complete, as ZeRO-3 does after its reduce-scatter:
    a measurement then sees activations plus one transient gradient, not a full unsharded set."""
    for p in model.parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(lambda q: setattr(q, "grad", None))


def _by_depth(measure: Callable[[int], int], layers: int) -> int:
    """Bytes at `layers`, extrapolated linearly from depths 2 and 3.

    Not from depth 1: in inference the peak grows from 1 to 2 layers (a layer's output meets
    the next one's working set) and is flat after; in training every layer adds its saved
    tensors. Both are linear from depth 2 on. Models of 3 layers or fewer are measured whole."""
    if layers <= 3:
        return measure(layers)
    two, three = measure(2), measure(3)
    return three + (layers - 3) * (three - two)


def _fake_lm(cfg: ArmConfig, layout: VocabLayout, layers: int, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    from arm.model import factorized

    mcfg = cfg.model.model_copy(update={"num_layers": layers})
    with _default_dtype(dtype):
        model = AutoModelForCausalLM.from_config(hf_config(mcfg, layout))
        if use_factorized(mcfg, layout):
            factorized.install(model, layout, mcfg.initializer_range)
    return model


def lm_transient_bytes(cfg: ArmConfig, layout: VocabLayout, *, rows: int, seq: int, dtype: torch.dtype,
                       mode: str, checkpointing: bool = False, loss_chunk: int = 1024) -> int:
    """Measured activation (+ transient) bytes of the AR model over `rows` x `seq` tokens. mode: "pretrain" (forward + chunked loss + backward), "policy"
    (decoder forward + backward, the RL update: its LM head runs on image rows in small chunks),
    "prefill" (inference forward, logits of the last position only)."""

    from arm.train.pretrain import chunked_ce

    def measure(layers: int) -> int:
        with _fake():
            model = _fake_lm(cfg, layout, layers, dtype)
            ids = torch.zeros(rows, seq, dtype=torch.long)
            if mode == "prefill":
                model.eval()

                def run() -> None:
                    with torch.no_grad():
                        model(input_ids=ids, use_cache=True, logits_to_keep=1)
            else:
                model.train()
                if checkpointing:  # as arm.train.pretrain enables it
                    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
                _free_grads_on_arrival(model)

                def run() -> None:
                    if mode == "pretrain":
                        logits = model(input_ids=ids, use_cache=False).logits
                        chunked_ce(logits, ids, torch.ones_like(ids), loss_chunk).mean().backward()
                    else:
                        model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state.float().mean().backward()

            return _transient_bytes(run, model, ids)

    return _by_depth(measure, cfg.model.num_layers)


def _encoder_config(cfg: ArmConfig, layers: int | None = None):
    """The tokenizer's SiglipVisionModel config as VisualTokenizer.build makes it: the hub
    architecture of a pretrained encoder (siglip_config), else the configured one."""
    from transformers import SiglipVisionConfig

    t = cfg.tokenizer
    if t.encoder.pretrained:
        c = siglip_config(t.encoder.pretrained, "vision").to_dict()
    else:
        e = t.encoder
        c = SiglipVisionConfig(hidden_size=e.hidden_size, intermediate_size=int(e.hidden_size * e.mlp_ratio),
                               num_hidden_layers=e.layers, num_attention_heads=e.heads, patch_size=t.patch_size,
                               image_size=t.image_size if e.window is None else e.window * t.patch_size).to_dict()
    c["vision_use_head"] = False  # the tokenizer reads patch tokens (VisualTokenizer.build)
    if layers is not None:
        c["num_hidden_layers"] = layers
    return SiglipVisionConfig(**c)


def _fake_encoder(cfg: ArmConfig, layers: int | None = None):
    from transformers import SiglipVisionModel

    return SiglipVisionModel(_encoder_config(cfg, layers))


def _tokenizer_head_params(cfg: ArmConfig) -> int:
    """Parameters of the tokenizer beyond its encoder (projections, post layers, decoders, heads).
    Counted on a real build with a one-layer, 8-wide encoder: FSQ calls .item() while it is
    built, which neither fake nor meta tensors allow. Weights are left uninitialised, so the
    allocation is never touched."""
    from transformers.initialization import no_init_weights

    from arm.tokenizer.model import VisualTokenizer
    from arm.tokenizer.vocab import SPECIALS

    t = cfg.tokenizer
    text_dim = siglip_config(t.text_encoder.name, "text").hidden_size if t.text_encoder.kind == "siglip" else 384
    if t.teacher.kind == "siglip":
        distill_dim = siglip_config(t.teacher.name, "vision").hidden_size
    else:
        from arm.tokenizer.efficientnet_lite import EfficientNetLite0

        with torch.device("meta"):
            distill_dim = EfficientNetLite0().channels(t.teacher.distill_layer)
    vocab = SPECIALS + [f"w{i}" for i in range(t.caption.vocab_size - len(SPECIALS))]
    stub = t.encoder.model_copy(update={"pretrained": None, "hidden_size": 8, "layers": 1, "heads": 1})
    with no_init_weights():
        tok = VisualTokenizer.build(t.model_copy(update={"encoder": stub}), caption_vocab=vocab,
                                    text_dim=text_dim, distill_dim=distill_dim)
    proj = tok.proj_in.weight.numel() + tok.proj_in.bias.numel()
    # proj_in reads the real encoder's width, not the stub's
    return count_parameters(tok) - count_parameters(tok.encoder) - proj + (_encoder_config(cfg).hidden_size + 1) * len(t.levels)


def _fake_teacher(cfg: ArmConfig, layers: int | None = None, dtype: torch.dtype = torch.float32):
    """The teacher (arm.tokenizer.teachers) around a network of the configured architecture, its
    weights born in `dtype` (bf16 when the trainer casts the frozen teacher to it), `layers` deep."""
    from arm.tokenizer.teachers import build_teacher

    t = cfg.tokenizer.teacher
    with _default_dtype(dtype):
        if t.kind != "siglip":  # its weights ship in a package; the architecture is all a plan needs
            from arm.tokenizer.efficientnet_lite import EfficientNetLite0

            net = EfficientNetLite0()
        else:
            from transformers import SiglipVisionModel

            c = siglip_config(t.name, "vision")
            if layers is not None:
                c = c.__class__(**{**c.to_dict(), "num_hidden_layers": layers})
            net = SiglipVisionModel(c)
    # MemTracker hooks every parameter's gradient: the measured teacher keeps requires_grad (its
    # weight gradients are dropped on arrival where they arise, _free_grads_on_arrival)
    return build_teacher(t, tuple(cfg.tokenizer.grid), net).requires_grad_(True)


def _text_encoder_params(cfg: ArmConfig) -> int:
    t = cfg.tokenizer.text_encoder
    if t.kind != "siglip":
        return 22_700_000  # all-MiniLM-L6-v2
    from transformers import SiglipTextModel

    with _meta():
        return count_parameters(SiglipTextModel(siglip_config(t.name, "text")))


# ----------------------------------------------------------------------------- stage plans


@dataclass
class StagePlan:
    stage: str
    gpus: int  # GPUs the stage's memory is spread over (1 = one device holds everything)
    parts: dict[str, int] = field(default_factory=dict)  # bytes per GPU by component
    method: str = ""  # how the numbers were obtained

    @property
    def bytes(self) -> int:
        return sum(self.parts.values())

    @property
    def dominant(self) -> str:
        return max(self.parts, key=self.parts.get)

    def as_dict(self, limit_gb: float) -> dict:
        return {"stage": self.stage, "gpus": self.gpus, "per_gpu_bytes": self.bytes, "per_gpu_gb": self.bytes / GB,
                "dominant": self.dominant, "fits": self.bytes <= limit_gb * GB,
                "parts_gb": {k: v / GB for k, v in self.parts.items()}, "method": self.method}


def plan_pretrain(cfg: ArmConfig, layout: VocabLayout, gpus: int, micro_batch: int | None = None) -> StagePlan:
    p = cfg.pretrain
    model = meta_model(cfg.model, layout)
    n, largest = count_parameters(model), largest_layer_params(model)
    mb = micro_batch or p.micro_batch
    dtype = DTYPES[p.precision]
    acts = lm_transient_bytes(cfg, layout, rows=mb, seq=cfg.text.seq_len, dtype=dtype, mode="pretrain",
                                 checkpointing=p.activation_checkpointing, loss_chunk=p.loss_chunk)
    if p.zero_stage == 3:
        states = {"model states (ZeRO-3 partition)": math.ceil(n / gpus) * ZERO3_BYTES_PER_PARAM,
                  # the module running forward/backward is gathered whole, in the 16-bit dtype
                  "gathered largest layer": largest * BYTES[dtype]}
    else:  # replicated weights, grads and AdamW states (ZeRO-1/2 partition only the optimizer)
        opt_share = gpus if p.zero_stage >= 1 else 1
        w = BYTES[dtype]
        master = 4 if dtype != torch.float32 else 0
        states = {"weights + grads": n * (w + 4), "optimizer (master + AdamW)": math.ceil(n / opt_share) * (master + 8)}
    ckpt = "checkpointed layers" if p.activation_checkpointing else "no activation checkpointing"
    return StagePlan("pretrain", gpus, {**states, f"activations (micro_batch {mb} x seq {cfg.text.seq_len})": acts},
                     f"measured fwd+bwd on fake tensors, {ckpt}, loss in chunks of {p.loss_chunk}")


def plan_tokenize(cfg: ArmConfig) -> StagePlan:
    """arm.tokenizer.tokens: the whole tokenizer loaded in fp32, images encoded under bf16
    autocast on CUDA (emulated here with CPU autocast) in inference mode. Measured: the encoder
    over a batch of pixels; its projection to the FSQ levels is [batch, tokens, levels]."""
    b = cfg.tokenizer.tokens.batch_size

    def measure(layers: int) -> int:
        with _fake():
            enc = _fake_encoder(cfg, layers).eval()
            side = enc.config.image_size
            x = torch.zeros(b, 3, side, side)

            def run() -> None:
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                    enc(pixel_values=x)

            return _transient_bytes(run, enc, x)  # the pixels are tracked too

    acts = _by_depth(measure, _encoder_depth(cfg))
    from transformers import SiglipVisionModel

    with _meta():
        encoder = count_parameters(SiglipVisionModel(_encoder_config(cfg)))
    weights = (encoder + _tokenizer_head_params(cfg)) * 4
    return StagePlan("tokenize", 1, {"tokenizer weights (fp32)": weights,
                                     f"encoder activations + pixels (batch {b}, bf16 autocast)": acts},
                     "measured inference on fake tensors")


def _encoder_depth(cfg: ArmConfig) -> int:
    return _encoder_config(cfg).num_hidden_layers


def plan_train_tokenizer(cfg: ArmConfig) -> StagePlan:
    """arm.tokenizer.train on tokenizer.train.nproc data-parallel GPUs (DDP through accelerate), each
    with batch_size / nproc images. Trainable parts carry fp32 master weights, fp32 grads, AdamW
    states and, with several processes, DDP's gradient buckets; the frozen encoder and text
    encoder are fp32 weights, the frozen teacher bf16 under `precision: bf16`.

    Measured on fake tensors under the configured autocast: the encoder's forward (+ backward when
    trained) at the per-GPU batch, and the teacher as the trainer runs it, one `teacher_chunk`
    at a time: the target pass of a chunk without grad, the perceptual pass of a chunk with its
    backward (what a checkpointed chunk costs while it is recomputed; without checkpointing every
    chunk's activations are kept, counted as such), the maps of the other chunks that the losses
    keep (from their shapes), and the perceptual loss over the whole teacher batch. The chunk is
    measured at depths 2 and 3 and extrapolated to the depth of the perceptual pass (the target
    pass is inference: flat in depth). Left out: the activations of the tokenizer's own post
    layers, pixel decoder and heads (fake tensors cannot build FSQ; see _tokenizer_head_params)."""
    from transformers import SiglipVisionModel

    t = cfg.tokenizer
    tr = t.train
    gpus = tr.nproc
    b = max(1, tr.batch_size // gpus)
    tb = max(1, tr.teacher_batch // gpus) if tr.teacher_batch else b
    chunk = min(tr.teacher_chunk or tb, tb)
    chunks = math.ceil(tb / chunk)
    bf16 = tr.precision == "bf16"
    frozen_encoder = t.encoder.freeze if t.encoder.freeze is not None else bool(t.encoder.pretrained)
    uses_teacher = t.loss.perceptual > 0 or t.loss.distill > 0
    with _meta():
        encoder = count_parameters(SiglipVisionModel(_encoder_config(cfg)))
        teacher = count_parameters(_fake_teacher(cfg)) if uses_teacher else 0
    heads = _tokenizer_head_params(cfg)
    trainable = heads + (0 if frozen_encoder else encoder)
    teacher_dtype = torch.bfloat16 if bf16 else torch.float32

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def encoder_bytes(layers: int) -> int:
        # MemTracker hooks every parameter's gradient, so frozen weights keep requires_grad here
        # and their passes without a graph run under no_grad
        with _fake():
            enc = _fake_encoder(cfg, layers).train()
            _free_grads_on_arrival(enc)
            x = torch.zeros(b, 3, enc.config.image_size, enc.config.image_size)

            def run() -> None:
                with torch.no_grad() if frozen_encoder else contextlib.nullcontext(), autocast():
                    out = enc(pixel_values=x).last_hidden_state.float().mean()
                if out.requires_grad:
                    out.backward()

            return _transient_bytes(run, enc, x)

    parts = {
        "trainable weights + grads + AdamW (fp32)": trainable * 16,
        "frozen encoder + text encoder (fp32)": (encoder if frozen_encoder else 0) * 4 + _text_encoder_params(cfg) * 4,
    }
    if gpus > 1:
        parts["DDP gradient buckets (fp32)"] = trainable * 4
    parts[f"encoder activations (batch {b} per GPU)"] = _by_depth(encoder_bytes, max(_encoder_depth(cfg), 1))
    if uses_teacher:
        parts[f"teacher weights ({'bf16' if bf16 else 'fp32'})"] = teacher * BYTES[teacher_dtype]
        ckpt = tr.teacher_checkpointing
        chunk_bytes, kept = _teacher_chunk_bytes(cfg, chunk, teacher_dtype, autocast)
        # the other chunks: their maps (and, without checkpointing, all their activations)
        others = (chunks - 1) * (kept if ckpt else chunk_bytes)
        parts[f"teacher activations ({tb} images, chunks of {chunk}"
              f"{', recomputed' if ckpt else ''})"] = chunk_bytes + others + _perceptual_loss_bytes(cfg, tb, autocast)
    how = "measured fwd+bwd on fake tensors" + (" under bf16 autocast" if bf16 else ", fp32")
    return StagePlan("train_tokenizer", gpus, parts,
                     how + f", {gpus} data-parallel GPU(s); tokenizer heads' activations not included")


def _teacher_layers(cfg: ArmConfig, depth: int | None) -> tuple[list[int], list[int]]:
    """(layers of the target pass, of the perceptual pass); at a measuring `depth` the configured
    perceptual layers become that depth (the pass runs as deep as its deepest layer)."""
    t = cfg.tokenizer.teacher
    perceptual = sorted(t.perceptual_layers) if depth is None else [depth]
    return sorted({t.distill_layer, *perceptual}), perceptual


def _perceptual_depth(cfg: ArmConfig) -> int:
    t = cfg.tokenizer.teacher
    if t.kind != "siglip":
        return 0  # measured whole: a convolutional net of fixed depth
    full = siglip_config(t.name, "vision").num_hidden_layers
    return full if -1 in t.perceptual_layers or cfg.tokenizer.loss.perceptual == 0 else max(t.perceptual_layers)


def _teacher_chunk_bytes(cfg: ArmConfig, chunk: int, dtype: torch.dtype, autocast) -> tuple[int, int]:
    """(peak bytes of one chunk through the teacher: the target pass without grad, then the
    perceptual pass with its backward; bytes of the maps one chunk leaves for the losses)."""
    size = cfg.tokenizer.image_size
    perceptual = cfg.tokenizer.loss.perceptual > 0

    def measure(depth: int | None) -> tuple[int, int]:
        with _fake():
            # two instances: MemTracker refuses a module called twice (hence one chunk per measurement)
            nets = [_fake_teacher(cfg, depth, dtype) for _ in range(2)]
            _free_grads_on_arrival(nets[1])
            x = torch.zeros(chunk, 3, size, size)
            target_layers, perc_layers = _teacher_layers(cfg, depth)
            kept = [0]

            def run() -> None:
                recon = x.clone().requires_grad_(True)  # the reconstruction: an image with grad
                with autocast():
                    with torch.no_grad():
                        maps = nets[0].features(x, target_layers)
                    kept[0] = sum(m.numel() * m.element_size() for m in maps.values())
                    if perceptual:
                        out = nets[1].features(recon, perc_layers)
                        kept[0] += sum(m.numel() * m.element_size() for m in out.values())
                        sum(m.float().mean() for m in out.values()).backward()

            return _transient_bytes(run, *nets, x), kept[0]

    depth = _perceptual_depth(cfg)
    if depth <= 3:
        return measure(depth or None)
    (two, _), (three, kept) = measure(2), measure(3)
    return three + (depth - 3) * (three - two), kept


def _perceptual_map_shapes(cfg: ArmConfig) -> dict[int, tuple[int, ...]]:
    """{perceptual layer: [C, h, w] of its map}."""
    t = cfg.tokenizer.teacher
    layers = sorted(t.perceptual_layers)
    if t.kind == "siglip":  # every hidden state is [hidden, side, side]
        c = siglip_config(t.name, "vision")
        side = c.image_size // c.patch_size
        return {k: (c.hidden_size, side, side) for k in layers}
    with _fake():
        net = _fake_teacher(cfg)
        x = torch.zeros(1, 3, cfg.tokenizer.image_size, cfg.tokenizer.image_size)
        with torch.no_grad():
            return {k: tuple(m.shape[1:]) for k, m in net.features(x, layers).items()}


def _perceptual_loss_bytes(cfg: ArmConfig, tb: int, autocast) -> int:
    """The perceptual loss (fwd + bwd) over the teacher batch's maps, as the trainer computes it."""
    from arm.tokenizer import losses as L

    if cfg.tokenizer.loss.perceptual == 0:
        return 0
    shapes = _perceptual_map_shapes(cfg)
    dtype = torch.bfloat16 if cfg.tokenizer.train.precision == "bf16" else torch.float32
    with _fake():
        recon = {k: torch.zeros(tb, *s, dtype=dtype, requires_grad=True) for k, s in shapes.items()}
        target = {k: torch.zeros(tb, *s, dtype=dtype) for k, s in shapes.items()}

        def run() -> None:
            with autocast():
                L.perceptual(recon, target).backward()

        return _transient_bytes(run, *recon.values(), *target.values())


def _kv_bytes_per_token(cfg: ArmConfig, dtype: torch.dtype) -> int:
    m = cfg.model
    return 2 * m.num_layers * m.num_kv_heads * (m.hidden_size // m.num_heads) * BYTES[dtype]


def _lora_params(cfg: ArmConfig, layout: VocabLayout) -> int:
    """Trainable parameters of rl.lora's adapters, counted by PEFT itself on the meta model."""
    from peft import LoraConfig, get_peft_model

    lora = cfg.rl.lora
    with _meta():
        model = get_peft_model(meta_model(cfg.model, layout), LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, target_modules=list(lora.target_modules)))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def plan_rl(cfg: ArmConfig, layout: VocabLayout) -> StagePlan:
    """arm.rl.trainer on rl.nproc GPUs. Held throughout: the policy's states (ZeRO-3 partitions at
    18 bytes/param with bf16, else replicated fp32 weights, grads and AdamW; with LoRA the frozen
    base plus the adapters' fp32 states) and the KL reference (a partition, a copy, or nothing with
    LoRA). Then the larger of two phases that never overlap: rollouts (the policy gathered whole
    in the compute dtype + the KV cache of the process's sample rows, doubled with CFG) and the
    update (activations of rl.minibatch_size / nproc edit rows, measured, + the gathered layer)."""
    r = cfg.rl
    gpus = r.nproc
    model = meta_model(cfg.model, layout)
    n, largest = count_parameters(model), largest_layer_params(model)
    dtype = torch.bfloat16 if r.precision == "bf16" else torch.float32
    w, zero3 = BYTES[dtype], r.zero_stage == 3
    share = math.ceil(n / gpus) if zero3 else n
    parts: dict[str, int] = {}
    if r.lora is not None:
        parts[f"frozen base ({'ZeRO-3 partition, ' if zero3 else ''}{dtype_name(dtype)})"] = share * w
        parts["LoRA adapters: weights, grads, AdamW (fp32)"] = _lora_params(cfg, layout) * 16
    elif zero3:
        parts["policy states (ZeRO-3 partition)"] = share * ZERO3_BYTES_PER_PARAM
        if r.beta > 0:
            parts[f"reference (ZeRO-3 partition, {dtype_name(dtype)})"] = share * w
    else:
        parts["policy weights + grads + AdamW (fp32)"] = n * 16
        if r.beta > 0:
            parts["reference copy (fp32)"] = n * 4
    guided = 2 if r.cfg_scale != 1 else 1
    seq = edit_document_tokens(layout)
    sample_rows = min(r.sample_batch, r.prompts_per_step * r.group_size // gpus) * guided
    kv = sample_rows * seq * _kv_bytes_per_token(cfg, dtype)
    prompt = seq - layout.max_tokens_per_image - 2  # the edit prompt: everything before the target image
    prefill = lm_transient_bytes(cfg, layout, rows=sample_rows, seq=prompt, dtype=dtype, mode="prefill")
    rollout = (n * w if zero3 else 0) + kv + max(0, prefill - sample_rows * prompt * _kv_bytes_per_token(cfg, dtype))
    rows = r.minibatch_size // gpus * guided
    update = lm_transient_bytes(cfg, layout, rows=rows, seq=seq, dtype=dtype, mode="policy",
                                checkpointing=r.activation_checkpointing) + (largest * w if zero3 else 0)
    if rollout > update:
        parts[f"rollouts: {'gathered policy + ' if zero3 else ''}KV cache ({sample_rows} rows x {seq} tokens) + prefill"] = rollout
    else:
        parts[f"update: activations ({rows} rows x {seq} tokens){' + gathered layer' if zero3 else ''}"] = update
    ckpt = "checkpointed layers" if r.activation_checkpointing else "no activation checkpointing"
    return StagePlan("rl", gpus, parts, f"update measured fwd+bwd on fake tensors in {dtype_name(dtype)}, {ckpt}; "
                                        f"rollouts: KV cache from the config, prefill measured")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _plan_sampling(stage: str, cfg: ArmConfig, layout: VocabLayout, batch: int, cfg_scale: float) -> StagePlan:
    """Weights in sampling.dtype, the KV cache of `batch` edit documents (doubled rows with CFG),
    and the prefill's transient activations."""
    dtype = DTYPES[cfg.sampling.dtype]
    m = cfg.model
    n = count_parameters(meta_model(m, layout))
    rows = batch * (2 if cfg_scale != 1 else 1)
    seq = edit_document_tokens(layout)
    kv_per_token = _kv_bytes_per_token(cfg, dtype)
    prompt = seq - layout.max_tokens_per_image - 2  # the edit prompt: everything before the target image
    prefill = lm_transient_bytes(cfg, layout, rows=rows, seq=prompt, dtype=dtype, mode="prefill")
    return StagePlan(stage, 1, {f"weights ({cfg.sampling.dtype})": n * BYTES[dtype],
                                f"KV cache ({rows} rows x {seq} tokens)": rows * seq * kv_per_token,
                                "prefill activations": max(0, prefill - rows * prompt * kv_per_token)},
                     "KV cache from the config; prefill measured on fake tensors")


def plan_memory(cfg: ArmConfig, layout: VocabLayout, stages: list[str], gpus: int,
                micro_batch: int | None = None) -> list[StagePlan]:
    out = []
    for stage in stages:
        if stage == "pretrain":
            out.append(plan_pretrain(cfg, layout, gpus, micro_batch))
        elif stage == "tokenize":
            out.append(plan_tokenize(cfg))
        elif stage == "train_tokenizer":
            out.append(plan_train_tokenizer(cfg))
        elif stage == "rl":
            out.append(plan_rl(cfg, layout))
        elif stage == "evaluate":
            out.append(_plan_sampling("evaluate", cfg, layout, cfg.sampling.batch_size, cfg.sampling.cfg_scale))
        elif stage == "serve":
            out.append(_plan_sampling("serve", cfg, layout, cfg.sampling.batch_size, cfg.sampling.cfg_scale))
        else:
            raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
    return out


# ----------------------------------------------------------------------------- the plan


def zero3_memory(total_params: int, largest_layer: int, gpus_per_node: int, nodes: int) -> list[dict]:
    """DeepSpeed's estimate of model-state memory (params, grads, Adam states) per GPU and per CPU."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    rows = []
    for offload_optimizer in (False, True):
        for offload_params in ((False,) if not offload_optimizer else (False, True)):
            for zero_init in (True, False):
                cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
                    total_params=total_params, largest_layer_params=largest_layer,
                    num_gpus_per_node=gpus_per_node, num_nodes=nodes, cpu_offload=offload_optimizer,
                    cpu_offload_params=offload_params, zero_init=zero_init,
                )
                rows.append({"offload_optimizer": offload_optimizer, "offload_params": offload_params,
                             "zero_init": zero_init, "gpu_gib": gpu / 2**30, "cpu_gib": cpu / 2**30})
    return rows


def plan(cfg: ArmConfig, gpus_per_node: int = 8, nodes: int = 1, stages: list[str] | None = None,
         gpu_memory_gb: float = 80.0, micro_batch: int | None = None) -> dict:
    layout = planned_layout(cfg)
    model = meta_model(cfg.model, layout)
    n = count_parameters(model)
    flops = flops_per_token(cfg.model, layout, cfg.text.seq_len)
    largest = largest_layer_params(model)
    p = cfg.pretrain
    global_batch_tokens = p.micro_batch * p.grad_accum * gpus_per_node * nodes * cfg.text.seq_len
    memory = plan_memory(cfg, layout, list(stages or STAGES), gpus_per_node * nodes, micro_batch)
    return {
        "preset": cfg.preset,
        "arch": cfg.model.arch,
        "parameters": n,
        "largest_layer_parameters": largest,
        "vocab": {"text": layout.n_text, "image_codes": layout.codebook_size, "total": layout.vocab_size,
                  "tokens_per_image": layout.tokens_per_image},
        "seq_len": cfg.text.seq_len,
        **flops.as_dict(),
        "global_batch_tokens": global_batch_tokens,
        "flops_per_step": flops.per_token * global_batch_tokens,
        "gpus_per_node": gpus_per_node,
        "nodes": nodes,
        "zero3_model_states": zero3_memory(n, largest, gpus_per_node, nodes),
        "memory_unit": "GB (1e9 bytes)",
        "gpu_memory_gb": gpu_memory_gb,
        "stages": [s.as_dict(gpu_memory_gb) for s in memory],
    }
