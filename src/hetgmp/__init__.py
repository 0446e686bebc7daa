"""hetgmp: graph-partitioned embedding training for CTR models on PyTorch.

The pipeline, one stage per subpackage:

    raw files --data--> arrays --partition--> plan (.npz) --train--> model + metrics
                                                  |
                                     embedding runtime (owners, mirrors, versions)
"""

__version__ = "0.1.0"
