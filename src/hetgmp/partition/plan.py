"""The plan file: the original's .npz keys plus our metadata, and the API the trainer uses.

Keys of plan.npz (P parts, E ids, N train samples):

    embed_partition   int32[E]   owner part of every id of the vocabulary
    data_partition    int32[N]   part (worker) of every train sample
    "0" .. "P-1"      int32[L_p] part p's ranked candidate (mirror) list: every id
                                 p does not own, read ids first (priority.py)
    meta_json         str        the metadata below, as one JSON string
    parts, gpus_per_node, rounds, batch_size, seed, num_ids, train_rows,
    store_rate, costs (float64[rounds + 1])   the same numbers as plain arrays

Everything loads with `np.load(path, allow_pickle=False)`, so the original
training script (`np.load(path)["embed_partition"]`, `[str(i)]`) reads it
unchanged. Example: with P = 2, E = 5, N = 4 a plan could be
embed_partition [0, 1, 1, 0, 1], data_partition [1, 0, 0, 1],
"0" = [2, 4, 1] (part 0 reads ids 4 and 2 from part 1, 2 ranked first, and never
reads 1), "1" = [0, 3].

With `compact_lists` (`hetgmp partition --compact-lists`) each list is cut
after its read ids (meta `read_candidates[p]` of them) and the never-read
tail, every other non-owned id in ascending order, is rebuilt on load; the
mirror count still comes from the whole length (meta `list_lengths`). The
original's script would see the shorter lists, so this is not the default.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hetgmp.atomic import atomic_file
from hetgmp.data.arrays import DatasetMeta
from hetgmp.errors import HetGMPError
from hetgmp.partition.graph import fingerprint_ids
from hetgmp.partition.priority import mirror_count

SCALAR_KEYS = ("parts", "gpus_per_node", "rounds", "batch_size", "seed", "num_ids", "train_rows", "store_rate")


@dataclass
class PartitionPlan:
    """A loaded or freshly made partition. `lists[p]` is part p's candidate list."""

    embed_partition: np.ndarray
    data_partition: np.ndarray
    lists: list[np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def parts(self) -> int:
        return len(self.lists)

    def _part(self, part: int) -> int:
        if not 0 <= part < self.parts:
            raise HetGMPError(f"part {part} does not exist: this plan has parts 0..{self.parts - 1}")
        return part

    def list_length(self, part: int) -> int:
        """Length of part `part`'s whole candidate list (also when stored compactly)."""
        if self.meta.get("compact_lists"):
            return int(self.meta["list_lengths"][self._part(part)])
        return len(self.lists[self._part(part)])

    def candidates(self, part: int) -> np.ndarray:
        """Part `part`'s ranked candidate list: every id it does not own, read ids first."""
        head = self.lists[self._part(part)]
        if len(head) == self.list_length(part):
            return head
        never_read = self.embed_partition != part
        never_read[head] = False
        return np.concatenate([head, np.flatnonzero(never_read).astype(head.dtype)])

    def mirror_ids(self, part: int, store_rate: float) -> np.ndarray:
        """The ids part `part` mirrors: the first floor(store_rate * len(list)) candidates."""
        if not 0.0 <= store_rate <= 1.0:
            raise HetGMPError(f"store rate {store_rate} is outside [0, 1]: pass e.g. --store-rate 0.01 for 1% mirrors")
        count = mirror_count(self.list_length(part), store_rate)
        head = self.lists[self._part(part)]
        return head[:count] if count <= len(head) else self.candidates(part)[:count]

    def stored_lists(self) -> list[np.ndarray]:
        """The lists as save() writes them: whole, or cut after the read ids when compact."""
        if not self.meta.get("compact_lists"):
            return self.lists
        return [lst[:n] for lst, n in zip(self.lists, self.meta["read_candidates"])]

    def stored_bytes(self) -> int:
        """Bytes of the arrays save() writes (the .npz is uncompressed: its size, give or take headers)."""
        lists = sum(lst.nbytes for lst in self.stored_lists())
        return lists + 4 * (len(self.embed_partition) + len(self.data_partition))

    def save(self, path: str | Path) -> None:
        """Write the .npz under a temporary name and rename it when complete."""
        arrays: dict[str, np.ndarray] = {
            "embed_partition": self.embed_partition.astype(np.int32, copy=False),
            "data_partition": self.data_partition.astype(np.int32, copy=False),
            "meta_json": np.array(json.dumps(self.meta, sort_keys=True)),
        }
        arrays.update({str(p): lst for p, lst in enumerate(self.stored_lists())})
        arrays.update({k: np.array(self.meta[k]) for k in SCALAR_KEYS if k in self.meta})
        arrays["costs"] = np.asarray(self.meta.get("costs", []), dtype=np.float64)
        with atomic_file(path) as tmp:
            np.savez(tmp, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "PartitionPlan":
        """Read a plan written by `hetgmp partition` (or the original's partition.py)."""
        path = Path(path)
        if not path.is_file():
            raise HetGMPError(f"partition file {path} not found: run `hetgmp partition DIR --parts P --output {path}`")
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = set(z.files)
                if not {"embed_partition", "data_partition"} <= keys:
                    raise HetGMPError(f"{path} lacks embed_partition / data_partition (keys: {sorted(keys)}): re-run `hetgmp partition`")
                parts = sum(1 for k in keys if k.isdigit())
                lists = [z[str(p)] for p in range(parts)]
                meta = json.loads(str(z["meta_json"])) if "meta_json" in keys else {"parts": parts}
                return cls(z["embed_partition"], z["data_partition"], lists, meta)
        except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise HetGMPError(f"{path} is not a readable partition file (expected an .npz archive; {e}): it is truncated or corrupt; re-run `hetgmp partition`") from e

    def check(self, dataset_meta: DatasetMeta, world_size: int, gpus_per_node: int | None = None, train_ids: np.ndarray | None = None,
              data: str | Path | None = None) -> None:
        """Raise HetGMPError, saying what to re-run, if this plan does not fit the run.

        Checks the part count against `world_size`, the vocabulary size and
        train rows against `dataset_meta`, the GPUs per node the plan was
        weighted for (when given) and, with `train_ids`, the dataset fingerprint.
        The fix partitions the run's own dataset, `data` (its --data).
        """
        made_for = self.meta.get("data")
        planned_for = f" (the plan was made for {made_for})" if made_for is not None and str(made_for) != str(data) else ""
        rerun = f"`hetgmp partition {data if data is not None else 'DIR'} --parts {world_size} --output PLAN.npz`{planned_for}"
        if self.parts != world_size:
            raise HetGMPError(f"partition has {self.parts} parts but {world_size} workers were started: re-run {rerun} or start {self.parts} workers")
        mismatches = [
            ("vocabulary size (num_ids)", len(self.embed_partition), dataset_meta.num_ids),
            ("train rows", len(self.data_partition), dataset_meta.train_rows),
        ]
        if gpus_per_node is not None and "gpus_per_node" in self.meta:
            mismatches.append(("GPUs per node", self.meta["gpus_per_node"], gpus_per_node))
        if train_ids is not None and "fingerprint" in self.meta:
            mismatches.append(("dataset fingerprint", self.meta["fingerprint"], fingerprint_ids(train_ids, dataset_meta.num_ids)))
        for what, planned, actual in mismatches:
            if planned != actual:
                raise HetGMPError(
                    f"partition {what} is {planned} but the run has {actual}: the plan was made for other data or another "
                    f"cluster shape; re-run {rerun}" + (f" --gpus-per-node {gpus_per_node}" if what == "GPUs per node" else "")
                )
