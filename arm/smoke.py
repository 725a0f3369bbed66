"""GPU smoke test of the `7b` code path: a ~1B-parameter model on one GPU in a few minutes.

    python -m arm.smoke --device cuda            # what scripts/gpu_smoke.sh runs (< 10 min on one H200)
    python -m arm.smoke --device cpu --tiny      # the same phases at a tiny size (tests/test_gpu_smoke.py)

The run keeps every switch of the `7b` preset (qwen2, `init_from` a local checkpoint whose
vocabulary is resized, factorized image embeddings, ZeRO-3, bf16, sdpa, activation checkpointing,
the 7b layout's vocabulary size, 576 tokens per image) and changes only widths, depths, steps and
data, which come from the shapes world with oracle codes (no curated store or tokenizer needed).
Nothing is downloaded: the hub pieces of `7b` are replaced by local stand-ins made here, a
random-init Qwen2 checkpoint and a text tokenizer padded to the size that gives the 7b vocabulary
(and blank Fashion-MNIST files, which building the held-out prompt sets reads).

Phases, each timed: the device's measured matmul peak; pretraining through
`arm.train.pretrain.pretrain` (tokens/s, MFU against that peak, first vs last logged loss); a
resume check on a smaller model of the same path (stop_after, resume, compare the loss curve with
an uninterrupted run; a 1B checkpoint is ~15 GB, too slow to write three times here); sampling
tokens/s at batch 1 and 16 with the exported model; one GRPO step on that model with the 7b
preset's RL switches through `arm.rl.trainer.train_rl` (ZeRO-3 on accelerate in one process, bf16
with fp32 master weights, activation checkpointing; samples/s, reward, KL, and whether the fp32
master weights moved); `arm evaluate` of a few held-out prompts on the device (shapes GenEval,
editing, VQA and captions); `arm package` of the model into a BentoML store in the work dir, a
model worker started as services/service.py starts one, and one generate request through it
(latency, the worker's device and dtype, the image). Writes one JSON (default
benchmarks/results/gpu_smoke.json).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from arm.config import ArmConfig, load_config
from arm.curves import read_curve
from arm.io import atomic_write_json

PRESET = "7b"


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int


@dataclass(frozen=True)
class Size:
    name: str
    model: Shape
    resume_model: Shape
    seq_len: int
    micro_batch: int
    grad_accum: int
    steps: int
    warmup: int
    lr: float
    resume_steps: int
    resume_stop: int
    n_scenes: int
    image_size: int
    grid: int  # tokens per image = grid^2
    max_objects: int
    pack_block: int
    eval_rows: int
    vocab: int | None  # total vocabulary; None = the planned 7b layout's
    sample_images: tuple[int, int]  # images measured at batch 1 and at batch 16
    peak_n: int  # side of the square matmul that measures the peak
    time_limit_min: float  # safety net of the main run: stop, checkpoint and export
    rl_prompts: int  # prompts of the one GRPO step (tasks alternate over them)
    rl_group: int  # samples per prompt


# ~1.1B parameters: Qwen2.5-1.5B's widths (hidden 1536, 12 heads, 2 KV heads, MLP 8960) at 12
# layers; with the 7b vocabulary (167k rows in and out) a third of them are embeddings and head.
# 100 steps x 32k tokens = 3.3M tokens: ~1-2 min at 25-40% MFU on an H200 (5.8 GFLOP/token with
# activation checkpointing's recompute not counted); with the final 15 GB ZeRO-3 checkpoint, the
# export, the resume runs and ~600 sampling steps per batch size, that part is planned at ~6 min.
# The GRPO step (16 guided rollouts decoded together, one update, a second 15 GB ZeRO-3 checkpoint
# written and read back) ~1.5 min, the evaluation (~11 prompts: three decodes of 576 steps) ~1 min,
# packaging (two hashed copies of the 2 GB export) and one request ~0.5 min: ~9 min in all.
GPU_1B = Size(
    name="1b", model=Shape(1536, 8960, 12, 12, 2), resume_model=Shape(512, 1408, 4, 8, 2),
    seq_len=4096, micro_batch=4, grad_accum=2, steps=100, warmup=10, lr=3e-4,
    resume_steps=12, resume_stop=6, n_scenes=1500, image_size=96, grid=24, max_objects=6,
    pack_block=512, eval_rows=8, vocab=None, sample_images=(1, 16), peak_n=8192, time_limit_min=3.0,
    rl_prompts=4, rl_group=4,
)
# seconds on 2 CPU cores: the phases and the JSON, not the numbers
TINY = Size(
    name="tiny", model=Shape(64, 128, 2, 4, 2), resume_model=Shape(64, 128, 2, 4, 2),
    seq_len=256, micro_batch=2, grad_accum=2, steps=8, warmup=2, lr=3e-3,
    resume_steps=6, resume_stop=3, n_scenes=60, image_size=48, grid=4, max_objects=3,
    pack_block=64, eval_rows=2, vocab=2048, sample_images=(2, 16), peak_n=512, time_limit_min=10.0,
    rl_prompts=2, rl_group=4,
)

LOSS_COLUMNS = ("loss", "loss_understand", "loss_generate", "loss_edit", "loss_text")


class Phases:
    """Wall time per phase, printed as each one ends (the GPU box's log is the progress bar)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.t0 = time.perf_counter()

    @contextmanager
    def __call__(self, name: str):
        print(f"[smoke] {name} ...", flush=True)
        t = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - t, 2)
        print(f"[smoke] {name}: {self.seconds[name]:.1f} s (total {time.perf_counter() - self.t0:.1f} s)", flush=True)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- stand-ins for the hub


