"""`arm export-dataset`: the curated store as a `datasets` Parquet dataset that load_dataset reads
back offline, row for row, with the same texts and pixels."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import Image as ImageFeature
from datasets import load_dataset
from huggingface_hub import DatasetCard
from typer.testing import CliRunner

from arm.config import load_config
from arm.data.curate import curate
from arm.data.export import ExportError, export_dataset
from arm.data.store import CuratedStore

REPO = Path(__file__).resolve().parents[1]
SHAPES = [{"type": "shapes", "name": "shapes", "n_scenes": 40}]
TEXTS = ("caption", "question", "answer", "instruction")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("export")
    cfg = load_config(REPO / "params.yaml", preset="micro", overrides=[
        f"data.store={tmp / 'store'}", f"data.metrics={tmp / 'curate.json'}", "data.sources=" + json.dumps(SHAPES)])
    curate(cfg, progress=False)
    return tmp / "store"


def _text(v):
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else v


def test_load_dataset_reads_back_every_row_text_and_pixel(store, tmp_path):
    out = tmp_path / "ds"
    # small files and batches, so that files span batches and batches span files
    result = export_dataset(store, out, max_shard_bytes=8 << 10, batch_rows=37)
    with CuratedStore(store) as s:
        by_split = {sp: s.samples(split=sp) for sp in ("train", "val", "test")}
        assert {sp: len(df) for sp, df in by_split.items() if len(df)} == {
            sp: c["rows"] for sp, c in result["splits"].items()}
        assert result["splits"]["train"]["files"] > 2
        for sp, c in result["splits"].items():  # the datasets file names, N known up front
            names = sorted(p.name for p in (out / "data").glob(f"{sp}-*.parquet"))
            assert names == [f"{sp}-{i:05d}-of-{c['files']:05d}.parquet" for i in range(c["files"])]
        ds = load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
        assert set(ds) == set(result["splits"])
        assert isinstance(ds["train"].features["image"], ImageFeature)
        for sp, df in by_split.items():
            if not len(df):
                continue
            got = ds[sp]
            assert got["id"] == df["id"].tolist() and got["task"] == df["task"].tolist()  # store order
            for col in TEXTS:
                assert got[col] == [_text(v) for v in df[col].tolist()], col
            # pixels: decoded by datasets' Image feature vs the store's own decode
            shas = df["image_sha"].tolist()
            for i in range(0, len(df), 7):
                if shas[i] is None:
                    assert got[i]["image"] is None
                    continue
                assert np.array_equal(np.asarray(got[i]["image"].convert("RGB")), np.asarray(s.load_image(shas[i])))
            edits = [i for i, t in enumerate(df["task"]) if t == "edit"]
            assert edits or sp != "train"
            for i in edits[:5]:
                src = df["source_image_sha"].iloc[i]
                assert np.array_equal(np.asarray(got[i]["source_image"].convert("RGB")), np.asarray(s.load_image(src)))
            assert all(got[i]["source_image"] is None for i in range(len(df)) if df["task"].iloc[i] != "edit")
            scene = json.loads(got[0]["meta"])
            assert scene == json.loads(df["meta"].iloc[0])


def test_dataset_card_and_parquet_features(store, tmp_path):
    out = tmp_path / "ds"
    result = export_dataset(store, out)
    card = DatasetCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["configs"][0]["data_files"][0] == {"split": "train", "path": "data/train-*"}
    splits = {s["name"]: s["num_examples"] for s in meta["dataset_info"]["splits"]}
    assert splits == {sp: c["rows"] for sp, c in result["splits"].items()}
    features = {f["name"]: f["dtype"] for f in meta["dataset_info"]["features"]}
    assert features["image"] == "image" and features["caption"] == "string"
    # each file carries the features itself: pyarrow readers and the Hub viewer need no card
    schema = pq.read_schema(next((out / "data").glob("train-*.parquet")))
    hf = json.loads(schema.metadata[b"huggingface"])
    assert hf["info"]["features"]["image"] == {"_type": "Image"}
    # a re-export replaces the dir (no stale file of a larger earlier export survives)
    export_dataset(store, out, max_shard_bytes=8 << 10)
    export_dataset(store, out)
    assert len(list((out / "data").glob("train-*"))) == result["splits"]["train"]["files"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_input_is_a_clear_error(store, tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"no curated store at {tmp_path / 'none'}")):
        export_dataset(tmp_path / "none", tmp_path / "out")
    with pytest.raises(ValueError, match="max_shard_bytes .0. and batch_rows .1024. must be positive"):
        export_dataset(store, tmp_path / "out", max_shard_bytes=0)
    assert not (tmp_path / "out").exists()
    assert issubclass(ExportError, ValueError)


def test_cli_export_dataset(store, tmp_path):
    from arm.cli import app

    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["export-dataset", str(out), "--store", str(store), "--max-shard-mb", "1"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "data"]
    r = CliRunner().invoke(app, ["export-dataset", str(tmp_path / "x"), "--store", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "no curated store" in r.output
