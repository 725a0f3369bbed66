"""Curation sharded across Prefect tasks on a Dask cluster gives the store the process pool gives."""

from __future__ import annotations

import concurrent.futures as cf
import json
from pathlib import Path

import duckdb
import pytest

from arm.config import load_config, parse_overrides
from arm.data.curate import CHUNK, CurateError, curate, params_hash, windowed

REPO = Path(__file__).resolve().parents[1]
PARAMS = str(REPO / "params.yaml")


def outputs(tmp: Path, name: str) -> list[str]:
    return [f"data.store={tmp / name}", f"data.metrics={tmp / (name + '.json')}"]


def table_rows(store: str, table: str, order: str) -> list[tuple]:
    with duckdb.connect(str(Path(store) / "store.duckdb"), read_only=True) as con:
        return con.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()


def test_curate_alone_refuses_the_dask_executor(tmp_path):
    cfg = load_config(PARAMS, "micro", [*outputs(tmp_path, "s"), "data.executor=dask"])
    with pytest.raises(CurateError, match="Prefect flow"):
        curate(cfg)
    assert not Path(cfg.data.store).exists()


def test_where_the_stats_run_is_not_part_of_the_params_hash(tmp_path):
    base = load_config(PARAMS, "micro", outputs(tmp_path, "s"))
    other = load_config(PARAMS, "micro", [*outputs(tmp_path, "s"), "data.executor=dask", "data.workers=4",
                                          "data.dask_workers=8", "data.dask_chunk_size=99",
                                          "data.dask_address=tcp://10.0.0.1:8786"])
    assert params_hash(base) == params_hash(other)
    assert params_hash(base) != params_hash(load_config(PARAMS, "micro", [*outputs(tmp_path, "s"), "data.max_pixels=100"]))


def test_any_in_order_executor_gives_the_same_store(tmp_path):
    """The chunk work is one function; a strategy only decides where it runs (here: threads), and
    neither it nor the chunk size changes the store."""
    from arm.data.stats import process_chunk

    cfg = load_config(PARAMS, "micro", outputs(tmp_path, "a"))
    curate(cfg)
    with cf.ThreadPoolExecutor(2) as pool:
        def threads(chunks, params):
            return windowed(chunks, lambda c: pool.submit(process_chunk, c, params), window=3)

        cfg_b = load_config(PARAMS, "micro", outputs(tmp_path, "b"))
        m = curate(cfg_b, map_chunks=threads, chunk_size=100)
    assert m["executor"]["chunks"] == -(-m["n_in"] // 100)
    for table in ("samples", "rejections"):
        assert table_rows(cfg.data.store, table, "ord") == table_rows(cfg_b.data.store, table, "ord")


def test_windowed_keeps_order_and_bounds_the_chunks_in_flight():
    class Done:
        def __init__(self, value):
            self.value = value

        def result(self):
            pending.remove(self.value)
            return self.value

    pending: list[int] = []
    peak = 0
    consumed = 0

    def chunks():
        nonlocal consumed
        for i in range(20):
            consumed += 1
            yield [i]

    def submit(chunk):
        nonlocal peak
        pending.append(chunk[0])
        peak = max(peak, len(pending))
        return Done(chunk[0])

    out = windowed(chunks(), submit, window=3)
    assert next(out) == 0 and consumed == 3  # the input is read only a window ahead
    assert [0, *out] == list(range(20)) and peak == 3 and not pending


def test_dask_task_runner_from_config():
    from prefect_dask import DaskTaskRunner

    from flows.curate import dask_task_runner

    local = dask_task_runner(load_config(PARAMS, "micro", ["data.executor=dask", "data.dask_workers=3"]))
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert local.cluster_kwargs["n_workers"] == 3 and local.cluster_kwargs["processes"] is True
    remote = dask_task_runner(load_config(PARAMS, "micro", ["data.executor=dask", "data.dask_address=tcp://10.1.2.3:8786"]))
    assert remote.address == "tcp://10.1.2.3:8786" and not remote.cluster_kwargs


@pytest.mark.slow
def test_dask_flow_maps_one_task_per_chunk_and_matches_the_process_store(tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterName,
    )

    from arm.orchestration.artifacts import curation_rows
    from flows.curate import curate_flow

    proc_cfg = load_config(PARAMS, "micro", [*outputs(tmp_path, "process"), "data.workers=2"])
    m_proc = curate(proc_cfg)
    # Chunks other than the pool's, so that chunking is shown not to matter either.
    chunk = 200
    state = curate_flow(params=PARAMS, preset="micro", return_state=True, overrides=parse_overrides([
        *outputs(tmp_path, "dask"), "data.executor=dask", "data.dask_workers=2", f"data.dask_chunk_size={chunk}"]))
    assert state.is_completed(), state
    m_dask = state.result()

    n_chunks = -(-m_dask["n_in"] // chunk)
    assert n_chunks >= 3
    assert m_dask["executor"] == {"kind": "dask", "chunks": n_chunks, "chunk_size": chunk}
    assert m_proc["executor"] == {"kind": "process", "chunks": -(-m_proc["n_in"] // CHUNK), "chunk_size": CHUNK}
    for key in ("n_in", "n_kept", "n_rejected", "by_source", "kept_by_task", "kept_by_split", "rejected_by_reason"):
        assert m_dask[key] == m_proc[key], key
    dask_store = str(tmp_path / "dask")
    for table in ("samples", "rejections"):
        assert table_rows(dask_store, table, "ord") == table_rows(proc_cfg.data.store, table, "ord"), table
    assert table_rows(dask_store, "images", "shard, row") == table_rows(proc_cfg.data.store, "images", "shard, row")

    # One Prefect task run per chunk, all completed, inside the Dask subflow of this flow run.
    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])))
        assert len(subflows) == 1 and client.read_flow(subflows[0].flow_id).name == "curate-dask"
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[subflows[0].id])),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="chunk_stats")))
    assert len(runs) == n_chunks
    assert all(r.state is not None and r.state.is_completed() for r in runs)
    # The counts are the run's table artifact.
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["curation-counts"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    assert artifact.type == "table" and json.loads(artifact.data) == curation_rows(m_dask)
