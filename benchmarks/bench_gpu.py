"""The single-GPU fast step against the plain-PyTorch yardstick, in one run on one card.

    python benchmarks/bench_gpu.py                        # everything (~5 min on an H100)
    python benchmarks/bench_gpu.py --quick                # fewer steps and repeats
    python benchmarks/bench_gpu.py --models wdl,dcn --configs 8192x16,8192x128
    python benchmarks/bench_gpu.py --device cpu --quick   # the same code path in seconds
    python benchmarks/bench_gpu.py --models dlrm,dcnv2 --configs 8192x16           # one-hot Criteo shape
    python benchmarks/bench_gpu.py --models dcnv2 --configs 8192x128 --bags mlperf # MLPerf's DLRM-DCNv2

1. Correctness: for each model, `FastStep` (CUDA graph, eager, bf16, Adagrad)
   and the plain-autograd `ReferenceStep` train a few steps from the same
   start on the same batches; the largest differences in table, dense weights
   and loss are printed.
2. Timing: for each (model, batch x d) cell, the yardstick (yardstick.py) and
   the fast step's variants on Criteo-shaped synthetic batches (full Criteo
   vocabulary, 33.8M rows): eager, graph, graph+bf16, graph+tf32,
   graph+index_add (the plain index_add_ update instead of the fused kernel),
   the compiled ones (+autotune: each matmul's kernel timed at compile time),
   and the fastest of those again with row-wise Adagrad. Each: warm-up, then
   the median of several timed repeats (CUDA events), and the peak GPU memory.
3. One markdown table at the end, with card, torch version and date.
   `--profile` adds each cell's kernel profile of its fastest variant and
   every CUDA stream's busy time per step (the critical path's stream is
   busy nearly all of the step; the rest of it is gaps between kernels).

`--bags mlperf` makes every batch multi-hot, MLPerf's bag sizes (214 ids a
sample, full bags), the tables capped at 4M rows unless --vocab-cap says
otherwise; the yardstick is then one nn.EmbeddingBag per field (yardstick.py),
timed in fp32 and under bf16 autocast, and "vs yardstick" divides by the
faster of the two. `--shape mlperf` gives dlrm MLPerf's layer sizes (dcnv2
has them by default).

On CUDA each cell (and the check) runs in a child process: a variant that
fails prints its error and the others go on, even after a fault that poisons
its CUDA context.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable

import torch

from bench_kernels import kernel_rows, kernel_table
from yardstick import (MLPERF_BAG_SIZES, NUM_DENSE, LR, bag_yardstick_step, capped_cardinalities, criteo_bag_batches, criteo_batches,
                       seconds_per_step, yardstick_step)
from hetgmp.fastpath import FastStep, FastStepConfig, ReferenceStep
from hetgmp.models import MODELS, PRESETS, Bags, build_model, shape_from_flags, table_width

VARIANTS = {
    "eager": {"cuda_graph": False},
    "graph": {},
    "graph+bf16": {"amp": "bf16"},
    "graph+tf32": {"tf32": True},
    "graph+index_add": {"kernel": "torch"},
    "graph+bf16+compile": {"amp": "bf16", "compile": True},
    # The fastest variant with the earlier sparse path (index_select in batch
    # order, the fused update sorting for itself), and two alternatives.
    "graph+bf16+compile+plain-gather": {"amp": "bf16", "compile": True, "gather": "plain", "kernel": "triton"},
    "graph+bf16+compile+triton": {"amp": "bf16", "compile": True, "kernel": "triton"},
    "graph+bf16+compile+bf16-rows": {"amp": "bf16", "compile": True, "bf16_rows": True},
    "graph+bf16+compile+bf16-rows+overlap": {"amp": "bf16", "compile": True, "bf16_rows": True, "overlap": True},
    # Batches drawn on the device one step ahead (step_from_source), their ids sorted meanwhile.
    "graph+bf16+compile+bf16-rows+overlap+ahead": {"amp": "bf16", "compile": True, "bf16_rows": True, "overlap": True, "sort_ahead": True},
    # Multi-hot bags gathered row by row and pooled in the model's graph, not pooled from the table.
    "graph+bf16+compile+bf16-rows+overlap+ahead+gathered-bags": {"amp": "bf16", "compile": True, "bf16_rows": True, "overlap": True,
                                                                 "sort_ahead": True, "fused_pooling": False},
    # Every matmul's kernel timed at compile time: cuBLAS's or inductor's Triton template, bias and ReLU fused in.
    "graph+bf16+compile+bf16-rows+overlap+ahead+autotune": {"amp": "bf16", "compile": True, "bf16_rows": True, "overlap": True,
                                                            "sort_ahead": True, "autotune": True},
    # WDL only: the update builds the rows' gradient from dloss/dlogit and the output layer's weight.
    "graph+bf16+compile+bf16-rows+overlap+ahead+implicit": {"amp": "bf16", "compile": True, "bf16_rows": True, "overlap": True,
                                                            "sort_ahead": True, "implicit_row_grad": True},
}
# torch.compile needs a C++ toolchain and half a minute a model on CPU: left
# out of the tiny CPU run, which covers the rest of the code path.
SLOW_ON_CPU = tuple(name for name, cfg in VARIANTS.items() if cfg.get("compile"))
CHECKS = {
    "graph": {},
    "eager": {"cuda_graph": False},
    "graph+bf16": {"amp": "bf16"},
    # Adam moves every weight by about lr whatever the gradient's size, so it
    # magnifies rounding differences: a smaller lr keeps the check meaningful.
    "graph+adagrad+adam": {"sparse_optimizer": "rowwise_adagrad", "dense_optimizer": "adam", "dense_lr": 0.01},
    "graph+compile": {"compile": True},  # fp32, so that it is judged
    "graph+plain-gather": {"gather": "plain"},
    "graph+overlap": {"overlap": True},
    "graph+overlap+ahead": {"overlap": True, "sort_ahead": True},
    "graph+overlap+ahead+implicit": {"overlap": True, "sort_ahead": True, "implicit_row_grad": True},
}
# The one-GPU targets, samples/s, by (model, batch, d, bags).
TARGETS = {("wdl", 8192, 16, "none"): 40e6, ("wdl", 8192, 128, "none"): 25e6, ("dcn", 8192, 16, "none"): 30e6,
           ("dcn", 8192, 128, "none"): 10e6, ("dlrm", 8192, 16, "none"): 25e6, ("dcnv2", 8192, 16, "none"): 25e6,
           ("dcnv2", 8192, 128, "mlperf"): 3e6}
BAG_SIZES = {"none": None, "mlperf": MLPERF_BAG_SIZES}
BAG_VOCAB_CAP = 4_000_000  # MLPerf-shaped runs: tables capped as the plain-PyTorch reference run capped them
CHECK_TOLERANCE = 1e-4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats (on cpu: tiny sizes)")
    ap.add_argument("--models", default="wdl,dcn,dfm")
    ap.add_argument("--configs", default=None, help="BATCHxD list, default 8192x16,8192x128,65536x16")
    ap.add_argument("--variants", default=None, help=f"fast-step variants to time, default {','.join(VARIANTS)}")
    ap.add_argument("--kernel", default="auto", help="sparse update of the fast step: auto, triton, torch")
    ap.add_argument("--vocab-cap", type=int, default=None, help="limit each field's size (default: Criteo's; 4M with --bags)")
    ap.add_argument("--bags", choices=tuple(BAG_SIZES), default="none", help="multi-hot batches: mlperf = MLPerf's bag sizes")
    ap.add_argument("--shape", choices=("default", "mlperf"), default="default", help="dlrm's and dcnv2's layer sizes to start from: mlperf = MLPerf's")
    for flag in SIZE_FLAGS:
        ap.add_argument(flag, default=None, help=f"as hetgmp train's {flag} (dlrm and dcnv2; the cross layers' dcnv2 only)")
    ap.add_argument("--isolate", choices=("cell", "none"), default=None, help="child process per cell (default on cuda)")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--profile", action="store_true", help="print each cell's kernel profile of its fastest variant")
    ap.add_argument("--child-json", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--check-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--kernels-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    tiny = args.device == "cpu" and args.quick
    args.configs = args.configs or ("64x4" if tiny else "8192x16,8192x128,65536x16")
    args.variants = args.variants or ",".join(v for v in VARIANTS if not (tiny and v in SLOW_ON_CPU))
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}: choose from {', '.join(VARIANTS)}")
    args.vocab_cap = args.vocab_cap or (100 if tiny else BAG_VOCAB_CAP if args.bags != "none" else None)
    args.isolate = args.isolate or ("cell" if args.device == "cuda" else "none")
    args.warmup, args.steps, args.repeats = (1, 1, 2) if tiny else (6, 20, 3) if args.quick else (10, 50, 5)
    args.num_batches = 4 if tiny else 16
    return args


def applies(model: str, overrides: dict, args: argparse.Namespace) -> bool:
    """Whether a variant runs for `model`: implicit_row_grad needs rows that enter linearly (WDL), one per
    field; fused_pooling matters only with bags."""
    if "fused_pooling" in overrides and args.bags == "none":
        return False
    return not overrides.get("implicit_row_grad") or (MODELS[model].provides_row_weights and args.bags == "none")


def bags_of(args: argparse.Namespace) -> Bags | None:
    """The fast step's pooling of --bags (full bags: no padding)."""
    sizes = BAG_SIZES[args.bags]
    return None if sizes is None else Bags(sizes, (-1,) * len(sizes))


