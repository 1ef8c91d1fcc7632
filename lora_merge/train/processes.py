"""Which process writes: under `accelerate launch`/`torchrun` with N processes, every process trains, one publishes.

The launcher sets RANK and WORLD_SIZE. A plain run is one process of rank 0. The main process alone clears a
stale run folder and publishes the pack or model folder; the others wait for it at a barrier of the process
group the trainer set up, so no two processes ever race on the same output.
"""

from __future__ import annotations

import os


class Processes:
    """This process's place among the processes of a training run, as the launcher started them."""

    def __init__(self) -> None:
        self.count = int(os.environ.get("WORLD_SIZE") or 1)
        self.rank = int(os.environ.get("RANK") or 0)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every process got here (no-op for one process or before the trainer joined the group)."""
        if self.count < 2:
            return
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
