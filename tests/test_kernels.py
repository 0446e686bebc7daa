"""The fused sparse update against its reference (unique + index_add_).

The Triton kernels run under Triton's CPU interpreter; the variable must be set
before triton is first imported. With TRITON_INTERPRET=0 on a machine with a
GPU, the same cases run compiled, on CUDA tensors. Sizes stay tiny: the interpreter runs the
segmented scan element by element. Small tiles (block_n=16) make hot ids cross
many tile boundaries.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from hetgmp.errors import HetGMPError  # noqa: E402
from hetgmp.kernels import DEFAULT_EPS, sparse_update, sparse_update_reference, sparse_update_torch  # noqa: E402

DEVICE = torch.device("cuda" if os.environ["TRITON_INTERPRET"] != "1" and torch.cuda.is_available() else "cpu")


def _on(*tensors):
    """The tensors on DEVICE (None stays None)."""
    return tuple(None if t is None else t.to(DEVICE) for t in tensors)


def _skewed_case(n, d, e, seed, adagrad):
    """Power-law ids (u^4, as the Criteo-shaped benchmarks use) over e rows."""
    gen = torch.Generator().manual_seed(seed)
    ids = (e * torch.rand(n, generator=gen) ** 4).long()
    grad = torch.randn(n, d, generator=gen)
    table = torch.randn(e, d, generator=gen)
    acc = torch.rand(e, generator=gen) if adagrad else None
    return _on(ids, grad, table, acc)


def _apply(update, ids, grad, table, acc, **kwargs):
    table = table.clone()
    acc = None if acc is None else acc.clone()
    counts = torch.zeros(len(table), dtype=torch.int64, device=table.device)
    update(table, ids, grad, 0.05, acc, counts_E=counts, **kwargs)
    return table, acc, counts


def _assert_same(got, want):
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    if want[1] is not None:
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)
    assert torch.equal(got[2], want[2])


def test_reference_on_the_worked_example():
    table = torch.zeros(6, 1)
    counts = torch.zeros(6, dtype=torch.int64)
    ids = torch.tensor([3, 5, 3])
    sparse_update_reference(table, ids, torch.tensor([[1.0], [2.0], [4.0]]), 0.1, counts_E=counts)
    assert table[3, 0].item() == pytest.approx(-0.5) and table[5, 0].item() == pytest.approx(-0.2)
    assert counts.tolist() == [0, 0, 0, 2, 0, 1]
    acc = torch.zeros(6)
    table.zero_()
    sparse_update_reference(table, ids, torch.tensor([[1.0], [2.0], [4.0]]), 0.1, acc, eps=0.0)
    assert acc[3].item() == pytest.approx(25.0)
    assert table[3, 0].item() == pytest.approx(-0.1 * 5 / 5)


@pytest.mark.parametrize("adagrad", [False, True])
@pytest.mark.parametrize("d", [1, 4, 17])
def test_torch_fixed_shape_path_matches_reference(adagrad, d):
    case = _skewed_case(500, d, 60, seed=d, adagrad=adagrad)
    _assert_same(_apply(sparse_update_torch, *case), _apply(sparse_update_reference, *case))


needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def _fused_update(*args, **kwargs):
    from hetgmp.kernels.triton_update import fused_update

    return fused_update(*args, **kwargs)


@needs_triton
@pytest.mark.parametrize("adagrad", [False, True])
@pytest.mark.parametrize(("n", "d"), [(1, 4), (250, 1), (150, 4), (70, 17)])
def test_triton_fused_update_matches_reference(adagrad, n, d):
    case = _skewed_case(n, d, 40, seed=10 * d + adagrad, adagrad=adagrad)
    got = _apply(_fused_update, *case, eps=DEFAULT_EPS, scratch_TD=None, block_n=16)
    _assert_same(got, _apply(sparse_update_reference, *case))


@needs_triton
@pytest.mark.parametrize("adagrad", [False, True])
@pytest.mark.parametrize("d", [128, 130])
def test_triton_default_tiles_of_wide_rows_match_reference(adagrad, d):
    # The launch shapes the steps use: 8 x 128 tiles of one warp at d = 128 (SGD over two column
    # blocks at d = 130; Adagrad whole rows), hot ids crossing many of them.
    case = _skewed_case(120, d, 30, seed=d + adagrad, adagrad=adagrad)
    got = _apply(_fused_update, *case, eps=DEFAULT_EPS, scratch_TD=None)
    _assert_same(got, _apply(sparse_update_reference, *case))


@needs_triton
def test_triton_handles_one_id_filling_many_tiles_and_int32_ids():
    # 70 copies of id 4 span five 16-row tiles; the lone ids sit at both ends.
    ids = torch.tensor([9] + [4] * 70 + [0], dtype=torch.int32)[torch.randperm(72, generator=torch.Generator().manual_seed(0))]
    grad = torch.randn(72, 3, generator=torch.Generator().manual_seed(1))
    ids, grad, table = _on(ids, grad, torch.randn(10, 3))
    for acc in (None, torch.rand(10, device=DEVICE)):
        scratch = torch.zeros(5, 3, device=DEVICE)
        got = _apply(_fused_update, ids, grad, table, acc, eps=DEFAULT_EPS, scratch_TD=scratch, block_n=16)
        _assert_same(got, _apply(sparse_update_reference, ids, grad, table, acc))
        assert not scratch.any(), "the Adagrad scratch must be left zeroed for the next call"


def test_dispatch_rejects_bad_shapes_and_names():
    table = torch.zeros(4, 2)
    with pytest.raises(HetGMPError, match="grad must be"):
        sparse_update(table, torch.tensor([1]), torch.zeros(1, 3), 0.1)
    with pytest.raises(HetGMPError, match="unknown sparse-update kernel"):
        sparse_update(table, torch.tensor([1]), torch.zeros(1, 2), 0.1, backend="cuda")


@needs_triton
def test_dispatch_runs_every_backend_alike():
    case = _skewed_case(64, 2, 8, seed=3, adagrad=True)
    want = _apply(sparse_update_reference, *case)
    for backend in ("torch", "triton", "auto"):
        _assert_same(_apply(sparse_update, *case, backend=backend), want)


# Argument types of the kernels as fused_update launches them (int32 ids after the cast).
_REDUCE_TYPES = {
    "table_ptr": "*fp32", "acc_ptr": "*fp32", "count_ptr": "*i64", "scratch_ptr": "*fp32", "sorted_ptr": "*i32",
    "perm_ptr": "*i64", "grad_ptr": "*fp32", "weight_ptr": "*fp32", "field_ptr": "*i32", "run_start_ptr": "*i64",
    "N": "i32", "D": "i32", "F": "i32", "L": "i32", "stride_t": "i64", "stride_g": "i64", "stride_gf": "i64", "lr": "fp32", "eps": "fp32",
}
_POOL_TYPES = {
    "table_ptr": "*fp32", "ids_ptr": "*i32", "start_ptr": "*i64", "size_ptr": "*i64", "pad_ptr": "*i64", "out_ptr": "*bf16",
    "B": "i32", "L": "i32", "F": "i32", "D": "i32", "stride_t": "i64",
}
_GATHER_TYPES = {
    "table_ptr": "*fp32", "out_ptr": "*bf16", "sorted_ptr": "*i32", "perm_ptr": "*i64", "N": "i32", "D": "i32",
    "stride_t": "i64", "stride_o": "i64",
}
_CROSSING_TYPES = {
    "table_ptr": "*fp32", "acc_ptr": "*fp32", "scratch_ptr": "*fp32", "sorted_ptr": "*i32", "N": "i32", "D": "i32",
    "stride_t": "i64", "lr": "fp32", "eps": "fp32",
}


@needs_triton
def test_kernels_compile_for_an_h100_without_one():
    """The interpreter skips Triton's compiler; this builds real sm_90 machine code
    (no GPU needed), so a kernel that would not compile fails here, not on the card."""
    import subprocess
    import sys

    code = f"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from hetgmp.kernels import triton_update as tu, triton_gather as tg, triton_bag_pool as tp
const = lambda **kw: {{k: "constexpr" for k in kw}}
for fn, types, consts in [
    (tu._reduce_apply_kernel, {_REDUCE_TYPES!r}, dict(ADAGRAD=False, COUNT=True, RANK1=False, POOLED=False, WEIGHTED=False, BLOCK_N=64, BLOCK_D=32)),
    (tu._reduce_apply_kernel, {_REDUCE_TYPES!r}, dict(ADAGRAD=True, COUNT=False, RANK1=False, POOLED=False, WEIGHTED=False, BLOCK_N=16, BLOCK_D=128)),
    (tu._reduce_apply_kernel, {_REDUCE_TYPES!r}, dict(ADAGRAD=False, COUNT=True, RANK1=True, POOLED=False, WEIGHTED=False, BLOCK_N=16, BLOCK_D=128)),
    (tu._reduce_apply_kernel, {{**{_REDUCE_TYPES!r}, "grad_ptr": "*bf16"}}, dict(ADAGRAD=True, COUNT=True, RANK1=False, POOLED=True, WEIGHTED=True, BLOCK_N=16, BLOCK_D=128)),
    (tp._pool_kernel, {_POOL_TYPES!r}, dict(MEAN=True, PADDED=True, BLOCK_B=16, BLOCK_D=128)),
    (tp._pool_kernel, {{**{_POOL_TYPES!r}, "out_ptr": "*fp32"}}, dict(MEAN=False, PADDED=False, BLOCK_B=128, BLOCK_D=16)),
    (tu._adagrad_crossing_kernel, {_CROSSING_TYPES!r}, dict(BLOCK_N=16, BLOCK_D=128)),
    (tg._gather_sorted_kernel, {_GATHER_TYPES!r}, dict(BLOCK_N=16, BLOCK_D=128)),
    (tg._gather_sorted_kernel, {{**{_GATHER_TYPES!r}, "out_ptr": "*fp32"}}, dict(BLOCK_N=128, BLOCK_D=16)),
]:
    src = ASTSource(fn=fn, signature={{**types, **const(**consts)}}, constexprs=consts)
    assert "cubin" in triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm
"""
    # A fresh process: this one runs Triton in interpreter mode.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.parametrize("use_triton", [False, pytest.param(True, marks=needs_triton)])
