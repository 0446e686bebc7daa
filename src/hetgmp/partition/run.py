"""`hetgmp partition` end to end: load, random start, rounds, priority, plan, summary.

    result = partition_dataset("data/criteo", PartitionConfig(parts=8))
    result.plan.save("plan.npz"); result.summary["remote_rows_per_batch"]

The engine is refine.py (`algorithm="fast"`, numba on the CPU), torch_refine.py
(`device="cuda"`, or "cpu" torch for tests) or reference.py
(`algorithm="original"`). All of them update one PartitionState, so the cost,
priority and summary code below is shared.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from hetgmp.errors import HetGMPError
from hetgmp.partition import cost, reference, refine, report
from hetgmp.partition.graph import Bigraph, describe, load_bigraph
from hetgmp.partition.plan import PartitionPlan
from hetgmp.partition.priority import RANKINGS, Ranking, candidate_lists, mirror_count
from hetgmp.partition.state import PartitionState, random_state


@dataclass(frozen=True)
class PartitionConfig:
    """The `hetgmp partition` flags (see commands/partition.py for their help)."""

    parts: int
    rounds: int = 5
    batch_size: int = 8192
    gpus_per_node: int = 8
    store_rate: float = 0.01
    seed: int = 0
    device: str = "cpu"  # "cpu": numba; "cuda" (or "torch-cpu" in tests): torch_refine
    algorithm: str = "fast"  # "fast" or "original"
    ranking: str = "staleness"  # mirror ranking: "staleness" or "original" (priority.py)
    bound: int = 100  # the staleness bound the "staleness" ranking assumes
    compact_lists: bool = False  # store each list's read ids only (plan.py)
    refine: refine.RefineConfig = field(default_factory=refine.RefineConfig)

    def validate(self, graph: Bigraph) -> None:
        checks = [
            (self.parts >= 1, f"--parts must be at least 1, got {self.parts}"),
            (self.parts <= graph.num_samples, f"--parts {self.parts} is more than the {graph.num_samples} train samples of {graph.path}: use at most {graph.num_samples} parts"),
            (0.0 <= self.store_rate <= 1.0, f"--store-rate must lie in [0, 1] (a fraction of each part's candidate list), got {self.store_rate}: e.g. 0.01 for 1%"),
            (self.rounds >= 0, f"--rounds must be >= 0, got {self.rounds}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.gpus_per_node >= 1, f"--gpus-per-node must be >= 1, got {self.gpus_per_node}"),
            (self.algorithm in ("fast", "original"), f"--algorithm must be fast or original, got {self.algorithm}"),
            (self.algorithm == "fast" or self.device == "cpu", "--algorithm original runs on the CPU only: drop --device cuda"),
            (self.ranking in RANKINGS, f"--ranking must be one of {', '.join(RANKINGS)}, got {self.ranking}"),
            (self.bound >= 0, f"--bound must be >= 0 (the staleness bound the ranking assumes), got {self.bound}"),
        ]
        for ok, message in checks:
            if not ok:
                raise HetGMPError(message)


@dataclass
class PartitionResult:
    plan: PartitionPlan
    summary: dict
    traffic_random: np.ndarray
    traffic_partitioned: np.ndarray


class _NumbaEngine:
    def __init__(self, state: PartitionState, config: PartitionConfig) -> None:
        self.state, self.config = state, config
        self.refiner = refine.Refiner(state, config.refine) if config.algorithm == "fast" else None

    def run_round(self) -> tuple[int, int]:
        if self.refiner is None:
            return reference.run_round(self.state)
        return self.refiner.run_round()

    def traffic(self) -> np.ndarray:
        return self.state.traffic()

    def balance(self) -> tuple[np.ndarray, np.ndarray]:
        return self.state.sizes, self.state.rows

    def finish(self) -> PartitionState:
        return self.state


def _engine(state: PartitionState, config: PartitionConfig):
    if config.device == "cpu":
        return _NumbaEngine(state, config)
    from hetgmp.partition.torch_refine import TorchRefiner

    device = "cpu" if config.device == "torch-cpu" else config.device
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise HetGMPError("--device cuda was given but PyTorch sees no CUDA device: run on a GPU machine or pass --device cpu")
    with warnings.catch_warnings():  # the ids are a read-only memory map; torch only reads them
        warnings.simplefilter("ignore", UserWarning)
        return TorchRefiner(state, config.refine, device)


def _refine(state: PartitionState, config: PartitionConfig, out: Callable[[str], None]) -> tuple[list[float], np.ndarray, np.ndarray]:
    """Run the rounds, printing each; returns (costs per round incl. the start, comm before, comm after)."""
    engine = _engine(state, config)
    comm0 = engine.traffic()
    costs = [cost.total_cost(comm0, state.weights)]
    out(report.start_line(costs[0], comm0))
    comm = comm0
    for r in range(config.rounds):
        t = time.perf_counter()
        moved = engine.run_round()
        comm = engine.traffic()
        costs.append(cost.total_cost(comm, state.weights))
        sizes, rows = engine.balance()
        out(report.round_block(r + 1, config.rounds, costs, comm, sizes, rows, moved, time.perf_counter() - t))
    engine.finish()
    return costs, comm0, comm


def partition_dataset(data: str | Path, config: PartitionConfig, out: Callable[[str], None] = print) -> PartitionResult:
    """Partition DIR's train graph; print progress through `out`; return the plan and summary."""
    t0 = time.perf_counter()
    graph = load_bigraph(data)
    config.validate(graph)
    out(describe(graph))
    state = random_state(graph.ids, graph.num_ids, config.parts, config.batch_size, config.gpus_per_node, config.seed)
    t1 = time.perf_counter()
    costs, comm0, comm = _refine(state, config, out)
    t2 = time.perf_counter()
    ranking = Ranking(config.ranking, config.bound, state.batch / state.m)
    lists, priorities = candidate_lists(state.counts, state.owner, state.deg, state.soft, state.weights, ranking)
    mirrors = [lst[: mirror_count(len(lst), config.store_rate)] for lst in lists]
    mirrored = cost.mirrored_rows(state.counts, mirrors, state.soft, state.m, state.batch)
    t3 = time.perf_counter()
    seconds = {"load_and_start": t1 - t0, "refine": t2 - t1, "priority": t3 - t2}
    lists_meta = {"list_lengths": [len(x) for x in lists], "read_candidates": [len(x) for x in priorities]}
    summary = _summary(graph, config, state, costs, comm0, comm, mirrored, [len(m) for m in mirrors], seconds)
    meta = {k: summary[k] for k in ("parts", "gpus_per_node", "rounds", "batch_size", "seed", "num_ids", "train_rows", "store_rate",
                                    "costs", "fingerprint", "data", "algorithm", "ranking", "bound", "compact_lists")}
    plan = PartitionPlan(state.owner.copy(), state.part.copy(), lists, {**meta, **lists_meta})
    summary.update(lists_meta, plan_bytes=plan.stored_bytes())
    out(report.final_line(summary))
    out(report.plan_size_line(summary))
    return PartitionResult(plan, summary, comm0, comm)


