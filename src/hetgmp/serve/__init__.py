"""Using a trained model: load a checkpoint of any number of workers, score rows, export.

    trained = load_trained("runs/wdl-20261202-101500")      # a --checkpoint-dir or a step-NNNNNN folder
    scorer = trained.scorer()                                # nn.Module: (dense_BI, ids_BL) -> probabilities_B
    probabilities_B = scorer(dense_BI, ids_BL)               # global ids, as in the dataset arrays (L: F, or
                                                             # sum(bag_sizes) for multi-hot bags, pooled as in training)

`hetgmp predict` (predict.py) streams a dataset split or a raw file through the
scorer; `hetgmp export` (export.py) writes it as a `torch.export` program.
"""

from hetgmp.serve.trained import TrainedModel, load_trained

__all__ = ["TrainedModel", "load_trained"]
