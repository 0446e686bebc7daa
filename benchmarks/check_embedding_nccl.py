"""Equivalence of the embedding runtime on GPUs with NCCL: sharded (bound 0) == one worker.

    torchrun --nproc-per-node 2 benchmarks/check_embedding_nccl.py   # 2 GPUs, NCCL
    python benchmarks/check_embedding_nccl.py                        # 1 GPU
    torchrun --nproc-per-node 2 benchmarks/check_embedding_nccl.py --device cpu   # the same over Gloo

Every rank first trains the single-GPU table (LocalEmbedding) and compares it
with the dense reference on its own GPU; with several workers it then trains
the sharded table (hand-made plan with mirrors, and random owners) with SGD
and row-wise Adagrad, and a bound > 0 run whose flushed primaries must hold
every delta produced (conservation). Prints the max abs differences and a
final PASS or FAIL (exit status 1 on FAIL).
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.distributed as dist

from hetgmp.distributed import DistContext, init_distributed, shutdown
from hetgmp.embedding import EmbeddingConfig, LocalEmbedding, Placement, build_embedding
from hetgmp.embedding.init import initial_rows
from hetgmp.embedding.reference import plan_like, reference_run, skewed_batches, train_toy

TOLERANCE = 1e-5
DENSE_LR = 0.1
LR = {"sgd": 0.5, "rowwise_adagrad": 0.05}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-ids", type=int, default=2000)
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--batch", type=int, default=64, help="rows per worker and step")
    p.add_argument("--fields", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu runs the same check over Gloo")
    return p.parse_args()


def config(args: argparse.Namespace, optimizer: str, bound: int = 0) -> EmbeddingConfig:
    return EmbeddingConfig(args.num_ids, args.dim, optimizer=optimizer, lr=LR[optimizer], bound=bound, seed=3)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def check_equivalence(args, ctx: DistContext, ids, labels, report) -> None:
    for optimizer in LR:
        ref_table, ref_weight = reference_run(config(args, optimizer), ids, labels, DENSE_LR, ctx.device)
        if ctx.world_size == 1 or ctx.rank == 0:
            emb = LocalEmbedding(config(args, optimizer), ctx.device)
            weight = train_toy(emb, ids, labels, DENSE_LR, 0, 1, ctx.device)
            report(f"1 worker on {ctx.device.type}, {optimizer}", max_diff(emb.gather_table(), ref_table), max_diff(weight, ref_weight))
        if ctx.world_size == 1:
            continue
        for kind in ("plan", "random"):
            placement = plan_like(ids, args.num_ids, ctx.world_size, 0.3) if kind == "plan" else Placement.random(args.num_ids, ctx.world_size, 2)
            emb = build_embedding(config(args, optimizer), placement, ctx)
            weight = train_toy(emb, ids, labels, DENSE_LR, ctx.rank, ctx.world_size, ctx.device)
            report(f"{ctx.world_size} workers over {ctx.backend}, {optimizer}, {kind}", max_diff(emb.gather_table(), ref_table), max_diff(weight, ref_weight))


def check_conservation(args, ctx: DistContext, ids, labels, report) -> None:
    """bound 3, SGD: after flush, primaries == initial rows + every delta any worker produced."""
    cfg = config(args, "sgd", bound=3)
    emb = build_embedding(cfg, plan_like(ids, args.num_ids, ctx.world_size, 0.5), ctx)
    produced = torch.zeros(args.num_ids, args.dim, device=ctx.device)

    def hook(t, batch, grad):
        produced.index_add_(0, batch.reshape(-1), -cfg.lr * grad.reshape(-1, args.dim))

    train_toy(emb, ids, labels, DENSE_LR, ctx.rank, ctx.world_size, ctx.device, hook)
    emb.flush()
    dist.all_reduce(produced)
    expected = initial_rows(torch.arange(args.num_ids), cfg, ctx.device) + produced
    report(f"{ctx.world_size} workers over {ctx.backend}, conservation at bound 3", max_diff(emb.gather_table(), expected), 0.0)


def main() -> int:
    args = parse()
    ctx = init_distributed(args.device)
    ids, labels = skewed_batches(args.num_ids, args.steps, ctx.world_size * args.batch, args.fields, seed=1)
    failures = []

    def report(name: str, table_diff: float, weight_diff: float) -> None:
        ok = table_diff < TOLERANCE and weight_diff < TOLERANCE
        if not ok:
            failures.append(name)
        print(f"[rank {ctx.rank}] {name}: max |table diff| {table_diff:.3e}, max |weight diff| {weight_diff:.3e} {'ok' if ok else 'FAIL'}", flush=True)

    check_equivalence(args, ctx, ids, labels, report)
    if ctx.world_size > 1:
        check_conservation(args, ctx, ids, labels, report)
        failed = torch.tensor([len(failures)], device=ctx.device)
        dist.all_reduce(failed)
        failures += ["another rank"] * int(failed.item() > len(failures))
    where = torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "CPU"
    print(f"[rank {ctx.rank}] {'PASS' if not failures else 'FAIL: ' + ', '.join(failures)} "
          f"({ctx.world_size} worker(s), {ctx.backend or 'no'} backend, {where}, torch {torch.__version__})", flush=True)
    shutdown()
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
