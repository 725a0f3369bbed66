"""Aspect-ratio buckets of the visual tokenizer (issue 17): bucket arithmetic, fitting, encode and
decode on non-square grids, old tokenizers unchanged, and bucketed training."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from arm.tokenizer.buckets import Buckets, bucket_grids, parse_ratio
from arm.tokenizer.config import TokenizerConfig
from arm.tokenizer.model import VisualTokenizer
from arm.tokenizer.vocab import CaptionVocab

REPO = Path(__file__).resolve().parents[1]
VOCAB = CaptionVocab.build(["red blocks", "blue blocks", "green blocks"], 64).tokens
RATIOS = ["1:1", "4:3", "3:4"]
pytestmark = pytest.mark.xdist_group("tokenizer")


def aspect_cfg(micro_cfg, **aspect):
    """The micro tokenizer with 1:1, 4:3 and 3:4 buckets of at most 12 tokens (3x3, 3x4, 4x3)."""
    t = micro_cfg.tokenizer
    return t.model_copy(update={"aspect": t.aspect.model_copy(update={"ratios": RATIOS, "max_tokens": 12, **aspect})})


def build(cfg) -> VisualTokenizer:
    torch.manual_seed(0)
    return VisualTokenizer.build(cfg, caption_vocab=VOCAB, text_dim=16, distill_dim=8).eval()


@pytest.fixture
def tok(micro_cfg):
    return build(aspect_cfg(micro_cfg))


def blocks(width: int, height: int, seed: int, cell: int = 16) -> Image.Image:
    """White with flat coloured cells: what the per-token decoder can learn in a few steps."""
    rng = random.Random(seed)
    palette = [(220, 30, 30), (30, 160, 60), (40, 60, 220), (240, 200, 0)]
    im = Image.new("RGB", (width, height), (255, 255, 255))
    for y in range(0, height, cell):
        for x in range(0, width, cell):
            if rng.random() < 0.6:
                im.paste(rng.choice(palette), (x, y, x + cell, y + cell))
    return im


# ----------------------------------------------------------------------------- bucket arithmetic


def test_parse_ratio_reads_width_over_height_and_names_bad_input():
    assert parse_ratio("4:3") == pytest.approx(4 / 3)
    assert parse_ratio("1.85:1") == pytest.approx(1.85)
    for bad in ["", "4-3", "0:3", "4:0", "-4:3", "a:b", "4:3:2", "inf:1"]:
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            parse_ratio(bad)


def test_bucket_grids_spend_the_budget_nearest_each_ratio():
    assert bucket_grids(RATIOS, 12, 3) == [(3, 3), (3, 4), (4, 3)]
    # 9 tokens: no 4:3 grid fits but 2x3 (1.5), the nearest ratio within the budget
    assert bucket_grids(RATIOS, 9, 3) == [(3, 3), (2, 3), (3, 2)]
    # the 7b square: 24x24; 16:9 at the same 576 tokens is exactly 18x32
    grids = bucket_grids(["1:1", "16:9", "9:16", "4:3"], None, 24)
    assert grids[:3] == [(24, 24), (18, 32), (32, 18)]
    h, w = grids[3]  # 4:3 within 5% of the nearest ratio, using more of the budget than 18x24
    assert h * w <= 576 and h * w > 18 * 24 and abs(np.log(w / h / (4 / 3))) <= np.log(1.05)
    # square first whatever the order, duplicates once
    assert bucket_grids(["4:3", "1:1", "8:6", "2:2"], 12, 3) == [(3, 3), (3, 4)]
    with pytest.raises(ValueError, match="need '1:1'"):
        bucket_grids(["4:3"], 12, 3)
    with pytest.raises(ValueError, match="max_tokens 16"):  # 1:1 would buy 4x4, not the 3x3 square
        bucket_grids(RATIOS, 16, 3)


def test_config_grids_and_validation(micro_cfg):
    cfg = aspect_cfg(micro_cfg)
    assert cfg.grids == [(3, 3), (3, 4), (4, 3)] and cfg.grid == (3, 3)
    assert micro_cfg.tokenizer.grids == [(3, 3)]
    # a config without buckets dumps as before the key existed (checkpoint fingerprints stay valid)
    assert "aspect" not in micro_cfg.tokenizer.model_dump() and "aspect" in cfg.model_dump()
    assert TokenizerConfig(**cfg.model_dump()).grids == cfg.grids
    with pytest.raises(ValueError, match=r"tokenizer\.aspect\.ratios: aspect ratio '4-3'"):
        TokenizerConfig(aspect={"ratios": ["1:1", "4-3"]})
    with pytest.raises(ValueError, match=r"need '1:1'"):
        TokenizerConfig(aspect={"ratios": ["4:3"]})
    with pytest.raises(ValueError, match="extra"):
        TokenizerConfig(aspect={"ratio": ["1:1"]})
    with pytest.raises(ValueError, match=r"tokenizer\.aspect\.max_tokens"):
        TokenizerConfig(aspect={"ratios": RATIOS, "max_tokens": 16})
    # 64 px / 16 = 4x4 tokens, window 2: the 4:3 bucket is 3x4, whose 3 rows a window of 2 cannot tile
    with pytest.raises(ValueError, match=r"encoder\.window 2 .* grid \(3, 4\)"):
        TokenizerConfig(image_size=64, encoder={"window": 2}, aspect={"ratios": ["1:1", "4:3"]})


def test_buckets_choose_nearest_ratio_and_pixel_sizes():
    b = Buckets([(3, 3), (3, 4), (4, 3)], 16)
    assert b.choose(640, 480) == (3, 4) and b.choose(480, 640) == (4, 3) and b.choose(500, 500) == (3, 3)
    assert b.choose(1600, 900) == (3, 4)  # 16:9 goes to the widest there is
    # a square image is as far from 4:3 as from 3:4: the earlier bucket
    assert Buckets([(3, 4), (4, 3)], 16).choose(50, 50) == (3, 4)
    assert Buckets([(4, 3), (3, 4)], 16).choose(50, 50) == (4, 3)
    assert b.for_ratio("16:9") == (3, 4) and b.for_ratio(0.5) == (4, 3) and b.for_ratio("1:1") == (3, 3)
    with pytest.raises(ValueError, match="'wide'"):
        b.for_ratio("wide")
    with pytest.raises(ValueError, match="-1"):
        b.for_ratio(-1.0)
    assert b.pixel_size((3, 4)) == (48, 64)
    with pytest.raises(ValueError, match=r"grid \(5, 5\).*\[\(3, 3\), \(3, 4\), \(4, 3\)\]"):
        b.pixel_size((5, 5))


def test_fit_crop_cuts_the_margins_and_pad_keeps_the_image_in_the_centre():
    crop = Buckets([(3, 3), (3, 4)], 16, "crop")
    wide = Image.new("RGB", (100, 50), (255, 0, 0))  # 2:1, red margins around a 4:3 blue centre
    wide.paste((0, 0, 255), (16, 0, 84, 50))
    out = crop.fit(wide, (3, 4))
    assert out.size == (64, 48) and out.mode == "RGB"
    px = np.asarray(out).astype(int)
    assert (px[..., 2] > 200).all() and (px[..., 0] < 60).all()  # the margins are gone, nothing squashed in
    pad = Buckets([(3, 3), (3, 4)], 16, "pad")
    tall = blocks(32, 48, seed=1)  # fits the 64x48 bucket's height as it is: pasted unresized
    out = np.asarray(pad.fit(tall, (3, 4)))
    assert out.shape == (48, 64, 3)
    assert np.array_equal(out[:, 16:48], np.asarray(tall))
    assert (out[:, :16] == 255).all() and (out[:, 48:] == 255).all()
    out = np.asarray(pad.fit(Image.new("L", (128, 48), 0), (3, 4)))  # grey, resized to fit: white above and below
    assert out.shape == (48, 64, 3) and (out[12:36] == 0).all() and (out[:12] == 255).all() and (out[36:] == 255).all()


# ----------------------------------------------------------------------------- the tokenizer


def test_encode_a_4_3_image_on_its_own_grid_and_decode_it(tok):
    assert tok.grids == [(3, 3), (3, 4), (4, 3)] and tok.grid == (3, 3)
    assert isinstance(tok.buckets, Buckets) and tok.buckets.grids == tok.grids
    image = blocks(640, 480, seed=0)
    codes = tok.encode([image])
    assert codes.shape == (1, 3, 4) and codes.dtype == torch.long
    pixels = tok.decode(codes)
    assert pixels.shape == (1, 3, 48, 64) and 0 <= float(pixels.min()) <= float(pixels.max()) <= 1
    # the same image as a tensor already at the bucket's pixels: the same codes
    x = torch.from_numpy(np.asarray(tok.buckets.fit(image, (3, 4))).copy()).permute(2, 0, 1)[None]
    assert torch.equal(tok.encode(x), codes)
    assert tok.encode([image], grid=(3, 3)).shape == (1, 3, 3)  # any configured grid on request
    assert tok.encode([blocks(48, 64, seed=0)]).shape == (1, 4, 3)
    assert tok.decode(tok.encode([blocks(48, 64, seed=0)])).shape == (1, 3, 64, 48)
    assert tok.embed_codes(codes).shape == (1, 16)
    assert tok.embed_images([image]).shape == (1, 16)
    assert torch.allclose(tok.embed_images([image]), tok.embed_codes(codes))
    assert len(tok.caption(codes, max_length=4)) == 1


def test_mixed_aspect_batch_raises_in_encode_and_works_in_encode_each(tok):
    images = [blocks(64, 48, 0), blocks(48, 48, 1), blocks(48, 64, 2), blocks(96, 72, 3)]
    with pytest.raises(ValueError, match=r"images\[1\].*encode_each"):
        tok.encode(images)
    each = tok.encode_each(images)
    assert [tuple(c.shape) for c in each] == [(3, 4), (3, 3), (4, 3), (3, 4)]
    for image, codes in zip(images, each):
        assert torch.equal(tok.encode([image])[0], codes)
    assert tok.encode(images, grid=(3, 3)).shape == (4, 3, 3)  # one grid for all, on request


def test_unknown_grids_are_errors_naming_the_known_ones(tok):
    with pytest.raises(ValueError, match=r"grid \(2, 2\).*\(3, 4\)"):
        tok.decode(torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"grid \(4, 4\)"):
        tok.encode([blocks(48, 48, 0)], grid=(4, 4))
    assert tok.decode(torch.zeros(1, 9, dtype=torch.long)).shape == (1, 3, 48, 48)  # flat: the square only
    with pytest.raises(ValueError, match=r"shape \(1, 12\).*flat \[B, 9\]"):
        tok.decode(torch.zeros(1, 12, dtype=torch.long))


def test_position_table_covers_every_grid_cell_by_row_and_column(tok):
    """pos has max_h x max_w rows; a grid reads its top-left corner, cell (r, c) at r * max_w + c."""
    assert tok.pos.shape == (1, 16, tok.pos.shape[-1])  # 4 x 4 extents of 3x3, 3x4, 4x3
    q = tok.codes_to_quantized(torch.randint(0, tok.codebook_size, (2, 12)))
    for grid in [(3, 4), (4, 3)]:
        h, w = grid
        rows = torch.tensor([r * 4 + c for r in range(h) for c in range(w)])
        x = tok.up(q) + tok.pos[:, rows]
        for block in tok.post:
            x = block(x)
        assert torch.allclose(tok.features(q, grid), tok.post_norm(x))


def test_single_bucket_tokenizer_is_unchanged_and_old_saves_load(micro_cfg, tmp_path):
    """A tokenizer saved before buckets (no "grids"/"fit" in its config) loads and encodes as one
    built now: the same square table, the same codes; squashing, not cropping, a wide image."""
    from safetensors.torch import save_file

    new = build(micro_cfg.tokenizer)
    assert new.spec["grids"] == [[3, 3]] and new.grids == [(3, 3)] and new.pos.shape[1] == 9
    old = {k: v for k, v in new.spec.items() if k not in ("grids", "fit")}
    d = tmp_path / "old"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(old))
    save_file({k: v.contiguous() for k, v in new.state_dict().items()}, str(d / "model.safetensors"))
    back = VisualTokenizer.from_pretrained(d)
    assert back.grids == [(3, 3)]
    images = [blocks(48, 48, 0), blocks(80, 40, 1)]
    assert torch.equal(back.encode(images), new.encode(images))
    squashed = [im.resize((48, 48), Image.Resampling.BICUBIC) for im in images]
    assert torch.equal(new.encode(squashed), new.encode(images))
    assert [tuple(c.shape) for c in new.encode_each(images)] == [(3, 3), (3, 3)]


def test_save_load_keeps_the_buckets(tok, tmp_path):
    from huggingface_hub import ModelCard

    d = tok.save_pretrained(tmp_path / "tok")
    back = VisualTokenizer.from_pretrained(d)
    assert back.grids == tok.grids and back.buckets.fit_mode == "crop"
    image = [blocks(64, 48, 5)]
    assert torch.equal(back.encode(image), tok.encode(image))
    card = ModelCard.load(d / "README.md").text
    assert "[(3, 3), (3, 4), (4, 3)]" in card and "encode_each" in card


def test_global_encoder_interpolates_its_positions_on_other_grids(micro_cfg):
    """encoder.window null: the SigLIP position table is its square one, bicubically resized for
    3x4 and 4x3 grids; the square grid reads it as it always did."""
    cfg = aspect_cfg(micro_cfg).model_copy(update={"encoder": micro_cfg.tokenizer.encoder.model_copy(update={"window": None})})
    tok = build(cfg)
    x = torch.rand(1, 3, 48, 64)
    assert tok.encode(x).shape == (1, 3, 4)
    square = torch.rand(2, 3, 48, 48)
    plain = tok.proj_in(tok.encoder(pixel_values=square * 2 - 1).last_hidden_state)
    assert torch.equal(tok.pre_quant(square), plain)


def test_pad_fit_and_flow_decoder_on_a_non_square_grid(micro_cfg):
    from arm.tokenizer.config import FlowDecoderConfig
    from arm.tokenizer.flow_decoder import FlowDecoder

    tok = build(aspect_cfg(micro_cfg, fit="pad"))
    framed, grid = tok.frame([blocks(32, 48, 0)])  # 2:3: nearest 3:4, padded left and right with white
    assert grid == (4, 3) and framed.shape == (1, 3, 64, 48)
    assert (framed[0, :, :, :2] == 1).all() and (framed[0, :, :, -2:] == 1).all()
    flow = FlowDecoder(FlowDecoderConfig(channels=(8, 8), norm_groups=4, cond_channels=4, sample_steps=2), tok)
    tok.attach_flow(flow)
    codes = tok.encode([blocks(64, 48, 0)])
    out = tok.decode(codes, decoder="flow")
    assert out.shape == (1, 3, 48, 64)
    assert torch.equal(out, tok.decode(codes, decoder="flow"))  # seeded


def test_scene_states_off_grid_are_ignored(micro_cfg):
    from arm.tokenizer.data import IGNORE, generated_set, scene_cell_states, scene_class_count

    data = generated_set(micro_cfg.world, 48, n_scenes=2, n_fashion=2, seed=0, edits=False)
    square = scene_cell_states(data, micro_cfg.world)
    assert square.shape == (4, 9) and (square[:2] != IGNORE).all()
    wide = scene_cell_states(data, micro_cfg.world, (3, 4))
    assert wide.shape == (4, 12)
    assert (wide[:2] == IGNORE).all()  # square scenes do not land on 3x4 tokens
    assert (wide[2:] == scene_class_count(micro_cfg.world) - 1).all()  # natural images: "not the shapes world"


def test_non_square_scenes_get_cell_targets_on_their_own_bucket():
    """A world of 3x3, 3x4 and 4x3 scenes (cells of one patch): each scene lands in the bucket of
    its own shape, where the scene head reads every cell's state."""
    from arm.config import load_config
    from arm.data.shapes import Scene, cell_states
    from arm.tokenizer.data import IGNORE, bucket_parts, generated_set, scene_cell_states

    cfg = load_config(REPO / "params.yaml", preset="micro", overrides=["world.grids=[[3, 4], [4, 3]]"])
    data = generated_set(cfg.world, 48, n_scenes=24, n_fashion=0, seed=0, edits=False)
    parts = bucket_parts(data, Buckets(bucket_grids(RATIOS, 12, 3), 16))
    assert [p.grid for p in parts] == [(3, 3), (3, 4), (4, 3)]
    for part in parts:
        states = scene_cell_states(part.images, cfg.world, part.grid)
        assert states.shape == (len(part.rows), part.grid[0] * part.grid[1]) and (states != IGNORE).all()
        assert states[0].tolist() == cell_states(Scene.from_json(part.images.scenes[0]), cfg.world)
        assert part.images.pixels([0]).shape == (1, 3, part.grid[0] * 16, part.grid[1] * 16)


