"""Device memory of one worker's sharded fast step (ShardedFastStep.memory_bytes).

With E ids, D columns, P workers, Np primaries and M mirrors on this worker,
capacity C, distinct capacity U, batch B of F fields holding L ids (L = F
one-hot, the sum of the bag sizes multi-hot) and I dense features,
N = B L ids, R = (P - 1)(C + 1) exchange slots, h the bytes of a row handed to
the model (2 with amp bf16, else 4), W = F D + I the model's (pooled) input
width, H its layer width (CTRModel.layer_width: 768 for HET-GMP's models) and
a = 1 for row-wise Adagrad (0 for SGD), in bytes:

    maps       E (o + 4)                        owner (o = 2 bytes, 4 from 32768 workers) + slot
    table      (Np + M + 1 + R)(4D + 8 + 4a)     rows, versions, accumulators: stored rows, the sink, staging rows
               + 8 (Np + M)                      stored ids
    mirrors    (M + 1)(4D + 8 + 4a) + 4D (M + R) pending delta and count; the bases (a mirror's or a slot's)
    rounds     8 R (even(5 + D) + even(2 + D))   send and receive buffers of rounds A and B (int32 words)
    located    2 x 8 (6 U + 6 N + 8 R)           the batch located now and the next one (int64 columns)
               + 16 P U                          the per-owner running count while locating
    batch      2 x 8 N + 8 B (I + 1)             input buffers (ids, the next batch's ids; dense, labels)
               + N D (2h + 4)                    the rows the model reads, their gradient, the fp32 sum
    adagrad    a (4 U D + 16 U)                  the gradient summed per distinct id, owned rows and counts
               + a 8 (U + R)(D + 4)              the owner's step: kept and pushed gradients, their sums
    model      24 B (W + H)                      activations and their gradients: six fp32 copies of the
                                                 input and of the layers' outputs per sample
               + 16 x parameters                 weights, the flat gradient, slack for the optimizer

The model line is an allowance, not a count: WDL, DCN and DeepFM keep at most
a few copies of their input per sample (the cross layer's x0 (x0^T w) and its
gradient are DCN's largest). Everything above it is what the step allocates.
BENCHMARKS.md sets it against measured peaks (`bench_sharded_fast.py`).
"""

from __future__ import annotations

from hetgmp.embedding.config import EmbeddingConfig
from hetgmp.embedding.memory import HIDDEN
from hetgmp.embedding.fixed.exchange import record_words


def sharded_step_bytes(table: EmbeddingConfig, world: int, num_primaries: int, num_mirrors: int, capacity: int,
                       distinct_capacity: int | None, batch: int, num_fields: int, num_dense: int, num_params: int,
                       bf16: bool, layer_width: int = HIDDEN, columns: int | None = None) -> dict[str, int]:
    """The formula above, term by term (bytes); sum the values for the total."""
    d, n = table.dim, batch * (num_fields if columns is None else columns)
    u = distinct_capacity if distinct_capacity is not None else n
    slots = (world - 1) * (capacity + 1)
    stored = num_primaries + num_mirrors
    h, a = (2 if bf16 else 4), int(table.adagrad)
    return {
        "maps": table.num_ids * ((2 if world <= 32767 else 4) + 4),
        "table": (stored + 1 + slots) * (4 * d + 8 + 4 * a) + 8 * stored,
        "mirrors": (num_mirrors + 1) * (4 * d + 8 + 4 * a) + 4 * d * (num_mirrors + slots),
        "rounds": 8 * slots * sum(record_words(d)),
        "located": 2 * 8 * (6 * u + 6 * n + 8 * slots) + 16 * world * u,
        "adagrad": a * ((4 * u * d + 16 * u) + 8 * (u + slots) * (d + 4)),
        "batch": 2 * 8 * n + 8 * batch * (num_dense + 1) + n * d * (2 * h + 4),
        "model": 24 * batch * (num_fields * d + num_dense + layer_width) + 16 * num_params,
    }
