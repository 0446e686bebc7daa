"""The plain-PyTorch yardstick: what a user writes without an embedding system.

One `nn.Embedding` over all 26 Criteo fields (ids offset per field) with
sparse gradients, the SPEC §4 model on top (no biases, N(0, 0.01) weights),
SGD with lr 0.01 for every parameter. Batches are Criteo-Kaggle-shaped
synthetic ids made on the device in advance: field f draws
floor(card_f * u^4) for u ~ U(0, 1), so low ids are hot (a field of 3 values
puts about 76% of its samples on id 0), shifted by the sizes of the fields
before it. Dense features are U(0, 1), labels 1 with probability 0.25.

    python benchmarks/yardstick.py [--device cuda] [--steps 200]

Also the home of the batch maker and the step timer that bench_gpu.py shares,
and of the multi-hot yardstick (`bag_yardstick_step`): one nn.EmbeddingBag
(sum, sparse gradients) per field, as TorchRec-less DLRM code is written,
on batches of fixed-size bags (`criteo_bag_batches`, MLPerf's bag sizes).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
from torch import nn

from hetgmp.models import build_model, table_width

# Criteo Kaggle (dac.tar.gz) distinct values per categorical field C1..C26.
CRITEO_CARDINALITIES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)
NUM_DENSE = 13
LR = 0.01
# MLPerf's DLRM-DCNv2 multi-hot bag sizes (Criteo 1TB, synthetic multi-hot), field by field.
MLPERF_BAG_SIZES = (3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1)

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def capped_cardinalities(cap: int | None) -> tuple[int, ...]:
    """Criteo's field sizes, each limited to `cap` (None: the real sizes)."""
    return CRITEO_CARDINALITIES if cap is None else tuple(min(c, cap) for c in CRITEO_CARDINALITIES)


def criteo_batches(batch: int, count: int, device: str, cards: tuple[int, ...] = CRITEO_CARDINALITIES, seed: int = 0) -> list[Batch]:
    """`count` batches of (dense_BI float32, ids_BF int64, labels_B float32).

    Example, cards (3, 5): field 0 ids lie in 0..2, field 1 ids in 3..7.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    card_F = torch.tensor(cards, dtype=torch.float64, device=device)
    offset_F = torch.cumsum(torch.tensor((0,) + cards[:-1], device=device), 0)
    out = []
    for _ in range(count):
        u_BF = torch.rand(batch, len(cards), dtype=torch.float64, device=device, generator=gen)
        ids_BF = torch.minimum((card_F * u_BF.pow(4)).long(), card_F.long() - 1) + offset_F
        dense_BI = torch.rand(batch, NUM_DENSE, device=device, generator=gen)
        labels_B = (torch.rand(batch, device=device, generator=gen) < 0.25).float()
        out.append((dense_BI, ids_BF, labels_B))
    return out


def criteo_bag_batches(batch: int, count: int, device: str, cards: tuple[int, ...], bag_sizes: tuple[int, ...],
                       seed: int = 0) -> list[Batch]:
    """`count` batches of (dense_BI, ids_BL, labels_B), L = sum(bag_sizes): each of field f's
    bag_sizes[f] ids drawn as criteo_batches draws field f's one (full bags, as MLPerf's)."""
    columns = tuple(c for c, k in zip(cards, bag_sizes) for _ in range(k))
    offsets = torch.cumsum(torch.tensor((0,) + cards[:-1], device=device), 0)
    shift_L = torch.repeat_interleave(offsets, torch.tensor(bag_sizes, device=device))
    out = []
    for dense_BI, local_BL, labels_B in criteo_batches(batch, count, device, columns, seed):
        # criteo_batches offsets column by column: undo that, then offset by field.
        local_BL = local_BL - torch.cumsum(torch.tensor((0,) + columns[:-1], device=device), 0)
        out.append((dense_BI, local_BL + shift_L, labels_B))
    return out


class PlainCTR(nn.Module):
    """nn.Embedding(sparse=True) feeding one of the SPEC's models."""

    def __init__(self, model_name: str, dim: int, cards: tuple[int, ...], shape=None) -> None:
        super().__init__()
        self.emb = nn.Embedding(sum(cards), table_width(model_name, dim), sparse=True)
        nn.init.normal_(self.emb.weight, 0.0, 0.01)
        self.net = build_model(model_name, len(cards), NUM_DENSE, dim, shape)

    def forward(self, dense_BI: torch.Tensor, ids_BF: torch.Tensor) -> torch.Tensor:
        return self.net(dense_BI, self.emb(ids_BF))