# ----------------------------------------------------------------------------- training


def test_bucket_order_is_seeded_one_bucket_per_batch_and_proportional():
    from arm.tokenizer.train import BatchOrder, BucketOrder

    none = torch.empty(0, dtype=torch.long)
    picks = [BucketOrder([60, 20, 20], 4, seed=3, total=400, scene_rows=[none] * 3).rows(s) for s in range(400)]
    again = BucketOrder([60, 20, 20], 4, seed=3, total=400, scene_rows=[none] * 3)
    assert all(b == again.rows(s)[0] and torch.equal(r, again.rows(s)[1]) for s, (b, r) in enumerate(picks))
    assert all(len(r) == 4 for _, r in picks)
    share = np.bincount([b for b, _ in picks], minlength=3) / 400
    assert abs(share[0] - 0.6) < 0.1 and abs(share[1] - 0.2) < 0.08
    # a bucket's first epoch visits each of its images once
    first = [r for b, r in picks if b == 1][:5]
    assert sorted(torch.cat(first).tolist()) == list(range(20))
    # one bucket: the single-bucket trainer's order, step for step
    single = BucketOrder([40], 8, seed=0, total=20, scene_rows=[none])
    plain = BatchOrder(40, 8, 0)
    assert all(single.rows(s)[0] == 0 and torch.equal(single.rows(s)[1], plain.rows(s)) for s in range(20))


