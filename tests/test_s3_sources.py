"""Sources over S3: a real SeaweedFS server (same code path as AWS/MinIO), moto, and broken endpoints."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from arm.config import (
    ImageFolderSourceConfig,
    ParquetSourceConfig,
    StorageConfig,
    WebDatasetSourceConfig,
)
from arm.data.sources import SourceError, iter_source
from arm.fs import arrow_fs_for, fs_for
from test_sources import png, wds_members, write_parquet_shards, write_tar

seaweed = pytest.mark.xdist_group("s3")


def s3_cfg(cfg, endpoint: str, **storage):
    settings = {"endpoint_url": endpoint, "connect_timeout_s": 2.0, "read_timeout_s": 10.0, "max_attempts": 2}
    return cfg.model_copy(update={"storage": StorageConfig(**{**settings, **storage})})


def summary(recs):
    return [(r.meta.get("key") or r.meta.get("path") or r.meta.get("row"), r.caption or r.answer, r.image, r.error)
            for r in recs]


def without_location(recs):
    """Records as comparable values, with the local-or-S3 location left out."""
    return [(r.task, r.caption, r.question, r.answer, r.image, r.error is None) for r in recs]


# ----------------------------------------------------------------------------- SeaweedFS


@seaweed
def test_parquet_from_seaweedfs(s3_server, micro_cfg, tmp_path, monkeypatch):
    s3_server.use(monkeypatch)
    write_parquet_shards(tmp_path / "pq")
    bucket = s3_server.new_bucket()
    url = s3_server.upload(tmp_path / "pq", bucket, "data/pq")
    cfg = s3_cfg(micro_cfg, s3_server.endpoint_url)
    local = list(iter_source(ParquetSourceConfig(path=str(tmp_path / "pq"), batch_rows=2), micro_cfg))
    remote = list(iter_source(ParquetSourceConfig(path=url, batch_rows=2), cfg))
    assert without_location(remote) == without_location(local) and len(remote) == 9
    assert remote[0].ref == f"s3://{bucket}/data/pq/part-0.parquet#0"
    globbed = list(iter_source(ParquetSourceConfig(path=f"s3://{bucket}/data/*/part-1.parquet"), cfg))
    assert [r.caption for r in globbed] == [b"bytes caption", None, None, None]
    single = list(iter_source(ParquetSourceConfig(path=f"{url}/part-0.parquet"), cfg))
    assert [r.caption for r in single] == [f"caption {i}" for i in range(5)]


@seaweed
def test_large_parquet_is_read_by_ranges(s3_server, s3_recorder, micro_cfg, tmp_path, monkeypatch):
    """A window of row groups at a time, by ranged GETs: never the whole object at once."""
    from arm.data.sources import parquet

    s3_server.use(monkeypatch)
    n, groups = 400, 8
    blobs = [png(i, size=24) for i in range(n)]
    pq.write_table(pa.table({"image": pa.array(blobs, pa.binary()), "caption": [f"c{i}" for i in range(n)]}),
                   tmp_path / "big.parquet", row_group_size=n // groups)
    size = (tmp_path / "big.parquet").stat().st_size
    bucket = s3_server.new_bucket()
    url = s3_server.upload(tmp_path / "big.parquet", bucket, "p")
    monkeypatch.setattr(parquet, "WINDOW_BYTES", size // groups)  # one row group per window
    proxy, seen = s3_recorder(s3_server.endpoint_url)
    recs = list(iter_source(ParquetSourceConfig(path=url, batch_rows=64), s3_cfg(micro_cfg, proxy)))
    assert [r.image for r in recs] == blobs and [r.caption for r in recs] == [f"c{i}" for i in range(n)]
    gets = [r.range for r in seen if r.method == "GET" and r.path.startswith(f"/{bucket}/p/big.parquet")]
    assert gets and all(r and r.startswith("bytes=") for r in gets)  # ranged reads, never a whole GET
    spans = [int(b) - int(a) + 1 for a, b in (r[len("bytes="):].split("-") for r in gets)]
    assert len(gets) >= groups and max(spans) < size / 2  # a row group at a time


@seaweed
def test_webdataset_from_seaweedfs(s3_server, micro_cfg, tmp_path, monkeypatch):
    s3_server.use(monkeypatch)
    write_tar(tmp_path / "wds" / "shard-000.tar", wds_members())
    write_tar(tmp_path / "wds" / "shard-001.tar.gz", [("z/9.png", png(99)), ("z/9.txt", b"last")], mode="w:gz")
    bucket = s3_server.new_bucket()
    url = s3_server.upload(tmp_path / "wds", bucket, "wds")
    cfg = s3_cfg(micro_cfg, s3_server.endpoint_url)
    local = list(iter_source(WebDatasetSourceConfig(path=str(tmp_path / "wds")), micro_cfg))
    remote = list(iter_source(WebDatasetSourceConfig(path=url), cfg))
    assert without_location(remote) == without_location(local) and len(remote) == 7
    assert remote[-1].ref == f"s3://{bucket}/wds/shard-001.tar.gz#z/9" and remote[-1].caption == b"last"
    assert remote[2].error.startswith(f"missing_caption: s3://{bucket}/wds/shard-000.tar#s/002")


@seaweed
def test_image_folder_from_seaweedfs(s3_server, micro_cfg, tmp_path, monkeypatch):
    s3_server.use(monkeypatch)
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(png(1))
    (root / "a.txt").write_bytes(b"sidecar a")
    (root / "sub" / "b.png").write_bytes(png(2))
    (root / "sub" / "b.txt").write_bytes(b"sidecar b")
    (root / "manifest.jsonl").write_text("\n".join([
        json.dumps({"image": "sub/b.png", "caption": "from the manifest"}),
        json.dumps({"image": "sub/missing.png", "caption": "gone"}),
        "oops",
    ]) + "\n")
    bucket = s3_server.new_bucket()
    url = s3_server.upload(root, bucket, "raw/imgs")
    cfg = s3_cfg(micro_cfg, s3_server.endpoint_url)

    side = list(iter_source(ImageFolderSourceConfig(path=url, task="generate"), cfg))
    assert summary(side) == [("a.png", b"sidecar a", png(1), None), ("sub/b.png", b"sidecar b", png(2), None)]
    assert side[0].ref == f"s3://{bucket}/raw/imgs/a.png"

    man = list(iter_source(ImageFolderSourceConfig(path=url + "/", manifest="manifest.jsonl"), cfg))
    assert [(r.answer, r.image, r.error) for r in man] == [
        ("from the manifest", png(2), None),
        (None, None, f"missing_file: s3://{bucket}/raw/imgs/sub/missing.png"),
        (None, None, "bad_manifest_row: line 3: invalid JSON: Expecting value at column 1"),
    ]
    big = list(iter_source(ImageFolderSourceConfig(path=url, task="generate"), s3_cfg(
        cfg.model_copy(update={"data": cfg.data.model_copy(update={"max_file_bytes": 20})}), s3_server.endpoint_url)))
    assert all(r.error.startswith("file_too_large: s3://") for r in big)


@seaweed
def test_seaweedfs_takes_writes_in_many_buckets(s3_server):
    """Every test makes its own bucket; the server must not run out of volumes for them."""
    client = s3_server.client()
    buckets = [s3_server.new_bucket("many") for _ in range(12)]
    for i, bucket in enumerate(buckets):
        client.put_object(Bucket=bucket, Key="k", Body=f"v{i}".encode())
    assert [client.get_object(Bucket=b, Key="k")["Body"].read() for b in buckets] == [f"v{i}".encode() for i in range(12)]


@seaweed
def test_seaweedfs_missing_bucket_and_prefix(s3_server, micro_cfg, monkeypatch):
    s3_server.use(monkeypatch)
    cfg = s3_cfg(micro_cfg, s3_server.endpoint_url)
    with pytest.raises(SourceError) as e:
        list(iter_source(ParquetSourceConfig(path="s3://no-such-bucket-arm/prefix"), cfg))
    assert str(e.value).startswith("s3://no-such-bucket-arm/prefix: bucket does not exist")
    bucket = s3_server.new_bucket()
    with pytest.raises(SourceError, match=f"s3://{bucket}/empty: no files"):
        list(iter_source(WebDatasetSourceConfig(path=f"s3://{bucket}/empty"), cfg))
    with pytest.raises(SourceError, match="bucket does not exist"):
        list(iter_source(ImageFolderSourceConfig(path="s3://no-such-bucket-arm/x"), cfg))


# ----------------------------------------------------------------------------- moto


def test_parquet_and_webdataset_from_moto(moto_server, micro_cfg, tmp_path, monkeypatch):
    moto_server.use(monkeypatch)
    write_parquet_shards(tmp_path / "pq")
    write_tar(tmp_path / "wds" / "s.tar", wds_members())
    bucket = moto_server.new_bucket()
    pq_url = moto_server.upload(tmp_path / "pq", bucket, "pq")
    wds_url = moto_server.upload(tmp_path / "wds", bucket, "wds")
    # Faults: a shard that is not Parquet, and a tar cut inside a member header (tarfile alone
    # would take that for a complete archive with one caption-less sample).
    client = moto_server.client()
    client.put_object(Bucket=bucket, Key="pq/zz-broken.parquet", Body=b"PAR1 nonsense")
    second_header = 512 + (len(wds_members()[0][1]) + 511) // 512 * 512
    cut = (tmp_path / "wds" / "s.tar").read_bytes()[: second_header + 100]
    client.put_object(Bucket=bucket, Key="wds/t.tar", Body=cut)
    cfg = s3_cfg(micro_cfg, moto_server.endpoint_url)
    pq_recs = list(iter_source(ParquetSourceConfig(path=pq_url), cfg))
    assert [r.caption for r in pq_recs[:5]] == [f"caption {i}" for i in range(5)]
    assert len(pq_recs) == 10 and pq_recs[-1].error.startswith(f"bad_shard: s3://{bucket}/pq/zz-broken.parquet")
    wds_recs = list(iter_source(WebDatasetSourceConfig(path=wds_url), cfg))
    assert [r.caption for r in wds_recs[:2]] == [b"first", b"second"] and len(wds_recs) == 6 + 1
    assert wds_recs[-1].error.startswith(f"bad_shard: s3://{bucket}/wds/t.tar")


def test_endpoint_from_aws_endpoint_url(moto_server, micro_cfg, tmp_path, monkeypatch):
    """With no endpoint in params.yaml, boto3's AWS_ENDPOINT_URL selects the server."""
    moto_server.use(monkeypatch)
    write_tar(tmp_path / "one.tar", [("a.png", png(7)), ("a.txt", b"via env")])
    bucket = moto_server.new_bucket()
    url = moto_server.upload(tmp_path / "one.tar", bucket, "w")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint_url)
    cfg = s3_cfg(micro_cfg, None)
    (rec,) = list(iter_source(WebDatasetSourceConfig(path=url), cfg))
    assert (rec.caption, rec.image, rec.ref) == (b"via env", png(7), f"s3://{bucket}/w/one.tar#a")
    write_parquet_shards(tmp_path / "pq")  # pyarrow's own S3 client resolves the endpoint alike
    pq_url = moto_server.upload(tmp_path / "pq", bucket, "pq")
    assert [r.caption for r in iter_source(ParquetSourceConfig(path=pq_url), cfg)][:2] == ["caption 0", "caption 1"]


