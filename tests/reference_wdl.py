"""A standard Wide & Deep, trained the way public CTR libraries train it, as the
yardstick for hetgmp's quality.

Model (DeepCTR / FuxiCTR style), for F sparse fields, I dense features, d = 16:

    wide  = sum_f w[id_f] + linear(dense)               one weight per id ("one-hot" linear part)
    deep  = [flatten(E[ids]) (F*d), dense] -> 256 -> ReLU -> 256 -> ReLU -> 256 -> ReLU -> 1
    logit = wide + deep + bias

Training: nn.Embedding tables with dense gradients, Adam (lr 1e-3) on every
parameter, batch 4096, BCE-with-logits, one epoch over the train split in a
seeded shuffled order; embeddings start at N(0, 1e-4) as in DeepCTR, linear
layers at PyTorch's defaults. The result is sklearn's `roc_auc_score` on the
validation (test) split.

    auc = train_reference_wdl("data/synth1m")          # one epoch, seed 0
    python tests/reference_wdl.py data/synth1m --epochs 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from hetgmp.data.arrays import load_dataset


class ReferenceWDL(nn.Module):
    """forward(dense_BI, ids_BF) -> logits_B."""

    def __init__(self, num_ids: int, num_fields: int, num_dense: int, embed_dim: int = 16, hidden: int = 256):
        super().__init__()
        self.embed = nn.Embedding(num_ids, embed_dim)
        self.wide = nn.Embedding(num_ids, 1)
        nn.init.normal_(self.embed.weight, std=1e-4)
        nn.init.normal_(self.wide.weight, std=1e-4)
        self.wide_dense = nn.Linear(num_dense, 1, bias=False) if num_dense else None
        width = num_fields * embed_dim + num_dense
        self.deep = nn.Sequential(
            nn.Linear(width, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1, bias=False),
        )
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, dense_BI: torch.Tensor, ids_BF: torch.Tensor) -> torch.Tensor:
        wide_B = self.wide(ids_BF).sum((1, 2))
        if self.wide_dense is not None:
            wide_B = wide_B + self.wide_dense(dense_BI).squeeze(1)
        deep_B = self.deep(torch.cat([self.embed(ids_BF).flatten(1), dense_BI], 1)).squeeze(1)
        return wide_B + deep_B + self.bias


def _tensors(split, rows: np.ndarray | slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(np.asarray(split.dense[rows], dtype=np.float32)),
        torch.from_numpy(np.asarray(split.sparse[rows], dtype=np.int64)),
        torch.from_numpy(np.asarray(split.labels[rows], dtype=np.float32)),
    )


@torch.no_grad()
def predict(model: ReferenceWDL, split, batch_size: int = 65536) -> np.ndarray:
    """Click probabilities for every row of a split, in order."""
    model.eval()
    out = [torch.sigmoid(model(*_tensors(split, slice(i, i + batch_size))[:2])) for i in range(0, len(split), batch_size)]
    model.train()
    return torch.cat(out).numpy()


def train_reference_wdl(data_dir: str | Path, epochs: int = 1, batch_size: int = 4096, lr: float = 1e-3,
                        embed_dim: int = 16, seed: int = 0, verbose: bool = False) -> float:
    """Train the reference on DIR's train split; return the validation AUC (sklearn)."""
    torch.manual_seed(seed)
    data = load_dataset(data_dir, mmap=False)
    meta, train = data.meta, data.train
    model = ReferenceWDL(meta.num_ids, meta.num_fields, train.dense.shape[1], embed_dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(len(train))
        for step, first in enumerate(range(0, len(order), batch_size)):
            dense, ids, labels = _tensors(train, np.sort(order[first:first + batch_size]))
            loss = nn.functional.binary_cross_entropy_with_logits(model(dense, ids), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if verbose and step % 50 == 0:
                print(f"reference epoch {epoch} step {step} loss {loss.item():.4f} {time.perf_counter() - start:.0f}s", flush=True)
    return float(roc_auc_score(data.test.labels, predict(model, data.test)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="dataset directory (hetgmp prepare / synth)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--embed-dim", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    auc = train_reference_wdl(args.data, args.epochs, args.batch_size, args.lr, args.embed_dim, args.seed, verbose=True)
    print(f"reference Wide&Deep validation AUC {auc:.6f}")


if __name__ == "__main__":
    main()
