"""Config of the benchmarks (params.yaml `eval:`) and of the promotion gate (`gate:`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from arm.configbase import Strict

BENCHMARKS = ("shapes_geneval", "shapes_geneval_aspect", "shapes_wise", "shapes_edit", "understanding", "fmnist",
              "tokenizer")
Benchmark = Literal["shapes_geneval", "shapes_geneval_aspect", "shapes_wise", "shapes_edit", "understanding", "fmnist",
                    "tokenizer"]


class PromptSetConfig(Strict):
    """Held-out prompt sets: fixed files drawn from world.holdout's part of the world (arm/data/holdout.py)."""

    dir: str = "data/eval_prompts"
    seed: int = Field(10_000, ge=10_000)  # its own stream; the partition, not the seed, keeps it apart from training
    # items per held-out split (novel, novel_composition)
    geneval_per_category: int = Field(8, ge=1)
    wise: int = Field(24, ge=1)
    edit: int = Field(30, ge=1)
    vqa: int = Field(50, ge=1)
    caption: int = Field(20, ge=1)
    pope: int = Field(20, ge=1)  # scenes per split of the POPE hallucination probe
    pope_per_scene: int = Field(2, ge=1)  # positives per scene (and as many negatives per sampling)
    fmnist_per_class: int = Field(8, ge=1)
    prior_scenes: int = Field(2000, ge=10)  # training-distribution draws for the answer prior


class FmnistEvalConfig(Strict):
    """The Fashion-MNIST judge: a small classifier trained on the train split, tested on t10k."""

    root: str = "/usr/share/datasets/fashion-mnist"
    classifier: Literal["cnn", "logreg"] = "cnn"
    train_limit: int | None = Field(20_000, ge=100)
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0)
    seed: int = 0
    min_pixel_std: float = Field(4.0, ge=0)  # flatter images are blank: counted wrong, not classified
    cache_dir: str = ".arm-cache/eval"  # trained judges, keyed by their settings


class SceneJudgeConfig(Strict):
    """How the independent scene judge is trained; every field but cache_dir keys the cache."""

    train_images: int = Field(6000, ge=1)  # synthesised once, reused every epoch
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(64, ge=1)  # images per step (x grid cells crops)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    width: int = Field(8, ge=4)  # channels of the first conv; doubled twice
    seed: int = 0
    cache_dir: str = ".arm-cache/eval"
    holdout_images: int = Field(400, ge=1)  # per held-out set of the accuracy report
    # Synthesis: fraction of object cells drawn unreadable (off-palette, malformed, half-drawn, noise).
    unknown_fraction: float = Field(0.3, ge=0, le=1)
    offset: float = Field(0.15, ge=0, le=0.5)  # max shift of an object, fraction of a cell
    size_jitter: float = Field(0.1, ge=0, lt=0.5)  # relative
    # Colour tolerance: a configured colour drifted by up to color_jitter (RGB distance, 0-255
    # scale) is that colour; one at off_palette_distance or more from all of them is "unknown".
    color_jitter: float = Field(30.0, ge=0)
    off_palette_distance: float = Field(65.0, gt=0)
    noise_std: float = Field(0.06, ge=0, le=1)  # max Gaussian noise std, fraction of 255
    blur_radius: float = Field(1.0, ge=0)  # max Gaussian blur radius, pixels at world size
    # Max relative brightness and contrast change. Kept small: with color_jitter they move a
    # configured colour by up to ~55, and past off_palette_distance its label would be wrong.
    brightness: float = Field(0.05, ge=0, lt=1)
    contrast: float = Field(0.05, ge=0, lt=1)
    # Reading: a kind or colour whose probability is below this is reported as unknown.
    min_confidence: float = Field(0.5, ge=0, le=1)


class EvalSamplingConfig(Strict):
    """Sampling settings passed to the pipeline; None leaves the pipeline's own default."""

    cfg_scale: float | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None


class EvalConfig(Strict):
    prompts: PromptSetConfig = PromptSetConfig()
    benchmarks: list[Benchmark] = list(BENCHMARKS)
    samples_per_prompt: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    seed: int = 0
    sampling: EvalSamplingConfig = EvalSamplingConfig()
    caption_question: str = "describe the image."
    pq_tolerance: int = Field(48, ge=0, le=255)  # per-channel distance still counted as clean ink
    fmnist: FmnistEvalConfig = FmnistEvalConfig()
    judge: SceneJudgeConfig = SceneJudgeConfig()  # the learned scene reader that scores generation and edits
    metrics_dir: str = "metrics"
    reports_dir: str = "reports"
    grid_rows: int = Field(8, ge=1)


class GateConfig(Strict):
    """Keys are `benchmark.metric` paths into an eval metrics file's `scores` (all higher-is-better)."""

    thresholds: dict[str, float] = {}  # absolute minimum
    min_over_floor: dict[str, float] = {}  # score - floor (prior-only level) must reach this
    # allowed drop below the promoted model's score, as a fraction of the metric's range (reconstruction - floor)
    max_regression: dict[str, float] = {}
    promoted: str = "models/promoted.json"
    output: str = "metrics/gate.json"

    @model_validator(mode="after")
    def _check(self) -> "GateConfig":
        for table in ("thresholds", "min_over_floor", "max_regression"):
            for key in getattr(self, table):
                bench, _, metric = key.partition(".")
                if bench not in BENCHMARKS or not metric:
                    raise ValueError(f"{table}: key {key!r} must be <benchmark>.<metric> with a benchmark in {list(BENCHMARKS)}")
        for key, tol in self.max_regression.items():
            if not 0 <= tol < 1:
                raise ValueError(f"max_regression: {key} = {tol} must be in [0, 1): a fraction of the metric's "
                                 "range (1 or more would let any score through)")
        return self