def yardstick_step(model_name: str, dim: int, cards: tuple[int, ...], device: str, shape=None) -> Callable[..., None]:
    """A training step of the plain model: step(dense_BI, ids_BF, labels_B)."""
    torch.manual_seed(0)
    model = PlainCTR(model_name, dim, cards, shape).to(device)
    sparse_opt = torch.optim.SGD([model.emb.weight], lr=LR)
    dense_opt = torch.optim.SGD(list(model.net.parameters()), lr=LR)
    loss_fn = nn.BCEWithLogitsLoss()

    def step(dense_BI: torch.Tensor, ids_BF: torch.Tensor, labels_B: torch.Tensor) -> None:
        sparse_opt.zero_grad(set_to_none=True)
        dense_opt.zero_grad(set_to_none=True)
        loss_fn(model(dense_BI, ids_BF), labels_B).backward()
        sparse_opt.step()
        dense_opt.step()

    return step


class PlainBagCTR(nn.Module):
    """One nn.EmbeddingBag(mode="sum", sparse=True) per field feeding the model."""

    def __init__(self, model_name: str, dim: int, cards: tuple[int, ...], bag_sizes: tuple[int, ...], shape=None) -> None:
        super().__init__()
        self.bags = nn.ModuleList(nn.EmbeddingBag(c, table_width(model_name, dim), mode="sum", sparse=True) for c in cards)
        for bag in self.bags:
            nn.init.normal_(bag.weight, 0.0, 0.01)
        self.starts = [0, *torch.tensor(bag_sizes).cumsum(0).tolist()]
        self.register_buffer("offsets", torch.cumsum(torch.tensor((0,) + cards[:-1]), 0), persistent=False)
        self.net = build_model(model_name, len(cards), NUM_DENSE, dim, shape)

    def forward(self, dense_BI: torch.Tensor, ids_BL: torch.Tensor) -> torch.Tensor:
        pooled = [bag(ids_BL[:, a:b] - self.offsets[f]) for f, (bag, a, b) in enumerate(zip(self.bags, self.starts, self.starts[1:]))]
        return self.net(dense_BI, torch.stack(pooled, 1))


def bag_yardstick_step(model_name: str, dim: int, cards: tuple[int, ...], bag_sizes: tuple[int, ...], device: str,
                       bf16: bool = False, shape=None) -> Callable[..., None]:
    """A training step of PlainBagCTR (SGD, sparse gradients), the model under bf16 autocast if asked."""
    torch.manual_seed(0)
    model = PlainBagCTR(model_name, dim, cards, bag_sizes, shape).to(device)
    sparse_opt = torch.optim.SGD([b.weight for b in model.bags], lr=LR)
    dense_opt = torch.optim.SGD(list(model.net.parameters()), lr=LR)
    loss_fn = nn.BCEWithLogitsLoss()

    def step(dense_BI: torch.Tensor, ids_BL: torch.Tensor, labels_B: torch.Tensor) -> None:
        sparse_opt.zero_grad(set_to_none=True)
        dense_opt.zero_grad(set_to_none=True)
        with torch.autocast(ids_BL.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(dense_BI, ids_BL)
        loss_fn(logits.float(), labels_B).backward()
        sparse_opt.step()
        dense_opt.step()

    return step


def seconds_per_step(step: Callable[..., object], batches: list[Batch], warmup: int, steps: int, repeats: int) -> float:
    """Median over `repeats` timed runs of `steps` steps (after `warmup` steps) of the time per step.

    On CUDA the runs are timed with events on the current stream; elsewhere with the wall clock.
    """
    cuda = batches[0][0].is_cuda
    for i in range(warmup):
        step(*batches[i % len(batches)])
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            t0 = time.perf_counter()
        for i in range(steps):
            step(*batches[i % len(batches)])
        if cuda:
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / steps)
        else:
            times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {name}")
    for model_name in ("wdl", "dcn", "dfm"):
        for batch, dim in ((8192, 16), (8192, 128), (65536, 16)):
            step = yardstick_step(model_name, dim, CRITEO_CARDINALITIES, args.device)
            sec = seconds_per_step(step, criteo_batches(batch, 16, args.device), 20, args.steps, 1)
            print(f"plain PyTorch {model_name} batch={batch} d={dim}: {batch / sec / 1e6:.2f} M samples/s", flush=True)


if __name__ == "__main__":
    main()
