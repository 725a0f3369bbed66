"""Typed run configuration loaded from params.yaml.

params.yaml holds the base values (the `tiny` preset) and a `presets:` table of overrides.
The resolved config is base deep-merged with the chosen preset; lists are replaced, not
merged. Every model forbids unknown keys, so a typo fails with its key path.
"""

from __future__ import annotations

import copy
from pathlib import Path
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, ValidationError, model_serializer, model_validator

from arm.configbase import Strict
from arm.data.images import RASTER_FORMATS
from arm.eval.config import EvalConfig, GateConfig
from arm.model.config import ModelConfig, PretrainConfig, SamplingConfig, TextConfig
from arm.orchestration.config import OrchestrationConfig
from arm.rl.config import RLConfig
from arm.tokenizer.config import TokenizerConfig
from arm.serve.config import ServeConfig

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """A params file or override that does not validate; the message names each key path."""


# ----------------------------------------------------------------------------- world

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 50, 170),
    "orange": (245, 130, 20),
    "cyan": (30, 200, 210),
    "gray": (120, 120, 120),
}
KINDS = ("circle", "square", "triangle")
SIZES = {"small": 0.45, "large": 0.8}


class Binding(Strict):
    """An attribute combination held out of training (CLEVR-CoGenT style), e.g. {color: red, kind: circle}.

    An object matches when every attribute the binding sets is equal; each value still occurs in
    training in other combinations, so the model can only draw it by composing what it learned.
    """

    kind: str | None = None
    color: str | None = None
    size: str | None = None
    row: int | None = Field(None, ge=0)
    col: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _check(self) -> "Binding":
        if len(self.attributes()) < 2:
            raise ValueError(f"a held-out binding combines at least two attributes, got {self.attributes()}")
        return self

    def attributes(self) -> dict[str, str | int]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class HoldoutConfig(Strict):
    """The part of the world that only evaluation draws from (arm/data/holdout.py)."""

    scenes: float = Field(0.15, ge=0.0, lt=1.0)  # share of exact scenes held out (the `novel` split), by hash
    salt: str = "arm-holdout"  # another salt draws another partition
    bindings: list[Binding] = []  # the `novel_composition` split: objects with these never occur in training


