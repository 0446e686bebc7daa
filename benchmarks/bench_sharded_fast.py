"""The sharded fast step (one CUDA graph per step) against one GPU's FastStep.

    python benchmarks/bench_sharded_fast.py --device cuda                   # spawns one process per GPU (2)
    torchrun --nproc-per-node 2 benchmarks/bench_sharded_fast.py --device cuda
    python benchmarks/bench_sharded_fast.py --device cpu --num-ids 20000 --batch 256 --dim 16 --steps 4 --repeats 2
    hetgmp synth --rows 2000000 --output /tmp/s2m && hetgmp partition /tmp/s2m --parts 2 --output /tmp/p2.npz
    python benchmarks/bench_sharded_fast.py --device cuda --data /tmp/s2m --partition /tmp/p2.npz

Measured in the same processes, one after the other, each on its own table:
  plan+bound   the plan-like placement, --store-rate mirrors, bound --bound
  plan         the same placement, bound 0
  rows         row sharding: Placement.random owners, no mirrors, bound 0
  one GPU      rank 0 alone: FastStep (the whole table, no exchange), same model, batches
               and options (--amp with bf16 rows, --compile)
Each sharded step locates the next batch (sorts its ids, finds owners and
slots) beside its model and reads its rows beside the dense update, unless
--no-ahead. Variants of a mode, for comparisons in one run
(e.g. --modes plan+bound,plan+bound:torch,plan+bound:late):
  MODE:torch   the per-slot stages around the rounds in torch, not Triton
               (ShardedStepConfig.fused_stages)
  MODE:late    each batch's rows read at the start of its own step
               (ShardedStepConfig.read_ahead)
For each: --warmup steps (the graph is captured within them), then the median
of --repeats runs of --steps steps (CUDA events; wall clock on CPU):
samples/s per worker, ms/step, rows fetched per step (mean over workers),
bytes a worker sends per step (both exchange rounds and the dense all-reduce:
fixed by the capacity) and peak device memory (above what was allocated as the
mode started: the data, and what earlier modes left), beside the documented formula's
(hetgmp.embedding.fixed.footprint for the sharded step, hetgmp.embedding.memory for one GPU).

Data: Criteo-shaped ids (yardstick.criteo_batches: field f draws
floor(card_f u^4), low ids hot) over --num-ids rows (fields capped so that
their sizes sum to at most --num-ids), batch --batch per worker, d --dim, --model (WDL).
A plan co-locates each worker's samples with the rows it owns; batches drawn
independently cannot show that, so the plan-like placement makes it:
worker r's ids in field f are shifted by r * card_f / P (mod card_f), and
worker r owns the r-th of P contiguous ranges of each field, where its own
hot ids lie (for P = 2 about 84% of a field's draws fall in the drawing
worker's range). Each worker mirrors the top --store-rate of the remote ids
its batches read, ranked by reads (the SPEC's candidate list, by counts).
Row sharding uses the same batches with random owners.

With --data and --partition: each worker trains on --batches batches of its
part's samples (the plan's data partition, a fixed-seed sample of them), the
plan's owners and the top --store-rate of its candidate list as mirrors, the
dataset's fields and dense features; row sharding on the same batches.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from spawn import launch  # noqa: E402
from yardstick import NUM_DENSE, capped_cardinalities, criteo_batches  # noqa: E402

from hetgmp.data.arrays import load_dataset  # noqa: E402
from hetgmp.distributed import init_distributed, shutdown  # noqa: E402
from hetgmp.embedding import EmbeddingConfig, Placement  # noqa: E402
from hetgmp.embedding.init import initial_rows  # noqa: E402
from hetgmp.fastpath import FastStep, FastStepConfig  # noqa: E402
from hetgmp.embedding.fixed.capacity import find_capacities  # noqa: E402
from hetgmp.embedding.fixed.exchange import PUSH_ID, REQ_ID, FixedExchange  # noqa: E402
from hetgmp.fastpath.sharded_step import ShardedFastStep, ShardedStepConfig  # noqa: E402
from hetgmp.embedding.memory import memory_bytes  # noqa: E402
from hetgmp.models import MODEL_NAMES, build_model, table_width  # noqa: E402
from hetgmp.partition.plan import PartitionPlan  # noqa: E402
from hetgmp.train.fast import has_row_weights  # noqa: E402

LR = 0.01


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    p.add_argument("--workers", type=int, default=2, help="processes to spawn when not started by torchrun")
    p.add_argument("--num-ids", type=int, default=2_000_000, help="synthetic batches: ids in the table")
    p.add_argument("--data", type=Path, help="train on this dataset's train split (`hetgmp synth` / `hetgmp prepare`) ...")
    p.add_argument("--partition", type=Path, help="... with this plan (`hetgmp partition DATA --parts P`): owners, mirrors, samples")
    p.add_argument("--batch", type=int, default=8192, help="samples per worker and step")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--model", choices=MODEL_NAMES, default="wdl")
    p.add_argument("--explicit-row-grad", action="store_true",
                   help="WDL: backward writes the rows' gradient and the update reads it (default: the update makes it "
                        "from dloss/dlogit, both steps, as hetgmp train does)")
    p.add_argument("--sparse-optimizer", choices=["sgd", "rowwise_adagrad"], default="sgd", help="the table's optimizer (all modes)")
    p.add_argument("--store-rate", type=float, default=0.01)
    p.add_argument("--bound", type=int, default=100)
    p.add_argument("--batches", type=int, default=16, help="distinct batches per worker, cycled")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=50, help="steps per timed run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (sharded steps and the one-GPU step)")
    p.add_argument("--profile", choices=["eager", "graph"],
                   help="rank 0 prints the kernels of 3 plan+bound steps first (eager, or replays of the captured graph)")
    p.add_argument("--no-ahead", action="store_true", help="sharded steps locate each batch in its own step, not a step ahead")
    p.add_argument("--modes", default="plan+bound,plan,rows",
                   help="sharded modes to time, in order (see above), each optionally with :torch and/or :late")
    p.add_argument("--trace", type=Path, help="with --profile: rank 0 also writes the steps' Chrome trace here")
    p.add_argument("--no-exchange", action="store_true",
                   help="replace both rounds by local copies (wrong rows: what the step's compute alone costs)")
    p.add_argument("--pad-to-batch", action="store_true",
                   help="per-id passes over all B x F ids of the batch (no distinct capacity), for comparison")
    return p.parse_args()


@dataclass
class Workload:
    """What every mode trains on: this worker's batches, the table size, the model's inputs and
    the plan's placement (owners, this run's mirrors)."""

    batches: list
    num_ids: int
    num_fields: int
    num_dense: int
    plan: Placement
    what: str


def synthetic_workload(args, rank: int, world: int, device: torch.device) -> Workload:
    """Criteo-shaped batches, each worker's ids shifted, and the plan-like placement (docstring)."""
    cards = fitting_cards(args.num_ids)
    batches = shifted_batches(args, cards, rank, world, device)
    plan = plan_placement(range_owners(cards, world), batches, args.store_rate, rank, world)
    return Workload(batches, sum(cards), len(cards), NUM_DENSE, plan, "Criteo-shaped batches, plan-like placement")


