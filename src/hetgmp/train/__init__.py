"""The trainer behind `hetgmp train` and `examples/hetuctr.py`.

    from hetgmp.train.config import TrainConfig
    from hetgmp.train.loop import train
    train(TrainConfig(data="data/synth", model="wdl", epochs=1, val=True))

Modules, in the order a run uses them: config (TrainConfig and its flags),
launch (`--nproc N` local workers), setup (data, plan, model, embedding,
optimizers), data (each worker's rows and batches), loop (train ->
train_loop -> train_step), evaluate (exact AUC over all workers), logs
(TRAIN/EVAL lines, metrics JSONL), checkpoint. This package file imports
nothing, so the CLI can read TrainConfig's flags without loading torch.
"""
