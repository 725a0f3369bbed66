"""The independent scene judge: a small learned reader of shapes-world images (DESIGN §8).

RL is rewarded by the hand-written oracle (arm/data/oracle.py), so evaluation must not score
with it: a policy can learn what that oracle forgives. This judge is built apart from it, the
way GenEval scores with a detector. It shares no code with the oracle or the renderer: it draws
its own training images with PIL (supersampled, anti-aliased, objects shifted inside their cell,
sizes and colours jittered, then noise, blur and brightness/contrast jitter) and learns, per grid
cell, whether an object is there and its kind, colour and size. Objects it cannot read are
trained into explicit "unknown" classes (off-palette colours, malformed blobs, half-drawn
shapes, noise patches), so it answers "unknown" instead of the nearest class.

Trained deterministically from its settings, cached by a hash of them and of the world, and
measured at training time on held-out synthesised images (clean and corrupted): `judge.report`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter
from safetensors.torch import load_file, save_file
from torch import nn

from arm.config import PALETTE, SIZES, WorldConfig, shapes_of
from arm.eval.config import SceneJudgeConfig
from arm.data.shapes import Scene, ShapeObject
from arm.io import atomic_path, atomic_write_json
from arm.progress import progress_bar

UNKNOWN = "unknown"
# Bumped whenever the synthesiser or the network changes, so a cached judge is never reused
# across a change that its settings do not capture.
FORMAT_VERSION = 1
CROP = 24  # side the network sees: a cell plus its margin (16 px + 2 x 4 px in the tiny world)
IGNORE = -100  # label of a head that has nothing to learn on this cell (cross_entropy's default)

# Colours no configured palette entry may be read as. Candidates are kept only when far enough
# from every configured colour (and from the background), then jittered like any other colour.
OFF_PALETTE = [
    (0, 0, 0), (60, 60, 60), (128, 128, 128), (130, 80, 40), (250, 150, 200), (220, 40, 220),
    (20, 20, 100), (100, 130, 20), (0, 110, 110), *PALETTE.values(),
]


# ----------------------------------------------------------------------------- synthesis


@dataclass(frozen=True)
class Recipe:
    """What a synthesised set contains; training mixes everything, held-out sets isolate one thing."""

    unknown_fraction: float = 0.0
    # Unreadable variants and their odds; off-palette colours get the most, as their boundary
    # (a distance cap around each configured colour) is the hardest thing to learn.
    unknown_kinds: tuple[tuple[str, float], ...] = (
        ("off_palette", 0.4), ("malformed", 0.2), ("half_drawn", 0.25), ("junk", 0.15))
    augment: bool = False  # random brightness/contrast, blur and noise, each with some probability
    noise_std: float = 0.0  # always-on noise (held-out corruption sets)
    blur_radius: float = 0.0  # always-on blur (held-out corruption sets)
    world_counts: bool = False  # object counts from the world's range, else 0..all cells
    noise_images: float = 0.0  # fraction of images that are pure noise (every cell unreadable)


@dataclass
class Labels:
    """Per cell, row-major, [N, grid*grid] int64; IGNORE where a head has nothing to learn."""

    present: np.ndarray
    kind: np.ndarray
    color: np.ndarray
    size: np.ndarray


class Synth:
    """Draws labelled shapes-world images its own way (not the renderer's): shapes at float
    coordinates, mostly supersampled, composited through a mask, with the jitter and corruptions the judge must survive."""

    def __init__(self, world: WorldConfig, cfg: SceneJudgeConfig, rng: np.random.Generator):
        self.world, self.cfg, self.rng = world, cfg, rng
        self.palette = np.array([PALETTE[c] for c in world.colors], dtype=np.float64)
        self.bg = np.array(world.background, dtype=np.float64)
        self.off_palette = [c for c in OFF_PALETTE if self._far(np.array(c, dtype=np.float64))]

    def _far(self, rgb: np.ndarray) -> bool:
        """Past the cap from every configured colour. Half the cap from the background suffices:
        a faint object is still an object (of no known colour), not an empty cell."""
        d = self.cfg.off_palette_distance
        return bool(np.linalg.norm(self.palette - rgb, axis=1).min() >= d and np.linalg.norm(rgb - self.bg) >= d / 2)

    def known_color(self, index: int) -> tuple[int, int, int]:
        """A configured colour moved in a random direction by up to color_jitter: every drift that
        small must still read as that colour."""
        step = self.rng.normal(size=3)
        step *= self.rng.uniform(0, self.cfg.color_jitter) / np.linalg.norm(step)
        return tuple(int(v) for v in np.clip(np.rint(self.palette[index] + step), 0, 255))

    def unknown_color(self) -> tuple[int, int, int]:
        """An off-palette colour, always past the cap: a named one, a uniformly random one, a
        near miss of a configured colour (the hard case, like orange next to yellow), a grey (most
        often near black or near the background), or a configured colour shaded toward black or
        washed out toward the background. Uniform sampling alone leaves these last regions so
        sparse that the network extrapolates into them (black read as green, the darkest)."""
        d, rng, bg = self.cfg.off_palette_distance, self.rng, self.bg
        while True:
            pick = rng.integers(5)
            if pick == 0 and self.off_palette:
                rgb = np.array(self.off_palette[rng.integers(len(self.off_palette))]) + rng.integers(-12, 13, 3)
            elif pick == 1:
                rgb = rng.integers(0, 256, 3).astype(np.float64)
            elif pick == 2:
                step = rng.normal(size=3)
                rgb = self.palette[rng.integers(len(self.palette))] + step * rng.uniform(d, 1.7 * d) / np.linalg.norm(step)
            elif pick == 3:
                rgb = 255 * rng.beta(0.5, 0.5) + rng.integers(-10, 11, 3)
            else:
                base = self.palette[rng.integers(len(self.palette))]
                rgb = base + rng.uniform(0.4, 1.0) * ((0.0 if rng.random() < 0.5 else bg) - base)
            rgb = np.clip(np.rint(rgb), 0, 255)
            if self._far(rgb):
                return tuple(int(v) for v in rgb)

    def images(self, n: int, recipe: Recipe) -> tuple[np.ndarray, Labels]:
        g = self.world.grid
        out = np.empty((n, self.world.image_size, self.world.image_size, 3), dtype=np.uint8)
        labels = Labels(*(np.full((n, g * g), IGNORE, dtype=np.int64) for _ in range(4)))
        for i in range(n):
            out[i] = self._image(recipe, labels, i)
        return out, labels

    def _image(self, recipe: Recipe, labels: Labels, i: int) -> np.ndarray:
        w, g, rng = self.world, self.world.grid, self.rng
        size = w.image_size
        if rng.random() < recipe.noise_images:
            labels.present[i], labels.kind[i], labels.color[i] = 1, len(w.kinds), len(w.colors)
            return self._noise_image(size)
        # Supersampling factor: mostly anti-aliased edges; a quarter of the images are drawn
        # crisp (factor 1), as a decoder or another renderer may draw them.
        ss = int(rng.choice([1, 2, 3, 4], p=[0.25, 0.25, 0.25, 0.25]))
        canvas = Image.new("RGB", (size * ss, size * ss), tuple(w.background))
        lo, hi = (w.min_objects, w.max_objects) if recipe.world_counts else (0, g * g)
        cells = rng.permutation(g * g)[: int(rng.integers(lo, hi + 1))]
        junk: list[int] = []
        for cell in cells:
            variant = "valid"
            if rng.random() < recipe.unknown_fraction:
                names, odds = zip(*recipe.unknown_kinds)
                variant = names[int(rng.choice(len(names), p=np.array(odds) / sum(odds)))]
            if variant == "junk":
                junk.append(int(cell))
                continue
            self._object(canvas, ss, int(cell), variant, labels, i)
        img = canvas.resize((size, size), Image.LANCZOS if rng.random() < 0.5 else Image.BOX)
        arr = np.asarray(img, dtype=np.float64).copy()
        for cell in junk:
            self._junk(arr, cell, labels, i)
        labels.present[i][labels.present[i] == IGNORE] = 0
        self._faint_noise(arr, labels.present[i])
        return self._corrupt(arr, recipe)

    def _object(self, canvas: Image.Image, ss: int, cell: int, variant: str, labels: Labels, i: int) -> None:
        w, cfg, rng = self.world, self.cfg, self.rng
        c = w.cell * ss
        row, col = divmod(cell, w.grid)
        kind = int(rng.integers(len(w.kinds)))
        size = int(rng.integers(len(w.sizes)))
        side = SIZES[w.sizes[size]] * c * (1 + rng.uniform(-cfg.size_jitter, cfg.size_jitter))
        cx = (col + 0.5) * c + rng.uniform(-cfg.offset, cfg.offset) * c
        cy = (row + 0.5) * c + rng.uniform(-cfg.offset, cfg.offset) * c
        mask = Image.new("L", canvas.size, 0)
        draw = ImageDraw.Draw(mask)
        if variant == "malformed":
            self._blob(draw, cx, cy, side)
        else:
            self._shape(draw, w.kinds[kind], cx, cy, side)
        if variant == "half_drawn":
            self._crop(draw, w.kinds[kind], cx, cy, side)
        if variant == "off_palette":
            color, color_label = self.unknown_color(), len(w.colors)
        else:
            color_label = int(rng.integers(len(w.colors)))
            color = self.known_color(color_label)
        canvas.paste(color, mask=mask)
        labels.present[i, cell] = 1
        labels.color[i, cell] = color_label
        readable = variant in ("valid", "off_palette")
        labels.kind[i, cell] = kind if readable else len(w.kinds)
        labels.size[i, cell] = size if readable else IGNORE

    @staticmethod
    def _shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, side: float) -> None:
        h = side / 2
        if kind == "square":
            draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=255)
        elif kind == "circle":
            draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=255)
        else:  # the world's triangle stands on its base with its apex up
            draw.polygon([(cx, cy - h), (cx - h, cy + h), (cx + h, cy + h)], fill=255)

    def _blob(self, draw: ImageDraw.ImageDraw, cx: float, cy: float, side: float) -> None:
        """A shape that is none of the world's kinds: irregular polygon, bar, ring or cross."""
        rng, h = self.rng, side / 2
        form = int(rng.integers(4))
        if form == 0:
            n = int(rng.integers(5, 9))
            angles = np.sort(rng.uniform(0, 2 * math.pi, n))
            radii = h * rng.uniform(0.35, 1.0, n)
            draw.polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii)], fill=255)
        elif form == 1:
            t = h * rng.uniform(0.15, 0.35)
            box = [cx - h, cy - t, cx + h, cy + t] if rng.random() < 0.5 else [cx - t, cy - h, cx + t, cy + h]
            draw.rectangle(box, fill=255)
        elif form == 2:
            draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=255)
            r = h * rng.uniform(0.45, 0.7)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=0)
        else:
            t = h * rng.uniform(0.2, 0.35)
            draw.rectangle([cx - h, cy - t, cx + h, cy + t], fill=255)
            draw.rectangle([cx - t, cy - h, cx + t, cy + h], fill=255)

    def _crop(self, draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, side: float) -> None:
        """Erase 40-65% of the shape from one side. Never the triangle's bottom: its top part
        would be a smaller, valid triangle."""
        sides = ["left", "right", "top", "bottom"] if kind != "triangle" else ["left", "right", "top"]
        cut = sides[int(self.rng.integers(len(sides)))]
        h, k = side / 2 + 2, side * self.rng.uniform(0.4, 0.65)
        x0, y0, x1, y1 = cx - h, cy - h, cx + h, cy + h
        box = {"left": [x0, y0, x0 + 2 + k, y1], "right": [x1 - 2 - k, y0, x1, y1],
               "top": [x0, y0, x1, y0 + 2 + k], "bottom": [x0, y1 - 2 - k, x1, y1]}[cut]
        draw.rectangle(box, fill=0)

    def _junk(self, arr: np.ndarray, cell: int, labels: Labels, i: int) -> None:
        """A patch of random pixels over most of the cell: something is there, nothing readable."""
        w, rng = self.world, self.rng
        c = w.cell
        row, col = divmod(cell, w.grid)
        a, b = int(rng.integers(0, c // 4 + 1)), int(rng.integers(3 * c // 4, c + 1))
        patch = rng.integers(0, 256, (b - a, b - a, 3)).astype(np.float64)
        arr[row * c + a : row * c + b, col * c + a : col * c + b] = patch
        labels.present[i, cell], labels.kind[i, cell], labels.color[i, cell] = 1, len(w.kinds), len(w.colors)

    def _faint_noise(self, arr: np.ndarray, present: np.ndarray) -> None:
        """Some empty cells get faint noise: still empty, so specks are not read as objects."""
        c = self.world.cell
        for cell in np.flatnonzero(present == 0):
            if self.rng.random() < 0.3:
                row, col = divmod(int(cell), self.world.grid)
                region = arr[row * c : (row + 1) * c, col * c : (col + 1) * c]
                region += self.rng.normal(0, self.rng.uniform(2, 8), region.shape)

    def _noise_image(self, size: int) -> np.ndarray:
        if self.rng.random() < 0.5:
            return self.rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
        mean = self.rng.uniform(60, 200)
        return np.clip(self.rng.normal(mean, self.rng.uniform(30, 90), (size, size, 3)), 0, 255).astype(np.uint8)

    def _corrupt(self, arr: np.ndarray, recipe: Recipe) -> np.ndarray:
        cfg, rng = self.cfg, self.rng
        blur, noise = recipe.blur_radius, recipe.noise_std
        if recipe.augment:
            if rng.random() < 0.5:
                mean = arr.mean()
                arr = (arr - mean) * (1 + rng.uniform(-cfg.contrast, cfg.contrast)) + mean
                arr = arr * (1 + rng.uniform(-cfg.brightness, cfg.brightness))
            blur = rng.uniform(0.3, cfg.blur_radius) if rng.random() < 0.3 and cfg.blur_radius > 0.3 else 0.0
            noise = rng.uniform(0, cfg.noise_std) if rng.random() < 0.3 else 0.0
        arr = np.clip(arr, 0, 255)
        if blur > 0:
            img = Image.fromarray(arr.astype(np.uint8)).filter(ImageFilter.GaussianBlur(blur))
            arr = np.asarray(img, dtype=np.float64)
        if noise > 0:
            arr = arr + rng.normal(0, noise * 255, arr.shape)
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- network


class CellNet(nn.Module):
    """A shared CNN over one cell crop; one linear head per attribute.

    It never sees raw RGB, only a colour-space transform of it: per pixel, the ink (distance
    from the background) and the affinity to each configured colour, a Gaussian of the RGB
    distance to the segment from the background to that colour (where anti-aliased edges and
    blur put that colour's pixels), scaled so the off-palette distance maps to ~0.02. Reading a
    colour is then finding its channel lit, and "none lit" is unknown: with RGB inputs the
    network extrapolated into colour regions training covers sparsely (black read as green, the
    darkest palette colour; a small cyan shape read as green for its green channel).
    """

    def __init__(self, world: WorldConfig, width: int, off_palette_distance: float):
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        bg = torch.tensor(world.background, dtype=torch.float32) / 255.0
        toward = torch.tensor([PALETTE[c] for c in world.colors], dtype=torch.float32) / 255.0 - bg
        self.register_buffer("bg", bg[None, None, :, None, None] - 0.5, persistent=False)
        self.register_buffer("toward", toward[None, :, :, None, None], persistent=False)
        self.scale = off_palette_distance / 2 / 255.0
        w = width
        self.body = nn.Sequential(
            *block(1 + len(world.colors), w), nn.MaxPool2d(2),  # 24 -> 12
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),  # 12 -> 6
            *block(2 * w, 4 * w), nn.MaxPool2d(2),  # 6 -> 3: keeps where ink is, hence size
            nn.Flatten(), nn.Linear(4 * w * 9, 128), nn.ReLU(),
        )
        self.splits = [2, len(world.kinds) + 1, len(world.colors) + 1, len(world.sizes)]
        self.head = nn.Linear(128, sum(self.splits))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rel = x[:, None] - self.bg  # [N, 1, 3, H, W]: each pixel as seen from the background
        t = ((rel * self.toward).sum(2, keepdim=True) / (self.toward**2).sum(2, keepdim=True)).clamp(0, 1)
        d2 = ((rel - t * self.toward) ** 2).sum(2)  # [N, colours, H, W]
        affinity = torch.exp(-d2 / self.scale**2) - 0.5
        ink = rel[:, 0].norm(dim=1, keepdim=True) / math.sqrt(3) - 0.5
        return tuple(self.head(self.body(torch.cat([ink, affinity], 1))).split(self.splits, dim=-1))


def cell_crops(images: np.ndarray, world: WorldConfig) -> torch.Tensor:
    """[N, H, W, 3] uint8 -> [N * grid * grid, 3, CROP, CROP] in [-0.5, 0.5], row-major cells.

    Each crop is its cell plus a quarter-cell margin (edge pixels repeated at the border), so an
    object shifted off-centre or a neighbour's edge is seen in context.
    """
    c = world.cell
    m = max(1, c // 4)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - 0.5
    x = F.pad(x, (m, m, m, m), mode="replicate")
    side = c + 2 * m
    crops = x.unfold(2, side, c).unfold(3, side, c)  # [N, 3, g, g, side, side]
    crops = crops.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, side, side)
    if side != CROP:
        crops = F.interpolate(crops, size=(CROP, CROP), mode="area" if side > CROP else "bilinear")
    return crops.contiguous()


# ----------------------------------------------------------------------------- the judge


@dataclass
class SceneJudge:
    model: CellNet
    world: WorldConfig
    min_confidence: float
    report: dict

    def read(self, images: Sequence[Image.Image], batch_size: int = 256) -> list[Scene]:
        """The scene in each image; an unreadable kind or colour comes back as "unknown".

        Cells are read one by one, so a scene of any of the world's shapes (`world.grids`, the
        aspect buckets) is read on its own rows x cols; images are brought to the world's cell
        size first (a 7b decode at 384 px per 3 cells, say)."""
        if len(images) == 0:
            return []
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(self.grid_of(*im.size), []).append(i)
        out: list[Scene | None] = [None] * len(images)
        c = self.world.cell
        for (rows, cols), members in groups.items():
            arr = np.stack([
                np.asarray(im.convert("RGB").resize((cols * c, rows * c), Image.BILINEAR) if im.size != (cols * c, rows * c)
                           else im.convert("RGB"), dtype=np.uint8)
                for im in (images[i] for i in members)
            ])
            present, kind, color, size_ = self.predict(arr, batch_size)
            for j, i in enumerate(members):
                out[i] = self._scene(present[j], kind[j], color[j], size_[j], (rows, cols))
        return out  # type: ignore[return-value]

    def grid_of(self, width: int, height: int) -> tuple[int, int]:
        """The (rows, cols) of an image: its cells at the world's cell size, else the world shape
        of its aspect ratio (read at that shape), else a ValueError naming the size."""
        c, shapes = self.world.cell, shapes_of(self.world)
        if width % c == 0 and height % c == 0 and (height // c, width // c) in shapes:
            return height // c, width // c
        for rows, cols in shapes:
            if abs(width * rows - height * cols) <= 0.01 * width * rows:
                return rows, cols
        raise ValueError(f"image of {width}x{height} px: no scene shape of this world {shapes} has its aspect ratio")

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, ...]:
        """[N, H, W, 3] uint8 at the world's cell size -> per-cell class indices [N, cells] (row-major)
        for presence, kind, colour and size; the unknown index (len of kinds/colours) where not confident."""
        self.model.eval()
        outs = []
        for i in range(0, len(images), batch_size):
            heads = self.model(cell_crops(images[i : i + batch_size], self.world))
            outs.append([self._decide(h, unknown) for h, unknown in zip(heads, self._unknowns())])
        cells = (images.shape[1] // self.world.cell) * (images.shape[2] // self.world.cell)
        return tuple(torch.cat([o[j] for o in outs]).reshape(-1, cells).numpy() for j in range(4))

    def _unknowns(self) -> list[int | None]:
        return [None, len(self.world.kinds), len(self.world.colors), None]

    def _decide(self, logits: torch.Tensor, unknown: int | None) -> torch.Tensor:
        prob, index = logits.softmax(-1).max(-1)
        if unknown is not None:
            index = torch.where(prob < self.min_confidence, torch.full_like(index, unknown), index)
        return index

    def _scene(self, present: np.ndarray, kind: np.ndarray, color: np.ndarray, size: np.ndarray,
               grid: tuple[int, int]) -> Scene:
        w = self.world
        kinds, colors = [*w.kinds, UNKNOWN], [*w.colors, UNKNOWN]
        cols = grid[1]
        return Scene.of(
            (ShapeObject(cell // cols, cell % cols, kinds[kind[cell]], colors[color[cell]], w.sizes[size[cell]])
             for cell in np.flatnonzero(present)),
            None if grid == (w.grid, w.grid) else grid,  # Scene's convention: None is the world's square
        )


def _key(cfg: SceneJudgeConfig, world: WorldConfig) -> str:
    fields = {"judge": cfg.model_dump(exclude={"cache_dir"}), "world": world.model_dump(), "version": FORMAT_VERSION}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def cache_folder(cfg: SceneJudgeConfig, world: WorldConfig) -> Path:
    return Path(cfg.cache_dir) / f"scene-judge-{_key(cfg, world)}"


def load_or_train(cfg: SceneJudgeConfig, world: WorldConfig) -> SceneJudge:
    """The cached judge for these settings and world, training (and caching) it on first use."""
    folder = cache_folder(cfg, world)
    weights, meta = folder / "model.safetensors", folder / "meta.json"
    if weights.is_file() and meta.is_file():
        model = CellNet(world, cfg.width, cfg.off_palette_distance)
        model.load_state_dict(load_file(str(weights)))
        return SceneJudge(model, world, cfg.min_confidence, json.loads(meta.read_text())["report"])
    judge = train_judge(cfg, world)
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in judge.model.state_dict().items()}, str(tmp / "model.safetensors"))
        atomic_write_json(tmp / "meta.json", {"report": judge.report, "config": cfg.model_dump(),
                                              "world": world.model_dump(), "version": FORMAT_VERSION})
    return judge


def train_judge(cfg: SceneJudgeConfig, world: WorldConfig) -> SceneJudge:
    """Deterministic from (settings, world): seeded synthesis and shuffling, one thread (these
    convolutions are too small to share, and a reduction split across threads can reorder)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(cfg, world)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: SceneJudgeConfig, world: WorldConfig) -> SceneJudge:
    start = time.perf_counter()
    synth = Synth(world, cfg, np.random.default_rng(cfg.seed))
    recipe = Recipe(unknown_fraction=cfg.unknown_fraction, augment=True, noise_images=0.02)
    images, labels = synth.images(cfg.train_images, recipe)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = CellNet(world, cfg.width, cfg.off_palette_distance)
    steps = cfg.epochs * math.ceil(len(images) / cfg.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.15)
    targets = [torch.from_numpy(a).reshape(-1) for a in (labels.present, labels.kind, labels.color, labels.size)]
    cells = world.grid ** 2
    model.train()
    bar = progress_bar("eval judge training", steps, unit="step")
    for _ in range(cfg.epochs):
        order = torch.randperm(len(images), generator=gen)
        for i in range(0, len(images), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            rows = (idx[:, None] * cells + torch.arange(cells)).reshape(-1)
            heads = model(cell_crops(images[idx.numpy()], world))
            loss = sum(F.cross_entropy(h, t[rows], ignore_index=IGNORE) for h, t in zip(heads, targets)
                       if (t[rows] != IGNORE).any())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)  # drawn at the bar's own pace
            bar.update(1)
    bar.close()
    judge = SceneJudge(model, world, cfg.min_confidence, {})
    train_s = time.perf_counter() - start
    judge.report = {**held_out_report(judge, cfg, world), "train_seconds": round(train_s, 1)}
    return judge


# ----------------------------------------------------------------------------- accuracy


def held_out_sets(cfg: SceneJudgeConfig) -> dict[str, Recipe]:
    """Sets drawn like the world's scenes (its object counts), each isolating one condition at
    the strongest corruption training used."""
    return {
        "clean": Recipe(world_counts=True),
        "noise": Recipe(world_counts=True, noise_std=cfg.noise_std),
        "blur": Recipe(world_counts=True, blur_radius=cfg.blur_radius),
        "off_palette": Recipe(world_counts=True, unknown_fraction=1.0, unknown_kinds=(("off_palette", 1.0),)),
        "half_drawn": Recipe(world_counts=True, unknown_fraction=1.0, unknown_kinds=(("half_drawn", 1.0),)),
        "malformed": Recipe(world_counts=True, unknown_fraction=1.0, unknown_kinds=(("malformed", 1.0),)),
    }


def held_out_report(judge: SceneJudge, cfg: SceneJudgeConfig, world: WorldConfig) -> dict:
    """Accuracy per held-out set, on images synthesised from a seed training never used."""
    synth = Synth(world, cfg, np.random.default_rng([cfg.seed, 1]))  # a stream apart from training's
    report = {}
    for name, recipe in held_out_sets(cfg).items():
        images, labels = synth.images(cfg.holdout_images, recipe)
        report[name] = accuracy(judge.predict(images), labels)
    return report


def accuracy(pred: tuple[np.ndarray, ...], labels: Labels) -> dict[str, float]:
    """Per-cell accuracy of each head (over the cells where it has a label: kind and colour on
    objects, size on readable shapes) and the rate of images read exactly (every cell right)."""
    present, kind, color, size = pred
    target = (labels.present, labels.kind, labels.color, labels.size)
    out, right = {}, np.ones(present.shape, dtype=bool)
    for name, p, t in zip(("presence", "kind", "color", "size"), (present, kind, color, size), target):
        has = t != IGNORE
        if has.any():  # e.g. no size label in a set of half-drawn shapes
            out[name] = round(float((p[has] == t[has]).mean()), 4)
        right &= ~has | (p == t)
    out["exact_scene"] = round(float(right.all(axis=1).mean()), 4)
    return out
