"""A trained model from a checkpoint of one worker or many, as one single-device model.

A checkpoint folder (train/checkpoint.py) holds one `rank-R.pt` per worker and
`meta.json`. Each rank file's `embedding` state holds the rows that rank *owns*
(its primaries: ids, values, versions, optimizer state), taken after a flush
that pushed every pending mirror delta to its owner; mirrors are not saved, as
they are copies whose authority is the owner's primary. Merging is therefore
by global id: every id must be owned by exactly one rank file, whatever the
plan. Example, E = 5, two workers, owner = [0, 1, 1, 0, 1]:

    rank-0.pt  ids [0, 3]     values rows 0, 3
    rank-1.pt  ids [1, 2, 4]  values rows 1, 2, 4     ->  table_ED rows 0..4

Every worker holds the same dense weights (all-reduced every step), so the
model comes from rank 0.

Out-of-vocabulary ids. A raw value that the training data never held has no
row; field f's such values all map to the id `num_ids + f` (one per field,
right after the vocabulary). That row is its own row, initialised like any
other (N(0, 0.01) from the run's seed, `embedding/init.py`); since no training
row holds it, it never received an update and contributes about nothing to
the logit. The scorer's table therefore has num_ids + F rows.

Multi-hot bags. A checkpoint of a run on multi-hot data records its bags
(models/bags.py `Bags.describe()`: bag sizes, each field's global padding id,
sum or mean), and the scorer pools each field's bag as training's evaluation
does: ids (B, L), L = sum(bag_sizes), field by field -> rows (B, L, d) ->
pooled (B, F, d) -> the model. A field's padding id is a real vocabulary id,
left out of the pooling by its value; an out-of-vocabulary id is never a
padding id, so it is pooled like any other id of its bag.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hetgmp.embedding.config import EmbeddingConfig
from hetgmp.embedding.init import initial_rows
from hetgmp.errors import HetGMPError
from hetgmp.models import Bags, build_model, shape_from_record, table_width
from hetgmp.models.bags import pool_rows
from hetgmp.train import checkpoint as ckpt
from hetgmp.train.checkpoint import DamagedCheckpoint
from hetgmp.train.reshard import RowAssembly

_NEEDED = ("model", "embed_dim", "table_width", "num_fields", "num_dense", "num_ids", "world_size", "step")
_MIXED_FIX = "the folder mixes files of different runs: point --checkpoint at the run's own --checkpoint-dir"

DAMAGED_FIX = "point --checkpoint at an earlier step-N folder of the run (or train again)"


class Scorer(nn.Module):
    """(dense_BI float32, ids_BL int64 global ids) -> probabilities_B; `logits` skips the sigmoid.

    L is the number of fields F, or sum(bag_sizes) when `bags` pools multi-hot bags."""

    def __init__(self, model: nn.Module, table_ED: torch.Tensor, bags: Bags | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.bags = bags
        self.register_buffer("table", table_ED)

    def logits(self, dense_BI: torch.Tensor, ids_BL: torch.Tensor) -> torch.Tensor:
        # F.embedding: one aten.embedding in the exported graph, and on the CPU 4x faster than table[ids].
        # Widened first: the pooling and the model run in float32 whatever the table's dtype.
        return self.model(dense_BI, pool_rows(self.bags, F.embedding(ids_BL, self.table).float(), ids_BL))

    def forward(self, dense_BI: torch.Tensor, ids_BL: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(dense_BI, ids_BL))


@dataclass
class TrainedModel:
    """A checkpoint's model on the CPU: dense weights (`model`) and the whole table with its OOV rows."""

    folder: Path
    meta: dict[str, Any]
    model: nn.Module
    table_ED: torch.Tensor  # float32 (num_ids + num_fields, table_width)
    bags: Bags | None = None  # the training data's multi-hot bags; None: one id per field

    @property
    def num_ids(self) -> int:
        return int(self.meta["num_ids"])

    @property
    def fields(self) -> list[int] | None:
        """Field sizes of the training vocabulary (None for checkpoints that predate recording them)."""
        return self.meta.get("fields")

    def same_vocabulary(self, fields: list[int]) -> bool:
        """Whether a dataset of these field sizes has the vocabulary this model was trained on."""
        if self.fields is not None:
            return list(fields) == list(self.fields)
        return sum(fields) == self.num_ids and len(fields) == int(self.meta["num_fields"])

    @property
    def id_columns(self) -> int:
        """Ids per row the scorer takes: one per field, or sum(bag_sizes) for multi-hot bags."""
        return int(self.meta["num_fields"]) if self.bags is None else self.bags.columns

    def oov_id(self, field: int) -> int:
        return self.num_ids + field

    def describe(self) -> str:
        m = self.meta
        bags = "" if self.bags is None else f", {self.bags.mode}-pooled bags of {self.bags.columns} ids a row"
        return f"{m['model']} d={m['embed_dim']}{bags} step {m['step']} ({m['world_size']} worker(s)) from {self.folder}"

    def scorer(self, device: torch.device | str = "cpu", table_dtype: torch.dtype = torch.float32) -> Scorer:
        """A fresh single-device scoring module (its own copy of the weights)."""
        model = _build(self.meta)
        model.load_state_dict(self.model.state_dict())
        return Scorer(model, self.table_ED.to(table_dtype), self.bags).to(device).eval()