def _rows_stat(comm: np.ndarray) -> dict:
    count, frac = cost.remote_rows(comm)
    return {"fraction": frac, "count": count}


def _summary(graph: Bigraph, config: PartitionConfig, state: PartitionState, costs, comm0, comm, mirrored, mirror_counts, seconds) -> dict:
    count_m, frac_m = cost.remote_rows_with_mirrors(comm, mirrored)
    even_s, even_r = len(state.part) / config.parts, state.num_ids / config.parts
    return {
        **{k: v for k, v in asdict(config).items() if k != "refine"},
        "refine_config": asdict(config.refine),
        "data": str(graph.path),
        "num_ids": graph.num_ids,
        "num_ids_source": graph.num_ids_source,
        "train_rows": graph.num_samples,
        "fingerprint": graph.fingerprint,
        "cost_random": costs[0],
        "cost_partitioned": costs[-1],
        "costs": costs,
        "remote_rows_per_batch": {"random": _rows_stat(comm0), "partitioned": _rows_stat(comm)},
        "remote_rows_per_batch_with_mirrors": {"fraction": frac_m, "count": count_m},
        "distinct_rows_per_batch": float(comm.sum(axis=1).mean()),
        "mirrors_per_part": mirror_counts,
        "samples_per_part": state.sizes.tolist(),
        "rows_per_part": state.rows.tolist(),
        "max_imbalance": {"samples": float(np.abs(state.sizes / even_s - 1).max()), "rows": float(np.abs(state.rows / even_r - 1).max())},
        "traffic_random": comm0.tolist(),
        "traffic_partitioned": comm.tolist(),
        "seconds": sum(seconds.values()),
        "seconds_breakdown": seconds,
    }
