"""The planted world behind `hetgmp synth`: fields, popularity, communities, labels.

Everything a row needs is fixed up front by `build_world(config)`; rows are
then drawn chunk by chunk with `sample_chunk(world, rng, n)`, so any chunk can
be produced independently from its own seeded generator.

How one row is drawn (26 sparse fields, 13 dense features):

1. Its latent group g ~ power law over `groups` groups (exponent
   `group_exponent`): a few big communities, many small ones.
2. Each sparse field f has a vocabulary cap V_f (Criteo's sizes times
   `scale`). Ids are raw ids in [0, V_f):
   - small fields (V_f <= `large_field`), and large fields with probability
     1 - `in_group`: a global draw. Rank r ~ Zipf(`zipf`) over [0, V_f),
     then raw = (r·mul + add) mod V_f, a bijection that scatters popular
     ids over the id space (the encoder's sorted order does not follow
     popularity).
   - large fields with probability `in_group`: a draw from g's own pool.
     The pool of g in field f is a run of slots [start, start + size) in a
     slot space; slot k of the run is taken with Zipf(`pool_zipf`) weight,
     and slot s maps to raw id ((s mod V_f)·mul' + add') mod V_f, so one
     group's ids are spread over the id space, never a contiguous range.
     Group g's run starts `pool_overlap` of the way back into group g-1's, so
     neighbouring groups share ids. Pool sizes are `pool_fraction` ·
     (expected group rows) · min(1, V_f/rows); when the pools together need
     more slots than V_f they wrap around and share more ids (mid-size
     fields). In the huge fields the rest of a pool is private.
3. Dense features: count = floor(exp(mu_j + load_j·a_g + sigma_j·eps)),
   zero with probability miss_j (Criteo's empty cells), stored as log(count+1).
   a_g is the group's activity, so dense features carry community signal.
4. Logit (before the bias): sum_f w[f, id_f] + sum_j coef_j·dense_j +
   sum over `PAIRS` of <v[a, id_a], v[b, id_b]>, with w ~ N(0, signal·FIELD_SIGNAL[f])
   and v ~ N(0, signal·pair_scale/sqrt(k)) factor vectors (an FM-style cross term).

Multi-hot (`bag_sizes`, `hetgmp synth --multi-hot-sizes`): field f of bag
size K_f > 1 draws K_f ids per row as above (each column its own draw), and
the row's bag holds the first 1 + floor(K_f·u) of them, u uniform: between 1
and K_f ids, the other columns hold the field's padding id. That id is raw
id 0 of the field (the drawn ids are shifted up by one), always marked used,
so it is local id 0 after compaction; its weight and factor are zero. In the
logit, w[f, id_f] and v[f, id_f] become their means over the bag's ids
(padding excluded): mean pooling, which every id of the bag moves. With all
sizes 1 (the default) the rows are those of the one-hot generator, bit for bit.

Example (scale 1e-4, so caps [2, 2, 1013, ...]): a row of group 7 draws field 2
(cap 1013 > large_field 1000 in that config) from group 7's pool with
probability 0.8, field 0 always globally; its raw global id in field 2 is
raw_offsets[2] + raw = 4 + raw.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from hetgmp.errors import HetGMPError

#: Criteo Kaggle's field sizes (C1..C26): the vocabulary caps at scale 1.
CRITEO_FIELD_SIZES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)
NUM_DENSE = 13

#: Relative weight scale per field: a few small, learnable fields matter most
#: (C1, C2, C6, C14, C17, C25), the huge id fields moderately. Together with
#: `pair_scale` and `dense_signal` they put the planted AUC near 0.80.
FIELD_SIGNAL = (
    0.375, 0.450, 0.225, 0.225, 0.300, 0.375, 0.225, 0.150, 0.225, 0.150, 0.225, 0.225, 0.150,
    0.450, 0.150, 0.188, 0.300, 0.150, 0.150, 0.225, 0.188, 0.225, 0.225, 0.150, 0.300, 0.150,
)

#: Field pairs with a factorised interaction term (0-based field indices):
#: small and mid-size fields, so a cross or DNN model can learn them.
PAIRS = ((0, 1), (4, 7), (5, 13), (16, 21), (1, 12), (9, 22))
PAIR_RANK = 4

@dataclass(frozen=True)
class SynthConfig:
    """Generator parameters; every field is a `hetgmp synth` flag of the same name."""

    rows: int
    seed: int = 0
    scale: float = 1.0
    test_fraction: float = 0.1
    groups: int = 0  # 0: rows // 500, clamped to [16, 4096]
    group_exponent: float = 0.8
    in_group: float = 0.8
    pool_fraction: float = 1.0
    pool_overlap: float = 0.25
    pool_zipf: float = 1.0
    zipf: float = 1.05
    large_field: int = 10_000
    signal: float = 1.0
    pair_scale: float = 0.45
    dense_signal: float = 0.19
    click_rate: float = 0.25
    chunk_rows: int = 1_000_000
    bag_sizes: tuple[int, ...] = ()  # ids per row of each field; () = one-hot

    def num_groups(self) -> int:
        return self.groups if self.groups > 0 else int(min(4096, max(16, self.rows // 500)))

    def caps(self) -> np.ndarray:
        """Vocabulary caps: Criteo's sizes times `scale`, at least 2 each."""
        return np.array([max(2, int(round(v * self.scale))) for v in CRITEO_FIELD_SIZES], dtype=np.int64)

    def bags(self) -> np.ndarray:
        """(F,) int64: each field's bag size, all 1 when one-hot."""
        return np.array(self.bag_sizes or (1,) * len(CRITEO_FIELD_SIZES), dtype=np.int64)

    def to_json(self) -> dict:
        return {**asdict(self), "groups": self.num_groups(), "bag_sizes": self.bags().tolist()}


