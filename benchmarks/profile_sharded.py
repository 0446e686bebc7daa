"""Host syncs, kernel launches and wall time of the sharded table's training step.

    python benchmarks/profile_sharded.py                                   # 2 CPU workers over Gloo (spawned)
    python benchmarks/profile_sharded.py --device cuda --num-ids 2000000 --dim 128 --batch 8192
    torchrun --nproc-per-node 2 benchmarks/profile_sharded.py --device cuda --num-ids 2000000 --dim 128 --batch 8192
    python benchmarks/profile_sharded.py --compare-modes --store-rate 0.01 --bound 100   # row sharding vs plan, one run

Each step is the trainer's: forward (the rows prefetched by the last step),
a backward of sum(rows * w), then step(next_ids). Ids are power-law skewed;
the placement is plan-like (random owners, each worker mirrors its most-read
remote ids at --store-rate).

--compare-modes measures, in the same processes and on the same batches,
  rows        row sharding: the same random owners, no mirrors, bound 0
  plan        the plan-like placement, bound 0
  plan+bound  the plan-like placement, bound --bound (if above 0)
the timed phase alternating between the modes --rounds times (the median
round counts), so that load on the machine hits every mode alike. The modes
differ by the mirrors alone: a real plan also co-locates each worker's
samples with the rows it owns, which these batches cannot show (its rows
fetched per step fall further, its operations per step do not change).

Three phases on every worker:
  1. timed: --steps steps after --warmup, one device synchronize at the end:
     wall ms and CPU ms (user + sys of the process) per step;
  2. counted: --count-steps steps, counting device->host syncs per step.
     CUDA: torch.cuda.set_sync_debug_mode("warn") and one warning per sync.
     CPU: the operations that would wait for a GPU (item, tolist, cpu, nonzero,
     unique, bincount, masked_select, boolean indexing, repeat_interleave
     without output_size), seen through a TorchDispatchMode and wrappers of
     Tensor.tolist / Tensor.cpu; the same mode counts the aten operations that
     would each launch a kernel (views and metadata operations excluded);
     On CUDA, waits on events and streams (which that mode does not see) are
     counted too;
  3. CUDA only: torch.profiler over --count-steps steps: kernel launches per
     step, the kernels' summed time per step (NCCL's apart) and the top
     kernels by device time (rank 0).
Rank 0 prints the per-rank table last.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
import warnings

import numpy as np
import torch
import torch.distributed as dist
from spawn import launch
from torch.utils._python_dispatch import TorchDispatchMode

from hetgmp.distributed import init_distributed, shutdown
from hetgmp.embedding import EmbeddingConfig, Placement, build_embedding
from hetgmp.embedding.reference import plan_like, skewed_batches

# aten operations whose output size depends on the data, or that read device values on the host:
# on a GPU each one waits for every kernel queued before it.
SYNCING_OPS = {"_local_scalar_dense", "nonzero", "_unique2", "unique_dim", "unique_consecutive", "bincount", "masked_select"}
# Metadata and view operations: no kernel on a GPU.
NO_KERNEL_OPS = {
    "view", "_unsafe_view", "reshape", "slice", "select", "split", "split_with_sizes", "unsqueeze", "squeeze", "expand",
    "t", "transpose", "permute", "alias", "detach", "as_strided", "empty", "empty_strided", "unbind", "narrow",
    "lift_fresh", "_to_copy_noop", "view_as", "unfold", "_reshape_alias", "set_", "resize_", "is_nonzero",
    "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "_local_scalar_dense",
}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--workers", type=int, default=2, help="processes to spawn when not started by torchrun")
    p.add_argument("--num-ids", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--batch", type=int, default=512, help="rows per worker and step")
    p.add_argument("--fields", type=int, default=26)
    p.add_argument("--bound", type=int, default=100)
    p.add_argument("--store-rate", type=float, default=0.1)
    p.add_argument("--optimizer", default="rowwise_adagrad", choices=["sgd", "rowwise_adagrad"])
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--count-steps", type=int, default=3, help="steps counted (syncs, launches, profile)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per worker")
    p.add_argument("--compare-modes", action="store_true", help="row sharding, plan, plan + bound in one run")
    p.add_argument("--rounds", type=int, default=5, help="--compare-modes: timed rounds per mode (median reported)")
    return p.parse_args()


class OpCounter(TorchDispatchMode):
    """Counts, per aten operation, the calls that would launch a kernel or wait for the device."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs = 0
        self.launches = 0
        self.sync_ops: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name in SYNCING_OPS or _bool_index(name, args) or (name == "repeat_interleave" and "output_size" not in (kwargs or {})):
            self.note_sync(name)
        if name not in NO_KERNEL_OPS:
            self.launches += 1
        return func(*args, **(kwargs or {}))

    def note_sync(self, name: str) -> None:
        self.syncs += 1
        self.sync_ops[name] = self.sync_ops.get(name, 0) + 1


