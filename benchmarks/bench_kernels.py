"""The sparse pieces of one step, timed alone on Criteo-shaped ids.

For each batch x d: the gather two ways (`index_select` in batch order, and
the sorted gather of hetgmp.kernels.gather, alone and with its sort), the sort
of the ids, and the sparse update: the fused Triton kernel (sorting itself,
or reusing a given sort) and the fixed-shape torch path (`index_add_`), each
with SGD and row-wise Adagrad. On CUDA each piece is captured in a CUDA graph
and timed by replays, so the figures are GPU time, not launch overhead. The table has the full Criteo vocabulary unless capped.
Each update is also run once against the reference on the same ids (hot ids
spanning hundreds of tiles at these sizes) and its largest difference shown.

    python benchmarks/bench_kernels.py [--configs 8192x16,8192x128,65536x16] [--device cuda]

bench_gpu.py prints the same table after its main one.
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch

from yardstick import capped_cardinalities, criteo_batches, seconds_per_step
from hetgmp.kernels import new_scratch, sparse_update, triton_available
from hetgmp.kernels.gather import gather_rows, sort_ids


def _timer(fn: Callable[[], object], like: torch.Tensor, steps: int, repeats: int) -> float:
    if not like.is_cuda:
        return seconds_per_step(lambda _: fn(), [(like,)], 3, steps, repeats)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return seconds_per_step(lambda _: graph.replay(), [(like,)], 3, steps, repeats)


def max_diff_vs_reference(ids_N: torch.Tensor, grad_ND: torch.Tensor, kernel: str, adagrad: bool) -> float:
    """Largest |difference| between `kernel` and the reference after one update on
    these ids, on a table of just the rows they touch (ids renumbered in order,
    so the sorted runs are the same as on the full table)."""
    _, dense_ids_N = torch.unique(ids_N, return_inverse=True)
    rows = int(dense_ids_N.max()) + 1
    gen = torch.Generator(device=ids_N.device).manual_seed(1)
    start_UD = torch.randn(rows, grad_ND.shape[1], device=ids_N.device, generator=gen)
    out = []
    for backend in (kernel, "reference"):
        table_UD = start_UD.clone()
        acc_U = torch.full((rows,), 0.5, device=ids_N.device) if adagrad else None
        sparse_update(table_UD, dense_ids_N.int(), grad_ND, 0.5, acc_U, backend=backend)
        out.append(table_UD)
    return (out[0] - out[1]).abs().max().item()


def kernel_rows(batch: int, dim: int, device: str, cap: int | None, steps: int, repeats: int) -> list[dict]:
    """Seconds per call of each piece at one batch x d; failures are recorded, not raised."""
    cards = capped_cardinalities(cap)
    _, ids_BF, _ = criteo_batches(batch, 1, device, cards)[0]
    ids_N = ids_BF.reshape(-1).int()
    gen = torch.Generator(device=device).manual_seed(0)
    grad_ND = torch.randn(len(ids_N), dim, device=device, generator=gen) * 1e-3
    table_ED = torch.empty(sum(cards), dim, device=device).normal_(0.0, 0.01, generator=gen)
    acc_E = torch.zeros(len(table_ED), device=device)
    order = sort_ids(ids_N, len(table_ED))
    pieces: dict[str, Callable[[], object]] = {
        "gather (index_select)": lambda: table_ED.index_select(0, ids_N),
        "gather sorted, given the sort": lambda: gather_rows(table_ED, order),
        "gather sorted, bf16 rows, given the sort": lambda: gather_rows(table_ED, order, torch.bfloat16),
        "sort int32 ids": lambda: sort_ids(ids_N, len(table_ED)),
    }
    kernels = ["triton", "torch"] if triton_available(device) else ["torch"]
    for kernel in kernels:
        scratch = new_scratch(len(ids_N), dim, device) if kernel == "triton" else None
        for opt, acc in (("sgd", None), ("adagrad", acc_E)):
            name = f"update {kernel} {opt}" + (" (index_add_)" if kernel == "torch" and opt == "sgd" else "")
            pieces[name] = lambda kernel=kernel, acc=acc, scratch=scratch: sparse_update(
                table_ED, ids_N, grad_ND, 0.01, acc, backend=kernel, scratch_TD=scratch)
            if kernel == "triton":
                pieces[name + ", given the sort"] = lambda acc=acc, scratch=scratch: sparse_update(
                    table_ED, ids_N, grad_ND, 0.01, acc, backend="triton", scratch_TD=scratch, order=order)
    rows = [{"batch": batch, "dim": dim, "piece": "distinct ids", "value": len(torch.unique(ids_N)), "error": None}]
    for name, fn in pieces.items():
        row = {"batch": batch, "dim": dim, "piece": name, "sec": None, "error": None}
        try:
            row["sec"] = _timer(fn, grad_ND, steps, repeats)
            if name.startswith("update") and "given" not in name:
                row["diff"] = max_diff_vs_reference(ids_N, grad_ND, name.split()[1], "adagrad" in name)
        except Exception as exc:  # one failing piece must not hide the others
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        rows.append(row)
    return rows


def kernel_table(rows: list[dict]) -> list[str]:
    lines = ["| batch | d | piece | ms/call | max abs diff vs reference | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "value" in r:
            lines.append(f"| {r['batch']} | {r['dim']} | {r['piece']} | | | {r['value']:,} of {26 * r['batch']:,} |")
            continue
        ms = f"{r['sec'] * 1e3:.4f}" if r["sec"] else "-"
        diff = f"{r['diff']:.1e}" if r.get("diff") is not None else ""
        lines.append(f"| {r['batch']} | {r['dim']} | {r['piece']} | {ms} | {diff} | {'FAILED: ' + r['error'] if r['error'] else ''} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--configs", default="8192x16,8192x128,65536x16")
    ap.add_argument("--vocab-cap", type=int, default=None)
    args = ap.parse_args()
    rows = []
    for config in args.configs.split(","):
        batch, dim = (int(x) for x in config.split("x"))
        rows += kernel_rows(batch, dim, args.device, args.vocab_cap, 20, 5)
    print("\n".join(kernel_table(rows)))


if __name__ == "__main__":
    main()