class WorldConfig(Strict):
    """The procedural shapes world (DESIGN §5): objects on a grid aligned with the tokenizer's patches."""

    image_size: int = Field(48, ge=8)
    grid: int = Field(3, ge=1)
    # Extra (rows, cols) scene shapes besides the square grid x grid, for aspect-ratio buckets
    # (issue 17). Cells stay `cell` px, so a (3, 4) scene is 3*cell high and 4*cell wide.
    grids: list[tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]]] = []
    kinds: list[Literal["circle", "square", "triangle"]] = ["circle", "square", "triangle"]
    colors: list[str] = ["red", "green", "blue", "yellow"]
    sizes: list[Literal["small", "large"]] = ["small", "large"]
    min_objects: int = Field(1, ge=0)
    max_objects: int = Field(3, ge=1)
    background: tuple[int, int, int] = (255, 255, 255)
    holdout: HoldoutConfig = HoldoutConfig()

    @model_validator(mode="after")
    def _check(self) -> "WorldConfig":
        unknown = [c for c in self.colors if c not in PALETTE]
        if unknown:
            raise ValueError(f"unknown colors {unknown}; known: {sorted(PALETTE)}")
        shapes = shapes_of(self)
        if len(set(shapes)) < len(shapes):
            raise ValueError(f"grids {[list(g) for g in self.grids]} repeats a shape or the square grid "
                             f"{self.grid}x{self.grid}; list each extra (rows, cols) shape once")
        self._check_bindings()
        if self.image_size % self.grid:
            raise ValueError(f"image_size {self.image_size} must be a multiple of grid {self.grid}")
        # Checked, not clamped: a per-shape object count would make the count distribution
        # depend on the shape drawn.
        rows, cols = min(shapes, key=lambda g: g[0] * g[1])
        if self.max_objects > rows * cols or self.min_objects > self.max_objects:
            raise ValueError(f"need min_objects <= max_objects <= the cells of the smallest scene shape "
                             f"({rows}x{cols} = {rows * cols}), got {self.min_objects} and {self.max_objects}")
        return self

    def _check_bindings(self) -> None:
        cells = sorted({(r, q) for rows, cols in shapes_of(self) for r in range(rows) for q in range(cols)})
        values = {"kind": self.kinds, "color": self.colors, "size": self.sizes,
                  "row": sorted({r for r, _ in cells}), "col": sorted({q for _, q in cells})}
        objects = [dict(kind=k, color=c, size=s, row=r, col=q) for k in self.kinds for c in self.colors
                   for s in self.sizes for r, q in cells]
        held = [b.attributes() for b in self.holdout.bindings]
        for b in held:
            bad = {k: v for k, v in b.items() if v not in values[k]}
            if bad:
                raise ValueError(f"holdout.bindings: {b} names values this world does not have: {bad}")
        # Each attribute value of a binding must still be seen in training, in another combination.
        trainable = [o for o in objects if not any(all(o[k] == v for k, v in b.items()) for b in held)]
        for b in held:
            for k, v in b.items():
                if not any(o[k] == v for o in trainable):
                    raise ValueError(f"holdout.bindings: {k}={v!r} occurs in no training object once "
                                     f"{held} are held out; the split would test an unseen value, not a composition")

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # A square-only world dumps as it did before `grids` existed, so the hashes of the curated
        # stores, prompt sets and examples built for it stay valid.
        out = handler(self)
        if not self.grids:
            out.pop("grids")
        return out

    @property
    def cell(self) -> int:
        return self.image_size // self.grid


def shapes_of(world: WorldConfig) -> list[tuple[int, int]]:
    """Every (rows, cols) scene shape of the world: the square grid first, then `grids`."""
    return [(world.grid, world.grid)] + [tuple(g) for g in world.grids]


# ----------------------------------------------------------------------------- sources


class ShapesSourceConfig(Strict):
    type: Literal["shapes"] = "shapes"
    name: str = "shapes"
    n_scenes: int = Field(2000, ge=0)
    seed: int = 0
    vqa_per_scene: int = Field(2, ge=0)
    edits_per_scene: int = Field(1, ge=0)
    captions_per_scene: int = Field(1, ge=0)
    knowledge_fraction: float = Field(0.2, ge=0, le=1)
    text_fraction: float = Field(0.1, ge=0, le=1)
    # canonical: every caption names size, colour, kind in that order; varied: each object of a
    # training caption in an order of its own (arm.data.shapes.caption). Eval prompts stay canonical.
    attribute_order: Literal["canonical", "varied"] = "canonical"


class FashionMnistSourceConfig(Strict):
    type: Literal["fashion_mnist"] = "fashion_mnist"
    name: str = "fashion_mnist"
    root: str = "/usr/share/datasets/fashion-mnist"
    subset: Literal["train", "t10k"] = "train"
    limit: int | None = Field(2000, ge=0)
    vqa_per_image: int = Field(1, ge=0)


class ImageFolderSourceConfig(Strict):
    type: Literal["image_folder"] = "image_folder"
    name: str = "images"
    path: str
    manifest: str | None = None  # JSONL with image, caption/question/answer; else sidecar .txt
    task: Literal["understand", "generate"] = "understand"
    # A relative `manifest` is resolved inside `path`; images are the files with these extensions.
    image_ext: list[str] = ["jpg", "jpeg", "png", "webp", "bmp", "gif"]


class ParquetSourceConfig(Strict):
    type: Literal["parquet"] = "parquet"
    name: str = "parquet"
    path: str  # file, folder or glob; local or s3://
    image_column: str = "image"
    caption_column: str = "caption"
    task: Literal["understand", "generate"] = "generate"
    batch_rows: int = Field(256, ge=1)  # rows per pyarrow batch: a shard is never read whole
    # Quota: at most this many rows (rejections included), shards in path order; reading stops there.
    limit: int | None = Field(None, ge=0)


