"""The multi-process harness itself: real Gloo collectives across spawned workers."""

import torch
import torch.distributed as dist

from workers import run_workers


def _sum_of_ranks(ctx):
    t = torch.tensor([float(ctx.rank)])
    dist.all_reduce(t)
    return (ctx.rank, ctx.world_size, ctx.backend, t.item())


def test_gloo_all_reduce_across_three_workers():
    got = run_workers(_sum_of_ranks, 3)
    assert got == [(r, 3, "gloo", 3.0) for r in range(3)]