@dataclass
class World:
    """The fixed parameters rows are drawn from (see module doc)."""

    config: SynthConfig
    caps: np.ndarray  # (F,) int64
    padded: np.ndarray  # (F,) int64: 1 where the field has bags (raw id 0 is then its padding id), else 0
    raw_offsets: np.ndarray  # (F,) int64: field f's raw ids start here in the raw global space
    bag_start: np.ndarray  # (F + 1,) int64: field f's bag is columns bag_start[f]:bag_start[f + 1]
    perm: np.ndarray  # (F, 2) int64: popularity rank -> raw id, (mul, add)
    slot_perm: np.ndarray  # (F, 2) int64: pool slot -> raw id, (mul, add)
    large: np.ndarray  # (L,) field indices drawn partly from group pools
    pool_of_field: np.ndarray  # (F,) int64: f's index in `large`, -1 for small fields
    pool_size: np.ndarray  # (G, L) int64
    pool_span: np.ndarray  # (G, L) float64: zipf_span of each pool size
    pool_inv_a: float
    pool_start: np.ndarray  # (G, L) int64
    activity: np.ndarray  # (G,) float64
    weights: np.ndarray  # (sum caps,) float32, by raw global id
    factors: np.ndarray  # (sum of pair fields' caps, PAIR_RANK) float32
    factor_base: np.ndarray  # (F,) int64: field f's raw global id r has factor row factor_base[f] + r
    dense: np.ndarray  # (5, NUM_DENSE) float64 rows: mu, sigma, miss, load, coef


