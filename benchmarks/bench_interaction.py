"""DLRM's dot interaction alone (kernels/interaction.py): the Triton kernels in several tiles
against the plain batched matmul, forward and backward, each captured in a CUDA graph and timed
by replays (bench_kernels.py's timer).

Batch 8192, 26 fields and the bottom vector, bf16, at d = 16 (DLRM's Kaggle shape) and d = 128
(MLPerf's). A tile is (samples a program, warps); the fast step runs `triton_interaction.TILE`.

    python benchmarks/bench_interaction.py [--batch 8192] [--dims 16,128]
    TRITON_INTERPRET=1 python benchmarks/bench_interaction.py --device cpu --batch 8 --dims 16 --steps 1   # code path
"""

from __future__ import annotations

import argparse

import torch

from bench_kernels import _timer
from hetgmp.kernels import triton_interaction as kernels
from hetgmp.kernels.interaction import top_input

FIELDS = 26
TILES = [(1, 2), (1, 1), (1, 4), (2, 2), (4, 2), (4, 4), (8, 4)]


def plain_step(bottom: torch.Tensor, emb: torch.Tensor) -> None:
    """The plain interaction forward and backward (what the Triton pair replaces)."""
    out = top_input(bottom, emb, use_triton=False)
    torch.autograd.grad(out, [bottom, emb], torch.ones_like(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--dims", default="16,128")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    rows: list[tuple[int, str, float, float | None]] = []  # (d, piece, seconds, forward's max diff)
    for dim in (int(d) for d in args.dims.split(",")):
        gen = torch.Generator().manual_seed(0)
        emb = torch.randn(args.batch, FIELDS, dim, generator=gen).to(args.device, torch.bfloat16).requires_grad_()
        bottom = torch.randn(args.batch, dim, generator=gen).to(args.device, torch.bfloat16).requires_grad_()
        width = kernels.output_width(FIELDS, dim, True)
        want = top_input(bottom, emb, use_triton=False).float()
        rows.append((dim, "plain: bmm + index_select, forward and backward", _timer(lambda: plain_step(bottom, emb), emb, args.steps, 3), None))
        b, e = bottom.detach(), emb.detach()
        dout = torch.randn(args.batch, width, generator=gen).to(args.device, torch.bfloat16)
        for tile in TILES:
            out = torch.empty(args.batch, width, device=args.device, dtype=torch.bfloat16)
            db, de = torch.empty_like(b), torch.empty_like(e)
            fwd = _timer(lambda: kernels.forward_into(kernels._forward_kernel, b, e, out, True, tile), e, args.steps, 3)
            bwd = _timer(lambda: kernels.backward_into(kernels._backward_kernel, b, e, dout, db, de, True, tile), e, args.steps, 3)
            diff = (out[:, : want.shape[1]].float() - want).abs().max().item()
            rows.append((dim, f"Triton {tile[0]} sample(s) x {tile[1]} warp(s): forward", fwd, diff))
            rows.append((dim, f"Triton {tile[0]} sample(s) x {tile[1]} warp(s): backward", bwd, None))
            print(f"d={dim} tile {tile}: forward {fwd * 1e6:.1f} us, backward {bwd * 1e6:.1f} us", flush=True)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"\n{name}; torch {torch.__version__}; batch {args.batch}, {FIELDS} fields + bottom, bf16\n")
    print("| d | piece | us | forward's max abs diff vs plain (its dots rounded to bf16) |\n|---|---|---|---|")
    for dim, piece, sec, diff in rows:
        print(f"| {dim} | {piece} | {sec * 1e6:.1f} | {'' if diff is None else f'{diff:.2g}'} |")


if __name__ == "__main__":
    main()
