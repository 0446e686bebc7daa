"""Step time and traffic of the embedding runtime alone (no model), per placement mode.

    torchrun --nproc-per-node 2 benchmarks/bench_embedding.py --device cuda --num-ids 1000000 --batch 8192 --fields 26 --dim 128
    torchrun --nproc-per-node 2 benchmarks/bench_embedding.py --device cpu          # small, over Gloo

Modes: `random` (random owners, no mirrors: row-wise sharding as in
TorchRec/HugeCTR), `plan` (hand-made plan, mirrors of each worker's most-read
remote ids at --store-rate) at bound 0 and at --bound. Ids are power-law
skewed. Each step is the trainer's: forward, a backward of sum(emb * w), and
step(next_ids). Rank 0 prints one markdown row per mode: time per step
(median over the timed steps, after --warmup), and per-step averages of the
counters on rank 0.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist

from hetgmp.distributed import init_distributed, shutdown
from hetgmp.embedding import EmbeddingConfig, Placement, build_embedding
from hetgmp.embedding.reference import plan_like, skewed_batches


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cpu")
    p.add_argument("--num-ids", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--batch", type=int, default=512, help="rows per worker and step")
    p.add_argument("--fields", type=int, default=26)
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--store-rate", type=float, default=0.1)
    p.add_argument("--bound", type=int, default=100)
    p.add_argument("--optimizer", default="rowwise_adagrad", choices=["sgd", "rowwise_adagrad"])
    return p.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_mode(args, ctx, ids, placement, bound: int) -> tuple[float, dict[str, float]]:
    cfg = EmbeddingConfig(args.num_ids, args.dim, optimizer=args.optimizer, lr=0.01, bound=bound,
                          ids_per_batch=args.batch * args.fields)
    emb = build_embedding(cfg, placement, ctx)
    rows = args.batch
    local = [torch.as_tensor(ids[t, ctx.rank * rows : (ctx.rank + 1) * rows], device=ctx.device) for t in range(len(ids))]
    weight = torch.randn(args.dim, device=ctx.device)
    times, totals = [], {}
    for t, batch in enumerate(local):
        sync(ctx.device)
        start = time.perf_counter()
        (emb(batch) * weight).sum().backward()
        emb.step(next_ids=local[t + 1] if t + 1 < len(local) else None)
        sync(ctx.device)
        if t >= args.warmup:
            times.append(time.perf_counter() - start)
            for k, v in emb.counters.as_dict().items():
                totals[k] = totals.get(k, 0) + v
    emb.flush()
    return statistics.median(times), {k: v / len(times) for k, v in totals.items()}


def main() -> None:
    args = parse()
    ctx = init_distributed(args.device)
    steps = args.warmup + args.steps
    ids, _ = skewed_batches(args.num_ids, steps, ctx.world_size * args.batch, args.fields, seed=1)
    modes = [("random", Placement.random(args.num_ids, ctx.world_size, 2), 0)]
    if ctx.world_size > 1:
        plan = plan_like(ids, args.num_ids, ctx.world_size, args.store_rate)
        modes += [("plan, bound 0", plan, 0), (f"plan, bound {args.bound}", plan, args.bound)]
    if ctx.is_main:
        where = torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "CPU"
        print(f"{ctx.world_size} worker(s), {where}, E={args.num_ids}, D={args.dim}, B={args.batch}/worker, F={args.fields}, "
              f"{args.optimizer}, store rate {args.store_rate}, torch {torch.__version__}")
        print("| mode | ms/step | distinct ids | local | mirror hits | fetched | pushed | KB sent |")
        print("|---|---|---|---|---|---|---|---|")
    for name, placement, bound in modes:
        seconds, c = run_mode(args, ctx, ids, placement, bound)
        if ctx.is_main:
            print(f"| {name} | {seconds * 1e3:.2f} | {c['distinct_ids']:.0f} | {c['local_hits']:.0f} | {c['mirror_hits']:.0f} | "
                  f"{c['rows_fetched']:.0f} | {c['rows_pushed']:.0f} | {c['bytes_sent'] / 1024:.1f} |", flush=True)
        if ctx.world_size > 1:
            dist.barrier()
    shutdown()


if __name__ == "__main__":
    main()
