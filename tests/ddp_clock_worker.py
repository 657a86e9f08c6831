"""Worker of `test_system.py::test_ddp_ranks_share_rank_zeros_clock`: one gloo rank whose own clock reads a
different share of the time budget; prints the learning-rate factors its schedule gives."""

import os
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Timer

from fusion.system import cosine_schedule

rank = int(sys.argv[1])
dist.init_process_group("gloo", rank=rank, world_size=2, init_method=f"tcp://127.0.0.1:{os.environ['CLOCK_PORT']}")


class ClockTimer(Timer):  # a rank whose clock reads 0.3 (rank 0) or 0.6 (rank 1) of the budget
    def time_elapsed(self, stage="train") -> float:
        return (0.3 + 0.3 * rank) * 600.0


trainer = SimpleNamespace(callbacks=[ClockTimer(duration="00:00:10:00")], estimated_stepping_batches=10_000,
                          world_size=2, strategy=SimpleNamespace(root_device=torch.device("cpu")))  # fmt: skip
optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
scheduler = cosine_schedule(optimizer, trainer, 0.05)
factors = [optimizer.param_groups[0]["lr"]]
for _ in range(3):
    optimizer.step()
    scheduler.step()
    factors.append(optimizer.param_groups[0]["lr"])
print(" ".join(f"{f:.9f}" for f in factors))
dist.destroy_process_group()