# hetgmp train's flags that change single layer sizes of dlrm and dcnv2.
SIZE_FLAGS = ("--bottom-mlp", "--top-mlp", "--cross-layers", "--cross-rank")


def model_shape(model: str, args: argparse.Namespace):
    """--shape with the single sizes, for dlrm and dcnv2 (the other models' sizes are fixed)."""
    if model not in PRESETS:
        return None
    cross = (args.cross_layers, args.cross_rank) if model == "dcnv2" else (None, None)
    return shape_from_flags(model, args.shape, args.bottom_mlp, args.top_mlp, *(None if v is None else int(v) for v in cross))


def size_flags(args: argparse.Namespace) -> list[str]:
    """The single-size flags given, as a child process takes them."""
    return [part for flag in SIZE_FLAGS if (value := getattr(args, flag[2:].replace("-", "_"))) is not None for part in (flag, value)]


def make_batches(args: argparse.Namespace, batch: int, count: int, cards: tuple[int, ...], seed: int = 0) -> list:
    sizes = BAG_SIZES[args.bags]
    if sizes is None:
        return criteo_batches(batch, count, args.device, cards, seed)
    return criteo_bag_batches(batch, count, args.device, cards, sizes, seed)


def cells(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    out = []
    for model in args.models.split(","):
        for config in args.configs.split(","):
            batch, dim = (int(x) for x in config.lower().split("x"))
            out.append((model, batch, dim))
    return out


def fast_config(args: argparse.Namespace, **overrides) -> FastStepConfig:
    base = {"lr": LR, "dense_lr": LR, "kernel": args.kernel, "warmup_steps": 2}
    return FastStepConfig(**{**base, **overrides})


def new_model_and_table(model: str, dim: int, cards: tuple[int, ...], device: str, shape=None):
    torch.manual_seed(0)
    net = build_model(model, len(cards), NUM_DENSE, dim, shape).to(device)
    table = torch.empty(sum(cards), table_width(model, dim), device=device).normal_(0.0, 0.01)
    return net, table


def measured(fn, device: str) -> dict:
    """Run fn() -> seconds per step; record its peak memory or its error, then free its memory."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    result = {"sec": None, "peak_gib": None, "error": None}
    try:
        result["sec"] = fn()
        if device == "cuda":
            result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    except Exception as exc:  # a failing variant must not stop the others
        result["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        traceback.print_exc()
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def cycle_source(batches: list[tuple[torch.Tensor, ...]]) -> Callable[[], tuple[torch.Tensor, ...]]:
    """A FastStep source drawing batches[0], batches[1], ... (cyclically) on the device:
    the batches stacked, a cursor on the device, one index_select per tensor (no host sync)."""
    stacked = [torch.stack(parts) for parts in zip(*batches)]
    cursor = torch.zeros(1, dtype=torch.long, device=stacked[0].device)

    def draw() -> tuple[torch.Tensor, ...]:
        index = cursor.remainder(len(batches))
        out = tuple(t.index_select(0, index).squeeze(0) for t in stacked)
        cursor.add_(1)
        return out

    return draw


def fast_stepper(fast_cls, net, table, cfg: FastStepConfig, batches: list, bags: Bags | None = None) -> tuple[FastStep, Callable]:
    """The step and how to call it: step(*batch), or with sort_ahead step_from_source() over the
    same batches in the same order (the batch argument then only counts the step)."""
    if not cfg.sort_ahead:
        fast = fast_cls(net, table, cfg, bags=bags)
        return fast, fast.step
    fast = fast_cls(net, table, cfg, source=cycle_source(batches), bags=bags)
    return fast, lambda *_: fast.step_from_source()


def time_fast(model: str, batch: int, dim: int, cfg: FastStepConfig, args: argparse.Namespace) -> float:
    cards = capped_cardinalities(args.vocab_cap)
    net, table = new_model_and_table(model, dim, cards, args.device, model_shape(model, args))
    batches = make_batches(args, batch, args.num_batches, cards)
    _, step = fast_stepper(FastStep, net, table, cfg, batches, bags_of(args))
    return seconds_per_step(step, batches, args.warmup, args.steps, args.repeats)


def profile_fast(model: str, batch: int, dim: int, overrides: dict, args: argparse.Namespace) -> str:
    """Where a step's time goes: the variant run eagerly under torch.profiler,
    kernels sorted by their own device time, then each stream's share
    (stream_table). Eager, because a graph replay hides its kernels from the
    profiler; the kernels are the same."""
    cards = capped_cardinalities(args.vocab_cap)
    net, table = new_model_and_table(model, dim, cards, args.device, model_shape(model, args))
    batches = make_batches(args, batch, args.num_batches, cards)
    _, step = fast_stepper(FastStep, net, table, fast_config(args, **{**overrides, "cuda_graph": False}), batches, bags_of(args))
    cuda = args.device == "cuda"
    seconds_per_step(step, batches, args.warmup, 1, 1)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    steps = 2 if args.device == "cpu" else 10
    with torch.profiler.profile(activities=activities) as prof:
        seconds_per_step(step, batches, 0, steps, 1)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    text = f"per {steps} steps:\n" + prof.key_averages().table(sort_by=key, row_limit=40)
    if cuda:
        with tempfile.TemporaryDirectory() as tmp:
            prof.export_chrome_trace(f"{tmp}/trace.json")
            text += "\n" + stream_table(json.loads(Path(f"{tmp}/trace.json").read_text()), steps)
    return text


def stream_table(trace: dict, steps: int, top: int = 12) -> str:
    """Each CUDA stream's busy time per step, its largest kernels, and the time any stream is busy
    (the union of their intervals): a stream whose busy time is near that union is the critical path."""
    work = [e for e in trace.get("traceEvents", []) if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]
    if not work:
        return "no device events in the trace"
    by_stream: dict[int, list[dict]] = {}
    for event in work:
        by_stream.setdefault(event["args"].get("stream", -1), []).append(event)
    intervals = sorted((e["ts"], e["ts"] + e["dur"]) for e in work)
    union, end = 0.0, float("-inf")
    for start, stop in intervals:
        union += max(0.0, stop - max(start, end))
        end = max(end, stop)
    span = (intervals[-1][1] - intervals[0][0]) / steps
    lines = [f"streams, per step: any busy {union / steps:.1f} us of a {span:.1f} us span"]
    for stream, events in sorted(by_stream.items(), key=lambda kv: -sum(e["dur"] for e in kv[1])):
        lines.append(f"  stream {stream}: {sum(e['dur'] for e in events) / steps:.1f} us busy, {len(events) / steps:.0f} kernels")
        totals: dict[str, float] = {}
        for e in events:
            totals[e["name"][:90]] = totals.get(e["name"][:90], 0.0) + e["dur"]
        for name, total in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"      {total / steps:7.1f} us  {name}")
    return "\n".join(lines)


def time_yardstick(model: str, batch: int, dim: int, args: argparse.Namespace, bf16: bool = False) -> float:
    cards = capped_cardinalities(args.vocab_cap)
    sizes = BAG_SIZES[args.bags]
    if sizes is None:
        step = yardstick_step(model, dim, cards, args.device, model_shape(model, args))
    else:
        step = bag_yardstick_step(model, dim, cards, sizes, args.device, bf16, model_shape(model, args))
    batches = make_batches(args, batch, args.num_batches, cards)
    return seconds_per_step(step, batches, args.warmup, args.steps, args.repeats)


def run_cell(model: str, batch: int, dim: int, args: argparse.Namespace, rows: list[dict], save=lambda: None) -> None:
    """Append the yardstick's row, each variant's, and the fastest variant's with
    row-wise Adagrad to `rows`, calling save() after each."""
    first = len(rows)

    def record(variant: str, fn) -> None:
        print(f"[{model} {batch}x{dim}] {variant} ...", flush=True)
        rows.append({"model": model, "batch": batch, "dim": dim, "bags": args.bags, "variant": variant, **measured(fn, args.device)})
        # As soon as it is known: a run cut short (a time limit) keeps what it measured.
        done = rows[-1]
        per_step = "failed" if done["sec"] is None else f"{batch / done['sec'] / 1e6:.2f} M samples/s, {done['sec'] * 1e3:.3f} ms/step"
        print(f"[{model} {batch}x{dim}] {variant}: {per_step}", flush=True)
        save()

    record("yardstick", lambda: time_yardstick(model, batch, dim, args))
    if args.bags != "none":
        record("yardstick+bf16", lambda: time_yardstick(model, batch, dim, args, bf16=True))
    for name in args.variants.split(","):
        if applies(model, VARIANTS[name], args):
            record(name, lambda name=name: time_fast(model, batch, dim, fast_config(args, **VARIANTS[name]), args))
    timed = [r for r in rows[first:] if r["sec"] is not None and not r["variant"].startswith("yardstick")]
    if timed:
        best = min(timed, key=lambda r: r["sec"])["variant"]
        cfg = fast_config(args, sparse_optimizer="rowwise_adagrad", **VARIANTS[best])
        record(f"{best}+adagrad", lambda: time_fast(model, batch, dim, cfg, args))
        if args.profile:
            try:
                print(f"[{model} {batch}x{dim}] profile of {best}, run eagerly, {profile_fast(model, batch, dim, VARIANTS[best], args)}", flush=True)
            except Exception:
                traceback.print_exc()


def max_diffs(fast: FastStep, ref: ReferenceStep) -> dict:
    diff = {"table": (fast.table_ED - ref.table_ED).abs().max().item()}
    dense = [(p - q).abs().max().item() for p, q in zip(fast.model.parameters(), ref.model.parameters())]
    diff["dense"] = max(dense)
    if fast.acc_E is not None:
        diff["adagrad acc"] = ((fast.acc_E - ref.acc_E).abs() / ref.acc_E.abs().clamp_min(1e-3)).max().item()
    return diff


def check_one(model: str, overrides: dict, args: argparse.Namespace) -> dict:
    """FastStep vs ReferenceStep for a few steps on a small vocabulary."""
    cards = capped_cardinalities(50 if args.device == "cpu" else 1000)
    batch, dim = (16, 4) if args.device == "cpu" else (1024, 16)
    net, table = new_model_and_table(model, dim, cards, args.device, model_shape(model, args))
    # Larger rows than N(0, 0.01), so the embeddings move the loss; bags sum up to 100 rows a
    # field, so theirs less, and a smaller rate keeps the few steps from diverging.
    one_hot = args.bags == "none"
    table.mul_(30.0 if one_hot else 3.0)
    lr = 0.1 if one_hot else 0.01
    cfg = fast_config(args, **{"lr": lr, "dense_lr": lr, **overrides})
    batches = make_batches(args, batch, 3 if args.device == "cpu" else 5, cards, seed=1)
    fast, fast_step = fast_stepper(FastStep, copy.deepcopy(net), table.clone(), cfg, batches, bags_of(args))
    ref = ReferenceStep(net, table, cfg, bags=bags_of(args))
    loss_diff = 0.0
    for b in batches:
        loss_diff = max(loss_diff, (fast_step(*b) - ref.step(*b)).abs().item())
    return {**max_diffs(fast, ref), "loss": loss_diff}


def run_checks(args: argparse.Namespace, out: list[dict], save=lambda: None) -> None:
    """Append one line per (model, checked variant) to `out`, calling save() after each."""
    models = args.models.split(",")
    for model in models:
        for name, overrides in CHECKS.items():
            # Compiling costs half a minute a model: checked once, on the GPU only.
            if "compile" in name and (args.device == "cpu" or model != models[0]) or not applies(model, overrides, args):
                continue
            try:
                diff = check_one(model, overrides, args)
                # bf16 rounds activations differently in each path: reported, not judged.
                ok = "bf16" in name or max(diff.values()) <= CHECK_TOLERANCE
                line = ", ".join(f"{k} {v:.2e}" for k, v in diff.items())
                out.append({"check": f"{model} {name}", "text": f"max abs diff {line}", "ok": ok})
            except Exception as exc:
                traceback.print_exc()
                out.append({"check": f"{model} {name}", "text": f"error {type(exc).__name__}: {exc}"[:200], "ok": False})
            print(f"check {out[-1]['check']}: {out[-1]['text']}", flush=True)
            save()


def in_child(args: argparse.Namespace, extra: list[str]) -> tuple[dict, str | None]:
    """Re-run this script for one piece of work; its output streams through.

    Returns what the child saved (it saves after every row, so a child that
    dies keeps the rows before the fault) and an error if it did not finish.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.json"
        cmd = [sys.executable, __file__, "--device", args.device, "--kernel", args.kernel, "--variants", args.variants,
               "--child-json", str(path), "--bags", args.bags, "--shape", args.shape, *size_flags(args),
               *(["--quick"] if args.quick else []), *(["--profile"] if args.profile else []),
               *(["--vocab-cap", str(args.vocab_cap)] if args.vocab_cap else []), *extra]
        code = subprocess.run(cmd).returncode
        got = json.loads(path.read_text()) if path.exists() else {}
    return got, None if code == 0 else f"child process exited with status {code} (its output is above)"


def run_kernels(args: argparse.Namespace, out: list[dict], save=lambda: None) -> None:
    """Append bench_kernels' rows for each batch x d to `out`, calling save() after each."""
    for batch, dim in sorted({(b, d) for _, b, d in cells(args)}):
        print(f"[kernels {batch}x{dim}] ...", flush=True)
        out += kernel_rows(batch, dim, args.device, args.vocab_cap, args.steps, args.repeats)
        save()


def gather(args: argparse.Namespace) -> tuple[list[dict], list[dict], list[dict]]:
    """Run the check, every cell and the kernel timings, in child processes or here."""
    checks, rows, kernels = [], [], []
    if not args.skip_check:
        if args.isolate == "cell":
            got, error = in_child(args, ["--models", args.models, "--check-only"])
            checks = got.get("checks", []) + ([{"check": "rest", "text": error, "ok": False}] if error else [])
        else:
            run_checks(args, checks)
    for model, batch, dim in cells(args):
        if args.isolate == "cell":
            got, error = in_child(args, ["--models", model, "--configs", f"{batch}x{dim}", "--skip-check"])
            rows += got.get("rows", [])
            if error:
                rows.append({"model": model, "batch": batch, "dim": dim, "bags": args.bags, "variant": "rest", "sec": None, "peak_gib": None, "error": error})
        else:
            run_cell(model, batch, dim, args, rows)
    if args.isolate == "cell":
        got, error = in_child(args, ["--models", args.models, "--configs", args.configs, "--kernels-only"])
        kernels = got.get("kernels", []) + ([{"batch": "-", "dim": "-", "piece": "rest", "sec": None, "error": error}] if error else [])
    else:
        run_kernels(args, kernels)
    return checks, rows, kernels


def header(args: argparse.Namespace) -> list[str]:
    card = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    vocab = sum(capped_cardinalities(args.vocab_cap))
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"card: {card}; torch {torch.__version__} (CUDA {torch.version.cuda}); triton {triton_version}; {when}",
        f"command: python benchmarks/bench_gpu.py {' '.join(sys.argv[1:])}",
        f"vocabulary {vocab:,} rows; bags {args.bags}; dlrm/dcnv2 shape {args.shape} {' '.join(size_flags(args))}; SGD lr {LR} unless marked adagrad; warm-up {args.warmup} steps, "
        f"median of {args.repeats} repeats of {args.steps} steps",
    ]


