"""DLRM and DCNv2 against plain reimplementations written here, their presets' layer
sizes, the hooks every model declares, and a few fast steps against autograd + SGD."""

import copy
import itertools

import pytest
import torch

from hetgmp.embedding.memory import HIDDEN, batch_bytes
from hetgmp.errors import HetGMPError
from hetgmp.fastpath import FastStep, FastStepConfig
from hetgmp.models import (DCNV2_DEFAULT, DCNV2_MLPERF, describe_shape, DLRM_KAGGLE, DLRM_MLPERF, MODEL_NAMES, MODELS, DCNv2Shape, DLRMShape, build_model,
                           has_dense_part, has_row_weights, model_size)
from hetgmp.kernels.interaction import upper_pairs

SMALL_DLRM = DLRMShape(bottom=(7, 5), top=(6, 4))
SMALL_DCNV2 = DCNv2Shape(bottom=(7,), cross_layers=2, cross_rank=3, top=(6, 4))


def _inputs(batch, fields, dense, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, dense, generator=g, dtype=torch.float64),
            torch.randn(batch, fields, dim, generator=g, dtype=torch.float64))


def _mlp(x, layers, relu_last):
    """Linear layers of an nn.Sequential applied by hand: x W^T + b, ReLU between (and after if relu_last)."""
    linears = [m for m in layers if isinstance(m, torch.nn.Linear)]
    for i, layer in enumerate(linears):
        x = x @ layer.weight.T + layer.bias
        if relu_last or i < len(linears) - 1:
            x = x.clamp(min=0)
    return x


def _plain_dlrm(model, dense, emb):
    vectors = [emb[:, f] for f in range(emb.shape[1])]
    bottom = [] if model.bottom is None else [_mlp(dense, model.bottom, relu_last=True)]
    vectors = bottom + vectors
    pairs = [(vectors[i] * vectors[j]).sum(1) for i, j in itertools.combinations(range(len(vectors)), 2)]
    return _mlp(torch.cat(bottom + [torch.stack(pairs, 1)], 1), model.top, relu_last=False)[:, 0]


def _plain_dcnv2(model, dense, emb):
    parts = [emb.reshape(len(emb), -1)] + ([] if model.bottom is None else [_mlp(dense, model.bottom, relu_last=True)])
    x0 = x = torch.cat(parts, 1)
    for layer in model.cross:
        w = layer.up.weight if layer.down is None else layer.up.weight @ layer.down.weight  # U V^T, K x K
        x = x0 * (x @ w.T + layer.up.bias) + x
    return _mlp(x, model.top, relu_last=False)[:, 0]


PLAIN = {"dlrm": _plain_dlrm, "dcnv2": _plain_dcnv2}
SHAPES = {"dlrm": [SMALL_DLRM], "dcnv2": [SMALL_DCNV2, DCNv2Shape(bottom=(7,), cross_layers=2, cross_rank=0, top=(6,))]}


@pytest.mark.parametrize("name,shape", [(n, s) for n, shapes in SHAPES.items() for s in shapes])
@pytest.mark.parametrize("fields,dense", [(26, 13), (3, 2), (5, 0), (1, 4)])
def test_forward_and_gradients_match_the_plain_formula(name, shape, fields, dense):
    torch.manual_seed(0)
    dim, batch = 4, 6
    model = build_model(name, fields, dense, dim, shape=shape).double()
    x, emb = (t.requires_grad_() for t in _inputs(batch, fields, dense, dim))
    inputs = [x, emb, *model.parameters()]
    got = model(x, emb)
    want = PLAIN[name](model, x, emb)
    assert got.shape == (batch,)
    torch.testing.assert_close(got, want)
    grads = [torch.autograd.grad(y.square().sum(), inputs, materialize_grads=True) for y in (got, want)]  # x unused without dense
    for g, w in zip(*grads):
        torch.testing.assert_close(g, w)