def stand_in_tokenizer(texts: list[str], n_text: int, out: Path) -> Path:
    """A byte-level BPE on the shapes text, its vocabulary padded with unreachable entries to n_text.

    The 7b text tokenizer (Qwen2.5) is not on an offline GPU box; what the model's cost depends on
    is the vocabulary size (embedding rows, LM head, softmax), which this one has."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from arm.text.tokenizer import train_bpe

    base = train_bpe(texts, min(512, n_text))
    spec = json.loads(base.to_str())
    vocab = spec["model"]["vocab"]
    if len(vocab) > n_text:
        raise ValueError(f"the shapes text already needs {len(vocab)} tokens > the {n_text} asked for")
    vocab.update({f"<unused_{i}>": i for i in range(len(vocab), n_text)})
    tok = Tokenizer.from_str(json.dumps(spec))
    if tok.get_vocab_size(with_added_tokens=True) != n_text:
        raise RuntimeError(f"stand-in tokenizer has {tok.get_vocab_size(with_added_tokens=True)} tokens, not {n_text}")
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(out))
    return out


def stand_in_checkpoint(cfg: ArmConfig, shape: Shape, n_text: int, out: Path, device: str, dtype: torch.dtype) -> Path:
    """A random-init Qwen2 causal LM with the text tokenizer's vocabulary, as `init_from` expects one
    from the hub; pretraining resizes it to the unified vocabulary."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    m = cfg.model
    hf = Qwen2Config(
        vocab_size=n_text, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        max_position_embeddings=m.max_position_embeddings, rms_norm_eps=m.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": m.rope_theta}, tie_word_embeddings=False,
    )
    torch.manual_seed(cfg.seed)
    with torch.device(device):  # random init of 1B parameters: seconds on a GPU, a minute on CPU
        model = Qwen2ForCausalLM(hf).to(dtype)
    model.save_pretrained(str(out))
    del model
    _free(device)
    return out


# ----------------------------------------------------------------------------- configuration


def overrides(size: Size, shape: Shape, work: Path, run: str, text_dir: Path, n_text: int, init_from: Path,
              steps: int, *, time_limit_min: float | None = None) -> list[str]:
    """The 7b preset with only widths, depths, steps and data changed; every path inside `work`."""
    root = work / run
    o = {
        "world.image_size": size.image_size,
        "world.grid": size.grid,
        "world.max_objects": size.max_objects,
        "data.sources": [{"type": "shapes", "name": "shapes", "n_scenes": size.n_scenes}],
        "text.tokenizer": str(text_dir),
        "text.vocab_size": n_text,
        "text.seq_len": size.seq_len,
        "text.pack_block": size.pack_block,
        "model.hidden_size": shape.hidden,
        "model.intermediate_size": shape.intermediate,
        "model.num_layers": shape.layers,
        "model.num_heads": shape.heads,
        "model.num_kv_heads": shape.kv_heads,
        "model.init_from": str(init_from),
        "pretrain.data": "shapes",
        "pretrain.images": "oracle",
        "pretrain.max_steps": steps,
        "pretrain.warmup_steps": min(size.warmup, steps),
        "pretrain.lr": size.lr,
        "pretrain.micro_batch": size.micro_batch,
        "pretrain.grad_accum": size.grad_accum,
        "pretrain.eval_every": steps,  # one evaluation, at the end
        "pretrain.eval_rows": size.eval_rows,
        "pretrain.checkpoint_every": 10**9,  # checkpoints only where the run stops
        "pretrain.keep_checkpoints": 1,
        "pretrain.log_every": 1,
        "pretrain.time_limit_min": time_limit_min,
        "pretrain.checkpoints": str(root / "checkpoints"),
        "pretrain.output": str(root / "model"),
        "pretrain.metrics": str(root / "metrics.json"),
        "pretrain.plot": str(root / "curve"),
    }
    return [f"{k}={json.dumps(v)}" for k, v in o.items()]  # JSON is YAML: lists and null parse back


