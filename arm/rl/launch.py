"""Per-process entry point of multi-process RL (GRPO).

    torchrun --nproc_per_node 8 -m arm.rl.launch --preset 7b

Each process runs the same stage function as `arm rl` (arm.rl.trainer.train_rl); accelerate reads
its rank from the torchrun environment.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from arm.rl.trainer import train_rl
    from arm.train.dist import stage_main

    return stage_main("python -m arm.rl.launch", __doc__, argv,
                      lambda cfg, args: train_rl(cfg, stop_after=args.stop_after, progress=False),
                      **{"--stop-after": dict(type=int, default=None, help="stop with a checkpoint after this many steps")})


if __name__ == "__main__":
    sys.exit(main())
