"""hetgmp: graph-partitioned embedding training for CTR models on PyTorch.

The pipeline, one stage per subpackage:

    raw files --data--> arrays --partition--> plan (.npz) --train--> model + metrics
                                                  |
                                     embedding runtime (owners, mirrors, versions)

The Python API, for a model of your own (see hetgmp.layer and the README):

    EmbeddingTable        the table as an nn.Module: forward(ids) -> rows, step() updates them
    init_distributed      join a torchrun/mpirun job (or run alone): the worker's DistContext
    all_reduce_gradients  sum the dense gradients over the workers
    load_dataset          open a dataset folder (meta.json and its arrays, memory-mapped)
    PartitionPlan         a plan written by `hetgmp partition`

They load on first use, so that the command line starts without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "EmbeddingTable": "hetgmp.layer", "all_reduce_gradients": "hetgmp.layer", "DistContext": "hetgmp.distributed",
    "init_distributed": "hetgmp.distributed", "load_dataset": "hetgmp.data.arrays", "PartitionPlan": "hetgmp.partition.plan",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'hetgmp' has no attribute {name!r}")
