"""Prefect flows of the pretrain stage: thin wrappers around arm.train.pretrain.

`pretrain_flow` runs on one machine. With nproc > 1 (pretrain.nproc, or the argument), or when the
environment names several nodes (NNODES > 1), it starts torchrun here (the same command a GPU work
pool or the `deepspeed` launcher would run); every process runs the same stage function.

`pretrain_nodes_flow` fans one job out over several machines: one run of the per-node deployment
(`pretrain-7b-node`, i.e. `pretrain_flow`) per node rank, each on that node's work queue, with the
rendezvous variables (NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, RDZV_ID) as job variables, so
all ranks meet in torchrun's c10d rendezvous. Nodes share no disk: pretrain.remote carries the
tokenizer, checkpoints and export between them (arm.train.remote).
"""

from __future__ import annotations

from typing import Any

import os

from prefect import flow, get_run_logger, task

from arm.config import load_config, override_args


@task(name="pretrain")
def pretrain_task(params: str, preset: str | None, overrides: dict[str, Any] | None, nproc: int | None,
                  stop_after: int | None) -> dict:
    from arm.train.pretrain import pretrain, pretrain_multiprocess

    cfg = load_config(params, preset, overrides)
    nproc = nproc or cfg.pretrain.nproc
    nnodes = int(os.environ.get("NNODES", "1"))
    logger = get_run_logger()
    logger.info("pretrain %s: %d steps on %d process(es) x %d node(s), images from %s", cfg.preset,
                cfg.pretrain.max_steps, nproc, nnodes, cfg.pretrain.images)
    if nproc > 1 or nnodes > 1:
        metrics = pretrain_multiprocess(params, preset, override_args(overrides), nproc, stop_after)
    else:
        metrics = pretrain(cfg, stop_after=stop_after, logger=logger)
    if metrics.get("stopped") != "stop_after":
        logger.info("%.0f tokens/s, MFU %.3f, val loss %s; model at %s", metrics["tokens_per_s"], metrics["mfu"],
                    {k: round(v, 4) for k, v in metrics["val_loss"].items()}, cfg.pretrain.remote or cfg.pretrain.output)
    return metrics


@flow(name="pretrain")
def pretrain_flow(params: str = "params.yaml", preset: str | None = None, overrides: dict[str, Any] | None = None,
                  nproc: int | None = None, stop_after: int | None = None) -> dict:
    """nproc: processes on this machine; None = pretrain.nproc."""
    options = load_config(params, preset, overrides).orchestration.task_options("pretrain")
    return pretrain_task.with_options(**options)(params, preset, overrides, nproc, stop_after)


def node_queues(nnodes: int, queues: list[str] | None) -> list[str]:
    """The work queue each node rank's run goes to (one queue per machine of the GPU pool)."""
    if nnodes < 2:
        raise ValueError(f"nnodes={nnodes}: the fan-out is for 2 or more nodes (run pretrain-7b on one)")
    queues = queues or [f"node-{r}" for r in range(nnodes)]
    if len(queues) != nnodes or len(set(queues)) != nnodes:
        raise ValueError(f"queues {queues}: need {nnodes} distinct work queues, one per node")
    return queues


def node_env(nnodes: int, node_rank: int, master_addr: str, master_port: int, rdzv_id: str) -> dict[str, str]:
    """What one node's run needs to join the others (read by arm.train.pretrain._rendezvous_args)."""
    return {"NNODES": str(nnodes), "NODE_RANK": str(node_rank), "MASTER_ADDR": master_addr,
            "MASTER_PORT": str(master_port), "RDZV_ID": rdzv_id}


@task(name="pretrain-node")
def run_node(deployment: str, queue: str, parameters: dict, env: dict[str, str]) -> str:
    """One node's run; returns its flow run id once it completed, raises if it did not."""
    from prefect.deployments import run_deployment

    # timeout=None: wait for the end (a deployment's env job variables are merged with these)
    run = run_deployment(name=deployment, parameters=parameters, job_variables={"env": env},
                         work_queue_name=queue, timeout=None, as_subflow=True)
    if run.state is None or not run.state.is_completed():
        state = run.state.name if run.state else "no state"
        raise RuntimeError(f"node {env['NODE_RANK']} ({queue}): flow run {run.name} ended {state}")
    return str(run.id)


@flow(name="pretrain-nodes")
def pretrain_nodes_flow(nnodes: int, master_addr: str, master_port: int = 29400, params: str = "params.yaml",
                        preset: str | None = None, overrides: dict[str, Any] | None = None, nproc: int | None = None,
                        stop_after: int | None = None, queues: list[str] | None = None,
                        deployment: str = "pretrain/pretrain-7b-node") -> list[str]:
    """Start `deployment` once per node rank on that node's queue (default node-0..node-{n-1});
    master_addr:master_port is the rendezvous, hosted by node 0. Fails if any node's run fails."""
    from prefect.runtime import flow_run

    from arm.train.remote import require_store

    queues = node_queues(nnodes, queues)
    cfg = load_config(params, preset, overrides)
    require_store(cfg.pretrain.remote, nnodes)  # before any GPU node starts
    rdzv_id = f"arm-{flow_run.id or os.getpid()}"  # one rendezvous per fan-out, never a stale one
    parameters = {"params": params, "preset": preset, "overrides": overrides, "nproc": nproc, "stop_after": stop_after}
    # all nodes must run at once to meet at the rendezvous: submit every node, then wait for all
    futures = [run_node.submit(deployment, queues[r], parameters, node_env(nnodes, r, master_addr, master_port, rdzv_id))
               for r in range(nnodes)]
    get_run_logger().info("pretrain on %d nodes (%s), rendezvous %s:%d id %s", nnodes, ", ".join(queues),
                          master_addr, master_port, rdzv_id)
    return [f.result() for f in futures]


if __name__ == "__main__":
    pretrain_flow()