def _bool_index(name: str, args: tuple) -> bool:
    """x[mask] and x[mask] = v: the number of selected rows is data-dependent."""
    if name not in ("index", "index_put", "index_put_", "_index_put_impl_") or len(args) < 2:
        return False
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)


class HostReadWrappers:
    """Tensor.tolist, Tensor.cpu and torch.tensor(list), counted: on CPU none reaches the
    dispatcher as a copy, on a GPU the first two read the device and the last uploads
    from pageable memory (both wait for the queued kernels)."""

    def __init__(self, counter: OpCounter) -> None:
        self.counter, self.saved = counter, []

    def __enter__(self) -> HostReadWrappers:
        for owner, name in ((torch.Tensor, "tolist"), (torch.Tensor, "cpu"), (torch, "tensor")):
            original = getattr(owner, name)
            self.saved.append((owner, name, original))
            setattr(owner, name, self._wrap(name, original))
        return self

    def _wrap(self, name, original):
        def counted(data, *args, **kwargs):
            if name != "tensor" or isinstance(data, (list, tuple)):
                self.counter.note_sync(name)
            return original(data, *args, **kwargs)
        return counted

    def __exit__(self, *exc) -> None:
        for owner, name, original in self.saved:
            setattr(owner, name, original)


class Trainer:
    """The trainer's use of the table on this worker's slices of the global batches (cycled)."""

    def __init__(self, args: argparse.Namespace, ctx, ids, placement: Placement, bound: int) -> None:
        config = EmbeddingConfig(args.num_ids, args.dim, optimizer=args.optimizer, lr=0.01, bound=bound,
                                 ids_per_batch=args.batch * args.fields)
        self.emb = build_embedding(config, placement, ctx)
        rows = slice(ctx.rank * args.batch, (ctx.rank + 1) * args.batch)
        self.batches = [torch.as_tensor(ids[t, rows]).to(ctx.device) for t in range(len(ids))]
        self.weight = torch.randn(args.dim, device=ctx.device)
        self.t = 0

    def step(self) -> None:
        (self.emb(self.batches[self.t]) * self.weight).sum().backward()
        self.t = (self.t + 1) % len(self.batches)
        self.emb.step(next_ids=self.batches[self.t])


def build_modes(args: argparse.Namespace, ctx) -> dict[str, Trainer]:
    """The measured modes (see the module docstring), each its own table on the same batches."""
    ids, _ = skewed_batches(args.num_ids, args.warmup + args.steps + 2 * args.count_steps + 1,
                            ctx.world_size * args.batch, args.fields, seed=1)
    plan = plan_like(ids, args.num_ids, ctx.world_size, args.store_rate)
    if not args.compare_modes:
        return {f"plan, bound {args.bound}": Trainer(args, ctx, ids, plan, args.bound)}
    no_mirrors = Placement(plan.owner, [np.zeros(0, dtype=np.int64)] * ctx.world_size)
    modes = {"rows": Trainer(args, ctx, ids, no_mirrors, 0),
             "plan": Trainer(args, ctx, ids, plan, 0)}
    if args.bound > 0:
        modes[f"plan+bound {args.bound}"] = Trainer(args, ctx, ids, plan, args.bound)
    return modes


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(trainers: dict[str, Trainer], args, device) -> dict[str, dict[str, float]]:
    """Wall and CPU ms per step of each mode: the median of `rounds` rounds, the modes taking turns."""
    rounds = args.rounds if len(trainers) > 1 else 1
    for trainer in trainers.values():
        for _ in range(args.warmup):
            trainer.step()
    laps: dict[str, list[tuple[float, float]]] = {name: [] for name in trainers}
    for _ in range(rounds):
        for name, trainer in trainers.items():
            sync(device)
            wall, cpu = time.perf_counter(), cpu_seconds()
            for _ in range(args.steps):
                trainer.step()
            sync(device)
            laps[name].append((time.perf_counter() - wall, cpu_seconds() - cpu))
    out = {}
    for name, times in laps.items():
        wall, cpu = statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)
        out[name] = {"wall_ms": 1e3 * wall / args.steps, "cpu_ms": 1e3 * cpu / args.steps,
                     "samples_per_s": args.batch * args.steps / wall}
    return out


def fetched_per_step(trainer: Trainer, steps: int) -> float:
    """Rows received from owners per step, over `steps` more steps."""
    before = int(trainer.emb.totals.fetch[0])
    for _ in range(steps):
        trainer.step()
    return (int(trainer.emb.totals.fetch[0]) - before) / steps


