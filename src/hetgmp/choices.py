"""The names a run chooses among, each list defined once (no torch: the CLI's flags read them).

    DENSE_OPTIMIZERS       --optimizer, the dense layers' (every step takes each)
    SPARSE_OPTIMIZERS      --sparse-optimizer, the embedding table's (every step trains both)
    AMP_MODES              --amp, autocast of the fast steps' forward
    STEPS                  --step: auto picks the fast step where it can run
    DEVICES                --device
    POOL_MODES             --bag-pooling, how a multi-hot bag becomes one row (models/bags.py)
    SHAPE_PRESETS          --model-shape, the DLRM family's layer sizes to start from (models/shapes.py)
"""

DENSE_OPTIMIZERS = ("sgd", "adam", "adagrad")
SPARSE_OPTIMIZERS = ("sgd", "rowwise_adagrad")
AMP_MODES = ("none", "bf16")
STEPS = ("auto", "fast", "general")
DEVICES = ("cpu", "cuda", "auto")
POOL_MODES = ("sum", "mean")
SHAPE_PRESETS = ("default", "mlperf")