def plan_workload(args, rank: int, world: int, device: torch.device) -> Workload:
    """This worker's part of --data's train split (as --partition assigns samples), shuffled with a
    fixed seed, in batches; owners and mirrors (--store-rate) from the plan."""
    dataset, plan = load_dataset(args.data), PartitionPlan.load(args.partition)
    plan.check(dataset.meta, world)
    mine = np.flatnonzero(plan.data_partition == rank)
    rows = np.sort(np.random.default_rng(rank).permutation(mine)[: args.batches * args.batch])
    if len(rows) < args.batch:
        raise SystemExit(f"part {rank} of {args.partition} holds {len(mine)} train samples, fewer than one batch of {args.batch}")
    order = np.random.default_rng(rank).permutation(len(rows))
    train = dataset.train
    dense, ids, labels = (torch.as_tensor(np.asarray(a[rows])[order]) for a in (train.dense, train.sparse, train.labels))
    batches = [(dense[i : i + args.batch].float().to(device), ids[i : i + args.batch].long().to(device), labels[i : i + args.batch].float().to(device))
               for i in range(0, len(rows) - args.batch + 1, args.batch)]
    placement = Placement.from_plan(plan.embed_partition, plan.lists, args.store_rate)
    return Workload(batches, dataset.meta.num_ids, dataset.meta.num_fields, dataset.meta.num_dense, placement,
                    f"{args.data.name} ({dataset.meta.train_rows:,} train rows), plan {args.partition.name}")