def counted_cpu(trainer: Trainer, steps: int) -> dict:
    counter = OpCounter()
    with HostReadWrappers(counter), counter:
        for _ in range(steps):
            trainer.step()
    return {"syncs": counter.syncs / steps, "launches": counter.launches / steps,
            "sync_ops": {k: v / steps for k, v in sorted(counter.sync_ops.items())}}


class EventWaits:
    """Host waits on CUDA events and streams, which the sync debug mode does not report."""

    def __init__(self) -> None:
        self.calls, self.saved = [], []

    def __enter__(self) -> EventWaits:
        for owner in (torch.cuda.Event, torch.cuda.Stream):
            original = owner.synchronize
            self.saved.append((owner, original))
            owner.synchronize = self._wrap(original)
        return self

    def _wrap(self, original):
        def counted(obj, *args, **kwargs):
            self.calls.append(f"{type(obj).__name__}.synchronize")
            return original(obj, *args, **kwargs)
        return counted

    def __exit__(self, *exc) -> None:
        for owner, original in self.saved:
            owner.synchronize = original


def counted_cuda(trainer: Trainer, steps: int, device) -> dict:
    sync(device)
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught, EventWaits() as waits:
        warnings.simplefilter("always")
        for _ in range(steps):
            trainer.step()
    torch.cuda.set_sync_debug_mode("default")
    syncs = [f"{os.path.basename(w.filename)}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)] + waits.calls
    sync(device)
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.step()
        sync(device)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    nccl_us = sum(e.time_range.elapsed_us() for e in kernels if "nccl" in e.name.lower())
    busy_us = sum(e.time_range.elapsed_us() for e in kernels) - nccl_us
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60)
    return {"syncs": len(syncs) / steps, "launches": len(kernels) / steps, "profile": table,
            "gpu_ms": busy_us / 1e3 / steps, "nccl_ms": nccl_us / 1e3 / steps, "sync_ops": _per_step(syncs, steps)}


def _per_step(names: list[str], steps: int) -> dict[str, float]:
    where: dict[str, float] = {}
    for name in names:
        where[name] = where.get(name, 0) + 1 / steps
    return where


def run(args: argparse.Namespace) -> None:
    ctx = init_distributed(args.device)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    trainers = build_modes(args, ctx)
    results = timed(trainers, args, ctx.device)
    for name, trainer in trainers.items():
        result = results[name]
        result.update(counted_cuda(trainer, args.count_steps, ctx.device) if ctx.device.type == "cuda"
                      else counted_cpu(trainer, args.count_steps))
        result["fetched"] = fetched_per_step(trainer, args.count_steps)
        result["counters"] = trainer.emb.counters.as_dict()
    gathered = [None] * ctx.world_size
    dist.all_gather_object(gathered, results)
    if ctx.is_main:
        report(args, ctx, gathered)
    shutdown()


def report(args, ctx, gathered: list[dict[str, dict]]) -> None:
    where = torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "CPU, Gloo"
    for name in gathered[0]:
        if "profile" in gathered[0][name]:
            print(f"== {name}, rank 0\n{gathered[0][name]['profile']}")
        for rank, by_mode in enumerate(gathered):
            r = by_mode[name]
            print(f"{name}: rank {rank} syncs by source: {r['sync_ops']}")
            print(f"{name}: rank {rank} last step's counters: {r['counters']}")
            if "gpu_ms" in r:
                print(f"{name}: rank {rank} profiled: GPU kernels {r['gpu_ms']:.2f} ms/step besides NCCL's {r['nccl_ms']:.2f} "
                      "ms/step (NCCL kernels also count the wait for the peer)")
    rounds = f", median of {args.rounds} rounds of {args.steps} steps" if len(gathered[0]) > 1 else ""
    print(f"\n{ctx.world_size} workers, {where}, torch {torch.__version__}; E={args.num_ids} D={args.dim} "
          f"B={args.batch}/worker F={args.fields} store_rate={args.store_rate} {args.optimizer}{rounds}")
    print("| mode | rank | wall ms/step | CPU ms/step | samples/s | syncs/step | launches/step | rows fetched/step |")
    print("|---|---|---|---|---|---|---|---|")
    for name in gathered[0]:
        for rank, by_mode in enumerate(gathered):
            r = by_mode[name]
            print(f"| {name} | {rank} | {r['wall_ms']:.2f} | {r['cpu_ms']:.2f} | {r['samples_per_s'] / 1e6:.3f} M | "
                  f"{r['syncs']:.1f} | {r['launches']:.0f} | {r['fetched']:.0f} |")


def main() -> None:
    args = parse()
    launch(run, args, args.workers)


if __name__ == "__main__":
    main()