@pytest.fixture(scope="module")
def mixed_sets():
    """Square, 4:3 and 3:4 block images (some at other sizes of the same aspect), with captions."""
    from arm.tokenizer.data import memory_set

    def make(n: int, seed: int):
        sizes = [(48, 48), (64, 48), (48, 64), (96, 72)]
        images = [blocks(*sizes[i % 4], seed=seed * 1000 + i) for i in range(n)]
        texts = [[["red blocks", "blue blocks", "green blocks"][i % 3]] for i in range(n)]
        return memory_set(images, texts, 48)

    return {"train": make(96, 0), "val": make(24, 1)}


def _train_cfg(tmp_path, steps: int, *extra: str):
    from arm.config import load_config

    return load_config(REPO / "params.yaml", preset="micro", overrides=[
        f"tokenizer.output={tmp_path}/model", f"tokenizer.checkpoint_dir={tmp_path}/ckpt",
        f"tokenizer.metrics={tmp_path}/metrics.json", f"tokenizer.plots={tmp_path}/curve",
        f"tokenizer.report={tmp_path}/report", f"tokenizer.text_cache={tmp_path.parent}/text-cache",
        "tokenizer.aspect.ratios=['1:1','4:3','3:4']", "tokenizer.aspect.max_tokens=12", "tokenizer.flow.train=false",
        f"tokenizer.train.steps={steps}", "tokenizer.train.lr=0.005", "tokenizer.train.batch_size=8",
        "tokenizer.train.teacher_batch=4", "tokenizer.train.checkpoint_every=4", *extra])


