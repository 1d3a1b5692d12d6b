"""Run under ``torchrun``: NCCL's collectives that focusshot uses (barrier, object broadcast, a
tensor all-reduce) on each rank's GPU. ``benchmarks/gpu_check.sh`` runs it with one process, where
focusshot itself would not start a process group (one rank shares nothing)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def main() -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    t = torch.full((4,), float(rank + 1), device="cuda")
    dist.all_reduce(t)
    box = [{"from": 0}] if rank == 0 else [None]
    dist.broadcast_object_list(box, src=0)
    dist.barrier()
    expect = world * (world + 1) / 2
    assert torch.equal(t.cpu(), torch.full((4,), expect)) and box[0] == {"from": 0}
    print(f"rank {rank}/{world}: nccl {dist.get_backend()} all_reduce={t[0].item()} broadcast ok")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
