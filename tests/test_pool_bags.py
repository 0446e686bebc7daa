"""pool_bags against a loop over samples and fields; padding contributes nothing."""

import pytest
import torch

from hetgmp.models import pool_bags

MLPERF_BAGS = [3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1]


def _loop_pool(emb, sizes, mode, pad):
    out = torch.zeros(emb.shape[0], len(sizes), emb.shape[2], dtype=emb.dtype)
    for b in range(emb.shape[0]):
        start = 0
        for f, k in enumerate(sizes):
            kept = [emb[b, c] for c in range(start, start + k) if not pad[b, c]]
            if kept:
                total = torch.stack(kept).sum(0)
                out[b, f] = total / len(kept) if mode == "mean" else total
            start += k
    return out


@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("sizes", [[3, 1, 2], MLPERF_BAGS])
@pytest.mark.parametrize("padded", [False, True])
def test_pool_bags_matches_a_loop_with_zero_gradient_on_padding(sizes, mode, padded):
    g = torch.Generator().manual_seed(len(sizes))
    emb = torch.randn(4, sum(sizes), 3, generator=g, dtype=torch.float64, requires_grad=True)
    pad = torch.rand(4, sum(sizes), generator=g) < 0.4 if padded else torch.zeros(4, sum(sizes), dtype=torch.bool)
    pad[0, : sizes[0]] = padded  # one bag of padding only: it pools to zeros
    got = pool_bags(emb, sizes, mode, pad_mask=pad if padded else None)
    want = _loop_pool(emb, sizes, mode, pad)
    torch.testing.assert_close(got, want)
    weights = torch.randn(got.shape, generator=g, dtype=torch.float64)
    grad, = torch.autograd.grad((got * weights).sum(), emb)
    want_grad, = torch.autograd.grad((want * weights).sum(), emb)
    torch.testing.assert_close(grad, want_grad)
    assert torch.count_nonzero(grad[pad]) == 0
    if padded:
        assert torch.count_nonzero(got[0, 0]) == 0


def test_one_hot_bags_are_the_rows_themselves():
    emb = torch.randn(2, 5, 3)
    assert pool_bags(emb, [1] * 5) is emb
    torch.testing.assert_close(pool_bags(emb, [1] * 5, "mean", pad_mask=torch.zeros(2, 5, dtype=torch.bool)), emb)


def test_pool_bags_compiles_as_one_graph():
    emb, pad = torch.randn(4, 6, 3), torch.rand(4, 6) < 0.3
    compiled = torch.compile(lambda e, p: pool_bags(e, (3, 1, 2), "mean", p), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(emb, pad), pool_bags(emb, (3, 1, 2), "mean", pad))


def test_bad_bags_are_refused():
    with pytest.raises(ValueError, match="6 rows per sample, but the bag sizes \\[3, 1\\] sum to 4"):
        pool_bags(torch.randn(2, 6, 3), [3, 1])
    with pytest.raises(ValueError, match="mode 'max'"):
        pool_bags(torch.randn(2, 4, 3), [3, 1], "max")
