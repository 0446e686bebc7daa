"""The fast path: fixed-shape training steps, CUDA-graph captured.

    fast = FastStep(model, table_ED, FastStepConfig(lr=0.01, dense_lr=0.01))
    loss = fast.step(dense_BI, ids_BF, labels_B)

`FastStep` trains one worker's whole table; `ShardedFastStep` its share of a
table split over workers (hetgmp.embedding.ShardedTable's stages, the whole
step one graph, SGD or row-wise Adagrad).
`ReferenceStep` trains the same way with plain autograd; tests and the GPU
benchmark hold `FastStep` to it.
"""

from hetgmp.fastpath.reference import ReferenceStep
from hetgmp.fastpath.sharded_step import ShardedFastStep, ShardedStepConfig
from hetgmp.fastpath.config import AMP_MODES, DENSE_OPTIMIZERS, SPARSE_OPTIMIZERS, FastStepConfig
from hetgmp.fastpath.step import FastStep

__all__ = ["AMP_MODES", "DENSE_OPTIMIZERS", "SPARSE_OPTIMIZERS", "FastStep", "FastStepConfig", "ReferenceStep",
           "ShardedFastStep", "ShardedStepConfig"]
