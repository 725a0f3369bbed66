"""Any aspect ratio end to end on a shapes world of 3x3, 3x4 and 4x3 scenes (issue 17): curation
records each image's bucket, the tokenize stage encodes each image on its own grid, pretraining
packs documents of mixed grids, and the pipeline draws at a requested aspect ratio, describes and
edits non-square images at theirs. Fashion-MNIST's 28x28 images go to the square bucket."""

from __future__ import annotations

import duckdb
import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.xdist_group("deepspeed")  # pretraining: one process group per worker at a time

ASPECT = ["world.grids=[[3, 4], [4, 3]]", "tokenizer.aspect.ratios=['1:1', '4:3', '3:4']",
          "tokenizer.aspect.max_tokens=12"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from arm.config import load_config
    from arm.data.curate import curate
    from arm.tokenizer.model import VisualTokenizer
    from arm.tokenizer.tokens import tokenize
    from arm.tokenizer.vocab import SPECIALS
    from arm.train.pretrain import pretrain

    root = tmp_path_factory.mktemp("aspect")
    paths = {
        "pretrain.data": "store", "pretrain.images": "tokenizer", "pretrain.tokens": root / "tokens",
        "pretrain.visual_tokenizer": root / "vt", "pretrain.checkpoints": root / "ckpt",
        "pretrain.output": root / "model", "pretrain.metrics": root / "pretrain.json", "pretrain.plot": root / "curve",
        "data.store": root / "curated", "data.metrics": root / "curate.json", "tokenizer.output": root / "vt",
        "tokenizer.tokens.output": root / "tokens", "tokenizer.tokens.metrics": root / "tokenize.json",
        "pretrain.max_steps": 2, "pretrain.warmup_steps": 1,
    }
    cfg = load_config(REPO / "params.yaml", preset="micro",
                      overrides=[f"{k}={v}" for k, v in paths.items()] + ASPECT)
    curate(cfg, progress=False)
    torch.manual_seed(0)
    # a random-init tokenizer: what is tested here is the plumbing of grids, not code quality
    # (tests/test_tokenizer_aspect.py trains one on mixed buckets)
    VisualTokenizer.build(cfg.tokenizer, caption_vocab=list(SPECIALS), text_dim=384, distill_dim=16) \
        .save_pretrained(root / "vt")
    manifest = tokenize(cfg, progress=False)
    metrics = pretrain(cfg, progress=False)
    return cfg, root, manifest, metrics


def test_curation_records_each_images_bucket(trained):
    cfg, root, _, _ = trained
    con = duckdb.connect(str(next((root / "curated").glob("*.duckdb"))), read_only=True)
    rows = con.execute("SELECT source, grid, width, height, count(*) FROM samples WHERE grid IS NOT NULL "
                       "GROUP BY ALL ORDER BY ALL").fetchall()
    con.close()
    by = {(src, grid): (w, h) for src, grid, w, h, _ in rows}
    assert by[("shapes", "3x3")] == (48, 48) and by[("shapes", "3x4")] == (64, 48) and by[("shapes", "4x3")] == (48, 64)
    assert {g for (src, g) in by if src == "fashion_mnist"} == {"3x3"}


def test_tokenize_encodes_each_image_on_its_own_grid(trained):
    from arm.tokenizer.tokens import TokenStore

    _, root, manifest, _ = trained
    assert manifest["grids"] == [[3, 3], [3, 4], [4, 3]]
    shas, flat, offsets, grids = TokenStore(root / "tokens").image_codes()
    assert {tuple(g) for g in grids.tolist()} == {(3, 3), (3, 4), (4, 3)}
    assert (offsets[1:] - offsets[:-1]).tolist() == (grids[:, 0] * grids[:, 1]).tolist()
    assert len(flat) == offsets[-1] and len(shas) == len(grids) == manifest["images"]
    tokens = sum(c["image_tokens"] for split in manifest["by_split_task"].values() for c in split.values())
    images = sum(c["images"] for split in manifest["by_split_task"].values() for c in split.values())
    assert 9 * images < tokens < 12 * images  # mixed 9- and 12-token images, counted at their own grids


def test_pretraining_packs_mixed_grids_into_one_vocabulary(trained):
    from arm.model.io import load_model

    _, root, _, metrics = trained
    assert metrics["steps"] == 2 and metrics["examples"]["skipped"] == {}
    _, _, layout, _ = load_model(root / "model")
    assert layout.grids == ((3, 3), (3, 4), (4, 3))
    assert layout.grid_token((3, 4)) is not None


def test_pipeline_draws_describes_and_edits_at_any_aspect(trained):
    from arm.data import shapes
    from arm.sample.pipeline import ArmPipeline

    cfg, root, _, _ = trained
    pipe = ArmPipeline.from_pretrained(root / "model")
    wide, tall, square = pipe.generate("a small red circle in the top left", n=1, aspect_ratio="4:3", seed=0) + \
        pipe.generate("a small red circle in the top left", aspect_ratio="3:4", seed=0) + \
        pipe.generate("a small red circle in the top left", seed=0)
    assert (wide.size, tall.size, square.size) == ((64, 48), (48, 64), (48, 48))  # PIL: (width, height)
    assert pipe.generate("a red circle", aspect_ratio="16:9", seed=0)[0].size == (64, 48)  # the nearest bucket
    scene = shapes.random_scene(__import__("random").Random(0), cfg.world, grid=(3, 4))
    source = shapes.render(scene, cfg.world)
    assert source.size == (64, 48)
    edited = pipe.edit([source], ["make it blue"], seed=0)[0]
    assert edited.size == source.size  # an edit keeps its source's aspect
    assert isinstance(pipe.describe([source], seed=0)[0], str)
    with pytest.raises(ValueError, match="aspect_ratio applies to generate only"):
        from arm.sample.pipeline import Task

        pipe.run([Task("edit", "make it blue", source, aspect_ratio="4:3")])
    with pytest.raises(ValueError, match="ratio"):
        pipe.generate("a red circle", aspect_ratio="wide")


def test_a_square_model_refuses_an_aspect_ratio(tmp_path):
    from arm.sample.pipeline import ArmPipeline
    from tests.test_sample import tiny_model
    from tests.test_aspect_sequences import SQUARE

    class _Tok:
        def __call__(self, text, **_):
            return {"input_ids": [1, 2]}

    class _Visual:
        codebook_size, grid = SQUARE.codebook_size, SQUARE.grid

    pipe = ArmPipeline(tiny_model(torch.float32, vocab=SQUARE.vocab_size), _Tok(), SQUARE, _Visual())
    with pytest.raises(ValueError, match="draws only 3x3 token grids"):
        pipe.generate("a red circle", aspect_ratio="4:3")