def test_bucketed_training_improves_every_bucket(tmp_path, mixed_sets):
    from arm.tokenizer.data import bucket_parts
    from arm.tokenizer.metrics import bucket_reconstruction
    from arm.tokenizer.train import train_tokenizer

    cfg = _train_cfg(tmp_path, 40)
    out = train_tokenizer(cfg, sets=mixed_sets, resume=False, progress=False, evaluate=False)
    assert out["grids"] == [[3, 3], [3, 4], [4, 3]]
    assert out["train_images_per_grid"] == {"3x3": 24, "3x4": 48, "4x3": 24}
    trained = VisualTokenizer.from_pretrained(tmp_path / "model")
    assert trained.grids == [(3, 3), (3, 4), (4, 3)]
    parts = bucket_parts(mixed_sets["val"], trained.buckets)
    assert [p.grid for p in parts] == trained.grids
    init = build(cfg.tokenizer)
    before = bucket_reconstruction(init, parts, cfg.tokenizer.eval)
    after = bucket_reconstruction(trained, parts, cfg.tokenizer.eval)
    for h, w in trained.grids:
        key = f"val_{h}x{w}_psnr"
        assert after[key] > before[key] + 3.0, (key, before[key], after[key])


def test_bucketed_training_resumes_exactly(tmp_path, mixed_sets):
    from arm.curves import read_curve
    from arm.tokenizer.train import train_tokenizer

    train_tokenizer(_train_cfg(tmp_path / "a", 8), sets=mixed_sets, resume=False, progress=False, evaluate=False)
    cut = _train_cfg(tmp_path / "b", 8)
    assert train_tokenizer(cut, sets=mixed_sets, resume=True, progress=False, evaluate=False, stop_at=4)["stopped_at"] == 4
    train_tokenizer(cut, sets=mixed_sets, resume=True, progress=False, evaluate=False)
    full, resumed = read_curve(tmp_path / "a" / "curve"), read_curve(tmp_path / "b" / "curve")
    assert [r["step"] for r in resumed] == list(range(1, 9))
    for a, b in zip(full, resumed):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), (a["step"], k)