def validate(config: SynthConfig) -> None:
    """Reject settings that cannot make a dataset, naming the flag and the fix."""
    rules = [
        (config.rows >= 2, f"--rows {config.rows}: need at least 2 rows"),
        (config.scale > 0, f"--scale {config.scale}: must be positive"),
        (0 < config.test_fraction < 1, f"--test-fraction {config.test_fraction}: must be in (0, 1)"),
        (0 <= config.in_group <= 1, f"--in-group {config.in_group}: must be in [0, 1]"),
        (config.pool_fraction > 0, f"--pool-fraction {config.pool_fraction}: must be positive"),
        (0 <= config.pool_overlap < 1, f"--pool-overlap {config.pool_overlap}: must be in [0, 1)"),
        (0 < config.click_rate < 1, f"--click-rate {config.click_rate}: must be in (0, 1)"),
        (config.chunk_rows >= 1, f"--chunk-rows {config.chunk_rows}: must be at least 1"),
        (config.groups >= 0, f"--groups {config.groups}: must be 0 (automatic) or positive"),
        (int(config.caps().sum()) < 2**31 - len(CRITEO_FIELD_SIZES), f"--scale {config.scale}: {int(config.caps().sum())} raw ids exceed int32; use --scale below 60"),
    ]
    for ok, message in rules:
        if not ok:
            raise HetGMPError(message)
    test_rows = int(round(config.rows * config.test_fraction))
    if test_rows < 1 or test_rows >= config.rows:
        raise HetGMPError(f"--rows {config.rows} with --test-fraction {config.test_fraction} leaves an empty split: raise --rows")
    check_bag_sizes(config.bag_sizes)


def check_bag_sizes(sizes: tuple[int, ...], given: str | None = None) -> None:
    """() or one integer >= 1 per field, else a HetGMPError naming --multi-hot-sizes (and `given`, the flag's text)."""
    fields = len(CRITEO_FIELD_SIZES)
    if sizes and len(sizes) != fields:
        raise HetGMPError(f"--multi-hot-sizes has {len(sizes)} sizes, but there are {fields} fields: give {fields} sizes, or one for all")
    bad = [k for k in sizes if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1]
    if bad:
        raise HetGMPError(f"--multi-hot-sizes {given or ','.join(map(str, sizes))}: {bad[0]} is not a bag size (an integer >= 1 ids per row)")


