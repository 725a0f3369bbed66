"""Token-document shards (arm.train.shards): written per task, streamed per rank from local disk or S3."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from arm.config import StorageConfig
from arm.text.sequences import Example, TokExample, document
from arm.text.vocab import VocabLayout
from arm.train.shards import DocumentStream, read_manifest, write_documents

LAYOUT = VocabLayout(n_text=50, codebook_size=12, grid=(2, 2), levels=(4, 3))
SEQ_LEN = 32
WEIGHTS = {"understand": 1.0, "generate": 2.0, "edit": 1.0, "text": 1.0}
REPO_ROOT = Path(__file__).resolve().parents[1]


def synthetic(counts: dict[str, int], seed: int = 0, long_every: int = 0):
    """TokExamples with small random ids, tasks interleaved; every `long_every`-th is longer than SEQ_LEN."""
    rng = np.random.default_rng(seed)
    left = dict(counts)
    i = 0
    while any(left.values()):
        for task in [t for t in left if left[t]]:
            left[task] -= 1
            i += 1
            n_text = 40 if long_every and i % long_every == 0 else int(rng.integers(1, 6))
            text = tuple(rng.integers(0, LAYOUT.n_text, n_text).tolist())
            img = lambda: tuple(rng.integers(0, LAYOUT.codebook_size, LAYOUT.tokens_per_image).tolist())  # noqa: E731
            image = img() if task in ("understand", "edit") else None
            target = img() if task in ("generate", "edit") else None
            answer = tuple(rng.integers(0, LAYOUT.n_text, 2).tolist()) if task == "understand" else ()
            yield TokExample(Example(f"{task}-{i}", task, "train", image=image, target_image=target), text, answer)


def as_tuple(ex: TokExample):
    e = ex.example
    return (e.id, e.task, e.image, e.target_image, tuple(ex.text_ids), tuple(ex.answer_ids))


def stream(url, rank=0, world_size=2, storage=None, **kw):
    args = dict(layout=LAYOUT, seq_len=SEQ_LEN, weights=WEIGHTS, cfg_dropout=0.3, seed=7, block_docs=10)
    return DocumentStream(url, rank=rank, world_size=world_size, storage=storage, **{**args, **kw})


def epoch_docs(s: DocumentStream, task: str, epoch: int = 0) -> list[TokExample]:
    """The documents rank s.rank reads in one epoch of `task`."""
    out = []
    for after, ex in s.documents(task):
        if after["epoch"] > epoch:
            break
        if after["epoch"] == epoch:
            out.append(ex)
    return out


def take(it, n):
    return [next(it) for _ in range(n)]


def same_rows(a, b) -> bool:
    return len(a) == len(b) and all(
        x.input_ids.equal(y.input_ids) and x.position_ids.equal(y.position_ids)
        and x.loss_mask.equal(y.loss_mask) and x.task_ids.equal(y.task_ids) for x, y in zip(a, b))


COUNTS = {"understand": 13, "generate": 23, "edit": 3, "text": 9}


@pytest.fixture
def shards(tmp_path):
    url = str(tmp_path / "docs")
    examples = list(synthetic(COUNTS, long_every=11))
    manifest = write_documents(iter(examples), url, storage=None, docs_per_shard=10, row_group_docs=4,
                               meta={"layout": LAYOUT.to_json(), "version": "v1"})
    return url, examples, manifest


# ----------------------------------------------------------------------------- writing


def test_shards_and_manifest(shards, tmp_path):
    url, examples, manifest = shards
    gen = manifest["tasks"]["generate"]
    # 23 documents: shards of 10 (row groups 4, 4, 2) and the rest
    assert [(s["path"], s["row_groups"]) for s in gen["shards"]] == [
        ("generate/part-00000.parquet", [4, 4, 2]), ("generate/part-00001.parquet", [4, 4, 2]),
        ("generate/part-00002.parquet", [3])]
    assert {t: e["documents"] for t, e in manifest["tasks"].items()} == COUNTS
    assert manifest["documents"] == 48 and manifest["meta"]["version"] == "v1"
    assert manifest["bytes"] == sum(p.stat().st_size for p in (tmp_path / "docs").rglob("*.parquet"))
    assert read_manifest(url) == manifest

    f = pq.ParquetFile(tmp_path / "docs" / "edit" / "part-00000.parquet")
    assert f.metadata.num_row_groups == 1
    assert str(f.schema_arrow.field("image").type) == "list<element: int32>"
    table = f.read()
    want = [ex for ex in examples if ex.task == "edit"]
    assert table.column("id").to_pylist() == [ex.example.id for ex in want]
    assert table.column("image").to_pylist() == [list(ex.example.image) for ex in want]
    text = pq.read_table(tmp_path / "docs" / "text" / "part-00000.parquet")
    assert text.column("image").null_count == text.num_rows == text.column("target_image").null_count


def test_dir_without_manifest_is_refused(shards, tmp_path):
    url, _, _ = shards
    (tmp_path / "docs" / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"docs: no manifest\.json.*did not finish"):
        stream(url)


def test_interrupted_rewrite_leaves_no_manifest(shards):
    url, examples, _ = shards

    def failing():
        yield from examples[:20]
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError, match="source died"):
        write_documents(failing(), url, storage=None, docs_per_shard=10, row_group_docs=4, meta={})
    with pytest.raises(FileNotFoundError, match="manifest"):
        read_manifest(url)  # the old manifest is gone, so the half-rewritten dir is never read


# ----------------------------------------------------------------------------- per-rank documents


def test_two_ranks_read_disjoint_documents_covering_each_task(shards):
    url, examples, _ = shards
    ranks = [stream(url, rank=r, world_size=2) for r in range(2)]
    originals = {ex.example.id: as_tuple(ex) for ex in examples}
    # generate has 7 units (uneven over 2 ranks); edit has 1 unit, fewer than the ranks: split by document
    assert len(ranks[0].units["generate"]) == 7 and len(ranks[0].units["edit"]) == 1
    assert [len(epoch_docs(r, "edit")) for r in ranks] == [2, 1]
    for task in COUNTS:
        for epoch in (0, 1):
            got = [epoch_docs(r, task, epoch) for r in ranks]
            ids = [[ex.example.id for ex in g] for g in got]
            assert not set(ids[0]) & set(ids[1]), (task, epoch)
            assert sorted(ids[0] + ids[1]) == sorted(i for i in originals if i.startswith(task + "-"))
            assert all(as_tuple(ex) == originals[ex.example.id] for g in got for ex in g)
    # each epoch is reshuffled: rank 0's generate order differs between epochs
    assert [e.example.id for e in epoch_docs(ranks[0], "generate", 0)] != \
        [e.example.id for e in epoch_docs(ranks[0], "generate", 1)]


def test_rows_pack_the_ranks_own_documents(shards):
    url, _, _ = shards
    s = stream(url, rank=1, world_size=2, cfg_dropout=0.0)
    block_rows = []
    it = s.rows()
    while True:
        after, row = next(it)
        block_rows.append(row)
        if after["block"] == 1:
            break
    # split rows back into documents at the position resets
    packed = []
    for row in block_rows:
        ids, pos, task = row.input_ids.tolist(), row.position_ids.tolist(), row.task_ids.tolist()
        starts = [i for i, p in enumerate(pos) if p == 0 and task[i] >= 0]
        for a, b in zip(starts, starts[1:] + [len(ids) - row.n_pad]):
            packed.append(tuple(ids[a:b]))
    want = []
    for task, q in s.quotas.items():
        usable = (ex for _, ex in s.documents(task) if len(document(ex, LAYOUT)[0]) <= SEQ_LEN)
        want += [tuple(document(next(usable), LAYOUT)[0]) for _ in range(q)]
    assert Counter(packed) == Counter(want)
    assert s.quotas == {"understand": 2, "generate": 4, "edit": 2, "text": 2}


def test_same_seed_rank_world_gives_same_rows(shards):
    url, _, _ = shards
    a = [r for _, r in take(stream(url, rank=0).rows(), 12)]
    b = [r for _, r in take(stream(url, rank=0).rows(), 12)]
    other = [r for _, r in take(stream(url, rank=1).rows(), 12)]
    assert same_rows(a, b) and not same_rows(a, other)


def test_too_long_documents_are_skipped_and_counted(shards):
    url, examples, _ = shards
    s = stream(url, rank=0, world_size=1)
    assert any(len(document(ex, LAYOUT)[0]) > SEQ_LEN for ex in examples)  # the fixture has some
    it = s.rows()
    while True:  # to a block boundary past two epochs of some task
        state, _ = next(it)
        if state["row"] == 0 and state["block"] >= 8:
            break
    assert max(c["epoch"] for c in state["tasks"].values()) >= 2
    for task, cursor in state["tasks"].items():
        long = 0
        for after, ex in s.documents(task):
            long += len(document(ex, LAYOUT)[0]) > SEQ_LEN
            if [after[k] for k in ("epoch", "unit", "doc")] == [cursor[k] for k in ("epoch", "unit", "doc")]:
                break
        assert cursor["too_long"] == s.too_long[task] == long, task
    assert sum(s.too_long.values()) > 0


# ----------------------------------------------------------------------------- resume


def test_resume_is_exact_at_every_row(shards):
    url, _, _ = shards
    full = take(stream(url, rank=1).rows(), 30)
    for k in range(0, 20):
        state = json.loads(json.dumps(full[k - 1][0])) if k else None
        s = stream(url, rank=1)
        resumed = take(s.rows(state), 10)
        assert same_rows([r for _, r in resumed], [r for _, r in full[k:k + 10]]), k
        assert [st for st, _ in resumed] == [st for st, _ in full[k:k + 10]], k
    assert full[19][0]["block"] >= 3  # the resumed positions cross several blocks


def test_world_size_change_on_resume_raises(shards):
    url, _, _ = shards
    state, _ = take(stream(url, rank=1, world_size=2).rows(), 5)[-1]
    with pytest.raises(ValueError, match=r"world_size 2.*world_size 3"):
        next(stream(url, rank=1, world_size=3).rows(json.loads(json.dumps(state))))
    with pytest.raises(ValueError, match="rank 1.*rank 0"):
        next(stream(url, rank=0, world_size=2).rows(state))


def test_resume_over_other_documents_raises(shards, tmp_path):
    url, _, _ = shards
    state, _ = take(stream(url).rows(), 3)[-1]
    other = str(tmp_path / "other")
    write_documents(synthetic(COUNTS, seed=1), other, storage=None, docs_per_shard=10, row_group_docs=4, meta={})
    with pytest.raises(ValueError, match="saved over other documents"):
        next(stream(other).rows(state))


def test_task_with_fewer_documents_than_ranks_is_refused(tmp_path):
    url = str(tmp_path / "d")
    write_documents(synthetic({"generate": 8, "edit": 2}), url, storage=None, docs_per_shard=4, row_group_docs=4,
                    meta={})
    with pytest.raises(ValueError, match="task edit has 2 documents, fewer than world_size 3"):
        stream(url, world_size=3)
    assert stream(url, world_size=3, weights={"generate": 1.0, "edit": 0.0}).quotas == {"generate": 10}


# ----------------------------------------------------------------------------- memory


_PROBE = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from arm.text.sequences import Example, TokExample
    from arm.text.vocab import VocabLayout
    from arm.train.shards import DocumentStream, write_documents

    mode, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    layout = VocabLayout(n_text=1000, codebook_size=4096, grid=(16, 16), levels=(8, 8, 8, 8))

    def examples():  # generated lazily: the writer must not need the input in memory
        rng = np.random.default_rng(0)
        for i in range(n):
            task = ("generate", "understand")[i % 2]
            codes = tuple(rng.integers(0, 4096, 256).tolist())
            text = tuple(rng.integers(0, 1000, 30).tolist())
            yield TokExample(Example(f"d{i}", task, "train", image=codes if task == "understand" else None,
                                     target_image=codes if task == "generate" else None),
                             text, text[:5] if task == "understand" else ())

    out = {}
    if mode == "write":  # n documents
        m = write_documents(examples(), url, storage=None, docs_per_shard=4096, row_group_docs=256, meta={})
        out["bytes"] = m["bytes"]
    else:  # n rows of rank 1 of 2
        s = DocumentStream(url, rank=1, world_size=2, layout=layout, seq_len=1024,
                           weights={"generate": 1.0, "understand": 1.0}, cfg_dropout=0.1, seed=0, block_docs=64)
        rows = s.rows()
        for _ in range(n):
            next(rows)
    out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    print(json.dumps(out))
""")


