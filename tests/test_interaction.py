"""DLRM's dot interaction (kernels/interaction.py): the Triton kernels against the plain batched
matmul, forward and backward, with and without the bottom vector, at widths that are and are not
powers of two, in fp32 and bf16; and DLRM on them against DLRM on the plain path, compiled too
on a GPU. The kernels run under Triton's interpreter on CPU (on the GPU with TRITON_INTERPRET=0)."""

import importlib.util
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from hetgmp.kernels.interaction import top_input, upper_pairs  # noqa: E402
from hetgmp.models import build_model  # noqa: E402

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
DEVICE = torch.device("cuda" if os.environ["TRITON_INTERPRET"] != "1" and torch.cuda.is_available() else "cpu")


def _parts(batch, fields, dim, has_bottom, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(batch, fields, dim, generator=g).to(DEVICE, dtype).requires_grad_()
    bottom = torch.randn(batch, dim, generator=g).to(DEVICE, dtype).requires_grad_() if has_bottom else None
    return bottom, emb


@pytest.mark.parametrize("has_bottom", [True, False])
@pytest.mark.parametrize("fields, dim", [(26, 16), (3, 10), (5, 128), (40, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_interaction_matches_the_batched_matmul(has_bottom, fields, dim, dtype):
    bottom, emb = _parts(7, fields, dim, has_bottom, dtype)
    inputs = [emb] if bottom is None else [bottom, emb]
    want = top_input(bottom, emb, use_triton=False)
    got = top_input(bottom, emb, use_triton=True)
    width = want.shape[1]
    assert got.dtype == dtype and got.shape[1] % 8 == 0 and got.shape[1] - width < 8
    assert torch.count_nonzero(got[:, width:]) == 0
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 5e-2}
    torch.testing.assert_close(got[:, :width].float(), want.float(), **tol)
    g = torch.Generator().manual_seed(1)
    grad_out = torch.randn(got.shape, generator=g).to(DEVICE, dtype)
    want_grads = torch.autograd.grad(want, inputs, grad_out[:, :width])
    got_grads = torch.autograd.grad(got, inputs, grad_out)  # the zero columns' gradient goes nowhere
    for w, h in zip(want_grads, got_grads):
        torch.testing.assert_close(h.float(), w.float(), **tol)


@pytest.mark.parametrize("tile", [(4, 2), (3, 1), (8, 4)])
def test_several_samples_a_program_match_one(tile):
    """Programs of several samples (the batch of 7 not a multiple): the same output and gradients."""
    from hetgmp.kernels.triton_interaction import _backward_kernel, _forward_kernel, backward_into, forward_into, output_width

    bottom, emb = (t.detach() for t in _parts(7, 26, 16, True, torch.float32))
    results = []
    for t in ((1, 2), tile):
        out = torch.full((7, output_width(26, 16, True)), float("nan"), device=DEVICE)
        forward_into(_forward_kernel, bottom, emb, out, True, t)
        grad_out = torch.linspace(-1, 1, out.numel(), device=DEVICE).view_as(out)
        dbottom, demb = torch.full_like(bottom, float("nan")), torch.full_like(emb, float("nan"))
        backward_into(_backward_kernel, bottom, emb, grad_out, dbottom, demb, True, t)
        results.append((out, dbottom, demb))
    for want, got in zip(*results):
        assert not got.isnan().any()  # every sample written, the last program's too
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_the_pairs_are_the_upper_triangle_after_the_bottom_vector():
    bottom, emb = _parts(2, 2, 16, True, torch.float32)
    got = top_input(bottom, emb, use_triton=True)
    vectors = torch.cat([bottom[:, None], emb], 1)
    dots = torch.bmm(vectors, vectors.transpose(1, 2))
    for b in range(2):
        want = torch.cat([bottom[b], dots[b].flatten()[upper_pairs(3)]])
        torch.testing.assert_close(got[b, :19], want, rtol=1e-6, atol=1e-6)


def _logits_and_grads(model, dense, emb, bf16):
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(dense, emb)
    return [logits, *torch.autograd.grad(logits.float().sum(), [emb, *model.parameters()])]


@pytest.mark.skipif(DEVICE.type != "cuda", reason="the model takes the Triton interaction on CUDA tensors")
@pytest.mark.parametrize("compiled", [False, True])
def test_dlrm_on_the_triton_interaction_is_as_close_to_fp32_as_the_plain_one(compiled, monkeypatch):
    """In bf16 both paths round differently (the kernel sums exact products in fp32; the batched
    matmul rounds its dots to bf16): each is held to the fp32 result, the kernel's error within
    the plain path's."""
    torch.manual_seed(0)
    model = build_model("dlrm", 26, 13, 16).to(DEVICE)
    dense = torch.randn(64, 13, device=DEVICE)
    emb = torch.randn(64, 26, 16, device=DEVICE, requires_grad=True)
    run = torch.compile(model, dynamic=False) if compiled else model
    got = _logits_and_grads(run, dense, emb, bf16=True)
    import hetgmp.kernels.interaction as interaction
    plain = interaction.top_input
    monkeypatch.setattr("hetgmp.models.dlrm.top_input", lambda b, e: plain(b, e, use_triton=False))
    exact = _logits_and_grads(model, dense, emb, bf16=False)
    want = _logits_and_grads(model, dense, emb, bf16=True)
    for g, w, x in zip(got, want, exact):
        got_error, plain_error = (g.float() - x).abs().max().item(), (w.float() - x).abs().max().item()
        assert got_error <= 1.5 * plain_error + 1e-4, (got_error, plain_error)