def checkpoint_folder(path: str | Path) -> Path:
    """The step folder to load: `path` itself when it is one, else the one its `latest` names."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    if not path.is_dir():
        raise HetGMPError(f"--checkpoint {path} does not exist: give the folder a `hetgmp train` run saved its model to "
                          "(its last line names it: `model saved to ...`), or one of its step-NNNNNN folders")
    folder = ckpt.latest_checkpoint(path)
    if folder is None:
        raise HetGMPError(f"--checkpoint {path} holds no checkpoint (neither a `latest` pointer nor meta.json): give the folder "
                          "a `hetgmp train` run saved its model to, or one of its step-NNNNNN folders")
    return folder


def load_trained(path: str | Path) -> TrainedModel:
    """Load the latest checkpoint in `path` (or the step folder `path`), any number of workers and plan."""
    folder = checkpoint_folder(path)
    meta = ckpt.read_meta(folder)
    missing = [k for k in _NEEDED if k not in meta]
    if missing:
        raise HetGMPError(f"{folder / 'meta.json'} lacks {', '.join(missing)}: it was not written by `hetgmp train`; "
                          "point --checkpoint at a training run's checkpoint folder")
    expected_width = table_width(meta["model"], meta["embed_dim"])
    if expected_width != meta["table_width"]:
        raise HetGMPError(f"{folder / 'meta.json'} says model {meta['model']} d={meta['embed_dim']} (rows {expected_width} wide) "
                          f"but table_width {meta['table_width']}: the checkpoint is damaged; {DAMAGED_FIX}")
    bags = checkpoint_bags(folder, meta)
    model_state, table_ED = merge_rank_files(folder, meta)
    model = _build(meta)
    try:
        model.load_state_dict(model_state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:300]
        raise HetGMPError(f"{folder / 'rank-0.pt'} holds dense weights that do not fit meta.json's {meta['model']} with d={meta['embed_dim']}, "
                          f"{meta['num_fields']} fields and {meta['num_dense']} dense features (torch says: {first}): {_MIXED_FIX}") from e
    table_ED = torch.cat([table_ED, oov_rows(meta)])
    return TrainedModel(folder, meta, model.eval(), table_ED, bags)


def _build(meta: dict[str, Any]) -> nn.Module:
    """The checkpoint's model, in the run's shape (the DLRM family's layer sizes)."""
    shape = shape_from_record(meta["model"], meta.get("shape"))
    return build_model(meta["model"], meta["num_fields"], meta["num_dense"], meta["embed_dim"], shape)


def checkpoint_bags(folder: Path, meta: dict[str, Any]) -> Bags | None:
    """The bags meta.json records (None: one-hot), refused when they do not fit its fields."""
    try:
        bags = Bags.of(meta)
    except (TypeError, ValueError) as e:  # a bag_sizes without its padding, a size below 1, ...
        raise HetGMPError(f"{folder / 'meta.json'} records unreadable bags ({e}): the checkpoint is damaged; {DAMAGED_FIX}") from e
    if bags is not None and len(bags.sizes) != int(meta["num_fields"]):
        raise HetGMPError(f"{folder / 'meta.json'} records bag sizes {list(bags.sizes)} for {len(bags.sizes)} fields but num_fields "
                          f"{meta['num_fields']}: the checkpoint is damaged; {DAMAGED_FIX}")
    return bags


def oov_rows(meta: dict[str, Any]) -> torch.Tensor:
    """The F out-of-vocabulary rows (ids num_ids .. num_ids + F - 1), drawn as any row of the run's table."""
    num_ids, num_fields = int(meta["num_ids"]), int(meta["num_fields"])
    config = EmbeddingConfig(num_ids=num_ids + num_fields, dim=int(meta["table_width"]), seed=int(meta.get("seed", 0)))
    return initial_rows(torch.arange(num_ids, num_ids + num_fields), config, torch.device("cpu"))


def merge_rank_files(folder: Path, meta: dict[str, Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(rank 0's model state, the (E, D) table) from every rank's primaries, merged by global id.

    One rank file is in memory at a time, beside the table being filled.
    """
    num_ids = int(meta["num_ids"])
    table = RowAssembly(folder, torch.arange(num_ids), num_ids, keys=("values",))
    model_state: dict[str, torch.Tensor] = {}
    for rank in range(int(meta["world_size"])):
        state = ckpt.load_rank_state(folder, rank)
        _check_rank_state(folder, rank, state, meta)
        try:
            table.take(rank, state["embedding"])
        except DamagedCheckpoint as e:
            raise HetGMPError(f"{e}; {_MIXED_FIX}") from e
        if rank == 0:
            model_state = state["model"]
    try:
        rows = table.finish()
    except DamagedCheckpoint as e:
        raise HetGMPError(f"{e}; {DAMAGED_FIX}") from e
    return model_state, rows["values"].float()


def _check_rank_state(folder: Path, rank: int, state: dict[str, Any], meta: dict[str, Any]) -> None:
    path = folder / f"rank-{rank}.pt"
    emb = state.get("embedding") if isinstance(state, dict) else None
    if not isinstance(emb, dict) or "ids" not in emb or "values" not in emb or "model" not in state:
        raise HetGMPError(f"{path} holds no model and embedding state: it was not written by `hetgmp train`; {_MIXED_FIX}")
    values = emb["values"]
    if values.dim() != 2 or values.shape[1] != int(meta["table_width"]) or len(values) != len(emb["ids"]):
        raise HetGMPError(f"{path} holds embedding rows of shape {tuple(values.shape)} for {len(emb['ids'])} ids, but meta.json says "
                          f"model {meta['model']} d={meta['embed_dim']}, rows {meta['table_width']} wide: {_MIXED_FIX}")
    if int(state.get("step", -1)) != int(meta["step"]):
        raise HetGMPError(f"{path} was saved at step {state.get('step')} but meta.json says step {meta['step']}: {_MIXED_FIX}")
