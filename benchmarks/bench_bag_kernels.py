"""The multi-hot pieces of one step, timed alone on MLPerf-shaped bags (kernels/bag_pool.py).

For a batch of MLPerf's bags (214 ids a sample, Criteo's fields capped at 4M
rows) at one d: the bags pooled from the table by the Triton kernel against
the sorted gather + pool_bags (the rows written out, then summed), and the
sparse update from the pooled gradient (PooledGrad) against the written-out
(B L, D) gradient, over tile shapes. Each piece is captured in a CUDA graph
and timed by replays (bench_kernels.py's timer).

    python benchmarks/bench_bag_kernels.py [--batch 8192] [--dim 128]
    TRITON_INTERPRET=1 python benchmarks/bench_bag_kernels.py --device cpu --batch 4 --steps 1 --vocab-cap 1000   # code path
"""

from __future__ import annotations

import argparse
import importlib

import torch

from bench_kernels import _timer
from yardstick import MLPERF_BAG_SIZES, capped_cardinalities, criteo_bag_batches
from hetgmp.kernels.bag_pool import bag_layout, pool_from_table, pooled_grad
from hetgmp.kernels.gather import gather_rows, sort_ids
from hetgmp.models import Bags, pool_bags

# (BLOCK_N, BLOCK_D, warps) of the SGD update: the default 8 x 128 of one warp at d = 128, the
# earlier 16 x 128 of four, smaller and taller tiles (taller ones leave fewer runs crossing a tile,
# whose pieces are atomics).
TILES = [(8, 128, 1), (16, 128, 4), (8, 128, 2), (4, 128, 1), (32, 64, 4), (64, 32, 4), (128, 16, 4)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--vocab-cap", type=int, default=4_000_000)
    args = ap.parse_args()
    cards = capped_cardinalities(args.vocab_cap)
    _, ids_BL, _ = criteo_bag_batches(args.batch, 1, args.device, cards, MLPERF_BAG_SIZES)[0]
    ids_BL = ids_BL.int()
    bags = Bags(MLPERF_BAG_SIZES, (-1,) * len(MLPERF_BAG_SIZES))
    table = torch.randn(sum(cards), args.dim, device=args.device) * 0.01
    order = sort_ids(ids_BL.reshape(-1), len(table))
    distinct = int((order[0][1:] != order[0][:-1]).sum()) + 1
    grad_BFD = torch.randn(args.batch, len(MLPERF_BAG_SIZES), args.dim, device=args.device, dtype=torch.bfloat16)
    rows: list[tuple[str, float]] = []

    def time(name: str, fn) -> None:
        rows.append((name, _timer(fn, table, args.steps, 3) * 1e3))
        print(f"{name}: {rows[-1][1]:.4f} ms", flush=True)

    time("sort int32 ids", lambda: sort_ids(ids_BL.reshape(-1), len(table)))
    time("pool from the table (Triton), bf16 out", lambda: pool_from_table(table, ids_BL, bags, torch.bfloat16, use_triton=True))
    time("sorted gather of every row, bf16, given the sort", lambda: gather_rows(table, order, torch.bfloat16, use_triton=True))
    gathered = gather_rows(table, order, torch.bfloat16, use_triton=True).view(args.batch, -1, args.dim)
    time("pool_bags on the gathered rows", lambda: pool_bags(gathered, bags.sizes))
    triton_update = importlib.import_module("hetgmp.kernels.triton_update")
    pooled = pooled_grad(grad_BFD, bags, None)
    dense_grad = pooled.dense().to(torch.bfloat16)
    for block_n, block_d, warps in TILES:
        time(f"update SGD from the pooled gradient, tiles {block_n}x{block_d} of {warps} warps, given the sort",
             lambda b=block_n, d=block_d, w=warps: triton_update.fused_update(table, ids_BL.reshape(-1), pooled, 1e-4, None, 1e-8, None, None,
                                                                            block_n=b, block_d=d, order=order, num_warps=w))
    time("update SGD from the written-out (B L, D) gradient, given the sort",
         lambda: triton_update.fused_update(table, ids_BL.reshape(-1), dense_grad, 1e-4, None, 1e-8, None, None, order=order))
    acc = torch.zeros(len(table), device=args.device)
    scratch = importlib.import_module("hetgmp.kernels").new_scratch(ids_BL.numel(), args.dim, args.device)
    time("update row-wise Adagrad from the pooled gradient, given the sort",
         lambda: triton_update.fused_update(table, ids_BL.reshape(-1), pooled, 1e-4, acc, 1e-8, None, scratch, order=order))
    small_scratch = torch.zeros(-(-ids_BL.numel() // 8), args.dim, device=args.device)
    time("the same in 8-row tiles of one warp",
         lambda: triton_update.fused_update(table, ids_BL.reshape(-1), pooled, 1e-4, acc, 1e-8, None, small_scratch, order=order,
                                            block_n=8, num_warps=1))
    assert bag_layout(bags, table.device)["field_L"].numel() == ids_BL.shape[1]
    card = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"\n{card}, batch {args.batch}, d {args.dim}, MLPerf bags: {ids_BL.numel():,} ids, {distinct:,} distinct\n")
    print("| piece | ms |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.4f} |")


if __name__ == "__main__":
    main()
