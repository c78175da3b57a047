"""Run by test_losses under torchrun (2 ranks, gloo): each rank holds half of a global batch."""

import json
import sys

import torch
import torch.distributed as dist

from encoder.losses import ContrastiveLoss


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(1234)
    a_all, t_all = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    n = 8 // world
    a = a_all[rank * n : (rank + 1) * n].clone().requires_grad_(True)
    t = t_all[rank * n : (rank + 1) * n]
    loss = ContrastiveLoss()(a, t)["clap"]
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    grads = [torch.zeros_like(a.grad) for _ in range(world)]
    dist.all_gather(grads, a.grad)
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"loss": mean_loss.item() / world, "grad": torch.cat(grads).tolist()}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