class WebDatasetSourceConfig(Strict):
    type: Literal["webdataset"] = "webdataset"
    name: str = "webdataset"
    path: str  # tar file, folder of tars or glob; local or s3://
    image_ext: list[str] = ["jpg", "jpeg", "png", "webp"]
    caption_ext: list[str] = ["txt", "caption"]
    task: Literal["understand", "generate"] = "generate"
    # Quota: at most this many samples (rejections included), shards in path order; reading stops there.
    limit: int | None = Field(None, ge=0)


SourceConfig = Annotated[
    Union[
        ShapesSourceConfig,
        FashionMnistSourceConfig,
        ImageFolderSourceConfig,
        ParquetSourceConfig,
        WebDatasetSourceConfig,
    ],
    Field(discriminator="type"),
]


class StorageConfig(Strict):
    """S3-compatible object storage, reached through `arm.fs` (s3fs for listing and streams,
    pyarrow's S3 client for Parquet): both get these settings. Credentials come from the
    environment, never from here."""

    # e.g. http://127.0.0.1:8333 for SeaweedFS or MinIO; None: AWS_ENDPOINT_URL, else AWS itself
    endpoint_url: str | None = None
    region: str = "us-east-1"
    connect_timeout_s: float = Field(5.0, gt=0)  # per connection attempt
    read_timeout_s: float = Field(30.0, gt=0)  # silence on an open connection before the try fails
    max_attempts: int = Field(3, ge=1)  # tries per request, the first included (botocore "standard" mode)


class FilterConfig(Strict):
    """Thresholds of the curation filters; each filter is a SQL predicate over stats columns."""

    min_side: int = 8
    max_aspect: float = 4.0
    min_text_chars: int = 1
    max_text_chars: int = 1024
    min_pixel_std: float = 2.0  # below this an image is blank
    near_dup_phash_distance: int = 2  # Hamming distance on the 64-bit pHash
    near_dup_thumb_distance: float = 0.04  # max abs difference over 8x8 RGB thumbnail cells, in [0, 1]


class SplitConfig(Strict):
    val: float = Field(0.05, ge=0, lt=1)
    test: float = Field(0.05, ge=0, lt=1)


class DataConfig(Strict):
    sources: list[SourceConfig] = [ShapesSourceConfig(), FashionMnistSourceConfig()]
    filters: FilterConfig = FilterConfig()
    splits: SplitConfig = SplitConfig()
    max_pixels: int = Field(4096 * 4096, ge=1)  # larger images are rejected before decoding
    max_file_bytes: int = Field(64 * 1024 * 1024, ge=1)
    # Only these Pillow plugins see source bytes: others (EPS runs Ghostscript, PDF, PSD, ...) are
    # attack surface for untrusted data and never hold training images.
    image_formats: list[Literal["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"]] = list(RASTER_FORMATS)
    shard_size: int = Field(4096, ge=1)
    workers: int = Field(2, ge=1)
    # Where the stats run (the store is the same either way): a local process pool of `workers`,
    # or Prefect tasks on Dask (a LocalCluster of dask_workers processes, or the cluster at dask_address).
    executor: Literal["process", "dask"] = "process"
    dask_address: str | None = None  # e.g. tcp://scheduler:8786; workers need arm installed
    dask_workers: int = Field(2, ge=1)
    # Records per Prefect task: each task costs ~0.1-0.3 s of orchestration (API calls, context),
    # so Dask chunks are larger than the pool's 256; in flight: 3 chunks per Dask worker thread.
    dask_chunk_size: int = Field(1024, ge=1)
    store: str = "data/curated"
    metrics: str = "metrics/curate.json"


