"""Per-process entry point for multi-process pretraining.

    torchrun --nproc_per_node 2 -m arm.train.launch --preset tiny
    deepspeed --num_gpus 8 arm/train/launch.py --preset 7b

Each process reads its rank from the environment (arm.train.dist) and runs the same stage
function as `arm pretrain`.
"""

from __future__ import annotations

import json
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from arm.train.dist import stage_args

    args = stage_args("python -m arm.train.launch", __doc__, argv, **{
        "--stop-after": dict(type=int, default=None, help="stop with a checkpoint after this many steps")})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from arm.config import ConfigError, load_config
    from arm.train.pretrain import pretrain

    try:
        cfg = load_config(args.params, args.preset, args.overrides)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    metrics = pretrain(cfg, stop_after=args.stop_after)
    import os

    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(metrics, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
