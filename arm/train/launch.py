"""Per-process entry point for multi-process pretraining.

    torchrun --nproc_per_node 2 -m arm.train.launch --preset tiny
    deepspeed --num_gpus 8 arm/train/launch.py --preset 7b

Each process reads its rank from the environment (arm.train.dist) and runs the same stage
function as `arm pretrain`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from arm.train.dist import stage_main
    from arm.train.pretrain import pretrain

    return stage_main("python -m arm.train.launch", __doc__, argv, lambda cfg, args: pretrain(cfg, stop_after=args.stop_after),
                      **{"--stop-after": dict(type=int, default=None, help="stop with a checkpoint after this many steps")})


if __name__ == "__main__":
    sys.exit(main())
