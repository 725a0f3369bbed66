"""The train_tokenizer and tokenize stages: losses fall, exact resume, token shards, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from arm.curves import read_curve
from arm.tokenizer.data import generated_set, store_sets
from arm.tokenizer.model import VisualTokenizer
from arm.tokenizer.train import LOSS_NAMES, train_tokenizer

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.xdist_group("tokenizer")  # shared module fixtures: keep on one worker


def _paths(cfg_overrides: list[str], root) -> list[str]:
    return [
        f"tokenizer.output={root}/model",
        f"tokenizer.checkpoint_dir={root}/ckpt",
        f"tokenizer.metrics={root}/metrics.json",
        f"tokenizer.plots={root}/curve",
        f"tokenizer.report={root}/report",
        f"tokenizer.tokens.output={root}/tokens",
        f"tokenizer.tokens.metrics={root}/tokenize.json",
        *cfg_overrides,
    ]


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("textcache")


@pytest.fixture(scope="module")
def gen_sets(tmp_path_factory):
    from arm.config import load_config

    cfg = load_config(REPO / "params.yaml", preset="micro")
    train = generated_set(cfg.world, 48, n_scenes=48, n_fashion=32, seed=0)
    val = generated_set(cfg.world, 48, n_scenes=12, n_fashion=0, seed=1, edits=False)
    return {"train": train, "val": val}


def _cfg(tmp_path, text_cache, *overrides):
    from arm.config import load_config

    return load_config(REPO / "params.yaml", preset="micro",
                       overrides=_paths([f"tokenizer.text_cache={text_cache}", *overrides], tmp_path))


def test_each_loss_falls_on_a_short_run(tmp_path, text_cache, gen_sets):
    # no decoder fine-tune: its steps log the pixel losses only (tested on its own below)
    cfg = _cfg(tmp_path, text_cache, "tokenizer.train.steps=40", "tokenizer.train.lr=0.003",
               "tokenizer.train.decoder_finetune=0")
    out = train_tokenizer(cfg, sets=gen_sets, resume=False, progress=False, evaluate=False)
    curve = out.get("curve") or read_curve(tmp_path / "curve")
    assert len(curve) == 40
    for name in LOSS_NAMES:
        first = np.mean([r[name] for r in curve[:8]])
        last = np.mean([r[name] for r in curve[-8:]])
        if name == "bound":  # a penalty that is zero while latents stay in range
            # Latents pressing against the margin make it a few thousandths; a latent drifting
            # into tanh saturation (the failure it guards against) costs far more.
            assert 0.0 <= last <= max(first, 1e-2), f"bound grew: {first:.4f} -> {last:.4f}"
            continue
        assert last < first, f"{name} did not fall: {first:.4f} -> {last:.4f}"
    assert (tmp_path / "model" / "model.safetensors").is_file()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train_steps"] == 40 and set(metrics["final_losses"]) >= set(LOSS_NAMES)


def test_resume_gives_the_same_loss_curve(tmp_path, text_cache, gen_sets):
    # dropout draws from the global RNG: the resumed run matches only if the RNG state is restored
    run = ("tokenizer.train.steps=12", "tokenizer.train.checkpoint_every=5", "tokenizer.dropout=0.1")
    straight = _cfg(tmp_path / "a", text_cache, *run)
    train_tokenizer(straight, sets=gen_sets, resume=False, progress=False, evaluate=False)
    full = read_curve(tmp_path / "a" / "curve")

    cut = _cfg(tmp_path / "b", text_cache, *run)
    stopped = train_tokenizer(cut, sets=gen_sets, resume=True, progress=False, evaluate=False, stop_at=7)
    assert stopped["stopped_at"] == 7 and not (tmp_path / "b" / "model").exists()
    train_tokenizer(cut, sets=gen_sets, resume=True, progress=False, evaluate=False)
    resumed = read_curve(tmp_path / "b" / "curve")
    assert [r["step"] for r in resumed] == list(range(1, 13))
    for a, b in zip(full, resumed):
        assert a.keys() == b.keys(), a["step"]  # the last step is in the decoder fine-tune
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), (a["step"], k)
    wa = VisualTokenizer.from_pretrained(tmp_path / "a" / "model").state_dict()
    wb = VisualTokenizer.from_pretrained(tmp_path / "b" / "model").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # bit-exact


def test_checkpoint_of_another_config_is_not_resumed(tmp_path, text_cache, gen_sets):
    cfg = _cfg(tmp_path, text_cache, "tokenizer.train.steps=6")
    train_tokenizer(cfg, sets=gen_sets, resume=True, progress=False, evaluate=False, stop_at=3)
    other = _cfg(tmp_path, text_cache, "tokenizer.train.steps=6", "tokenizer.train.lr=0.01")
    train_tokenizer(other, sets=gen_sets, resume=True, progress=False, evaluate=False)
    assert [r["step"] for r in read_curve(tmp_path / "curve")] == list(range(1, 7))


# ----------------------------------------------------------------------------- the curated store


@pytest.fixture(scope="module")
def micro_store(tmp_path_factory):
    from arm.config import load_config
    from arm.data.curate import curate

    root = tmp_path_factory.mktemp("store")
    cfg = load_config(REPO / "params.yaml", preset="micro",
                      overrides=[f"data.store={root}/curated", f"data.metrics={root}/curate.json"])
    curate(cfg, progress=False)
    return root / "curated"


@pytest.fixture(scope="module")
def micro_tokenizer(micro_store, tmp_path_factory):
    """A micro tokenizer trained on the curated store for a few steps, with held-out metrics."""
    from arm.config import load_config

    root = tmp_path_factory.mktemp("trained")
    cfg = load_config(REPO / "params.yaml", preset="micro", overrides=_paths([
        f"data.store={micro_store}", f"tokenizer.text_cache={root}/tc", "tokenizer.train.steps=8",
    ], root))
    metrics = train_tokenizer(cfg, resume=False, progress=False)
    return cfg, root, metrics


def test_store_sets_keep_held_out_images_out_of_train(micro_store):
    sets = store_sets(micro_store, 48, ("train", "val", "test"))
    train, val, test = (set(sets[s].keys) for s in ("train", "val", "test"))
    assert train and val and not (train & val) and not (train & test)
    tr = sets["train"]
    assert any(tr.texts) and any(s is not None for s in tr.scenes) and any(lb is not None for lb in tr.labels)
    assert any("a photo of" in t for ts in tr.texts for t in ts)  # Fashion-MNIST captions
    px = tr.pixels([0, 1])
    assert px.dtype == torch.uint8 and px.shape == (2, 3, 48, 48)


def test_train_from_store_writes_model_metrics_and_curve(micro_tokenizer):
    cfg, root, m = micro_tokenizer
    for key in ("val_psnr", "val_ssim", "code_usage", "code_perplexity", "oracle_scene_accuracy",
                "retrieval_r1", "fashion_zeroshot_accuracy", "fashion_linear_probe_accuracy", "fashion_code_probe_accuracy"):
        assert key in m and np.isfinite(m[key]), key
    assert m["oracle_accuracy_on_originals"] == 1.0  # the oracle itself is exact on ground truth
    assert 0 <= m["cell_states_with_own_code"] <= m["cell_states"] <= 25  # 1 + 3 kinds x 4 colours x 2 sizes
    assert json.loads((root / "metrics.json").read_text())["val_images"] == m["val_images"]
    rows = read_curve(root / "curve")
    assert len(rows) == 8 and set(LOSS_NAMES) <= set(rows[0])
    tok = VisualTokenizer.from_pretrained(root / "model")
    sim = tok.similarity(torch.rand(3, 3, 48, 48), ["a photo of a dress", "a small red circle in the center"])
    assert sim.shape == (3, 2) and float(sim.abs().max()) <= 1.0 + 1e-5
    assert len(tok.caption(tok.encode(torch.rand(2, 3, 48, 48)))) == 2


def test_tokenize_stage_deterministic_and_resumable(micro_tokenizer, micro_store, tmp_path):
    from arm.data.store import CuratedStore
    from arm.tokenizer.tokens import TokenStore, tokenize

    cfg, root, _ = micro_tokenizer
    first = tokenize(cfg, output=tmp_path / "t1", progress=False)
    store = CuratedStore(micro_store)
    df = store.samples()
    shas = set(df["image_sha"].dropna()) | set(df["source_image_sha"].dropna())
    assert first["images"] == len(shas) and first["images_encoded"] == len(shas)
    assert first["shards"] == -(-len(shas) // cfg.tokenizer.tokens.shard_size) and first["shards"] > 1
    ts = TokenStore(tmp_path / "t1")
    index = ts.index()
    assert len(index) == len(df) and set(index.columns) >= {"id", "split", "task", "image_row", "source_image_row"}
    sha_list, codes = ts.all_codes()
    assert codes.shape == (len(shas), 3, 3) and codes.dtype == torch.long
    # the codes are the tokenizer's own, for the image each row names
    tok = VisualTokenizer.from_pretrained(root / "model")
    some = sha_list[:5]
    assert torch.equal(ts.codes(some), tok.encode(store.load_images(some)))
    edits = index[index.task == "edit"]
    assert edits["source_image_row"].notna().all() and edits["image_row"].notna().all()
    assert first["by_split_task"]["train"]["edit"]["image_tokens"] == 2 * 9 * len(ts.index("train", "edit"))

    # same inputs -> same outputs
    second = tokenize(cfg, output=tmp_path / "t2", progress=False)
    assert torch.equal(TokenStore(tmp_path / "t2").all_codes()[1], codes)
    assert second["run_fingerprint"] == first["run_fingerprint"]

    # resume: only the missing shard is encoded again
    (tmp_path / "t1" / "shards" / "codes-00001.parquet").unlink()
    again = tokenize(cfg, output=tmp_path / "t1", progress=False)
    assert again["shards_reused"] == first["shards"] - 1
    assert again["images_encoded"] == cfg.tokenizer.tokens.shard_size
    assert torch.equal(TokenStore(tmp_path / "t1").all_codes()[1], codes)
    pd.testing.assert_frame_equal(TokenStore(tmp_path / "t1").index(), index)


def test_cli_encode_decode(micro_tokenizer, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from arm.cli import app

    _, root, _ = micro_tokenizer
    img = tmp_path / "a.png"
    Image.new("RGB", (30, 20), (255, 0, 0)).save(img)
    r = CliRunner().invoke(app, ["tokenizer", "encode", str(img), "--model", str(root / "model"), "-o", str(tmp_path / "c.json")])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["grid"] == [3, 3] and np.array(doc["items"][0]["codes"]).shape == (3, 3)
    r = CliRunner().invoke(app, ["tokenizer", "decode", str(tmp_path / "c.json"), "--model", str(root / "model"),
                                 "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "out" / "a.decoded.png").size == (48, 48)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    r = CliRunner().invoke(app, ["tokenizer", "encode", str(bad), "--model", str(root / "model")])
    assert r.exit_code == 2 and "cannot read image" in " ".join(r.output.split())


@pytest.mark.slow
def test_cli_stages_run_as_prefect_flows(micro_store, tmp_path):
    from typer.testing import CliRunner

    from arm.cli import app

    sets = []
    for o in _paths([f"data.store={micro_store}", f"tokenizer.text_cache={tmp_path}/tc", "tokenizer.train.steps=4"], tmp_path):
        sets += ["--set", o]
    common = ["--params", str(REPO / "params.yaml"), "--preset", "micro", *sets]
    r = CliRunner().invoke(app, ["train-tokenizer", *common])
    assert r.exit_code == 0, r.output
    assert "oracle_scene_accuracy" in r.output and (tmp_path / "model" / "config.json").is_file()
    r = CliRunner().invoke(app, ["tokenize", *common])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "tokens" / "manifest.json").read_text())
    assert manifest["images"] > 0 and json.loads((tmp_path / "tokenize.json").read_text())["images"] == manifest["images"]


def test_scene_warmup_draws_scene_images_first():
    from arm.tokenizer.train import BatchOrder

    scene_rows = torch.arange(0, 40, 2)  # even rows have a scene graph
    order = BatchOrder(40, 8, 0, scene_rows, warmup=5)
    for step in range(5):
        assert (order.rows(step) % 2 == 0).all()
    later = torch.cat([order.rows(s) for s in range(5, 10)])
    assert (later % 2 == 1).any()
    # too few scene images to fill a batch: no warmup
    assert (BatchOrder(40, 8, 0, scene_rows[:3], warmup=5).rows(0) % 2 == 1).any()


def test_streaming_order_reads_each_row_group_about_once_per_epoch():
    """A streamed epoch (images in row groups of 16) visits the groups in windows of 2: every
    batch of 8 touches at most 2 groups, where a uniform permutation touches nearly 8; each epoch
    is still a permutation and the order a pure function of (seed, step)."""
    from arm.tokenizer.train import BatchOrder

    groups = torch.arange(256) // 16
    block = BatchOrder(256, 8, 3, groups=groups, window=2)
    uniform = BatchOrder(256, 8, 3, groups=groups, window=0)
    epoch = torch.cat([block.rows(s) for s in range(32)])
    assert sorted(epoch.tolist()) == list(range(256))
    assert max(len(set(groups[block.rows(s)].tolist())) for s in range(32)) <= 2
    assert sum(len(set(groups[uniform.rows(s)].tolist())) for s in range(32)) > 32 * 6
    again = BatchOrder(256, 8, 3, groups=groups, window=2)
    assert all(torch.equal(again.rows(s), block.rows(s)) for s in (40, 5, 33))  # any step, any order
    assert not torch.equal(block.rows(32), block.rows(0))  # a new epoch, a new order


def test_scene_loss_needs_the_world_grid(tmp_path, text_cache, gen_sets):
    cfg = _cfg(tmp_path, text_cache, "tokenizer.patch_size=8", "tokenizer.train.steps=2")
    with pytest.raises(ValueError, match="tokenizer.loss.scene"):
        train_tokenizer(cfg, sets=gen_sets, resume=False, progress=False, evaluate=False)
    # without the scene loss the same tokenizer trains
    cfg = _cfg(tmp_path, text_cache, "tokenizer.patch_size=8", "tokenizer.train.steps=2", "tokenizer.loss.scene=0")
    assert train_tokenizer(cfg, sets=gen_sets, resume=False, progress=False, evaluate=False)["train_steps"] == 2


def test_scene_cell_states_label_every_cell(gen_sets):
    from arm.config import load_config
    from arm.data.shapes import Scene, cell_state_count, cell_states
    from arm.tokenizer.data import scene_cell_states

    world = load_config(REPO / "params.yaml", preset="micro").world
    train = gen_sets["train"]
    states = scene_cell_states(train, world)
    assert states.shape == (len(train), world.grid * world.grid)
    for i, scene in enumerate(train.scenes):
        want = cell_states(Scene.from_json(scene), world) if scene is not None else [cell_state_count(world)] * 9
        assert states[i].tolist() == want
    assert any(s is None for s in train.scenes)  # Fashion-MNIST images: the "not the shapes world" class


def _checkpoint_weights(ckpt_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from arm.train.accel import latest

    # accelerate saves the prepared Objective: the tokenizer under "model."
    return {k.removeprefix("model."): v for k, v in load_file(latest(ckpt_dir)[0] / "model.safetensors").items()}


def test_lr_schedule_restarts_for_the_decoder_finetune():
    from arm.tokenizer.train import lr_schedule

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = lr_schedule(opt, warmup=2, total=10, min_ratio=0.1, restart=6)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"] / 2.0)
        opt.step()
        sched.step()
    three_quarters = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 3 / 4))  # 3/4 through either cosine
    # transformers' warmup (step / warmup), its cosine to the floor, then a fresh cycle from the peak
    assert [lrs[s] for s in (0, 1, 2, 5, 6, 9)] == pytest.approx([0.0, 0.5, 1.0, three_quarters, 1.0, three_quarters])


def test_decoder_finetune_trains_the_decoder_alone(tmp_path, text_cache, gen_sets):
    cfg = _cfg(tmp_path, text_cache, "tokenizer.train.steps=6", "tokenizer.train.decoder_finetune=0.5",
               "tokenizer.train.checkpoint_every=3", "tokenizer.train.warmup_steps=0")
    train_tokenizer(cfg, sets=gen_sets, resume=True, progress=False, evaluate=False, stop_at=3)
    before = _checkpoint_weights(tmp_path / "ckpt")
    train_tokenizer(cfg, sets=gen_sets, resume=True, progress=False, evaluate=False)
    after = _checkpoint_weights(tmp_path / "ckpt")
    moved = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert moved == {"pixel_decoder", "code_embed"}
    curve = read_curve(tmp_path / "curve")
    assert all("scene" in r for r in curve[:3]) and not any("scene" in r for r in curve[3:])