def vocab_target(params: Path, size: Size) -> int:
    if size.vocab is not None:
        return size.vocab
    from arm.model.plan import planned_layout

    return planned_layout(load_config(params, PRESET)).vocab_size


def text_vocab(cfg: ArmConfig, total: int) -> int:
    """Text tokens such that text + specials + oracle codes = `total`, the vocabulary asked for."""
    from arm.text.vocab import SPECIAL_TOKENS
    from arm.train.perfect import PerfectTokenizer

    n_text = total - len(SPECIAL_TOKENS) - PerfectTokenizer(cfg.world).codebook_size
    if n_text < 260:
        raise ValueError(f"a vocabulary of {total} leaves {n_text} text tokens; need >= 260")
    return n_text


def shapes_texts(cfg: ArmConfig, n_scenes: int) -> list[str]:
    from arm.config import ShapesSourceConfig
    from arm.train.data import shapes_examples, training_texts

    src = ShapesSourceConfig(n_scenes=n_scenes)
    small = cfg.model_copy(update={"data": cfg.data.model_copy(update={"sources": [src]})})
    return list(training_texts(shapes_examples(small).train))


# ----------------------------------------------------------------------------- phases


def compare_curves(a: list[dict[str, float]], b: list[dict[str, float]]) -> dict:
    """Largest absolute and relative difference of the logged losses, step by step (arm.curves rows)."""
    worst_abs = worst_rel = 0.0
    for ra, rb in zip(a, b):
        if ra["step"] != rb["step"]:
            worst_abs = worst_rel = math.inf
        for col in LOSS_COLUMNS:
            if col not in ra or col not in rb:
                if (col in ra) != (col in rb):
                    worst_abs = worst_rel = math.inf
                continue
            x, y = ra[col], rb[col]
            worst_abs = max(worst_abs, abs(x - y))
            worst_rel = max(worst_rel, abs(x - y) / max(abs(x), 1e-12))
    return {"steps": [len(a), len(b)], "max_abs_loss_diff": worst_abs, "max_rel_loss_diff": worst_rel}