def parse_bag_sizes(text: str) -> tuple[int, ...]:
    """--multi-hot-sizes: "3,2,1,..." (one per field) or "4" (for all); checked by check_bag_sizes.

    Example: parse_bag_sizes("2") == (2,) * 26."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise HetGMPError(f"--multi-hot-sizes {text!r}: expected integers separated by commas, e.g. 3,2,1,... "
                          f"(one per field) or one number for all {len(CRITEO_FIELD_SIZES)} fields") from None
    sizes = sizes * len(CRITEO_FIELD_SIZES) if len(sizes) == 1 else sizes
    check_bag_sizes(sizes, text)
    return sizes


def zipf_span(n: np.ndarray | int, s: float) -> tuple[np.ndarray, float]:
    """The per-n constants of `zipf_rank`: (span, inv_a), inv_a = 0 meaning s = 1."""
    n = np.asarray(n, dtype=np.float64)
    if abs(s - 1.0) < 1e-9:
        return np.log1p(n), 0.0
    a = 1.0 - s
    return (n + 1.0) ** a - 1.0, 1.0 / a


def zipf_rank(u: np.ndarray, n: np.ndarray | int, s: float) -> np.ndarray:
    """Map uniforms u in [0, 1) to ranks in [0, n) with P(rank r) ∝ ∫_{r+1}^{r+2} x^-s dx.

    The continuous inverse CDF of a truncated power law: O(1) a draw, no
    table, and `n` may differ per row (group pools). Rank 0 is the most
    likely. The numpy reference of `synth_kernels._zipf`.
    """
    span, inv_a = zipf_span(n, s)
    x = np.exp(u * span) if inv_a == 0.0 else (1.0 + u * span) ** inv_a
    return np.minimum(x.astype(np.int64) - 1, np.asarray(n, dtype=np.int64) - 1)


def _coprime_affine(rng: np.random.Generator, n: int) -> tuple[int, int]:
    """(mul, add) with gcd(mul, n) = 1, so r -> (r·mul + add) mod n is a bijection."""
    mul = int(rng.integers(1, max(2, n)))
    while math.gcd(mul, n) != 1:
        mul += 1
    return mul, int(rng.integers(0, n))


def group_probabilities(groups: int, exponent: float) -> np.ndarray:
    """P(group g) under `zipf_rank` with n = groups (the exact CDF differences)."""
    edges = np.arange(1, groups + 2, dtype=np.float64)
    if abs(exponent - 1.0) < 1e-9:
        cdf = np.log(edges) / np.log(groups + 1.0)
    else:
        a = 1.0 - exponent
        cdf = (edges**a - 1.0) / ((groups + 1.0) ** a - 1.0)
    return np.diff(cdf)


def build_world(config: SynthConfig) -> World:
    """Draw every fixed parameter from generators seeded by (seed, 1, part)."""
    validate(config)
    caps = config.caps()
    rng = lambda part: np.random.default_rng([config.seed, 1, part])  # noqa: E731
    perms, slots = rng(0), rng(1)
    perm = np.array([_coprime_affine(perms, int(v)) for v in caps], dtype=np.int64)
    slot_perm = np.array([_coprime_affine(slots, int(v)) for v in caps], dtype=np.int64)
    large = np.flatnonzero(caps > config.large_field)
    pool_of_field = np.full(len(caps), -1, dtype=np.int64)
    pool_of_field[large] = np.arange(len(large))
    groups = config.num_groups()
    expected_rows = config.rows * group_probabilities(groups, config.group_exponent)
    share = np.minimum(1.0, caps[large] / config.rows)
    pool_size = np.maximum(1, np.rint(config.pool_fraction * np.outer(expected_rows, share))).astype(np.int64)
    # Each pool begins `pool_overlap` of the way back into the previous
    # group's: neighbouring communities share some ids (communities of
    # communities), so some ids are used across parts even when every
    # community sits whole on one part.
    step = np.maximum(1, np.rint(pool_size * (1.0 - config.pool_overlap))).astype(np.int64)
    pool_start = np.cumsum(step, axis=0) - step
    pool_span, pool_inv_a = zipf_span(pool_size, config.pool_zipf)
    bags = config.bags()
    padded = (bags > 1).astype(np.int64)
    raw_offsets = np.cumsum(caps + padded) - caps - padded
    factors, factor_base = _pair_factors(config, caps, padded, raw_offsets, rng(4))
    return World(
        config=config,
        caps=caps,
        padded=padded,
        raw_offsets=raw_offsets,
        bag_start=np.concatenate([[0], np.cumsum(bags)]),
        perm=perm,
        slot_perm=slot_perm,
        large=large,
        pool_of_field=pool_of_field,
        pool_size=pool_size,
        pool_span=pool_span,
        pool_inv_a=pool_inv_a,
        pool_start=pool_start,
        activity=rng(2).standard_normal(groups),
        weights=_field_weights(config, caps, padded, rng(3)),
        factors=factors,
        factor_base=factor_base,
        dense=_dense_params(config, rng(5)),
    )


def _field_weights(config: SynthConfig, caps: np.ndarray, padded: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per raw global id; a padding id's weight is 0 (the draws are those of the one-hot world)."""
    weights = np.zeros(int((caps + padded).sum()), dtype=np.float32)
    start = 0
    for f, v in enumerate(caps):
        block = weights[start + int(padded[f]) : start + int(padded[f] + v)]
        rng.standard_normal(out=block, dtype=np.float32)
        block *= np.float32(config.signal * FIELD_SIGNAL[f])
        start += int(padded[f] + v)
    return weights


