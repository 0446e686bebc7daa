"""Bags pooled from the table (kernels/bag_pool.py) against pool_bags on gathered rows, and the
update reading the pooled gradient (PooledGrad) against the same update on the written-out one.
The Triton kernels run under Triton's interpreter on CPU (on the GPU with TRITON_INTERPRET=0)."""

import importlib.util
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from hetgmp.kernels import sparse_update  # noqa: E402
from hetgmp.kernels.bag_pool import pool_from_table, pooled_grad  # noqa: E402
from hetgmp.models import Bags, pool_bags  # noqa: E402

HAVE_TRITON = importlib.util.find_spec("triton") is not None
DEVICE = torch.device("cuda" if os.environ["TRITON_INTERPRET"] != "1" and torch.cuda.is_available() else "cpu")
ROWS, BATCH = 60, 9
# A bag longer than the kernel's 16-id tile, one-id bags, and a bag of field 1 that pads.
SIZES, PADDING = (3, 1, 20, 2), (-1, 25, 40, -1)
BACKENDS = ["torch", "reference", pytest.param("triton", marks=pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed"))]


def _ids(seed=0, padded=True):
    gen = torch.Generator().manual_seed(seed)
    ids = (ROWS * torch.rand(BATCH, sum(SIZES), generator=gen) ** 2).long()
    if padded:
        ids[:, 3] = torch.where(torch.rand(BATCH, generator=gen) < 0.5, 25, ids[:, 3])
        ids[:, 4:24] = torch.where(torch.rand(BATCH, 20, generator=gen) < 0.4, 40, ids[:, 4:24])
        ids[0, 4:24] = 40  # a bag of padding only pools to zeros
    return ids.to(DEVICE)


def _bags(mode, padded):
    return Bags(SIZES, PADDING if padded else (-1,) * len(SIZES), mode)


@pytest.mark.parametrize("use_triton", [False, pytest.param(True, marks=pytest.mark.skipif(not HAVE_TRITON, reason="no triton"))])
@pytest.mark.parametrize("mode, padded", [("sum", False), ("sum", True), ("mean", True)])
@pytest.mark.parametrize("dim, out_dtype", [(8, torch.float32), (130, torch.bfloat16)])
def test_pool_from_table_matches_pool_bags(use_triton, mode, padded, dim, out_dtype):
    table = torch.randn(ROWS, dim, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    ids, bags = _ids(padded=padded), _bags(mode, padded)
    got, weights = pool_from_table(table, ids, bags, out_dtype, use_triton=use_triton)
    pad = bags.pad_mask(ids)
    want = pool_bags(table[ids], SIZES, mode, pad).to(out_dtype)
    assert got.dtype == out_dtype and got.shape == (BATCH, len(SIZES), dim)
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-5 if out_dtype == torch.float32 else 1e-2, atol=1e-5)
    if padded:
        assert torch.count_nonzero(got[0, 2]) == 0
        assert torch.equal(weights == 0, pad)
    assert (weights is None) == (mode == "sum" and not padded)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("adagrad", [False, True])
@pytest.mark.parametrize("mode, padded", [("sum", False), ("mean", True)])
@pytest.mark.parametrize("strided", [False, True])
def test_update_from_the_pooled_gradient_equals_the_written_out_one(backend, adagrad, mode, padded, strided):
    # The rows' gradient through autograd of pool_bags is what PooledGrad stands for; strided, it
    # is a view of a wider gradient (DCNv2's [embeddings, bottom]), which the update reads in place.
    gen = torch.Generator().manual_seed(2)
    table = torch.randn(ROWS, 8, generator=gen).to(DEVICE)
    ids, bags = _ids(seed=3, padded=padded), _bags(mode, padded)
    rows = table[ids].requires_grad_()
    wide = torch.randn(BATCH, len(SIZES) * 8 + (5 if strided else 0), generator=gen).to(DEVICE)
    grad_BFD = wide[:, :len(SIZES) * 8].view(BATCH, len(SIZES), 8)
    assert grad_BFD.is_contiguous() != strided
    pool_bags(rows, SIZES, mode, bags.pad_mask(ids)).backward(grad_BFD)
    _, weights = pool_from_table(table, ids, bags, torch.float32, use_triton=False)
    want_table, got_table = table.clone(), table.clone()
    want_acc = torch.zeros(ROWS, device=DEVICE) if adagrad else None
    got_acc = want_acc.clone() if adagrad else None
    want_counts, got_counts = (torch.zeros(ROWS, dtype=torch.int64, device=DEVICE) for _ in range(2))
    sparse_update(want_table, ids.reshape(-1), rows.grad.reshape(-1, 8), 0.1, want_acc, counts_E=want_counts, backend="reference")
    sparse_update(got_table, ids.reshape(-1), pooled_grad(grad_BFD, bags, weights), 0.1, got_acc, counts_E=got_counts, backend=backend)
    torch.testing.assert_close(got_table, want_table, rtol=0, atol=1e-5)
    if adagrad:
        torch.testing.assert_close(got_acc, want_acc, rtol=1e-5, atol=1e-6)
    assert torch.equal(got_counts, want_counts)
    assert not torch.equal(got_table, table)