def sampling_speed(model_dir: Path, text_dir: Path, cfg: ArmConfig, device: str, dtype: torch.dtype,
                   n_images: tuple[int, int]) -> dict:
    """Image tokens/s of the exported model at batch 1 (one image after another) and batch 16.

    The weights load with stock AutoModelForCausalLM; caption ids come from the stand-in text
    tokenizer, whose ids are the unified vocabulary's text ids."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from arm.sample.engine import Engine, Request
    from arm.sample.pipeline import uncond_prompt
    from arm.text.formats import format_prompt
    from arm.text.tokenizer import encode_texts
    from arm.text.vocab import VocabLayout

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, dtype=dtype).to(device).eval()
    layout = VocabLayout.load(model_dir)
    captions = ["a red circle", "a large blue square and a small green triangle", "a yellow triangle on the left"]
    ids = encode_texts(AutoTokenizer.from_pretrained(str(text_dir), local_files_only=True), captions)
    s = cfg.sampling

    def requests(n: int) -> list[Request]:
        out = []
        for i in range(n):
            prompt = format_prompt("generate", layout, text=ids[i % len(ids)])
            out.append(Request(prompt, uncond_prompt(prompt, layout), cfg_scale=s.cfg_scale, temperature=1.0, seed=i))
        return out

    Engine(model, layout).run(requests(1))  # warm-up: kernels, allocator
    out = {"cfg_scale": s.cfg_scale, "tokens_per_image": layout.tokens_per_image, "dtype": str(dtype).replace("torch.", "")}
    for batch, n in zip((1, 16), n_images):
        engine = Engine(model, layout, max_batch=batch)
        reqs = requests(n)
        _sync(device)
        t = time.perf_counter()
        results = engine.run(reqs)
        _sync(device)
        dt = time.perf_counter() - t
        out[f"batch_{batch}"] = {
            "images": n, "seconds": round(dt, 3), "tokens": engine.stats.tokens,
            "tokens_per_s": engine.stats.tokens / dt, "images_per_s": n / dt,
            "forwards": engine.stats.forwards, "complete_images": sum(r.finished for r in results),
        }
        print(f"[smoke] sampling batch {batch}: {engine.stats.tokens / dt:.1f} tokens/s ({n} images)", flush=True)
    # the engine against transformers' generate, as benchmarks/sample.py on CPU; on a GPU also
    # compiled (static cache + CUDA graphs) and with Jacobi where it pays
    from arm.sample.versus import ENGINES, versus_generate

    engines = ENGINES if device == "cuda" else {"eager": {}}
    out["versus_generate"] = [versus_generate(model, layout, requests(n), batch, window=4, repeats=1, engines_of=engines)
                              for batch, n in zip((1, 16), n_images)]
    for row in out["versus_generate"]:
        print(f"[smoke] engine vs generate at batch {row['batch']}: "
              + ", ".join(f"{k} x{v:.2f}" for k, v in row["speedup"].items()), flush=True)
    del model
    _free(device)
    return out


# ----------------------------------------------------------------------------- RL, evaluation, serving

# the weight whose fp32 master copy shows whether the GRPO step reached the parameters
PROBE_WEIGHT = "model.layers.0.self_attn.q_proj.weight"
# the cheap benchmarks the smoke runs (one per pipeline call: generate, edit, describe) and their prompt sets
EVAL_SETS = {"shapes_geneval": ("geneval",), "shapes_edit": ("edit",), "understanding": ("vqa", "caption", "pope")}
HEADLINE = ("shapes_geneval.overall", "shapes_edit.success", "understanding.vqa_accuracy", "understanding.caption_f1")
SERVE_PROMPT = "a red circle"


def stage_overrides(size: Size, work: Path, device: str, dtype: torch.dtype, fmnist_root: Path) -> list[str]:
    """RL, evaluation and serving of the main run's model with the 7b preset's switches; only
    batch sizes and prompt counts shrink, and every output goes inside `work`."""
    samples = size.rl_prompts * size.rl_group
    o = {
        # evaluation and serving sample on the smoke's device: the 7b preset's bf16 on a GPU, fp32 on the CPU
        "sampling.device": device,
        "sampling.dtype": str(dtype).removeprefix("torch."),
        "rl.base": str(work / "main" / "model"),
        "rl.output": str(work / "rl" / "model"),
        "rl.checkpoints": str(work / "rl" / "checkpoints"),
        "rl.metrics": str(work / "rl" / "metrics.json"),
        "rl.plot": str(work / "rl" / "curve"),
        "rl.nproc": 1,  # one GPU: accelerate's ZeRO-3 over a world of one
        "rl.steps": 1,
        "rl.prompts_per_step": size.rl_prompts,
        "rl.group_size": size.rl_group,
        "rl.sample_batch": samples,
        "rl.minibatch_size": samples,  # one optimizer step on the whole batch
        "rl.rewards.t2i.alignment": 0,  # the oracle codec has no contrastive text alignment
        "eval.prompts.dir": str(work / "eval_prompts"),
        "eval.prompts.geneval_per_category": 1,
        "eval.prompts.wise": 1,
        "eval.prompts.edit": 1,  # per held-out split (novel, novel_composition)
        "eval.prompts.vqa": 1,
        "eval.prompts.caption": 1,
        "eval.prompts.pope": 1,
        "eval.prompts.pope_per_scene": 1,
        # the learned judge only has to run here, not to read well: a few seconds of training
        "eval.judge.train_images": 600, "eval.judge.epochs": 1, "eval.judge.holdout_images": 20,
        "eval.prompts.fmnist_per_class": 1,
        "eval.prompts.prior_scenes": 10,
        "eval.benchmarks": list(EVAL_SETS),  # no fmnist (needs a trained judge) nor tokenizer (the oracle)
        "eval.samples_per_prompt": 1,
        "eval.fmnist.root": str(fmnist_root),
        "eval.metrics_dir": str(work / "metrics"),
        "eval.reports_dir": str(work / "reports"),
        "gate.output": str(work / "gate.json"),  # no gate ran here; the repo's last verdict does not apply
    }
    return [f"{k}={json.dumps(v)}" for k, v in o.items()]


def stand_in_fashion_mnist(out: Path) -> Path:
    """Blank Fashion-MNIST idx files, two images per class and split: building the held-out prompt
    sets reads labels from them (for the fmnist sets, which the smoke's benchmarks never use), and
    the GPU box has no dataset package."""
    import gzip
    import struct

    from arm.data.sources.fashion_mnist import CLASSES

    labels = bytes(k for k in range(len(CLASSES)) for _ in range(2))
    out.mkdir(parents=True)
    for split in ("train", "t10k"):
        with gzip.open(out / f"{split}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 0x803, len(labels), 28, 28) + bytes(28 * 28 * len(labels)))
        with gzip.open(out / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 0x801, len(labels)) + labels)
    return out


def saved_tensor(model_dir: Path, name: str) -> torch.Tensor:
    """One tensor of an exported model dir, read alone from whichever safetensors shard holds it."""
    from safetensors import safe_open

    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            if name in f.keys():
                return f.get_tensor(name)
    raise KeyError(f"{model_dir}: no tensor {name} in its safetensors files")


def master_weight_change(base: Path, run_dir: Path, name: str) -> dict:
    """|fp32 master weight - base| of one weight after the step, consolidated from the newest
    ZeRO-3 checkpoint. The policy starts from the base loaded in bf16, whose fp32 master copy is
    exact: an lr-1e-6 Adam step (~1e-6 per weight) is below bf16's resolution and lives only there."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from arm.train.checkpoint import latest_tag

    master = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / latest_tag(run_dir)), tag="pytorch_model")
    delta = (master[f"lm.{name}"].detach() - saved_tensor(base, name).bfloat16().float()).abs()
    moved = float((delta > 0).float().mean())  # Adam moves every weight that got a gradient by ~lr
    return {"weight": name, "weights_moved": moved > 0.5, "moved_fraction": moved,
            "median_abs_delta": float(delta.median()), "max_abs_delta": float(delta.max())}