class ValidationConfig(Strict):
    min_per_task: dict[Literal["understand", "generate", "edit", "text"], int] = {
        "understand": 100,
        "generate": 100,
        "edit": 100,
        "text": 10,
    }
    split_tolerance: float = Field(0.03, ge=0, le=1)
    output: str = "metrics/data_validation.json"


# ----------------------------------------------------------------------------- root


class ArmConfig(Strict):
    preset: str = "tiny"
    seed: int = 0
    world: WorldConfig = WorldConfig()
    storage: StorageConfig = StorageConfig()
    data: DataConfig = DataConfig()
    validation: ValidationConfig = ValidationConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    text: TextConfig = TextConfig()
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig = PretrainConfig()
    rl: RLConfig = RLConfig()
    sampling: SamplingConfig = SamplingConfig()
    serve: ServeConfig = ServeConfig()
    eval: EvalConfig = EvalConfig()
    gate: GateConfig = GateConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {path}: {e['msg']}")
    return "\n".join(lines)


def _preset_chain(presets: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The override layers of a preset, outermost ancestor first. A preset may `extends:` another
    (7b-mini extends 7b: it keeps every switch of 7b by construction and changes only numbers)."""
    chain: list[dict[str, Any]] = []
    seen: list[str] = []
    while name != "tiny":
        if name not in presets:
            raise ConfigError(f"unknown preset {name!r}; known: {['tiny', *sorted(set(presets) - {'tiny'})]}")
        if name in seen:
            raise ConfigError(f"presets extend each other in a cycle: {' -> '.join([*seen, name])}")
        seen.append(name)
        layer = dict(presets[name] or {})
        parent = layer.pop("extends", "tiny")
        chain.insert(0, layer)
        name = parent
    return chain


Overrides = Mapping[str, Any] | list[str]  # {"key.path": value}, or the command line's "key.path=value" items


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Command-line `key.path=value` items (values parsed as YAML) as one {key.path: value} mapping.
    A key given again moves to its last place, so applying the mapping in order equals applying
    the items in order."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, value = item.split("=", 1)
        out.pop(key.strip(), None)
        out[key.strip()] = yaml.safe_load(value)
    return out


def override_args(overrides: Mapping[str, Any] | None) -> list[str]:
    """Overrides as `key.path=value` items for a command line (the torchrun-launched stages):
    values in YAML flow style, so parse_overrides gives back the same values."""
    return [f"{key}={_flow_yaml(value)}" for key, value in (overrides or {}).items()]


def _flow_yaml(value: Any) -> str:
    # one line; a plain scalar at the top level is dumped with an explicit document end ("...")
    return yaml.safe_dump(value, default_flow_style=True, width=float("inf")).removesuffix("\n...\n").strip()


def resolve(raw: dict[str, Any], preset: str | None = None, overrides: Overrides | None = None) -> dict[str, Any]:
    """Base values merged with a preset and overrides ({key.path: value}, or `key.path=value` items)."""
    raw = copy.deepcopy(raw)
    presets = raw.pop("presets", {}) or {}
    if presets.get("tiny"):  # the key exists for DVC (dvc.yaml tracks presets.<preset>); tiny is the base
        raise ConfigError("presets.tiny must stay empty: the tiny preset is the base values; edit those")
    name = preset or raw.get("preset", "tiny")
    merged = raw
    for layer in _preset_chain(presets, name):
        merged = deep_merge(merged, layer)
    merged["preset"] = name
    if overrides is not None and not isinstance(overrides, (Mapping, list, tuple)):
        raise ConfigError(f"overrides {overrides!r}: expected a mapping of key.path to value or key.path=value items")
    for key, value in (overrides if isinstance(overrides, Mapping) else parse_overrides(list(overrides or []))).items():
        _set_dotted(merged, str(key).strip(), copy.deepcopy(value))
    return merged


def load_config(
    path: str | Path = DEFAULT_PARAMS, preset: str | None = None, overrides: Overrides | None = None
) -> ArmConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    merged = resolve(raw, preset, overrides)
    try:
        return ArmConfig.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, str(path))) from None