def test_low_rank_cross_layer_equals_full_rank_with_w_u_vt():
    """A rank-3 model and a full-rank one whose W_l are its U_l V_l^T compute the same logits."""
    torch.manual_seed(1)
    low = build_model("dcnv2", 3, 2, 4, shape=SMALL_DCNV2).double()
    full = build_model("dcnv2", 3, 2, 4, shape=DCNv2Shape(bottom=(7,), cross_layers=2, cross_rank=0, top=(6, 4))).double()
    with torch.no_grad():
        for name, p in full.named_parameters():
            if not name.startswith("cross"):
                p.copy_(low.get_parameter(name))
        for lo, fu in zip(low.cross, full.cross):
            fu.up.weight.copy_(lo.up.weight @ lo.down.weight)
            fu.up.bias.copy_(lo.up.bias)
    x, emb = _inputs(5, 3, 2, 4, seed=1)
    torch.testing.assert_close(full(x, emb), low(x, emb))
    assert sum(p.numel() for p in low.cross.parameters()) == 2 * (2 * 16 * 3 + 16)  # K = (3 + 1) * 4 = 16
    assert sum(p.numel() for p in full.cross.parameters()) == 2 * (16 * 16 + 16)
    # A rank of at least K is full rank: stored as the K x K matrix (fewer weights, the same model).
    wide = build_model("dcnv2", 3, 2, 4, shape=DCNv2Shape(bottom=(7,), cross_layers=2, cross_rank=16, top=(6, 4)))
    assert all(layer.down is None for layer in wide.cross)
    assert [p.shape for p in wide.parameters()] == [p.shape for p in full.parameters()]


def _linear_shapes(layers):
    return [tuple(m.weight.shape[::-1]) for m in layers if isinstance(m, torch.nn.Linear)]