def grpo_step(cfg: ArmConfig) -> dict:
    """One GRPO step (arm.rl.trainer) on the pretrained model with the 7b preset's RL switches."""
    from arm.rl.trainer import train_rl

    r = cfg.rl
    m = train_rl(cfg, progress=False)  # its own Accelerator (arm.train.accel resets the process's state)
    run_dir = Path(r.checkpoints) / m["run"]
    change = master_weight_change(Path(r.base), run_dir, PROBE_WEIGHT)
    shutil.rmtree(run_dir)  # weights, fp32 master and Adam: ~15 GB at 1B, read once above
    print(f"[smoke] rl: {m['samples_per_s']:.2f} samples/s, reward {m['rewards']['reward']['last']:.3f}, "
          f"median |master delta| {change['median_abs_delta']:.2e}", flush=True)
    return {
        "zero_stage": r.zero_stage, "precision": r.precision, "activation_checkpointing": r.activation_checkpointing,
        "nproc": r.nproc, "lr": r.lr, "beta": r.beta, "cfg_scale": r.cfg_scale, "tasks": list(r.tasks),
        "steps": m["steps"], "stopped": m["stopped"], "prompts_per_step": r.prompts_per_step,
        "group_size": r.group_size, "samples": m["samples"], "train_seconds": m["train_seconds"],
        "samples_per_s": m["samples_per_s"], "reward": m["rewards"]["reward"]["last"],
        "kl": m["kl_final"],  # taken before the update: ~0, the policy is still the base, its reference
        **change,
    }


