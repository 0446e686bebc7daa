"""The dense optimizer's step alone, per model: the fused kernels the fast step uses against
alternatives, each captured in a CUDA graph and timed by replays (bench_kernels.py's timer).

A CTR model's dense weights are few tensors of a few hundred thousand floats (DLRM at d = 16:
0.47M in 8 tensors). The fused and foreach optimizers split every tensor into chunks of 65,536
elements, one program each: a handful of programs for the whole model, on a GPU of 132 SMs.

    python benchmarks/bench_dense_step.py [--models dlrm,dcnv2,wdl] [--dim 16]
"""

from __future__ import annotations

import argparse

import torch

from bench_kernels import _timer
from yardstick import NUM_DENSE
from hetgmp.models import build_model

FIELDS = 26


def variants(params: list[torch.nn.Parameter], lr: float) -> dict[str, object]:
    """name -> a function doing one step over `params` (their .grad set)."""
    grads = [p.grad for p in params]
    flat_p = torch.cat([p.detach().reshape(-1) for p in params])
    flat_g = torch.cat([g.reshape(-1) for g in grads])
    fused_sgd = torch.optim.SGD(params, lr=lr, fused=True)
    foreach_sgd = torch.optim.SGD(params, lr=lr, foreach=True)
    fused_adam = torch.optim.Adam(params, lr=lr, capturable=True, fused=True)
    foreach_adam = torch.optim.Adam(params, lr=lr, capturable=True, foreach=True)
    compiled_adam = torch.compile(foreach_adam.step)
    data = [p.detach() for p in params]

    @torch.compile
    def compiled_sgd() -> None:
        torch._foreach_add_(data, grads, alpha=-lr)

    return {
        "SGD fused (the fast step's)": fused_sgd.step,
        "SGD foreach": foreach_sgd.step,
        "SGD compiled foreach_add_": compiled_sgd,
        "SGD on one flat buffer (add_)": lambda: flat_p.add_(flat_g, alpha=-lr),
        "Adam fused, capturable (the fast step's)": fused_adam.step,
        "Adam foreach, capturable, compiled": compiled_adam,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="dlrm,dcnv2,wdl,dcn")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        params = list(build_model(name, FIELDS, NUM_DENSE, args.dim).cuda().parameters())
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        size = sum(p.numel() for p in params)
        for variant, fn in variants(params, 1e-3).items():
            ms = _timer(fn, params[0], args.steps, 3) * 1e3
            rows.append((name, size, len(params), variant, ms))
            print(f"{name} {variant}: {ms * 1e3:.1f} us", flush=True)
    print(f"\n{torch.cuda.get_device_name()}; torch {torch.__version__}; d = {args.dim}\n")
    print("| model | dense weights | tensors | step | us |\n|---|---|---|---|---|")
    for name, size, count, variant, ms in rows:
        print(f"| {name} | {size:,} | {count} | {variant} | {ms * 1e3:.1f} |")


if __name__ == "__main__":
    main()