def test_natural_photos_are_cropped_or_padded_to_their_bucket_never_squashed(micro_cfg):
    """scikit-image's sample photos (offline): a 3:2 photo goes to the 4:3 bucket; `crop` keeps
    its centre at its own proportions, `pad` keeps all of it between white bands, and both encode
    on the 3x4 grid and decode at 64x48."""
    from skimage import data

    photo = Image.fromarray(data.coffee())  # 600 x 400 px
    crop, pad = build(aspect_cfg(micro_cfg)), build(aspect_cfg(micro_cfg, fit="pad"))
    assert crop.buckets.choose(*photo.size) == (3, 4)
    cropped, padded = crop.buckets.fit(photo, (3, 4)), pad.buckets.fit(photo, (3, 4))
    # crop: the central 533x400 box, resized alone (no band, no stretch)
    box = photo.crop((33, 0, 566, 400)).resize((64, 48), Image.Resampling.BICUBIC)
    assert np.abs(np.asarray(cropped, int) - np.asarray(box, int)).mean() < 2
    # pad: 64x43 of photo (its 3:2 kept) between white rows
    px = np.asarray(padded)
    assert (px[:2] == 255).all() and (px[-3:] == 255).all() and px[10:38].std() > 20
    squashed = photo.resize((64, 48), Image.Resampling.BICUBIC)
    assert np.abs(np.asarray(cropped, int) - np.asarray(squashed, int)).mean() > 5  # not what a squash gives
    for tok in (crop, pad):
        codes = tok.encode([photo])
        assert codes.shape == (1, 3, 4) and tok.decode(codes).shape == (1, 3, 48, 64)
        assert torch.equal(codes, tok.encode([tok.buckets.fit(photo, (3, 4))]))
