"""The curate stage end to end on small shapes worlds: store layout, reader API, filters,
duplicates, determinism, atomicity and count reconciliation."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
from PIL import Image

from arm.config import load_config
from arm.data import shapes
from arm.data.curate import CurateError, curate
from arm.data.stats import pixel_sha256
from arm.data.store import CuratedStore
from arm.io import sha256_file

REPO = Path(__file__).resolve().parents[1]


def make_cfg(tmp: Path, sources: list[dict], *overrides: str, name: str = "store"):
    return load_config(REPO / "params.yaml", preset="micro", overrides=[
        f"data.store={tmp / name}", f"data.metrics={tmp / (name + '_metrics.json')}",
        "data.sources=" + json.dumps(sources), *overrides])


def shapes_src(n: int, **kw) -> dict:
    return {"type": "shapes", "name": "shapes", "n_scenes": n, **kw}


def table_rows(db: Path, table: str, order: str) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("curate")
    cfg = make_cfg(tmp, [shapes_src(80)])
    return cfg, curate(cfg)


def test_store_has_every_task_and_counts_reconcile(built):
    cfg, m = built
    assert set(m["kept_by_task"]) == {"understand", "generate", "edit", "text"}
    src = m["by_source"]["shapes"]
    assert src["in"] == src["kept"] + src["rejected"] and src["reconciled"]
    assert m["n_in"] == m["n_kept"] + m["n_rejected"] > 0
    assert json.loads(Path(cfg.data.metrics).read_text())["n_kept"] == m["n_kept"]
    root = Path(cfg.data.store)
    assert (root / "store.duckdb").is_file() and (root / "images" / "shard-00000.parquet").is_file()
    assert not (root / "_staging").exists()
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".store")]  # no temp dirs left
    with CuratedStore(root) as store:
        s = store.summary()
        assert s["samples"] == m["n_kept"] and s["rejected"] == m["n_rejected"]
        assert s["by_task"] == m["kept_by_task"] and s["by_split"] == m["kept_by_split"]
        runs = store.runs()
        assert list(runs["stage"]) == ["curate"] and int(runs["n_in"][0]) == m["n_in"]


def test_reader_api_returns_the_rendered_scenes(built):
    cfg, _ = built
    with CuratedStore(cfg.data.store) as store:
        gen = store.samples(task="generate")
        assert set(gen["task"]) == {"generate"} and list(gen["ord"]) == sorted(gen["ord"])
        train = store.samples(split="train", task="understand", columns=["id", "split", "image_sha"])
        assert list(train.columns) == ["id", "split", "image_sha"] and set(train["split"]) == {"train"}
        plain = gen[~gen["ref"].str.endswith("knowledge")].head(5)
        images = store.load_images(list(plain["image_sha"]))
        for (_, row), im in zip(plain.iterrows(), images):
            scene = shapes.Scene.from_json(json.loads(row["meta"])["scene"])
            assert im.mode == "RGB"
            assert (np.asarray(im) == shapes.render_array(scene, cfg.world)).all()
            assert pixel_sha256(im) == row["image_sha"]
        single = store.load_image(plain["image_sha"].iloc[0])
        assert (np.asarray(single) == np.asarray(images[0])).all()
        edits = store.samples(task="edit")
        src_imgs = store.load_images(list(edits["source_image_sha"].head(3)))
        assert all(im.size == (cfg.world.image_size,) * 2 for im in src_imgs)
        with pytest.raises(KeyError, match="not in store"):
            store.load_image("0" * 64)
        with pytest.raises(ValueError, match="unknown split"):
            store.samples(split="training")
        # Each image is stored once, however many samples use it.
        used = store.query("SELECT count(*) AS n FROM (SELECT image_sha FROM samples WHERE image_sha IS NOT NULL"
                           " UNION SELECT source_image_sha FROM samples WHERE source_image_sha IS NOT NULL)")
        assert int(used["n"][0]) == store.summary()["images"]
        assert (store.query("SELECT count(*) AS n FROM samples GROUP BY image_sha ORDER BY n DESC LIMIT 1")["n"][0] > 1)


def test_samples_of_one_image_share_a_split(built):
    cfg, _ = built
    with CuratedStore(cfg.data.store) as store:
        per_image = store.query("""SELECT image_sha, count(DISTINCT split) AS k FROM samples
                                   WHERE task IN ('understand', 'generate') GROUP BY 1""")
        assert per_image["k"].max() == 1
        edits = store.query("""SELECT e.source_image_sha, count(DISTINCT e.split) AS k,
                                      any_value(u.split) AS us, any_value(e.split) AS es
                               FROM samples e JOIN samples u ON u.image_sha = e.source_image_sha AND u.task = 'understand'
                               WHERE e.task = 'edit' GROUP BY 1""")
        assert len(edits) and (edits["us"] == edits["es"]).all()


def test_distinct_shapes_scenes_are_never_near_duplicates(tmp_path):
    """Only exact duplicates may go: every distinct (task, image, texts) input survives."""
    cfg = make_cfg(tmp_path, [shapes_src(400)])
    m = curate(cfg)
    assert set(m["rejected_by_reason"]) <= {"duplicate"}
    with CuratedStore(cfg.data.store) as store:
        kept = store.samples()
        rej = store.rejections()
        n_distinct = kept["id"].nunique()
        assert n_distinct == len(kept)
        assert rej["detail"].str.startswith("same content as shapes:").all()
        # Several questions about one image are all kept.
        per_image = kept[kept.task == "understand"].groupby("image_sha").size()
        assert per_image.max() >= 3
        # Scenes that differ by one object (every edit's source vs target) are all stored.
        edits = kept[kept.task == "edit"]
        assert (edits["image_sha"] != edits["source_image_sha"]).all()
        assert store.query("SELECT count(*) AS n FROM images")["n"][0] >= edits["image_sha"].nunique()


def test_near_and_exact_duplicates_of_photos(tmp_path, monkeypatch):
    from skimage import data as skdata

    folder = tmp_path / "photos"
    folder.mkdir()
    photo = Image.fromarray(skdata.chelsea()).resize((120, 80), Image.Resampling.LANCZOS)
    other = Image.fromarray(skdata.coffee()).resize((120, 80), Image.Resampling.LANCZOS)

    def save(name: str, im: Image.Image, caption: str, **kw) -> None:
        im.save(folder / name, **kw)
        (folder / (name.rsplit(".", 1)[0] + ".txt")).write_text(caption)

    save("a_cat.png", photo, "a cat")
    save("b_cat_copy.png", photo, "a cat")  # same pixels, same caption: exact duplicate
    save("c_cat_jpeg.jpg", photo, "a cat", quality=90)  # re-encoded: near duplicate
    save("d_cat_jpeg_other_caption.jpg", photo, "a ginger cat on a table", quality=85)  # new text: kept
    save("e_coffee.png", other, "a cat")  # same caption, different picture: kept
    cfg = make_cfg(tmp_path, [{"type": "image_folder", "name": "photos", "path": str(folder), "task": "generate"}])
    m = curate(cfg)
    with CuratedStore(cfg.data.store) as store:
        rej = store.rejections().set_index(store.rejections()["ref"].map(lambda r: Path(r).name))
        kept = {Path(r).name for r in store.samples()["ref"]}
    assert kept == {"a_cat.png", "d_cat_jpeg_other_caption.jpg", "e_coffee.png"}
    assert rej.loc["b_cat_copy.png", "reason"] == "duplicate"
    assert rej.loc["b_cat_copy.png", "detail"] == f"same content as {folder / 'a_cat.png'}"
    assert rej.loc["c_cat_jpeg.jpg", "reason"] == "near_duplicate"
    assert "pHash distance" in rej.loc["c_cat_jpeg.jpg", "detail"] and "a_cat.png" in rej.loc["c_cat_jpeg.jpg", "detail"]
    assert m["by_source"]["photos"] == {"in": 5, "kept": 3, "rejected": 2, "reconciled": True,
                                        "rejected_by_reason": {"duplicate": 1, "near_duplicate": 1}}


def test_predicate_filters_name_reason_and_threshold(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)

    def save(name: str, arr: np.ndarray, caption: str = "a picture") -> None:
        Image.fromarray(arr.astype(np.uint8)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(caption)

    save("blank", np.full((32, 32, 3), 128))
    save("narrow", rng.integers(0, 255, (10, 64, 3)))
    save("tiny", rng.integers(0, 255, (6, 6, 3)))
    save("long_caption", rng.integers(0, 255, (32, 32, 3)), "x" * 40)
    save("good", rng.integers(0, 255, (32, 32, 3)))
    cfg = make_cfg(tmp_path, [{"type": "image_folder", "name": "imgs", "path": str(folder)}],
                   "data.filters.max_text_chars=30")
    curate(cfg)
    with CuratedStore(cfg.data.store) as store:
        rej = {Path(r).stem: (reason, detail) for r, reason, detail in
               store.rejections()[["ref", "reason", "detail"]].itertuples(index=False)}
        assert set(store.samples()["ref"].map(lambda r: Path(r).stem)) == {"good"}
    assert rej["blank"] == ("blank_image", "pixel std 0.000 < min_pixel_std 2.0")
    assert rej["narrow"] == ("bad_aspect", "aspect 6.400 > max_aspect 4.0")
    assert rej["tiny"] == ("too_small", "smallest side 6 px < min_side 8")
    assert rej["long_caption"][0] == "text_too_long" and "40 chars > max_text_chars 30" in rej["long_caption"][1]


def test_rerun_gives_identical_tables_and_shards(tmp_path, built):
    cfg1, _ = built
    cfg2 = make_cfg(tmp_path, [shapes_src(80)], "data.shard_size=4096")
    curate(cfg2)
    a, b = Path(cfg1.data.store), Path(cfg2.data.store)
    for table, order in (("samples", "ord"), ("rejections", "ord"), ("images", "shard, row")):
        assert table_rows(a / "store.duckdb", table, order) == table_rows(b / "store.duckdb", table, order)
    shards_a = sorted(p.name for p in (a / "images").iterdir())
    assert shards_a == sorted(p.name for p in (b / "images").iterdir())
    assert all(sha256_file(a / "images" / s) == sha256_file(b / "images" / s) for s in shards_a)


def test_pool_of_workers_and_small_shards_give_the_same_store(tmp_path, built):
    cfg1, _ = built
    cfg2 = make_cfg(tmp_path, [shapes_src(80)], "data.workers=2", "data.shard_size=50")
    curate(cfg2)
    a, b = Path(cfg1.data.store) / "store.duckdb", Path(cfg2.data.store) / "store.duckdb"
    for table in ("samples", "rejections"):
        assert table_rows(a, table, "ord") == table_rows(b, table, "ord")
    with CuratedStore(cfg2.data.store) as store:
        n = store.summary()["images"]
        assert len(list((Path(cfg2.data.store) / "images").iterdir())) == -(-n // 50)
        shas = list(store.query("SELECT sha256 FROM images ORDER BY shard DESC, row DESC")["sha256"])
        ims = store.load_images(shas)  # across every shard, in an order unlike the storage order
        assert [pixel_sha256(im) for im in ims] == shas


def test_unreadable_source_is_one_rejection_and_the_run_completes(tmp_path):
    cfg = make_cfg(tmp_path, [
        {"type": "image_folder", "name": "gone", "path": str(tmp_path / "does_not_exist")},
        shapes_src(10),
    ])
    m = curate(cfg)
    gone = m["by_source"]["gone"]
    assert gone == {"in": 1, "kept": 0, "rejected": 1, "reconciled": True,
                    "rejected_by_reason": {"source_unreachable": 1}}
    assert m["by_source"]["shapes"]["kept"] > 0
    with CuratedStore(cfg.data.store) as store:
        r = store.rejections()
        row = r[r.source == "gone"].iloc[0]
        assert row["stage"] == "read" and "does_not_exist" in row["detail"] and "folder not found" in row["detail"]


def test_a_failed_run_leaves_the_previous_store(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path, [shapes_src(10)])
    first = curate(cfg)
    import arm.data.curate as cur

    def boom(*a, **k):
        raise RuntimeError("simulated crash while filtering")

    monkeypatch.setattr(cur, "apply_filters", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        curate(make_cfg(tmp_path, [shapes_src(20)]))
    with CuratedStore(cfg.data.store) as store:
        assert store.summary()["samples"] == first["n_kept"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store", "store_metrics.json"]


def test_counts_that_do_not_reconcile_fail_the_stage(tmp_path, monkeypatch):
    import arm.data.curate as cur

    real = cur._records

    def lossy(cfg, counts):
        for i, item in enumerate(real(cfg, counts)):
            if i != 3:  # a record silently dropped after being counted
                yield item

    monkeypatch.setattr(cur, "_records", lossy)
    cfg = make_cfg(tmp_path, [shapes_src(5)])
    with pytest.raises(CurateError, match=r"shapes: in \d+ != kept \d+ \+ rejected \d+"):
        curate(cfg)
    assert not Path(cfg.data.store).exists()


def test_duplicate_source_names_are_a_config_error(tmp_path):
    with pytest.raises(CurateError, match="source names must be unique"):
        curate(make_cfg(tmp_path, [shapes_src(2), shapes_src(3)]))