def test_moto_missing_bucket_and_credentials(moto_server, micro_cfg, monkeypatch, tmp_path):
    moto_server.use(monkeypatch)
    cfg = s3_cfg(micro_cfg, moto_server.endpoint_url)
    with pytest.raises(SourceError, match=r"^s3://absent-bucket/x: bucket does not exist \(endpoint http://127"):
        list(iter_source(ParquetSourceConfig(path="s3://absent-bucket/x"), cfg))
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(SourceError, match="no S3 credentials found: set AWS_ACCESS_KEY_ID"):
        list(iter_source(ParquetSourceConfig(path="s3://absent-bucket/x"), cfg))


# ----------------------------------------------------------------------------- broken endpoints


def test_unreachable_endpoint_fails_with_clear_message(closed_port_url, micro_cfg, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    cfg = s3_cfg(micro_cfg, closed_port_url, max_attempts=2, connect_timeout_s=1.0)
    for src in (ParquetSourceConfig(path="s3://bucket/prefix"), WebDatasetSourceConfig(path="s3://bucket/a.tar"),
                ImageFolderSourceConfig(path="s3://bucket/imgs")):
        with pytest.raises(SourceError) as e:
            list(iter_source(src, cfg))
        msg = str(e.value)
        assert msg.startswith(f"{src.path}: cannot connect to endpoint {closed_port_url}")
        assert "very-secret-value" not in msg


def test_silent_endpoint_times_out_after_bounded_attempts(silent_endpoint, micro_cfg, monkeypatch):
    url, accepted = silent_endpoint
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    cfg = s3_cfg(micro_cfg, url, max_attempts=2, read_timeout_s=0.5)
    with pytest.raises(SourceError, match=r"s3://bucket/p: endpoint http://127.0.0.1:\d+ did not answer in time"):
        list(iter_source(ParquetSourceConfig(path="s3://bucket/p"), cfg))
    assert accepted() == 2  # max_attempts bounds the work: no retry storm, no hang


def test_clients_use_storage_settings(micro_cfg):
    storage = StorageConfig(endpoint_url="http://127.0.0.1:1", region="eu-west-1", connect_timeout_s=1.5,
                            read_timeout_s=7.0, max_attempts=2)
    fs, path = fs_for("s3://bucket/key", storage)
    client = fs.s3  # made without touching the network
    assert path == "bucket/key" and fs.retries == 1  # botocore alone retries: max_attempts bounds the tries
    assert client.meta.endpoint_url == "http://127.0.0.1:1" and client.meta.region_name == "eu-west-1"
    assert client.meta.config.connect_timeout == 1.5 and client.meta.config.read_timeout == 7.0
    assert client.meta.config.retries["total_max_attempts"] == 2
    arrow, path = arrow_fs_for("s3://bucket/key", storage)
    settings = arrow.__reduce__()[1][0]
    assert path == "bucket/key" and (settings["scheme"], settings["endpoint_override"]) == ("http", "127.0.0.1:1")
    assert (settings["region"], settings["connect_timeout"], settings["request_timeout"]) == ("eu-west-1", 1.5, 7.0)


def test_arrow_s3_failure_is_a_source_error(closed_port_url, micro_cfg, monkeypatch):
    """pyarrow's S3 client (the Parquet read path) reports a dead store as an OSError; it must stop
    the source with the URL named, never be filed as a damaged shard."""
    from arm.data.sources.files import Files

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    storage = s3_cfg(micro_cfg, closed_port_url, max_attempts=1, connect_timeout_s=1.0).storage
    arrow, path = arrow_fs_for("s3://bucket/p/a.parquet", storage)
    with pytest.raises(OSError) as raised:
        arrow.open_input_file(path)
    err = Files("s3://bucket/p", storage).translate("s3://bucket/p/a.parquet", raised.value)
    assert isinstance(err, SourceError) and "very-secret-value" not in str(err)
    assert str(err).startswith(f"s3://bucket/p/a.parquet: S3 failure at {closed_port_url}: ")
    assert "NETWORK_CONNECTION" in str(err)
    assert Files("s3://bucket/p", storage).translate("x", OSError("Parquet magic bytes not found")) is None