def test_presets_have_the_published_layer_sizes():
    default = build_model("dcnv2", 26, 13, 16)
    assert default.shape == DCNV2_DEFAULT and _linear_shapes(default.top) == [(27 * 16, 512), (512, 256), (256, 1)]
    assert [layer.up.weight.shape for layer in default.cross] == [(27 * 16, 27 * 16)]  # rank 512 >= K: full rank
    dcnv2 = build_model("dcnv2", 26, 13, 128, shape=DCNV2_MLPERF)
    assert _linear_shapes(dcnv2.bottom) == [(13, 512), (512, 256), (256, 128)]
    k = 27 * 128
    assert [(c.down.weight.shape, c.up.weight.shape) for c in dcnv2.cross] == [((512, k), (k, 512))] * 3
    assert _linear_shapes(dcnv2.top) == [(k, 1024), (1024, 1024), (1024, 512), (512, 256), (256, 1)]
    dlrm = build_model("dlrm", 26, 13, 16)
    assert dlrm.shape == DLRM_KAGGLE
    assert _linear_shapes(dlrm.bottom) == [(13, 512), (512, 256), (256, 64), (64, 16)]
    assert _linear_shapes(dlrm.top) == [(16 + 27 * 26 // 2, 512), (512, 256), (256, 1)]
    mlperf = build_model("dlrm", 26, 13, 128, shape=DLRM_MLPERF)
    assert _linear_shapes(mlperf.top)[1:] == [(1024, 1024), (1024, 512), (512, 256), (256, 1)]
    # Without dense features: no bottom MLP, the pairs of the F rows alone.
    assert build_model("dlrm", 22, 0, 8, shape=SMALL_DLRM).top[0].in_features == 22 * 21 // 2
    assert build_model("dcnv2", 22, 0, 8, shape=SMALL_DCNV2).top[0].in_features == 22 * 8


def test_model_size_is_the_built_models_for_the_memory_check():
    for name in MODEL_NAMES:
        model, size = build_model(name, 26, 13, 16), model_size(name, 26, 13, 16)
        assert size.parameters == sum(p.numel() for p in model.parameters()) and size.layer_width == model.layer_width(), name
    assert model_size("wdl", 26, 13, 16).layer_width == HIDDEN + 1  # the three 256-wide layers and the logit
    k = 27 * 128  # MLPerf's DCNv2: the linear layers' outputs, x0 and three cross outputs
    dcnv2 = model_size("dcnv2", 26, 13, 128, DCNV2_MLPERF)
    assert dcnv2.layer_width == (512 + 256 + 128) + 3 * (512 + k) + (1024 + 1024 + 512 + 256 + 1) + 4 * k
    assert dcnv2.parameters == 16_044_545
    n = 32  # DLRM: the MLPs' outputs, the 27 vectors padded to 32, their dots, the pairs and the top input
    assert model_size("dlrm", 26, 13, 16).layer_width == (512 + 256 + 64 + 16) + (512 + 256 + 1) + n * (n + 16) + 351 + 367
    extra = batch_bytes(8192, 26, 13, 128, dcnv2.layer_width, dcnv2.parameters) - batch_bytes(8192, 26, 13, 128)
    assert extra == 8192 * 24 * (dcnv2.layer_width - HIDDEN) + 16 * dcnv2.parameters


def test_shapes_describe_themselves():
    assert describe_shape(DLRM_KAGGLE) == "bottom 512-256-64-d, top 512-256-1"
    assert describe_shape(DCNV2_MLPERF) == "bottom 512-256-d, 3 cross layers of rank 512, top 1024-1024-512-256-1"
    assert describe_shape(DCNv2Shape(bottom=(), cross_layers=1, cross_rank=0, top=())) == "bottom d, 1 cross layer of full rank, top 1"


def test_upper_pairs_are_the_strict_upper_triangle():
    assert upper_pairs(3).tolist() == [1, 2, 5]
    z = torch.arange(16.0).view(4, 4)
    assert z.flatten()[upper_pairs(4)].tolist() == [z[i, j].item() for i in range(4) for j in range(i + 1, 4)]
    # Three vectors padded to four (the zero vector's dots are never read).
    assert z.flatten()[upper_pairs(3, 4)].tolist() == [z[0, 1].item(), z[0, 2].item(), z[1, 2].item()]


def test_hooks_are_declared_on_every_model_class():
    """The fast steps ask the class (has_row_weights, has_dense_part); what it declares is what it has."""
    for name, cls in MODELS.items():
        assert cls.provides_row_weights == hasattr(cls, "row_weights"), name
        assert cls.provides_dense_part == (hasattr(cls, "dense_part") and hasattr(cls, "head")), name
    assert has_row_weights(build_model("wdl", 3, 2, 4)) and has_dense_part(build_model("wdl", 3, 2, 4))
    gen = torch.Generator().manual_seed(0)
    for name, shape in (("dlrm", SMALL_DLRM), ("dcnv2", SMALL_DCNV2)):
        for dense in (2, 0):  # the bottom MLP is the dense part; without dense features there is none
            model = build_model(name, 3, dense, 4, shape=shape)
            assert not has_row_weights(model) and has_dense_part(model)
            dense_BI, emb_BFD = torch.randn(5, dense, generator=gen), torch.randn(5, 3, 4, generator=gen)
            assert (model.dense_part(dense_BI) is None) == (dense == 0)
            assert torch.equal(model.head(model.dense_part(dense_BI), emb_BFD), model(dense_BI, emb_BFD))
    assert not has_row_weights(torch.nn.Linear(2, 1))  # not a CTRModel: declares nothing


def test_bad_shapes_are_clear_errors():
    with pytest.raises(HetGMPError, match="cannot build wdl with shape.*its layer sizes are fixed"):
        build_model("wdl", 3, 2, 4, shape=SMALL_DLRM)
    with pytest.raises(HetGMPError, match="cannot build dlrm with shape.*DLRMShape"):
        build_model("dlrm", 3, 2, 4, shape=SMALL_DCNV2)
    with pytest.raises(HetGMPError, match="cross_rank"):
        build_model("dcnv2", 3, 2, 4, shape=DCNv2Shape(cross_rank=-1))


FIELDS, DENSE, ROWS, BATCH, DIM = 3, 2, 40, 16, 4


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("name,shape", [("dlrm", SMALL_DLRM), ("dcnv2", SMALL_DCNV2)])
def test_fast_step_matches_plain_autograd_sgd(name, shape, overlap):
    """Four steps of the one-GPU fast step on CPU against autograd on a full table leaf and torch.optim.SGD."""
    torch.manual_seed(0)
    model = build_model(name, FIELDS, DENSE, DIM, shape=shape)
    table = torch.randn(ROWS, DIM) * 0.3
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.rand(BATCH, DENSE, generator=gen), (ROWS * torch.rand(BATCH, FIELDS, generator=gen) ** 4).long(),
                (torch.rand(BATCH, generator=gen) < 0.3).float()) for _ in range(4)]
    lr, dense_lr = 0.5, 0.2

    fast_model = copy.deepcopy(model)
    step = FastStep(fast_model, table.clone(), FastStepConfig(lr=lr, dense_lr=dense_lr, kernel="torch", overlap=overlap))
    fast_losses = [step.step(*b).item() for b in batches]

    table_leaf = torch.nn.Parameter(table.clone())
    opt = torch.optim.SGD([{"params": model.parameters(), "lr": dense_lr}, {"params": [table_leaf], "lr": lr}])
    losses = []
    for dense, ids, labels in batches:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(dense, table_leaf[ids]), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())

    assert fast_losses == pytest.approx(losses, abs=1e-5)
    torch.testing.assert_close(step.table_ED, table_leaf.detach(), rtol=0, atol=1e-5)
    for (pname, p), q in zip(fast_model.named_parameters(), model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5, msg=lambda m: f"{pname}: {m}")
    assert not torch.equal(step.table_ED, table)