def evaluate_few(cfg: ArmConfig, model_dir: Path, name: str) -> tuple[dict, Path]:
    """`arm evaluate` of a few held-out prompts; returns the summary and the metrics file."""
    from arm.eval.prompts import build_prompt_sets
    from arm.eval.run import evaluate, metrics_path
    from arm.rl.claims import _pipeline_for

    build_prompt_sets(cfg)
    pipe = _pipeline_for(cfg, model_dir)  # the oracle codec as the visual tokenizer, on sampling.device/dtype
    m = evaluate(cfg, model_dir, pipeline=pipe, name=name)
    counts = m["prompts"]["counts"]
    scores = {key: m["scores"].get(key.split(".")[0], {}).get(key.split(".", 1)[1]) for key in HEADLINE}
    out = {
        "benchmarks": list(cfg.eval.benchmarks), "device": str(pipe.model.device),
        "dtype": str(pipe.model.dtype).removeprefix("torch."),
        "items": sum(counts[s] for b in cfg.eval.benchmarks for s in EVAL_SETS[b]),
        "items_per_set": {s: counts[s] for b in cfg.eval.benchmarks for s in EVAL_SETS[b]},
        "samples_per_prompt": cfg.eval.samples_per_prompt, "scores": scores, "skipped": m["skipped"],
    }
    return out, metrics_path(cfg, name)