def fitting_cards(num_ids: int) -> tuple[int, ...]:
    """Criteo's field sizes capped at the largest cap whose sizes sum to at most num_ids."""
    low, high = 1, max(capped_cardinalities(None))
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if sum(capped_cardinalities(mid)) <= num_ids else (low, mid - 1)
    return capped_cardinalities(low)


def shifted_batches(args, cards: tuple[int, ...], rank: int, world: int, device: torch.device) -> list:
    """This worker's batches: Criteo-shaped, its field ids shifted by rank * card / P (see the docstring)."""
    card_F = torch.tensor(cards, device=device)
    offset_F = torch.cumsum(torch.tensor((0,) + cards[:-1], device=device), 0)
    shift_F = rank * card_F // world
    out = []
    for dense_BI, ids_BF, labels_B in criteo_batches(args.batch, args.batches, str(device), cards, seed=rank):
        out.append((dense_BI, (ids_BF - offset_F + shift_F) % card_F + offset_F, labels_B))
    return out


def range_owners(cards: tuple[int, ...], world: int) -> np.ndarray:
    """Owner of every id: worker r owns the r-th of `world` contiguous ranges of each field."""
    return np.concatenate([np.minimum(np.arange(c) * world // c, world - 1) for c in cards]).astype(np.int16)


def plan_placement(owner: np.ndarray, batches: list, store_rate: float, rank: int, world: int) -> Placement:
    """Owners as given; each worker mirrors the top store_rate of the remote ids it reads (by reads)."""
    reads = torch.zeros(len(owner), dtype=torch.int64, device=batches[0][1].device)
    for _, ids_BF, _ in batches:
        reads.index_add_(0, ids_BF.reshape(-1), torch.ones_like(ids_BF.reshape(-1)))
    reads = reads.cpu().numpy()
    remote = np.nonzero((owner != rank) & (reads > 0))[0]
    ranked = remote[np.argsort(-reads[remote], kind="stable")]
    mine = ranked[: int(store_rate * len(ranked))]
    lists: list = [None] * world
    dist.all_gather_object(lists, mine)
    return Placement(owner, [np.asarray(m, dtype=np.int64) for m in lists])


def stepper(step_fn, batches: list, ahead: bool):
    """step_at(i): step i on the cycled batches; with `ahead`, handed the next batch's ids too."""
    n = len(batches)
    if ahead:
        return lambda i: step_fn(*batches[i % n], next_ids_BF=batches[(i + 1) % n][1])
    return lambda i: step_fn(*batches[i % n])


def timed(step_fn, batches: list, args, device: torch.device, ahead: bool = False) -> float:
    """Median seconds per step over args.repeats runs of args.steps (after args.warmup)."""
    step_at = stepper(step_fn, batches, ahead)
    for i in range(args.warmup):
        step_at(i)
    times = []
    for _ in range(args.repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        for i in range(args.steps):
            step_at(args.warmup + i)
        if device.type == "cuda":
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / args.steps)
        else:
            times.append((time.perf_counter() - t0) / args.steps)
    return statistics.median(times)


def reset_memory(device: torch.device) -> int:
    """Free what earlier modes left (their graphs' pools, tensors held in reference cycles) and
    start counting the peak; returns the bytes still allocated then, which peak_memory leaves out.
    (On an H100 pair each mode left about 0.25 GiB allocated in the process after that.)"""
    gc.collect()
    if device.type != "cuda":
        return 0
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_memory(device: torch.device, before: int) -> float:
    """GiB: the peak allocated since reset_memory, less what was allocated then."""
    return (torch.cuda.max_memory_allocated(device) - before) / 2**30 if device.type == "cuda" else float("nan")


def model(args, work: Workload):
    torch.manual_seed(0)
    return build_model(args.model, work.num_fields, work.num_dense, args.dim)


def implicit_row_grad(args, net) -> bool:
    """The update makes the rows' gradient from dloss/dlogit where the model allows it (WDL), as
    `hetgmp train` does, unless --explicit-row-grad."""
    return has_row_weights(net) and not args.explicit_row_grad


def sharded_step(args, ctx, work: Workload, placement: Placement, bound: int, cuda_graph: bool = True,
                 **variant) -> ShardedFastStep:
    """The step with capacities measured on this run's batches (C; U unless --pad-to-batch)."""
    owner_E = torch.as_tensor(placement.owner.astype(np.int64), device=ctx.device)
    capacity, distinct = find_capacities([b[1] for b in work.batches], owner_E, ctx.rank, ctx.world_size)
    table = EmbeddingConfig(work.num_ids, table_width(args.model, args.dim), optimizer=args.sparse_optimizer, lr=LR, bound=bound)
    net = model(args, work).to(ctx.device)
    cfg = ShardedStepConfig(capacity=capacity, distinct_capacity=None if args.pad_to_batch else distinct,
                            dense_lr=LR, amp=args.amp, compile=args.compile, cuda_graph=cuda_graph,
                            implicit_row_grad=implicit_row_grad(args, net), **variant)
    return ShardedFastStep.build(net, table, placement, ctx, cfg)


def run_sharded(args, ctx, work: Workload, placement: Placement, bound: int, **variant) -> dict:
    before = reset_memory(ctx.device)
    step = sharded_step(args, ctx, work, placement, bound, **variant)
    seconds = timed(step.step, work.batches, args, ctx.device, ahead=not args.no_ahead)
    step.check_overflow()
    fetched = step.rows_fetched.double() / step.table.reads  # every read, warm-up included
    dist.all_reduce(fetched)
    formula = sum(step.memory_bytes(args.batch, work.num_fields, work.num_dense).values())
    memory = peak_memory(ctx.device, before)
    step.release()
    return {"s": seconds, "fetched": fetched.item() / ctx.world_size, "bytes": step.bytes_per_step,
            "mem": memory, "formula": formula / 2**30, "C": step.cfg.capacity, "U": step.cfg.distinct_capacity or "-"}


def profile_step(args, ctx, work: Workload, placement: Placement, bound: int) -> None:
    """Three steps under torch.profiler, after warm-up (and capture, for --profile graph: a replay's
    kernels show with the time each took inside the graph); rank 0 prints the kernels by device time
    (CPU time off CUDA)."""
    step = sharded_step(args, ctx, work, placement, bound, cuda_graph=args.profile == "graph")
    step_at = stepper(step.step, work.batches, ahead=not args.no_ahead)
    warm = step.cfg.warmup_steps + 2
    for i in range(warm):
        step_at(i)
    with torch.profiler.profile() as prof:
        for i in range(warm, warm + 3):
            step_at(i)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
    step.release()
    if ctx.rank == 0:
        key = "self_device_time_total" if ctx.device.type == "cuda" else "self_cpu_time_total"
        print(f"{args.profile} sharded step, 3 steps:\n" + prof.key_averages().table(sort_by=key, row_limit=40), flush=True)
        if args.trace:
            prof.export_chrome_trace(str(args.trace))


def run_one_gpu(args, ctx, work: Workload) -> dict:
    before = reset_memory(ctx.device)
    config = EmbeddingConfig(work.num_ids, table_width(args.model, args.dim), optimizer=args.sparse_optimizer,
                             ids_per_batch=args.batch * work.num_fields)
    table = initial_rows(torch.arange(work.num_ids), config, ctx.device)
    net = model(args, work).to(ctx.device)
    fast_cfg = FastStepConfig(lr=LR, dense_lr=LR, sparse_optimizer=args.sparse_optimizer, amp=args.amp, compile=args.compile,
                              bf16_rows=args.amp == "bf16", implicit_row_grad=implicit_row_grad(args, net))
    fast = FastStep(net, table, fast_cfg)
    return {"s": timed(fast.step, work.batches, args, ctx.device), "fetched": 0.0, "bytes": 0, "mem": peak_memory(ctx.device, before),
            "formula": memory_bytes(config, 1, work.num_ids, 0) / 2**30, "C": "-", "U": "-"}


def without_exchange() -> None:
    """Rounds become copies of the send buffers, round A's without ids (no requests or pushes
    arrive: the owner side does the same work on padding) (--no-exchange)."""
    def copy(self, recv, send):
        recv.copy_(send)
        if recv is self.recv_a:
            recv[:, :, REQ_ID] = -1
            recv[:, :, PUSH_ID] = -1
    FixedExchange._round = copy


def run(args: argparse.Namespace) -> None:
    ctx = init_distributed(args.device)
    if args.no_exchange:
        without_exchange()
    torch.set_num_threads(1 if args.device == "cpu" else torch.get_num_threads())
    make = plan_workload if args.data else synthetic_workload
    work = make(args, ctx.rank, ctx.world_size, ctx.device)
    if args.profile:
        profile_step(args, ctx, work, work.plan, args.bound)
    cpu_start = time.process_time()
    modes = {
        "plan+bound": (f"plan+{args.store_rate:g} mirrors, bound {args.bound}", work.plan, args.bound),
        "plan": (f"plan+{args.store_rate:g} mirrors, bound 0", work.plan, 0),
        "rows": ("row sharding", Placement.random(work.num_ids, ctx.world_size, seed=0), 0),
    }
    results = {}
    for mode in args.modes.split(","):
        mode, *options = mode.split(":")
        name, placement, bound = modes[mode]
        variant = {"fused_stages": "torch" not in options, "read_ahead": "late" not in options}
        label = name + (", torch stages" if "torch" in options else "") + (", read in its own step" if "late" in options else "")
        results[label] = run_sharded(args, ctx, work, placement, bound, **variant)
    dist.barrier()
    if ctx.rank == 0:
        results["one GPU (FastStep, rank 0 alone)"] = run_one_gpu(args, ctx, work)
        report(args, ctx, work, results, time.process_time() - cpu_start)
    dist.barrier()
    shutdown()  # every step released its graphs first (pytorch/pytorch#115388)


def report(args, ctx, work: Workload, results: dict, cpu_s: float) -> None:
    card = torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "cpu"
    print(f"\n{ctx.world_size} workers on {card}, torch {torch.__version__}, {datetime.date.today()}; "
          f"{work.what}; {work.num_ids:,} ids, batch {args.batch}/worker, d {args.dim}, {args.model}, table {args.sparse_optimizer}, amp {args.amp}{', compiled' if args.compile else ''}"
          f"{'' if args.no_ahead else ', located a step ahead'}"
          f"{', rows gradient made by the update' if implicit_row_grad(args, model(args, work)) else ''}; rank 0 CPU {cpu_s:.1f} s\n")
    print("| mode | C | U | samples/s per worker | ms/step | rows fetched/step | MB sent/step | peak GPU GiB | formula GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['C']} | {r['U']} | {args.batch / r['s'] / 1e6:.2f} M | {r['s'] * 1e3:.3f} | {r['fetched']:,.0f} | "
              f"{r['bytes'] / 1e6:.2f} | {r['mem']:.2f} | {r['formula']:.2f} |")


def main() -> None:
    args = parse()
    if (args.data is None) != (args.partition is None):
        raise SystemExit("--data and --partition go together (a plan is made for one dataset)")
    launch(run, args, args.workers)


if __name__ == "__main__":
    main()
