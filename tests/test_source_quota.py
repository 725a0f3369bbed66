"""Per-source quotas (`limit`) of WebDataset and Parquet shards on S3, and the 7b preset's corpus mix."""

from __future__ import annotations

import pytest

from arm.config import ParquetSourceConfig, WebDatasetSourceConfig
from arm.data.sources import iter_source
from tests.conftest import REPO
from test_s3_sources import s3_cfg
from test_sources import png, write_parquet_shards, write_tar

seaweed = pytest.mark.xdist_group("s3")


def _gets(seen) -> list[str]:
    """Paths of every GET the sources sent through the recorder: which shards were opened."""
    return [r.path for r in seen if r.method == "GET"]


def _pairs(shard: int, n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        key = f"{shard:03d}{i:03d}"
        out += [(f"{key}.jpg", png(100 * shard + i)), (f"{key}.txt", f"pair {shard}-{i}".encode())]
    return out


@seaweed
def test_webdataset_quota_stops_reading_at_the_limit(s3_server, s3_recorder, micro_cfg, tmp_path, monkeypatch):
    s3_server.use(monkeypatch)
    for shard in range(3):
        write_tar(tmp_path / "laion" / f"shard-{shard:05d}.tar", _pairs(shard, 3))
    bucket = s3_server.new_bucket()
    s3_server.upload(tmp_path / "laion", bucket, "corpus/laion")
    proxy, seen = s3_recorder(s3_server.endpoint_url)
    cfg = s3_cfg(micro_cfg, proxy)
    url = f"s3://{bucket}/corpus/laion/*.tar"

    recs = list(iter_source(WebDatasetSourceConfig(path=url, limit=4), cfg))
    gets = _gets(seen)
    assert [r.caption for r in recs] == [b"pair 0-0", b"pair 0-1", b"pair 0-2", b"pair 1-0"]  # shards in path order
    assert all(r.error is None for r in recs)
    assert any("shard-00001" in k for k in gets) and not any("shard-00002" in k for k in gets)  # the shard past the quota is never opened

    assert len(list(iter_source(WebDatasetSourceConfig(path=url, limit=0), cfg))) == 0
    assert len(list(iter_source(WebDatasetSourceConfig(path=url, limit=100), cfg))) == 9  # quota above the corpus
    assert len(list(iter_source(WebDatasetSourceConfig(path=url), cfg))) == 9  # no quota: everything


@seaweed
def test_parquet_quota_counts_rejections_and_spans_shards(s3_server, s3_recorder, micro_cfg, tmp_path, monkeypatch):
    s3_server.use(monkeypatch)
    write_parquet_shards(tmp_path / "cc12m")  # part-0: 5 good rows; part-1: 4 rows, 3 of them bad
    bucket = s3_server.new_bucket()
    url = s3_server.upload(tmp_path / "cc12m", bucket, "corpus/cc12m")
    cfg = s3_cfg(micro_cfg, s3_server.endpoint_url)

    recs = list(iter_source(ParquetSourceConfig(path=url, limit=7, batch_rows=2), cfg))
    assert [r.meta["row"] for r in recs] == [0, 1, 2, 3, 4, 0, 1]
    assert [r.error is None for r in recs] == [True] * 6 + [False]  # a rejected row uses up quota too

    proxy, seen = s3_recorder(s3_server.endpoint_url)
    recs = list(iter_source(ParquetSourceConfig(path=url, limit=3, batch_rows=2), s3_cfg(micro_cfg, proxy)))
    assert [r.caption for r in recs] == ["caption 0", "caption 1", "caption 2"]
    gets = _gets(seen)
    assert any("part-0" in k for k in gets) and not any("part-1" in k for k in gets)


def test_quota_is_validated():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="limit"):
        WebDatasetSourceConfig(path="s3://b/x/*.tar", limit=-1)


def test_7b_reads_a_corpus_with_quotas_not_the_synthetic_world():
    from arm.config import load_config

    cfg = load_config(REPO / "params.yaml", preset="7b")
    corpus = [s for s in cfg.data.sources if s.type in ("webdataset", "parquet")]
    assert {s.type for s in corpus} == {"webdataset", "parquet"}
    assert all(s.path.startswith("s3://") and s.limit and s.limit > 0 for s in corpus)
    assert {s.task for s in corpus} == {"generate", "understand"}
    assert not any(s.type == "fashion_mnist" for s in cfg.data.sources)
    shapes = [s for s in cfg.data.sources if s.type == "shapes"]
    # the synthetic world is a minor slice of the mix (edit triplets, the RL and benchmark world)
    assert sum(s.n_scenes for s in shapes) * 10 < sum(s.limit for s in corpus)
    assert cfg.tokenizer.train.scene_warmup == 0.0
