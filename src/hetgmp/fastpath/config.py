"""How the fast steps train: their settings (`FastStepConfig`) and how those
apply around the model (dense optimizer, matmul precision, autocast)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from hetgmp.choices import AMP_MODES, SPARSE_OPTIMIZERS
from hetgmp.choices import DENSE_OPTIMIZERS
from hetgmp.errors import HetGMPError
from hetgmp.fastpath.dense_adagrad import CapturableAdagrad
from hetgmp.kernels import DEFAULT_EPS
GATHERS = ("sorted", "plain")
# A batch drawn on the device with no host sync, e.g. rows picked by a
# device-side cursor over an epoch's permutation: called once per step, inside
# the graph, so that replays need no kernel launched between them.
BatchSource = Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class FastStepConfig:
    """How the fast step trains.

    lr: embedding learning rate (SGD folded into the table, or row-wise Adagrad).
    dense_lr: learning rate of the dense weights.
    dense_optimizer: "sgd" or "adam".
    sparse_optimizer: "sgd" or "rowwise_adagrad" (one accumulator per row).
    adagrad_eps: added to sqrt(accumulator) before dividing.
    amp: "none" or "bf16" (autocast for the model's forward).
    tf32: let fp32 matmuls use TF32 tensor cores.
    compile: run the model's forward (and so its backward) through
        torch.compile, which fuses its elementwise work (DCN's cross layer
        reads and writes B x (F*d + I) activations several times), the loss
        with it; on CUDA also the dense optimizer's step (fast_dense_optimizer).
        Compiled during the warm-up steps, then captured like the rest.
    autotune: with compile on CUDA, inductor times Triton templates against
        cuBLAS for every matmul shape and keeps the fastest, fusing the bias
        and ReLU into the matmul it picks (`compile_model`). At batch 8192,
        d = 16 on an H200: DLRM 0.372 -> 0.339 ms a step, DCNv2 0.400 ->
        0.376. The first run compiles for about a minute more; inductor
        caches its picks.
    cuda_graph: capture the step in a CUDA graph (CUDA only).
    accuracy: also count, each step, the samples whose logit sign matches the
        label (`FastStep.correct`, a device scalar; off by default, as it costs
        a few small kernels a step).
    kernel: sparse update implementation: auto (Triton where it runs), triton,
        torch, reference. With the sort shared with the gather, the fused
        kernel beat index_add_ at d = 16 too (0.013 against 0.022 ms on an
        H100 at batch 8192; 0.088 against 0.29 ms at d = 128).
    gather: "sorted" (sort the ids once, read the rows in sorted order and
        reuse the sort in the update: see hetgmp.kernels.gather) or "plain"
        (index_select in batch order).
    bf16_rows: with amp="bf16", gather the rows as bf16 (the model's matmuls
        read bf16 anyway) and take their gradient in bf16: half the bytes of
        the gather, the model's input and the gradient; the table, the
        gradient's sum per row and the optimizer stay fp32.
    overlap: run the sparse path beside the dense one, on a second CUDA
        stream: the sort and gather of the rows while the model's dense part
        runs (models with `dense_part` and `head`, as WDL's tower, which reads
        no embedding), and the table's update as soon as backward has the
        rows' gradient, while the rest of backward and the dense optimizer
        run. Same arithmetic, other order of launch; off CUDA the update is
        still launched from the gradient hook, in order.
    sort_ahead: with a source (`step_from_source`), draw and sort the next
        batch during this step, on a third stream (hetgmp.fastpath.ahead):
        the sort (0.05 ms at batch 8192 on an H100, the largest sparse piece)
        leaves the step's critical path. The source is then called one batch
        ahead of training.
    implicit_row_grad: for a model whose rows reach the logit through one
        linear layer (one with `row_weights()`, as WDL), the table's update
        computes each occurrence's gradient as dloss/dlogit_b x w_f
        (kernels.Rank1Grad) and starts as soon as backward has dloss/dlogit,
        instead of reading the rows' [B F, D] gradient once backward has
        written it. Not with skip_nonfinite.
    fused_pooling: with multi-hot bags and the Triton kernel, one kernel pools
        each bag straight from the table, and the update reads the pooled
        rows' gradient (kernels/bag_pool.py), instead of gathering every row
        of every bag, pooling them, and writing each row's gradient out:
        MLPerf's bags hold 214 ids a sample. Same arithmetic, up to the order
        of the fp32 sums.
    warmup_steps: eager steps before the capture.
    skip_nonfinite: a step whose loss or gradients hold a NaN or inf changes
        no weight: its table and dense gradients are zeroed (rows' versions
        still count the batch, as the trainer's general step does), Adam
        (always fused then) skips through `found_inf`, the returned loss is 0
        and `FastStep.skipped` (a device scalar) is 1.0. On the device, no sync.
    flag_nonfinite: return NaN as the loss of a step whose table or dense
        gradient holds a NaN or inf, so that a caller who reads only losses
        (the trainer, at its log points) stops at that very step; one fused
        norm over the gradients, no host sync.
    """

    lr: float = 0.01
    dense_lr: float = 0.01
    dense_optimizer: str = "sgd"
    sparse_optimizer: str = "sgd"
    adagrad_eps: float = DEFAULT_EPS
    amp: str = "none"
    tf32: bool = False
    compile: bool = False
    autotune: bool = False
    cuda_graph: bool = True
    accuracy: bool = False
    kernel: str = "auto"
    gather: str = "sorted"
    bf16_rows: bool = False
    overlap: bool = False
    sort_ahead: bool = False
    implicit_row_grad: bool = False
    fused_pooling: bool = True
    warmup_steps: int = 3
    flag_nonfinite: bool = False
    skip_nonfinite: bool = False

    def check(self) -> None:
        """Raise HetGMPError naming every field out of range."""
        bad = []
        for name, value, allowed in (
            ("dense_optimizer", self.dense_optimizer, DENSE_OPTIMIZERS),
            ("sparse_optimizer", self.sparse_optimizer, SPARSE_OPTIMIZERS),
            ("amp", self.amp, AMP_MODES),
            ("gather", self.gather, GATHERS),
        ):
            if value not in allowed:
                bad.append(f"{name}={value!r} (choose {', '.join(allowed)})")
        if self.implicit_row_grad and self.skip_nonfinite:
            bad.append("implicit_row_grad=True with skip_nonfinite=True (a skipped step must zero the rows' gradient first)")
        if self.sort_ahead and self.gather != "sorted":
            bad.append("sort_ahead=True needs gather='sorted'")
        if self.bf16_rows and self.amp != "bf16":
            bad.append("bf16_rows=True needs amp='bf16'")
        if self.autotune and not self.compile:
            bad.append("autotune=True needs compile=True (it picks the compiled model's matmul kernels)")
        if self.warmup_steps < 1:
            bad.append(f"warmup_steps={self.warmup_steps} (at least 1: kernels compile before the capture)")
        if bad:
            raise HetGMPError("fast step config: " + "; ".join(bad))


def dense_optimizer(params: list[nn.Parameter], name: str, lr: float, device: torch.device,
                    skip_nonfinite: bool = False, foreach: bool = False) -> torch.optim.Optimizer:
    """The dense optimizer of every step: SGD, Adam or Adagrad (fastpath/dense_adagrad.py).

    On CUDA SGD and Adam are the fused (one-kernel) versions, and Adam keeps its step counter
    on the GPU so a graph can replay it: the foreach SGD step took 17 us of a 250 us step on
    an H100 (WDL, batch 8192, d = 16). Skipping a non-finite step (found_inf) needs Adam's
    fused kernel on any device. `foreach`: SGD and Adam as foreach versions instead of fused,
    for a compiled step (fast_dense_optimizer).
    """
    if name not in DENSE_OPTIMIZERS:
        raise HetGMPError(f"--optimizer must be one of {', '.join(DENSE_OPTIMIZERS)}, not {name!r}")
    cuda = device.type == "cuda"
    fused = not foreach and (cuda or (name == "adam" and skip_nonfinite))
    kind = {"foreach": foreach or None, "fused": fused or None}
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, capturable=cuda, **kind)
    if name == "adagrad":
        return CapturableAdagrad(params, lr=lr)
    return torch.optim.SGD(params, lr=lr, **kind)


def fast_dense_optimizer(params: list[nn.Parameter], name: str, lr: float, device: torch.device,
                         skip_nonfinite: bool, compile: bool) -> tuple[torch.optim.Optimizer, Callable[[], object]]:
    """The fast steps' dense optimizer and the function that steps it: with `compile` on CUDA, SGD
    and Adam step through torch.compile (not when a non-finite step is to be skipped, which takes
    fused Adam's found_inf).

    The fused kernels give each tensor's every 65,536 floats to one program: a few dozen programs
    for a CTR model's half a million dense weights, on a GPU of 132 SMs. Compiled, the foreach
    step is one inductor kernel spread over the GPU (H200, DLRM at d = 16, 0.48M weights in 14
    tensors: SGD 10.2 -> 5.4 us, Adam 29.3 -> 6.1 us; benchmarks/bench_dense_step.py)."""
    compiled = compile and device.type == "cuda" and not skip_nonfinite and name in ("sgd", "adam")
    optimizer = dense_optimizer(params, name, lr, device, skip_nonfinite, foreach=compiled)
    return optimizer, (torch.compile(optimizer.step) if compiled else optimizer.step)


def compile_model(fn: Callable, compile: bool, autotune: bool, device: torch.device) -> Callable:
    """fn through torch.compile (fixed shapes) when `compile`; with `autotune` on CUDA every matmul's
    kernel is the fastest of cuBLAS's and inductor's Triton templates, timed at compile time
    (inductor's max_autotune_gemm; off CUDA it has no Triton templates to time)."""
    if not compile:
        return fn
    options = {"max_autotune_gemm": True} if autotune and device.type == "cuda" else None
    return torch.compile(fn, dynamic=False, options=options)


@contextlib.contextmanager
def matmul_precision(cfg: FastStepConfig, device: torch.device) -> Iterator[None]:
    """TF32 on or off for the step's matmuls (forward and backward), restored after."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32 and device.type == "cuda"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def autocast(cfg: FastStepConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for the forward when asked; the weight cache is off so a
    captured graph never holds casts from an earlier step."""
    if cfg.amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()
