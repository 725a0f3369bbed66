"""The tokenize stage data parallel: N processes give the same shards and index as one, resume per
shard, decode in DataLoader workers, and a bad process count is a clear error."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"


@pytest.fixture(scope="module")
def store_and_tokenizer(tmp_path_factory):
    """A curated micro store and an untrained micro tokenizer saved as the stage expects: the codes
    need not be good, only the tokenizer's own (parallelism must not change them)."""
    from arm.config import load_config
    from arm.data.curate import curate
    from arm.tokenizer.model import VisualTokenizer
    from arm.tokenizer.vocab import SPECIALS

    root = tmp_path_factory.mktemp("tokpar")
    cfg = load_config(PARAMS, preset="micro", overrides=[f"data.store={root}/curated", f"data.metrics={root}/curate.json"])
    curate(cfg, progress=False)
    torch.manual_seed(0)
    tok = VisualTokenizer.build(cfg.tokenizer, caption_vocab=SPECIALS + ["a"], text_dim=16, distill_dim=8).eval()
    tok.save_pretrained(root / "model")
    return root


def _overrides(root: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.store={root}/curated", f"tokenizer.output={root}/model", f"tokenizer.tokens.output={out}",
            f"tokenizer.tokens.metrics={out}.json", *extra]


def _cfg(root: Path, out: Path, *extra: str):
    from arm.config import load_config

    return load_config(PARAMS, preset="micro", overrides=_overrides(root, out, *extra))


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}


def test_loader_workers_give_the_tokenizers_own_codes(store_and_tokenizer, tmp_path):
    from arm.data.store import CuratedStore
    from arm.tokenizer.model import VisualTokenizer
    from arm.tokenizer.tokens import TokenStore, tokenize

    root = store_and_tokenizer
    before = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    inline = tokenize(_cfg(root, tmp_path / "w0", "tokenizer.tokens.workers=0"), progress=False)
    pooled = tokenize(_cfg(root, tmp_path / "w2", "tokenizer.tokens.workers=2"), progress=False)
    # a world of one in-process leaves no torchrun variables behind (earlier tests may have set some)
    assert {k: os.environ.get(k) for k in before} == before
    assert inline["world_size"] == pooled["world_size"] == 1
    assert (inline["precision"], pooled["loader_workers"]) == ("fp32", 2)
    assert inline["shards"] > 2 and pooled["images_encoded"] == pooled["images"]
    assert _shard_bytes(tmp_path / "w0") == _shard_bytes(tmp_path / "w2")
    # the codes are the tokenizer's own, for the image each row names, at every batch boundary
    shas, codes = TokenStore(tmp_path / "w2").all_codes()
    tok = VisualTokenizer.from_pretrained(root / "model")
    with CuratedStore(root / "curated") as store:
        rows = [0, 31, 32, 63, 64, len(shas) - 1]  # micro: batch 32, shard 64
        assert torch.equal(codes[rows], tok.encode(store.load_images([shas[r] for r in rows])))


def test_shard_batches_restart_at_each_shard():
    from arm.tokenizer.tokens import shard_batches

    shas = [f"{i:03d}" for i in range(10)]
    got = shard_batches(shas, [1, 2], shard_size=4, batch=3)
    assert got == [(1, 0, ["004", "005", "006"]), (1, 3, ["007"]), (2, 0, ["008", "009"])]


@pytest.mark.slow
@pytest.mark.xdist_group("deepspeed")
def test_two_processes_match_one_and_resume_per_shard(store_and_tokenizer, tmp_path):
    from typer.testing import CliRunner

    from arm.cli import app
    from arm.tokenizer.launch import tokenize_multiprocess
    from arm.tokenizer.tokens import shard_name, tokenize

    root = store_and_tokenizer
    one = tokenize(_cfg(root, tmp_path / "one", "tokenizer.tokens.workers=0"), progress=False)

    # through the CLI and the Prefect flow, as a user runs it
    sets = [a for o in _overrides(root, tmp_path / "two", "tokenizer.tokens.workers=1") for a in ("--set", o)]
    r = CliRunner().invoke(app, ["tokenize", "--params", str(PARAMS), "--preset", "micro", "--nproc", "2", *sets])
    assert r.exit_code == 0, r.output
    assert "on 2 process(es)" in r.output
    two = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert _shard_bytes(tmp_path / "one") == _shard_bytes(tmp_path / "two")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "one" / "index.parquet"),
                                  pd.read_parquet(tmp_path / "two" / "index.parquet"))
    timing = ("world_size", "loader_workers", "encode_seconds", "wall_seconds", "images_per_second", "per_rank")
    assert {k: v for k, v in one.items() if k not in timing and k != "tokenizer_dir"} == \
        {k: v for k, v in two.items() if k not in timing and k != "tokenizer_dir"}
    # rank r encoded the shards k with k % 2 == r, every image once
    n, size = two["shards"], two["shard_size"]
    per_rank = {r["rank"]: r for r in two["per_rank"]}
    assert [per_rank[r]["shards_encoded"] for r in (0, 1)] == [(n + 1) // 2, n // 2]
    assert sum(r["images_encoded"] for r in two["per_rank"]) == two["images"] == one["images"]

    # resume: after losing shard 1, only rank 1 works, on that shard only; nothing else changes
    before = _shard_bytes(tmp_path / "two")
    (tmp_path / "two" / "shards" / shard_name(1)).unlink()
    again = tokenize_multiprocess(str(PARAMS), "micro", _overrides(root, tmp_path / "two", "tokenizer.tokens.workers=1"), 2)
    assert again["shards_reused"] == n - 1 and again["images_encoded"] == size
    assert [(r["rank"], r["shards_encoded"], r["images_encoded"]) for r in again["per_rank"]] == [(0, 0, 0), (1, 1, size)]
    assert _shard_bytes(tmp_path / "two") == before


def test_bad_nproc_is_a_clear_error(store_and_tokenizer, tmp_path):
    from typer.testing import CliRunner

    from arm.cli import app
    from arm.tokenizer.launch import check_nproc

    root = store_and_tokenizer
    sets = [a for o in _overrides(root, tmp_path / "t") for a in ("--set", o)]
    base = ["tokenize", "--params", str(PARAMS), "--preset", "micro", *sets]
    r = CliRunner().invoke(app, [*base, "--nproc", "0"])
    assert r.exit_code == 2 and "Invalid value for '--nproc'" in r.output and "greater than or equal to 1" in r.output
    r = CliRunner().invoke(app, [*base, "--set", "tokenizer.tokens.nproc=0"])
    assert r.exit_code == 2 and "tokenizer.tokens.nproc: Input should be greater than or equal to 1" in r.output
    r = CliRunner().invoke(app, [*base, "--nproc", "2", "--set", "tokenizer.device=cuda"] if not torch.cuda.is_available()
                           else [*base, "--nproc", str(torch.cuda.device_count() + 1)])
    assert r.exit_code == 2 and "CUDA device(s)" in " ".join(r.output.split()), r.output
    assert not (tmp_path / "t").exists()  # refused before any work
    with pytest.raises(ValueError, match=r"--nproc 3: this node has 2 CUDA device\(s\)"):
        check_nproc(3, "auto", cuda_devices=2)
    with pytest.raises(ValueError, match="at least 1 process"):
        check_nproc(0, "cpu", cuda_devices=0)
    check_nproc(4, "auto", cuda_devices=0)  # CPU worker processes: any number
    check_nproc(4, "cpu", cuda_devices=2)
