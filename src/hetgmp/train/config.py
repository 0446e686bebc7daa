"""TrainConfig: every knob of `hetgmp train`, in one typed dataclass.

Each field's `help` metadata becomes the flag's `--help` text, so the flags,
their defaults and their documentation live in one place. The defaults are
the settings that train best per epoch; `examples/hetuctr.py` overrides them
with the original's (SGD everywhere, the original's learning rates).

    parser = argparse.ArgumentParser()
    add_config_flags(parser)              # --data, --model, --batch-size (and --batch_size) ...
    cfg = config_from_args(parser.parse_args(["--data", "ds", "--iter", "100"]))
    cfg.batch_size == 4096

Why these defaults (one epoch of WDL d=16 on 1M synthetic rows,
`benchmarks/quality_study.py`): Adam 1e-3 on the dense layers with row-wise
Adagrad 0.1 on the table reached AUC 0.8095/0.8092/0.8095 over three seeds,
against 0.8081/0.8088 for a standard Wide&Deep (Adam on everything, dense
embedding gradients, batch 4096); table rate 0.05 was seed-sensitive
(0.8059-0.8094), batch 8192 gave 0.8065, the original's SGD 0.01 barely moves
in one epoch (0.53). The DLRM family trains best with other rates
(MODEL_RATES; the grid and its AUCs are in BENCHMARKS.md): both want a
slower table, DCNv2 a slower Adam too.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from hetgmp.choices import AMP_MODES, DENSE_OPTIMIZERS, DEVICES, POOL_MODES, SHAPE_PRESETS, SPARSE_OPTIMIZERS, STEPS
from hetgmp.cliflags import ABOVE_ZERO, FRACTION, NON_NEGATIVE, POSITIVE, SEED, Range, add_flag
from hetgmp.errors import HetGMPError
from hetgmp.train.tensorboard import require_tensorboard



# The dense and table learning rates of a model whose best per epoch differ from WDL's (lr 1e-3,
# sparse_lr 0.1): `benchmarks/quality_study.py --model M`, one epoch at d = 16 on 1M synthetic rows.
DEFAULT_RATES = {"lr": 1e-3, "sparse_lr": 0.1}
MODEL_RATES: dict[str, dict[str, float]] = {"dlrm": {"sparse_lr": 0.01}, "dcnv2": {"lr": 1e-4, "sparse_lr": 0.02}}


def _f(default: Any, help: str, **flag: Any) -> Any:
    """A field whose metadata carries its CLI help and extra argparse options
    (`range=`: the values a numeric field accepts, checked at parse time and by validate())."""
    return field(default=default, metadata={"help": help, **flag})


@dataclass
class TrainConfig:
    data: str = _f(None, "dataset directory (from `hetgmp prepare` or `hetgmp synth`)", required=True)
    model: str = _f("wdl", "model: wdl (Wide&Deep), dcn (Deep&Cross), dfm (DeepFM), dlrm (DLRM, dot interaction) or dcnv2 "
                    "(DCN V2: cross layers x0 * (W x + b) + x, W full or of low rank U V^T, and a deep tower)")
    embed_dim: int = _f(16, "embedding dimension d (DeepFM's table is d+1 wide)", range=POSITIVE)
    model_shape: str | None = _f(None, "dlrm and dcnv2: the layer sizes to start from: default (the sizes that train "
                                 "best per epoch) or mlperf (MLPerf's DLRM and DLRM-DCNv2: bottom 512-256-d, top "
                                 "1024-1024-512-256-1, 3 cross layers of rank 512); the four flags below change single "
                                 "sizes", choices=SHAPE_PRESETS)
    bottom_mlp: str | None = _f(None, "dlrm and dcnv2: hidden widths of the bottom MLP on the dense features, "
                                "comma-separated (it ends in d), e.g. 512,256,64; by default the --model-shape preset's")
    top_mlp: str | None = _f(None, "dlrm and dcnv2: hidden widths of the top MLP, comma-separated (it ends in one "
                             "logit), e.g. 512,256; by default the preset's")
    cross_layers: int | None = _f(None, "dcnv2 only: number of cross layers (by default the preset's)", range=NON_NEGATIVE)
    cross_rank: int | None = _f(None, "dcnv2 only: rank of each cross layer's W = U V^T (by default the preset's; 0, "
                                "or a rank of at least the width K, is a full K x K matrix)", range=NON_NEGATIVE)
    bag_pooling: str = _f("sum", "how a multi-hot field's bag of rows becomes one (sum, as MLPerf's DLRM, or mean); "
                          "padding ids are left out of both", choices=POOL_MODES)
    batch_size: int = _f(4096, "samples per step on each worker", range=POSITIVE)
    iter: int | None = _f(None, "training steps (overrides --epochs)", range=POSITIVE)
    epochs: float | None = _f(None, "passes over the training split (default 1 when --iter is not given)", range=ABOVE_ZERO)
    partition: str | None = _f(None, "plan .npz from `hetgmp partition` (default: random owners, contiguous data shards)")
    store_rate: float = _f(0.01, "fraction of each worker's ranked candidate list kept as mirrors (needs --partition)", range=FRACTION)
    bound: int = _f(0, "staleness bound in updates; 0 = synchronous (BSP)", range=NON_NEGATIVE)
    val: bool = _f(False, "evaluate on the test split every --eval-every steps and at the end")
    eval_every: int = _f(0, "steps between evaluations (0: only at the end)", range=NON_NEGATIVE)
    log_every: int = _f(100, "steps between TRAIN lines", range=POSITIVE)
    output: str | None = _f(None, "log file receiving the TRAIN/EVAL lines")
    metrics: str | None = _f(None, "JSONL metrics file (one object per TRAIN/EVAL line)")
    tensorboard: str | None = _f(None, "directory for TensorBoard event files of the --metrics scalars (needs tensorboard: pip install 'hetgmp[tensorboard]')")
    checkpoint_dir: str | None = _f(None, "directory for checkpoints (step-NNNNNN/ folders and a `latest` pointer)")
    checkpoint_every: int = _f(0, "steps between checkpoints (0: only at the end)", range=NON_NEGATIVE)
    resume: bool = _f(False, "continue from the newest intact checkpoint in --checkpoint-dir")
    force: bool = _f(False, "start over in a --checkpoint-dir that holds checkpoints (this run's saves replace them)")
    nproc: int = _f(1, "start this many local workers (ignored under torchrun/mpirun, which start them)", range=POSITIVE)
    device: str = _f("auto", "cpu, cuda or auto (CUDA when available)", choices=DEVICES)
    seed: int = _f(0, "seed for weights, embedding rows, random placement and data order", range=SEED)
    optimizer: str = _f("adam", "optimizer of the dense layers", choices=DENSE_OPTIMIZERS)
    lr: float | None = _f(None, "learning rate of the dense layers (0 freezes them; default 1e-3, dcnv2 1e-4)", range=NON_NEGATIVE)
    sparse_optimizer: str = _f("rowwise_adagrad", "optimizer of the embedding table", choices=SPARSE_OPTIMIZERS)
    sparse_lr: float | None = _f(None, "learning rate of the embedding table (0 freezes it; default 0.1, dlrm 0.01, "
                                 "dcnv2 0.02)", range=NON_NEGATIVE)
    progress: bool | None = _f(None, "a progress bar on rank 0's stderr; by default only when stderr is a terminal "
                               "(in a log file the TRAIN lines every --log-every steps show progress)")
    skip_nonfinite: bool = _f(False, "skip a worker's batch whose loss or gradients are NaN/inf (counted as skipped_batches) instead of stopping the run")
    step: str = _f("auto", "training step: fast (the whole step with fixed shapes, one CUDA graph on a GPU, eager on "
                   "CPU; on several workers the sharded fast step), general (autograd through the same table, step by "
                   "step, the reference the fast steps are tested against) or auto (= fast; the start-up line says "
                   "which runs)", choices=STEPS)
    amp: str = _f("none", "bf16: the model's forward in bf16 autocast (fast step only; the table, the weights and "
                  "the optimizers stay fp32)", choices=AMP_MODES)
    compile: bool = _f(False, "torch.compile the model inside the fast step (compiled during its warm-up steps)")
    autotune: bool = _f(False, "with --compile on a GPU: time inductor's Triton matmul kernels against cuBLAS's for each of "
                        "the model's matmuls and keep the fastest, bias and ReLU fused in (about a minute more to compile "
                        "on the first run, cached after; DLRM 1.3x faster on an H200)")

    def __post_init__(self) -> None:
        """The model's learning rates where none is given (MODEL_RATES)."""
        for name, value in {**DEFAULT_RATES, **MODEL_RATES.get(self.model, {})}.items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    def validate(self) -> None:
        """Reject values no run could use, naming the flag."""
        for f in dataclasses.fields(self):
            bounds: Range | None = f.metadata.get("range")
            value = getattr(self, f.name)
            problem = bounds.problem(value) if bounds and value is not None else None
            if problem:
                raise HetGMPError(f"--{f.name.replace('_', '-')} {problem}")
        self.shape()
        if self.resume and not self.checkpoint_dir:
            raise HetGMPError("--resume needs --checkpoint-dir DIR (the directory the interrupted run saved to)")
        if self.autotune and not self.compile:
            raise HetGMPError("--autotune picks the compiled model's matmul kernels: add --compile, or drop --autotune")
        if self.tensorboard:
            require_tensorboard()
        self.choose_step(self.nproc)

    def shape(self) -> Any:
        """The model's `shape=` (build_model) from --model-shape and the single sizes; None: its default."""
        from hetgmp.models import shape_from_flags  # (torch: not imported for --help)

        return shape_from_flags(self.model, self.model_shape, self.bottom_mlp, self.top_mlp, self.cross_layers, self.cross_rank)

    def choose_step(self, world_size: int) -> tuple[str, str]:
        """("fast" or "general", why) for a run on `world_size` workers (every option runs on the fast
        step; --step general asks for the eager one); raises on fast-step-only flags with --step general."""
        if self.step == "general":
            fast_only = [flag for flag, on in ((f"--amp {self.amp}", self.amp != "none"), ("--compile", self.compile),
                                               ("--autotune", self.autotune)) if on]
            if fast_only:
                raise HetGMPError(f"only the fast step takes {' and '.join(fast_only)}, and this run takes the general step "
                                  f"(--step general): drop {'them' if len(fast_only) > 1 else 'it'}")
            return "general", "--step general"
        workers = "one worker" if world_size == 1 else f"{world_size} workers, sharded"
        return "fast", f"--step {self.step}, {workers}"

    def config_hash(self) -> str:
        """Short hash of every setting that changes what one step computes."""
        keys = ("model", "embed_dim", "model_shape", "bottom_mlp", "top_mlp", "cross_layers", "cross_rank", "bag_pooling", "batch_size", "optimizer", "lr", "sparse_optimizer", "sparse_lr", "bound", "store_rate", "seed",
                "step", "amp", "compile", "autotune")
        text = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def add_config_flags(parser: argparse.ArgumentParser, defaults: dict[str, Any] | None = None) -> None:
    """Add one flag per TrainConfig field (`--batch-size` and `--batch_size`)."""
    defaults = defaults or {}
    for f in dataclasses.fields(TrainConfig):
        meta = dict(f.metadata)
        help_text = meta.pop("help")
        default = defaults.get(f.name, f.default)
        flag = "--" + f.name.replace("_", "-")
        if str(f.type).split(" | ")[0] == "bool":
            add_flag(parser, flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        kind = {"int": int, "float": float, "str": str}[str(f.type).split(" | ")[0]]
        add_flag(parser, flag, type=kind, default=default, help=help_text, **meta)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build and validate a TrainConfig from parsed flags (extra attributes are ignored)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg


def config_to_argv(cfg: TrainConfig, skip: tuple[str, ...] = ("nproc",)) -> list[str]:
    """Flags that rebuild `cfg` (what `--nproc` hands each worker it starts).

    Example: TrainConfig(data="ds", iter=5) -> ["--data", "ds", "--model", "wdl", ..., "--iter", "5", ...].
    """
    argv: list[str] = []
    for f in dataclasses.fields(TrainConfig):
        value = getattr(cfg, f.name)
        flag = "--" + f.name.replace("_", "-")
        if f.name in skip or value is None:
            continue
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return argv