@pytest.mark.parametrize("d", [3, 16, 130])
def test_sorted_gather_matches_index_select(use_triton, d):
    from hetgmp.kernels.gather import gather_rows, sort_ids

    ids, _, table, _ = _skewed_case(300, d, 50, seed=d, adagrad=False)
    order = sort_ids(ids, len(table))
    assert order[0].dtype == torch.int32 and torch.equal(ids[order[1]].int(), order[0])
    assert torch.equal(gather_rows(table, order, use_triton=use_triton), table.index_select(0, ids))
    if not use_triton:  # the interpreter truncates to bf16 where the GPU rounds to nearest
        got = gather_rows(table, order, torch.bfloat16, use_triton=False)
        assert torch.equal(got, table.index_select(0, ids).bfloat16())


@needs_triton
@pytest.mark.parametrize("adagrad", [False, True])
def test_update_reuses_a_given_sort(adagrad):
    from hetgmp.kernels.gather import sort_ids

    ids, grad, table, acc = _skewed_case(200, 8, 30, seed=5, adagrad=adagrad)
    want = _apply(sparse_update_reference, ids, grad, table, acc)
    order = sort_ids(ids, len(table))
    for backend in ("torch", "triton"):
        _assert_same(_apply(sparse_update, ids, grad, table, acc, backend=backend, order=order), want)
    bf16 = grad.bfloat16()
    want = _apply(sparse_update_reference, ids, bf16.float(), table, acc)
    _assert_same(_apply(sparse_update, ids, bf16, table, acc, backend="triton", order=order), want)


