"""What `hetgmp partition` prints, and the `--plot` heatmaps.

Traffic figures are comm[p][q] of cost.py: expected distinct rows one batch
of part p reads from part q. "out" of part p is its row sum off the
diagonal (what its batches fetch), "in" its column sum (what it serves).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hetgmp.partition import cost

MATRIX_MAX_PARTS = 16  # larger matrices are summarised, not printed


def start_line(cost0: float, comm: np.ndarray) -> str:
    count, frac = cost.remote_rows(comm)
    return f"random start: cost {cost0:,.1f}, remote rows per batch {frac:.1%} ({count:,.0f} of {comm.sum(axis=1).mean():,.0f})"


def _spread(values: np.ndarray, total: float) -> str:
    even = total / len(values)
    lo, hi = values.min(), values.max()
    return f"min {lo:,} max {hi:,} ({lo / even - 1:+.1%} .. {hi / even - 1:+.1%} of even {even:,.0f})"


def matrix_lines(comm: np.ndarray) -> list[str]:
    """The P x P matrix, one row per reading part, integers (rows per batch)."""
    parts = len(comm)
    if parts > MATRIX_MAX_PARTS:
        off = comm[~np.eye(parts, dtype=bool)]
        return [f"  traffic matrix ({parts} x {parts}): off-diagonal min {off.min():,.0f} mean {off.mean():,.0f} max {off.max():,.0f}"]
    width = max(6, len(f"{comm.max():,.0f}") + 1)
    head = "  p\\q " + "".join(f"{q:>{width}}" for q in range(parts))
    body = [f"  {p:>3} " + "".join(f"{v:>{width},.0f}" for v in comm[p]) for p in range(parts)]
    return ["  traffic matrix (expected rows per batch part p reads from part q; diagonal = local):", head, *body]


def _versus_random(cost_now: float, cost_random: float) -> str:
    """The change from the random start; one part has no remote rows, so no cost to compare."""
    if cost_random <= 0:
        return "no remote rows to save"
    return f"{cost_now / cost_random - 1:+.1%} vs random"


def round_block(r: int, rounds: int, costs: list[float], comm: np.ndarray, sizes: np.ndarray, rows: np.ndarray, moved: tuple[int, int], seconds: float) -> str:
    """The lines printed after round r: cost, balance, traffic, matrix."""
    off = comm - np.diag(np.diag(comm))
    count, frac = cost.remote_rows(comm)
    lines = [
        f"round {r}/{rounds}: cost {costs[-1]:,.1f} ({_versus_random(costs[-1], costs[0])}), remote rows per batch {frac:.1%} ({count:,.0f}), "
        f"moved {moved[0]:,} samples and {moved[1]:,} rows in {seconds:.2f} s",
        f"  samples per part {_spread(sizes, sizes.sum())}",
        f"  rows per part    {_spread(rows, rows.sum())}",
        "  out (rows per batch fetched): " + " ".join(f"{v:,.0f}" for v in off.sum(axis=1)),
        "  in  (rows per batch served):  " + " ".join(f"{v:,.0f}" for v in off.sum(axis=0)),
        *matrix_lines(comm),
    ]
    return "\n".join(lines)


def final_line(summary: dict) -> str:
    """remote rows per batch: random X -> partitioned Y (-Z%) -> with r mirrors W; mirrors per part."""
    rand = summary["remote_rows_per_batch"]["random"]
    part = summary["remote_rows_per_batch"]["partitioned"]
    mirr = summary["remote_rows_per_batch_with_mirrors"]
    drop = part["count"] / rand["count"] - 1 if rand["count"] > 0 else 0.0
    mirrors = np.asarray(summary["mirrors_per_part"])
    return (
        f"remote rows per batch: random {rand['fraction']:.1%} ({rand['count']:,.0f}) -> partitioned {part['fraction']:.1%} "
        f"({part['count']:,.0f}) ({drop:+.1%}) -> with {100 * summary['store_rate']:g}% mirrors {mirr['fraction']:.1%} ({mirr['count']:,.0f}); "
        f"mirrors per part {_range(mirrors)} of {summary['num_ids']:,} ids ({ranking_name(summary)})"
    )


def ranking_name(meta: dict) -> str:
    """"staleness ranking for bound 100" or "original ranking" (a plan without the key: the original's script)."""
    ranking = meta.get("ranking", "original")
    return f"staleness ranking for bound {meta['bound']}" if ranking == "staleness" else "original ranking"


def _range(values: np.ndarray) -> str:
    lo, hi = int(values.min()), int(values.max())
    return f"{lo:,}" if lo == hi else f"{lo:,}..{hi:,}"


LARGE_PLAN = 256 << 20  # bytes past which the summary points at --compact-lists


def plan_size_line(summary: dict) -> str:
    """The plan's size and its lists' lengths; past LARGE_PLAN, what --compact-lists would save."""
    lengths, read = np.asarray(summary["list_lengths"]), np.asarray(summary["read_candidates"])
    line = (f"plan: {summary['plan_bytes'] / 1e6:,.1f} MB; candidate lists {_range(lengths)} ids per part "
            f"(every id the part does not own), {_range(read)} of them read by the part")
    if summary["compact_lists"]:
        return line + "; stored compactly (read ids only: the original's script would mirror fewer rows)"
    if summary["plan_bytes"] > LARGE_PLAN:
        saved = 4 * int((lengths - read).sum())
        line += f"; --compact-lists would store {saved / 1e6:,.1f} MB less (hetgmp train rebuilds the never-read tails)"
    return line


def plot_traffic(before: np.ndarray, after: np.ndarray, path: str | Path) -> None:
    """Two heatmaps (random start, partitioned) on one colour scale; the diagonal (local reads) is blanked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mask = np.eye(len(before), dtype=bool)
    mats = [np.ma.masked_array(m, mask) for m in (before, after)]
    vmax = max(float(m.max()) for m in mats) or 1.0
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), constrained_layout=True)
    for ax, m, title in zip(axes, mats, ("random placement", "partitioned")):
        im = ax.imshow(m, cmap="viridis", vmin=0, vmax=vmax)
        ax.set_title(f"{title}: {m.sum():,.0f} remote rows per batch (all parts)")
        ax.set_xlabel("serving part q")
        ax.set_ylabel("reading part p")
    fig.colorbar(im, ax=axes, label="expected rows per batch p reads from q")
    fig.savefig(path, dpi=120)
    plt.close(fig)
