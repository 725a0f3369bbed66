"""The flow decoder in the lifecycle: `train-tokenizer` trains it (tokenizer.flow.train), scores it
beside the per-token decoder, saves it inside the tokenizer, and `tokenizer.decoder: flow` makes it
what every decode renders with (sampling, RL rewards, the packaged service's tokenizer)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from arm.config import load_config
from arm.tokenizer.model import FLOW_DIR, VisualTokenizer

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.xdist_group("flow_lifecycle")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from arm.data.curate import curate
    from arm.tokenizer.train import train_tokenizer

    root = tmp_path_factory.mktemp("flow")
    cfg = load_config(REPO / "params.yaml", preset="micro", overrides=[
        f"data.store={root}/curated", f"data.metrics={root}/curate.json", f"tokenizer.output={root}/model",
        f"tokenizer.metrics={root}/tokenizer.json", f"tokenizer.plots={root}/plots", f"tokenizer.report={root}/report",
        f"tokenizer.checkpoint_dir={root}/ckpt", f"tokenizer.text_cache={root}/textcache",
        f"eval.fmnist.cache_dir={root}/judge", "tokenizer.decoder=flow"])
    curate(cfg, progress=False)
    metrics = train_tokenizer(cfg, progress=False)
    return cfg, metrics, root


def test_train_tokenizer_saves_and_scores_both_decoders(trained):
    cfg, metrics, root = trained
    d = metrics["decoders"]
    assert d["fmnist_images"] == cfg.tokenizer.flow.eval_images
    for name in ("per_token", "flow"):
        for key in ("fid", "kid_mean", "psnr", "ssim", "accuracy", "shapes_oracle_scene_accuracy"):
            assert d[name][key] == d[name][key], (name, key)  # present and not NaN
        assert d[name]["fid"] > 0 and 0 <= d[name]["accuracy"] <= 1
    assert d["flow_training"]["steps"] == cfg.tokenizer.flow.max_steps
    assert d["flow"]["fid_ratio_vs_per_token"] == pytest.approx(d["flow"]["fid"] / d["per_token"]["fid"])
    assert (root / "model" / FLOW_DIR / "model.safetensors").is_file()
    assert (root / "report" / "decoders.png").stat().st_size > 0


def test_configured_flow_decoder_renders_every_decode(trained):
    from arm.rl.codec import LearnedCodec

    cfg, _, root = trained
    vt = VisualTokenizer.from_pretrained(root / "model")
    assert vt.decoder == "flow"
    codes = torch.randint(0, vt.codebook_size, (3, *vt.grid))
    flow, per_token = vt.decode(codes, decoder="flow"), vt.decode(codes, decoder="per_token")
    assert torch.equal(vt.decode(codes), flow)
    assert (flow - per_token).abs().mean() > 1e-3  # a different renderer, not the per-token pixels
    again = VisualTokenizer.from_pretrained(root / "model").decode(codes)
    assert torch.equal(again, flow)  # deterministic across loads: the decoder's own seed
    # RL's rewards and the sampling pipeline (so the service) render through the tokenizer's decode
    images = LearnedCodec(vt, cfg.world).decode(codes.reshape(3, -1))
    pixels = torch.stack([torch.from_numpy(np.asarray(im)).permute(2, 0, 1) for im in images])
    assert torch.equal(pixels, (flow * 255).round().to(torch.uint8))


def test_missing_flow_decoder_is_an_error_naming_it(trained, tmp_path):
    _, _, root = trained
    copy = tmp_path / "model"
    shutil.copytree(root / "model", copy)
    shutil.rmtree(copy / FLOW_DIR)
    with pytest.raises(FileNotFoundError, match=str(copy / FLOW_DIR)):
        VisualTokenizer.from_pretrained(copy)


def test_flow_decoder_needs_training_to_render():
    with pytest.raises(Exception, match="flow.train"):
        load_config(REPO / "params.yaml", preset="micro", overrides=["tokenizer.decoder=flow", "tokenizer.flow.train=false"])


def test_sampling_from_the_noised_per_token_rendering_keeps_it(trained):
    """flow.sample_start < 1 starts from the per-token pixels noised to that level (SDEdit): what
    the per-token decoder draws exactly stays close; from pure noise (1) it does not."""
    _, _, root = trained
    vt = VisualTokenizer.from_pretrained(root / "model")
    codes = torch.randint(0, vt.codebook_size, (4, *vt.grid))
    per_token = vt.decode(codes, decoder="per_token")
    flow = vt.flow_decoder()
    near = (flow.sample(codes, start=0.05) - per_token).abs().mean()
    far = (flow.sample(codes, start=1.0) - per_token).abs().mean()
    assert near < 0.05 < far, (near, far)
    with pytest.raises(ValueError, match="start"):
        flow.sample(codes, start=0.0)