def _probes(*runs: tuple) -> list[dict]:
    """Runs the probe once per (mode, url, n), concurrently, each in its own process."""
    procs = [subprocess.Popen([sys.executable, "-c", _PROBE, *map(str, run)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT) for run in runs]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-3000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


@pytest.mark.slow
def test_per_rank_memory_does_not_grow_with_the_dataset(tmp_path):
    n, rows = 4000, 48  # 48 rows of 1024 tokens: ~170 documents per rank, well inside the small set
    small, large = _probes(("write", tmp_path / "small", n), ("write", tmp_path / "large", 8 * n))
    read_small, read_large = _probes(("read", tmp_path / "small", rows), ("read", tmp_path / "large", rows))
    extra_bytes = large["bytes"] - small["bytes"]
    # The 7n extra documents hold 7n * 286 token ids: 8 bytes each as int64 arrays, ~36 as the
    # Python ints PackedStream takes, while Parquet stores these (random) ids in about 2.
    assert extra_bytes < 2 * 7 * n * 286
    # so a reader or writer holding the data would grow by many times extra_bytes; streaming
    # may grow by a tenth of it
    assert read_large["peak_rss"] - read_small["peak_rss"] < extra_bytes / 10, (read_small, read_large, extra_bytes)
    assert large["peak_rss"] - small["peak_rss"] < extra_bytes / 10, (small, large, extra_bytes)


# ----------------------------------------------------------------------------- S3


@pytest.mark.xdist_group("s3")
def test_stream_from_seaweedfs_equals_local(s3_server, tmp_path, monkeypatch):
    s3_server.use(monkeypatch)
    storage = StorageConfig(endpoint_url=s3_server.endpoint_url, connect_timeout_s=2.0, read_timeout_s=10.0,
                            max_attempts=2)
    url = f"s3://{s3_server.new_bucket()}/tokens/docs"
    kw = dict(docs_per_shard=10, row_group_docs=4, meta={"version": "v1"})
    remote_manifest = write_documents(synthetic(COUNTS, long_every=11), url, storage=storage, **kw)
    local_manifest = write_documents(synthetic(COUNTS, long_every=11), str(tmp_path / "d"), storage=None, **kw)
    assert remote_manifest == local_manifest
    keys = sorted(o["Key"] for o in s3_server.client().list_objects_v2(Bucket=url.split("/")[2])["Contents"])
    assert "tokens/docs/manifest.json" in keys and "tokens/docs/generate/part-00002.parquet" in keys
    for rank in (0, 1):
        remote = take(stream(url, rank=rank, storage=storage).rows(), 12)
        local = take(stream(str(tmp_path / "d"), rank=rank).rows(), 12)
        assert same_rows([r for _, r in remote], [r for _, r in local])
        assert [s for s, _ in remote] == [s for s, _ in local]
    state = remote[5][0]
    resumed = take(stream(url, rank=1, storage=storage).rows(state), 6)
    assert same_rows([r for _, r in resumed], [r for _, r in remote[6:12]])


def test_task_with_only_too_long_documents_fails_clearly(tmp_path):
    url = str(tmp_path / "d")
    write_documents(synthetic({"generate": 6, "text": 4}, long_every=1), url, storage=None, docs_per_shard=4,
                    row_group_docs=2, meta={})
    with pytest.raises(ValueError, match="documents in a row, every one longer than seq_len 32"):
        next(stream(url).rows())


def test_bad_documents_are_refused_with_their_ids(tmp_path):
    big = TokExample(Example("g-big", "generate", "train", target_image=(2**40, 0, 0, 0)), (1,), ())
    with pytest.raises(ValueError, match=r"task generate: a document in \['g-big'\]"):
        write_documents([big], str(tmp_path / "d"), storage=None, docs_per_shard=4, row_group_docs=4, meta={})
    odd = TokExample(Example("x-1", "caption", "train"), (1,), ())
    with pytest.raises(ValueError, match="example x-1: unknown task 'caption'"):
        write_documents([odd], str(tmp_path / "d"), storage=None, docs_per_shard=4, row_group_docs=4, meta={})
