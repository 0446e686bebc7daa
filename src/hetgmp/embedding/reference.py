"""A dense reference trainer and a toy model, to hold the runtime to plain synchronous SGD.

The equivalence checks (tests and `benchmarks/check_embedding_nccl.py`) train
a toy CTR model -- one linear layer on the flattened embeddings, BCE loss --
for a few steps two ways:

  - `reference_run`: one process, an ordinary dense (E, D) tensor with
    autograd, the optimizer written out densely (rows without gradient do
    not move: their gradient and accumulator increment are zero);
  - `train_toy`: the contract's loop on any table from `build_embedding`,
    each worker taking its slice of every global batch.

With bound 0 both must end with the same rows and dense weights.

    batches[t]: int64 (P x B, F) global batch of step t; worker r takes rows
                r*B .. (r+1)*B-1, labels likewise.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from hetgmp.embedding.config import EmbeddingConfig
from hetgmp.embedding.init import initial_rows
from hetgmp.embedding.placement import Placement


def skewed_batches(num_ids: int, steps: int, rows: int, fields: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps, rows, fields) ids drawn with a power-law skew (hot ids collide), and 0/1 labels."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_ids)
    ids = perm[(num_ids * rng.random((steps, rows, fields)) ** 3).astype(np.int64)]
    return ids, rng.integers(0, 2, size=(steps, rows)).astype(np.float32)


def plan_like(ids: np.ndarray, num_ids: int, world_size: int, store_rate: float, seed: int = 5) -> Placement:
    """A hand-made plan: seeded owners; each rank mirrors its most-read remote ids (top `store_rate`)."""
    owner = np.random.default_rng(seed).integers(0, world_size, num_ids).astype(np.int16)
    rows = ids.shape[1] // world_size
    lists = []
    for rank in range(world_size):
        reads = np.bincount(ids[:, rank * rows : (rank + 1) * rows].ravel(), minlength=num_ids)
        remote = np.nonzero((owner != rank) & (reads > 0))[0]
        lists.append(remote[np.argsort(-reads[remote], kind="stable")])
    return Placement.from_plan(owner, lists, store_rate)


def toy_model(fields: int, dim: int, seed: int, device: torch.device) -> torch.nn.Linear:
    """The dense part: one linear layer on the flattened embeddings, identical on every worker."""
    torch.manual_seed(seed)
    return torch.nn.Linear(fields * dim, 1).to(device)


def _loss(model: torch.nn.Module, emb_BFD: torch.Tensor, labels_B: torch.Tensor) -> torch.Tensor:
    logits = model(emb_BFD.flatten(1)).squeeze(1)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels_B)


def reference_run(
    config: EmbeddingConfig, ids: np.ndarray, labels: np.ndarray, dense_lr: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synchronous training on whole global batches with a dense table: (table, dense weight)."""
    table = initial_rows(torch.arange(config.num_ids), config, device).requires_grad_(True)
    acc = torch.full((config.num_ids,), config.adagrad_init, device=device)
    model = toy_model(ids.shape[2], config.dim, config.seed, device)
    for t in range(ids.shape[0]):
        batch = torch.as_tensor(ids[t], device=device)
        loss = _loss(model, table[batch], torch.as_tensor(labels[t], device=device))
        model.zero_grad()
        table.grad = None
        loss.backward()
        with torch.no_grad():
            grad = table.grad
            if config.adagrad:
                acc += grad.pow(2).mean(dim=1)
                table -= config.lr * grad / (acc.sqrt() + config.adagrad_eps).unsqueeze(1)
            else:
                table -= config.lr * grad
            for p in model.parameters():
                p -= dense_lr * p.grad
    return table.detach(), model.weight.detach().clone()


def train_toy(emb, ids: np.ndarray, labels: np.ndarray, dense_lr: float, rank: int, world_size: int,
              device: torch.device, hook: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """The contract's loop on this worker's slices of the global batches; returns the dense weight.

    The dense all-reduce is started (async_op=True) before emb.step() and
    waited for after it: the table exchanges rows over its own process group,
    so the two overlap.

    `hook(t, ids_BF, grad_BFD)`, if given, runs after each emb.step() with the
    step's ids and the gradient of its embeddings (for instrumented checks)."""
    rows = ids.shape[1] // world_size
    local = [torch.as_tensor(ids[t, rank * rows : (rank + 1) * rows], device=device) for t in range(ids.shape[0])]
    model = toy_model(ids.shape[2], emb.config.dim, emb.config.seed, device)
    for t, batch in enumerate(local):
        label = torch.as_tensor(labels[t, rank * rows : (rank + 1) * rows], device=device)
        model.zero_grad()
        out = emb(batch)
        out.retain_grad()
        (_loss(model, out, label) / world_size).backward()
        params = list(model.parameters())
        works = [dist.all_reduce(p.grad, async_op=True) for p in params] if world_size > 1 else []
        emb.step(next_ids=local[t + 1] if t + 1 < len(local) else None)
        for work in works:
            work.wait()
        with torch.no_grad():
            for p in params:
                p -= dense_lr * p.grad
        if hook is not None:
            hook(t, batch, out.grad)
    return model.weight.detach().clone()