@contextmanager
def model_store(home: Path):
    """BentoML's model store under `home` (BENTOML_HOME's models/) while the block runs. The store
    provider is patched rather than the variable set: bentoml resolves its home once per process,
    and a test session must get its own store back afterwards."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    (home / "models").mkdir(parents=True, exist_ok=True)
    with BentoMLContainer.model_store.patch(ModelStore(home / "models")):
        yield


def serve_one(cfg: ArmConfig, model_dir: Path, metrics: Path, repo: Path, device: str) -> dict:
    """`arm package` of the model (no bento build), a model worker started as services/service.py
    starts one, and one generate request through its batch runner."""
    import base64
    import io

    import bentoml
    from PIL import Image

    from arm.serve.package import package
    from arm.serve.runner import start_worker
    from arm.serve.schemas import GenerateItem

    s = cfg.sampling
    t = time.perf_counter()
    # the smoke measures serving, it releases nothing: no gate vouches for a 50-step model
    packed = package(cfg, model_dir, repo=repo, metrics=metrics, build=False, ungated=True)
    package_s = time.perf_counter() - t
    t = time.perf_counter()
    runner = start_worker(bentoml.models.get(packed["model_tag"]), cfg.serve, s)
    start_s = time.perf_counter() - t
    item = GenerateItem(prompt=SERVE_PROMPT, cfg_scale=s.cfg_scale, temperature=s.temperature, top_k=s.top_k,
                        top_p=s.top_p, seed=s.seed)
    _sync(device)
    t = time.perf_counter()
    (outcome,) = runner.generate([item])
    _sync(device)
    latency = time.perf_counter() - t
    image = Image.open(io.BytesIO(base64.b64decode(outcome.image))) if outcome.ok else None
    model = runner.pipeline.model
    print(f"[smoke] serve: one request in {latency:.2f} s on {model.device} ({model.dtype})", flush=True)
    return {
        "model_tag": packed["model_tag"], "eval_labels": sum(k.startswith("eval.") for k in packed["labels"]),
        "package_seconds": round(package_s, 3), "worker_start_seconds": round(start_s, 3),
        "verify": cfg.serve.verify, "device": str(model.device), "dtype": str(model.dtype).removeprefix("torch."),
        "prompt": SERVE_PROMPT, "latency_seconds": round(latency, 3), "ok": outcome.ok, "error": outcome.error,
        "image": None if image is None else {"format": image.format, "size": list(image.size)},
    }


def environment(device: str) -> dict:
    import deepspeed
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "deepspeed": deepspeed.__version__,
           "transformers": transformers.__version__, "cuda": torch.version.cuda, "gpu": None}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), gpus_visible=torch.cuda.device_count())
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def check_device(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device cuda: torch {torch.__version__} sees no CUDA device (a CPU build of torch? "
                         "scripts/gpu_smoke.sh installs the CUDA wheel from $ARM_WHEELS)")
    if device == "cpu" and torch.cuda.is_available():
        # pretraining places itself on the GPU whenever one is visible
        raise SystemExit("--device cpu with a visible GPU: run with CUDA_VISIBLE_DEVICES= to hide it")


def run(params: Path, size: Size, device: str, out: Path, work: Path, steps: int | None = None) -> dict:
    from arm.model.build import use_factorized
    from arm.text.vocab import VocabLayout
    from arm.train.flops import measured_peak_flops, mfu
    from arm.train.perfect import PerfectTokenizer
    from arm.train.pretrain import pretrain

    check_device(device)
    phase = Phases()
    steps = steps or size.steps
    result: dict = {"benchmark": "gpu_smoke", "preset": PRESET, "size": size.name, "device": device,
                    "environment": environment(device)}

    with phase("peak"):
        base = load_config(params, PRESET)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(base.pretrain.precision, torch.float32)
        # the CPU has no bf16 matmul units worth quoting: its fp32 peak is what runs there
        peak_dtype = dtype if device == "cuda" else torch.float32
        peak = measured_peak_flops(n=size.peak_n, dtype=peak_dtype, device=device)
        result["peak_flops_matmul"] = peak
        result["peak_dtype"] = str(peak_dtype).replace("torch.", "")
        print(f"[smoke] measured {result['peak_dtype']} matmul peak: {peak / 1e12:.2f} TFLOP/s", flush=True)

    with phase("stand_ins"):
        total = vocab_target(params, size)
        probe = load_config(params, PRESET, [f"world.image_size={size.image_size}", f"world.grid={size.grid}",
                                             f"world.max_objects={size.max_objects}"])
        n_text = text_vocab(probe, total)
        text_dir = stand_in_tokenizer(shapes_texts(probe, min(200, size.n_scenes)), n_text, work / "text_tokenizer")
        ckpt_dtype = dtype if device == "cuda" else torch.float32
        main_init = stand_in_checkpoint(probe, size.model, n_text, work / "init_main", device, ckpt_dtype)
        resume_init = main_init if size.resume_model == size.model else \
            stand_in_checkpoint(probe, size.resume_model, n_text, work / "init_resume", device, ckpt_dtype)

    with phase("pretrain"):
        main_overrides = overrides(size, size.model, work, "main", text_dir, n_text, main_init, steps,
                                   time_limit_min=size.time_limit_min)
        cfg = load_config(params, PRESET, main_overrides)
        m = pretrain(cfg, progress=False)
        _free(device)
    curve = read_curve(work / "main" / "curve")
    first, last = curve[0]["loss"], curve[-1]["loss"]
    layout = VocabLayout.load(work / "main" / "model")
    p = cfg.pretrain
    result["config"] = {
        "arch": cfg.model.arch, "zero_stage": p.zero_stage, "precision": p.precision,
        "attn_implementation": cfg.model.attn_implementation,
        "activation_checkpointing": p.activation_checkpointing,
        "factorized_image_embeddings": use_factorized(cfg.model, layout),
        "init_from": "local random-init Qwen2 checkpoint, vocabulary resized by pretraining",
        "model": asdict(size.model), "parameters": m["parameters"], "vocab_size": layout.vocab_size,
        "vocab_size_7b": total, "text_vocab": layout.n_text, "image_codes": PerfectTokenizer(cfg.world).codebook_size,
        "tokens_per_image": layout.tokens_per_image, "seq_len": cfg.text.seq_len, "micro_batch": p.micro_batch,
        "grad_accum": p.grad_accum, "tokens_per_step": p.micro_batch * p.grad_accum * cfg.text.seq_len,
        "max_steps": p.max_steps, "lr": p.lr, "data": "shapes world, oracle codes",
    }
    result["train"] = {
        "steps": m["steps"], "stopped": m["stopped"], "tokens_seen": m["tokens_seen"],
        "train_seconds": m["train_seconds"], "tokens_per_s": m["tokens_per_s"],
        "flops_per_token": m["flops_per_token"], "achieved_flops": m["achieved_flops"],
        "mfu": mfu(m["tokens_per_s"], m["flops_per_token"], peak),
        "mfu_counts": "model FLOPs (6 x matmul params + attention); activation checkpointing's recompute is not counted",
        "mfu_reported_by_pretrain": m.get("mfu"), "padding_waste": m.get("padding_waste"),
        "loss_first": first, "loss_last": last, "loss_drop": first - last, "loss_ratio": last / first,
        "val_loss": m["val_loss"],
    }
    print(f"[smoke] pretrain: {m['tokens_per_s']:.0f} tokens/s, MFU {result['train']['mfu']:.3f}, "
          f"loss {first:.3f} -> {last:.3f}", flush=True)

    def resume_cfg(run_name: str) -> ArmConfig:
        return load_config(params, PRESET, overrides(size, size.resume_model, work, run_name, text_dir, n_text,
                                                      resume_init, size.resume_steps))

    with phase("resume"):
        full = pretrain(resume_cfg("resume_full"), progress=False)
        _free(device)
        cut = pretrain(resume_cfg("resume_cut"), stop_after=size.resume_stop, progress=False)
        _free(device)
        pretrain(resume_cfg("resume_cut"), progress=False)  # resumes at resume_stop: weights, Adam, schedule, RNG, data
        _free(device)
        diff = compare_curves(read_curve(work / "resume_full" / "curve"), read_curve(work / "resume_cut" / "curve"))
    # bitwise on CPU; on a GPU, atomics in some backward kernels (attention, embedding) differ in the last bits
    tol = 1e-6 if device == "cpu" else 1e-3
    result["resume"] = {
        "parameters": full["parameters"], "model": asdict(size.resume_model), "max_steps": size.resume_steps,
        "stop_after": size.resume_stop, "stopped_at": cut.get("step"), **diff,
        "identical": diff["max_abs_loss_diff"] == 0.0, "tolerance_rel": tol,
        "ok": cut.get("stopped") == "stop_after" and diff["steps"] == [size.resume_steps] * 2
        and diff["max_rel_loss_diff"] <= tol,
    }
    print(f"[smoke] resume: max relative loss difference {diff['max_rel_loss_diff']:.2e} (ok={result['resume']['ok']})",
          flush=True)

    infer_dtype = dtype if device == "cuda" else torch.float32
    with phase("sampling"):
        result["sampling"] = sampling_speed(work / "main" / "model", text_dir, cfg, device, infer_dtype,
                                            size.sample_images)

    stage_cfg = load_config(params, PRESET, [*main_overrides, *stage_overrides(
        size, work, device, infer_dtype, stand_in_fashion_mnist(work / "fashion_mnist"))])
    with phase("rl"):
        result["rl"] = grpo_step(stage_cfg)
        _free(device)

    with phase("evaluate"):
        result["evaluate"], eval_metrics = evaluate_few(stage_cfg, work / "main" / "model", name="smoke")
        _free(device)

    with phase("serve"), model_store(work / "bentoml"):
        result["serve"] = serve_one(stage_cfg, work / "main" / "model", eval_metrics, params.resolve().parent, device)
        _free(device)

    result["phases_seconds"] = phase.seconds
    result["total_seconds"] = round(time.perf_counter() - phase.t0, 2)
    result["note"] = (
        (f"measured on {result['environment']['gpu']}" if device == "cuda" else
         "tiny CPU run: checks the phases and the JSON end to end; its numbers say nothing about a GPU")
        + "; rl: one GRPO step on the pretrained model (7b RL switches: ZeRO-3 on accelerate, bf16 with fp32 master "
        "weights, activation checkpointing; one process); evaluate: a few held-out prompts of the cheap shapes "
        "benchmarks (no fmnist judge, no tokenizer benchmark for the oracle codec); serve: `arm package` without "
        "the bento build, a model worker started as the service starts one, one generate request in process")
    atomic_write_json(out, result)
    print(f"[smoke] wrote {out} ({result['total_seconds']:.0f} s in all)", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a tiny model and a few steps (CPU tests)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="benchmarks/results/gpu_smoke.json")
    ap.add_argument("--steps", type=int, default=None, help="pretraining steps of the main run (default: the size's)")
    ap.add_argument("--workdir", default=None, help="checkpoints and models (default: a fresh dir in .arm-cache, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        ap.error(f"--steps must be >= 1, got {args.steps}")
    params = Path(args.params)
    if not params.is_file():
        ap.error(f"--params {params}: no such file")
    size = TINY if args.tiny else GPU_1B
    if args.workdir:
        work = Path(args.workdir)
        if work.exists() and any(work.iterdir()):
            ap.error(f"--workdir {work} is not empty: a stale run there would be resumed, not measured")
        work.mkdir(parents=True, exist_ok=True)
    else:
        Path(".arm-cache").mkdir(exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="gpu_smoke-", dir=".arm-cache"))
    try:
        run(params, size, args.device, Path(args.out), work.resolve(), args.steps)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
