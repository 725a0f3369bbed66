"""Prefect flow of the curate stage: a thin wrapper around arm.data.curate.curate.

`data.executor: process` runs curate() as one task (its stats in a local process pool).
`data.executor: dask` runs it in a subflow on a DaskTaskRunner: the per-chunk stats
(arm.data.stats.process_chunk, the same function the pool runs) become one Prefect task per
chunk on the Dask workers; reading, filtering and the store write stay in the flow's process.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.context import FlowRunContext
from prefect.settings import PREFECT_API_URL, temporary_settings

from arm.config import ArmConfig, load_config
from arm.data.curate import Chunk, MapChunks, curate, windowed
from arm.data.stats import ChunkResult, StatsParams, process_chunk
from arm.orchestration.artifacts import publish_curation

CHUNKS_PER_WORKER_THREAD = 3  # in flight per Dask thread: keeps workers busy, memory bounded


class Sealed:
    """A chunk handed to a Prefect task unexamined. Prefect walks every task parameter looking for
    futures (visit_collection, on submit and again on the worker) and Dask tokenizes it; over
    records with nested metadata that walk was most of the flow process's CPU time in a profile of
    the tiny preset. An object with slots is a leaf to both."""

    __slots__ = ("chunk",)

    def __init__(self, chunk: Chunk):
        self.chunk = chunk

    def __dask_tokenize__(self) -> tuple:
        # Cheap; keys stay unique because each submission also carries its own task run id.
        return ("curate-chunk", self.chunk[0][0] if self.chunk else None, len(self.chunk))


# No cache (inputs are image bytes: hashing them costs as much as the work) and no persisted
# result (the flow consumes it at once). No Prefect retries: process_chunk turns bad records into
# rejections, so an exception is a bug that would fail again; Dask itself reruns the tasks of a
# worker that dies (distributed.scheduler.allowed-failures).
@task(name="chunk_stats", cache_policy=NONE, persist_result=False)
def chunk_stats(sealed: Sealed, params: StatsParams) -> ChunkResult:
    return process_chunk(sealed.chunk, params)


def dask_task_runner(cfg: ArmConfig):
    from prefect_dask import DaskTaskRunner

    if cfg.data.dask_address:
        return DaskTaskRunner(address=cfg.data.dask_address)
    # One thread per worker process: the stats are Python/Pillow work that holds the GIL.
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={
        "n_workers": cfg.data.dask_workers, "threads_per_worker": 1, "processes": True,
        "dashboard_address": None})


def prefect_task_map(cfg: ArmConfig) -> MapChunks:
    """Each chunk one `chunk_stats` task on the current flow's task runner, a bounded window in flight."""

    def map_chunks(chunks: Iterator[Chunk], params: StatsParams) -> Iterator[ChunkResult]:
        runner = FlowRunContext.get().task_runner
        threads = cfg.data.dask_workers
        client = getattr(runner, "client", None)
        if client is not None:  # an existing cluster may have more (or fewer) threads than dask_workers
            threads = max(1, sum(client.nthreads().values()))
        yield from windowed(chunks, lambda chunk: chunk_stats.submit(Sealed(chunk), params),
                            CHUNKS_PER_WORKER_THREAD * threads)

    return map_chunks


@task(name="curate")
def curate_task(params: str, preset: str | None, overrides: dict[str, Any] | None) -> dict:
    cfg = load_config(params, preset, overrides)
    return curate(cfg, logger=get_run_logger())


@contextmanager
def _api_for_workers(cfg: ArmConfig) -> Iterator[None]:
    """Task runs on Dask workers report to the API in the settings the task runner sends them. With
    no PREFECT_API_URL (ephemeral mode) each worker would start an API server of its own; point them
    at this flow's server instead. (A remote cluster needs PREFECT_API_URL set to a real server.)"""
    if PREFECT_API_URL.value():
        yield
        return
    url = str(FlowRunContext.get().client.api_url)
    if cfg.data.dask_address:
        get_run_logger().warning("curate: PREFECT_API_URL is not set; Dask workers at %s report to this "
                                 "process's temporary API %s, which workers on other hosts cannot reach",
                                 cfg.data.dask_address, url)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


@flow(name="curate-dask")
def curate_dask_flow(params: str, preset: str | None, overrides: dict[str, Any] | None) -> dict:
    cfg = load_config(params, preset, overrides)
    with _api_for_workers(cfg):
        return curate(cfg, logger=get_run_logger(), map_chunks=prefect_task_map(cfg),
                      chunk_size=cfg.data.dask_chunk_size)


@flow(name="curate")
def curate_flow(params: str = "params.yaml", preset: str | None = None, overrides: dict[str, Any] | None = None) -> dict:
    cfg = load_config(params, preset, overrides)
    if cfg.data.executor == "dask":
        metrics = curate_dask_flow.with_options(task_runner=dask_task_runner(cfg))(params, preset, overrides)
    else:
        metrics = curate_task(params, preset, overrides)
    publish_curation(metrics)
    return metrics


if __name__ == "__main__":
    curate_flow()