@needs_triton
def test_sgd_update_takes_equal_ids_side_by_side_in_any_order():
    # The sharded fast step sorts global ids and updates local rows: relabelled, the runs of
    # equal ids stay side by side but no longer ascend. SGD needs no more than that.
    from hetgmp.kernels.gather import sort_ids

    ids, grad, table, _ = _skewed_case(300, 8, 40, seed=11, adagrad=False)
    (relabel,) = _on(torch.randperm(len(table), generator=torch.Generator().manual_seed(12)))
    sorted_ids, perm = sort_ids(ids, len(table))
    order = (relabel[sorted_ids.long()].int(), perm)
    assert not bool((order[0][1:] >= order[0][:-1]).all()), "the relabelled ids must not ascend"
    want = _apply(sparse_update_reference, relabel[ids], grad, table, None)
    _assert_same(_apply(sparse_update, relabel[ids], grad, table, None, backend="triton", order=order), want)


@needs_triton
@pytest.mark.parametrize("adagrad", [False, True])
def test_rank1_gradient_is_the_written_out_one(adagrad):
    # A Rank1Grad (coef_B[b] * weight_FD[f] for occurrence b F + f) in every backend equals the
    # same gradient written out: the Triton kernel computes it from the two, never reading [N, D].
    from hetgmp.kernels import Rank1Grad

    batch, fields, d = 30, 5, 6
    ids, _, table, acc = _skewed_case(batch * fields, d, 40, seed=7, adagrad=adagrad)
    gen = torch.Generator().manual_seed(8)
    grad = Rank1Grad(*_on(torch.randn(batch, generator=gen), torch.randn(fields, d, generator=gen)))
    written = grad.dense()
    assert torch.allclose(written[2 * fields + 3], grad.coef_B[2] * grad.weight_FD[3])
    want = _apply(sparse_update_reference, ids, written, table, acc)
    for backend in ("torch", "reference", "triton"):
        _assert_same(_apply(sparse_update, ids, grad, table, acc, backend=backend), want)
    got = _apply(_fused_update, ids, grad, table, acc, eps=DEFAULT_EPS, scratch_TD=None, block_n=16)
    _assert_same(got, want)