def table_lines(rows: list[dict]) -> list[str]:
    base: dict[tuple, float] = {}
    for r in rows:  # the fastest yardstick of each cell
        key = (r["model"], r["batch"], r["dim"], r["bags"])
        if r["variant"].startswith("yardstick") and r["sec"] and r["sec"] < base.get(key, float("inf")):
            base[key] = r["sec"]
    lines = ["| model | bags | batch | d | variant | M samples/s | ms/step | vs yardstick | target M/s | peak GiB | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        key = (r["model"], r["batch"], r["dim"], r["bags"])
        sps = f"{r['batch'] / r['sec'] / 1e6:.2f}" if r["sec"] else "-"
        ms = f"{r['sec'] * 1e3:.3f}" if r["sec"] else "-"
        ratio = f"{base[key] / r['sec']:.2f}x" if r["sec"] and base.get(key) else "-"
        target = f"{TARGETS[key] / 1e6:.0f}" if key in TARGETS and not r["variant"].startswith("yardstick") else ""
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        note = f"FAILED: {r['error']}" if r["error"] else ""
        lines.append(f"| {r['model']} | {r['bags']} | {r['batch']} | {r['dim']} | {r['variant']} | {sps} | {ms} | {ratio} | {target} | {peak} | {note} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu --quick for the code path alone", file=sys.stderr)
        return 2
    if args.device == "cpu":
        torch.set_num_threads(1)  # tiny sizes: threads only contend
    if args.child_json:
        out: dict[str, list[dict]] = {"checks": [], "rows": [], "kernels": []}

        def save() -> None:
            Path(args.child_json).write_text(json.dumps(out))

        if args.check_only:
            run_checks(args, out["checks"], save)
        elif args.kernels_only:
            run_kernels(args, out["kernels"], save)
        else:
            for cell in cells(args):
                run_cell(*cell, args, out["rows"], save)
        return 0
    checks, rows, kernels = gather(args)
    print("\n" + "\n".join(header(args)) + "\n")
    for c in checks:
        print(f"- check {c['check']}: {c['text']}{'' if c['ok'] else '  <-- CHECK FAILED'}")
    print("\n" + "\n".join(table_lines(rows)))
    print("\nThe sparse pieces alone (bench_kernels.py):\n\n" + "\n".join(kernel_table(kernels)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