def _pair_factors(config: SynthConfig, caps: np.ndarray, padded: np.ndarray, raw_offsets: np.ndarray,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Factor vectors of the pair fields stacked in field order (a zero row for a padding id),
    and each field's base row."""
    fields = sorted({f for pair in PAIRS for f in pair})
    std = config.signal * config.pair_scale / math.sqrt(PAIR_RANK)
    drawn = rng.standard_normal((int(caps[fields].sum()), PAIR_RANK), dtype=np.float32) * np.float32(std)
    sizes = caps[fields] + padded[fields]
    starts = np.cumsum(sizes) - sizes
    keep = np.ones(int(sizes.sum()), dtype=bool)
    keep[starts[padded[fields] == 1]] = False
    factors = np.zeros((int(sizes.sum()), PAIR_RANK), dtype=np.float32)
    factors[keep] = drawn
    base = np.zeros(len(caps), dtype=np.int64)
    base[fields] = starts - raw_offsets[fields]
    return factors, base


def _dense_params(config: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Rows mu, sigma, miss, load, coef: Criteo-like counts, from tiny to thousands."""
    mu = rng.uniform(0.0, 4.0, NUM_DENSE)
    sigma = rng.uniform(0.8, 2.0, NUM_DENSE)
    miss = rng.uniform(0.0, 0.45, NUM_DENSE)
    load = rng.normal(0.0, 0.7, NUM_DENSE)
    # Scale each coefficient by the feature's spread so all 13 weigh alike.
    coef = rng.normal(0.0, 1.0, NUM_DENSE) * config.dense_signal / np.sqrt(sigma**2 + load**2)
    return np.stack([mu, sigma, miss, load, coef])


def padding_raw_ids(world: World) -> np.ndarray:
    """(F,) int64: each field's raw global padding id, -1 for a field without bags."""
    return np.where(world.padded == 1, world.raw_offsets, -1)


def _columns(world: World) -> tuple[np.ndarray, np.ndarray]:
    """(column c's field (C,), column c's pool-uniform index (C,), -1 outside the large fields)."""
    column_field = np.repeat(np.arange(len(world.caps)), np.diff(world.bag_start))
    in_pool = world.pool_of_field[column_field] >= 0
    pool_column = np.where(in_pool, np.cumsum(in_pool) - 1, -1)
    return column_field, pool_column


def _pad_bags(world: World, lengths_u: np.ndarray, raw: np.ndarray) -> None:
    """Keep 1 + floor(K u) ids of each bag (u: one uniform per row and bag field), padding the rest."""
    for p, f in enumerate(np.flatnonzero(world.padded)):
        start, size = world.bag_start[f], world.bag_start[f + 1] - world.bag_start[f]
        length = 1 + (lengths_u[:, p] * size).astype(np.int64)
        raw[:, start : start + size][np.arange(size) >= length[:, None]] = world.raw_offsets[f]


def sample_chunk(world: World, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """n rows: (raw global ids (n, C) int32, C = sum of bag sizes, dense (n, 13) float32, logit (n,) float32,
    group (n,) int32).

    Draw order from `rng`: groups, the id uniforms (n, C + Lc) (Lc: columns of large fields),
    pool choices (n, Lc), dense normals and missing-cell uniforms, then the bag lengths (n, bag
    fields); the kernels only transform them. One-hot, C = F and Lc = L: the one-hot draws.
    """
    from hetgmp.data import synth_kernels as k

    cfg = world.config
    mu, sigma, miss, load, coef = world.dense
    column_field, pool_column = _columns(world)
    columns, pool_columns = len(column_field), int(pool_column.max()) + 1
    group = zipf_rank(rng.random(n), cfg.num_groups(), cfg.group_exponent).astype(np.int32)
    u = rng.random((n, columns + pool_columns))
    pooled = rng.random((n, pool_columns), dtype=np.float32) < np.float32(cfg.in_group)
    raw = np.empty((n, columns), dtype=np.int32)
    cap_span, inv_a = zipf_span(world.caps, cfg.zipf)
    k.draw_ids(u, pooled, group, column_field, pool_column, world.caps, cap_span, world.perm, world.slot_perm, world.pool_of_field,
               world.pool_size, world.pool_span, world.pool_start, world.raw_offsets + world.padded, inv_a, world.pool_inv_a, raw)
    del u
    dense = np.empty((n, NUM_DENSE), dtype=np.float32)
    k.dense_features(rng.standard_normal((n, NUM_DENSE)), rng.random((n, NUM_DENSE)), world.activity[group], mu, sigma, miss, load, dense)
    _pad_bags(world, rng.random((n, int(world.padded.sum()))), raw)
    z = np.empty(n, dtype=np.float32)
    k.planted_logit(raw, dense, world.weights, coef, world.factors, world.factor_base, np.array(PAIRS, dtype=np.int64),
                    world.bag_start, padding_raw_ids(world), z)
    return raw, dense, z, group
