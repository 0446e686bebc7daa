"""The CTR models against the SPEC's layer sizes and explicit formulas."""

import itertools

import numpy as np
import pytest
import torch
from reference_wdl import train_reference_wdl
from sklearn.metrics import roc_auc_score

from hetgmp.data.arrays import DatasetMeta, save_split, write_meta
from hetgmp.errors import HetGMPError
from hetgmp.models import MODEL_NAMES, ORIGINAL_LR, DCNv2Shape, build_model, table_width

F, I, D, B = 26, 13, 16, 64
# HET-GMP's own models: the SPEC's layer sizes and its N(0, 0.01) bias-free init
# (the DLRM family's are in test_models_dlrm.py).
HETGMP_MODELS = ("wdl", "dcn", "dfm")
# Narrower layers for DCNv2 where the sizes do not matter (MLPerf's 1024-wide top is slow on CPU).
NARROW = {"dcnv2": DCNv2Shape(bottom=(64,), cross_layers=2, cross_rank=4, top=(64, 32))}


def _inputs(name, batch=B, fields=F, dense=I, dim=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dense, generator=g), torch.randn(batch, fields, table_width(name, dim), generator=g)


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("fields,dense", [(F, I), (22, 0), (1, 1)])
def test_forward_shapes(name, fields, dense):
    torch.manual_seed(0)
    model = build_model(name, num_fields=fields, num_dense=dense, embed_dim=8)
    logits = model(*_inputs(name, batch=5, fields=fields, dense=dense, dim=8))
    assert logits.shape == (5,) and logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_parameter_counts_match_the_spec_layer_sizes():
    flat = F * D
    expected = {
        "wdl": I * 256 + 256 * 256 * 2 + (flat + 256),
        "dcn": 2 * (flat + I) + (flat + I) * 256 + 256 * 256 * 2 + (flat + I + 256),
        "dfm": flat * 256 + 256 * 256 + 256,
    }
    for name in HETGMP_MODELS:
        assert _count(build_model(name, F, I, D)) == expected[name], name
    assert _count(build_model("wdl", 22, 0, D)) == 22 * D  # no dense tower without dense features
    assert set(ORIGINAL_LR) == set(MODEL_NAMES)
    assert table_width("dfm", D) == D + 1 and table_width("wdl", D) == D == table_width("dcn", D)


def test_init_is_normal_with_std_001_and_no_biases():
    torch.manual_seed(0)
    for name in HETGMP_MODELS:
        model = build_model(name, F, I, D)
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        assert abs(weights.mean().item()) < 1e-3 and weights.std().item() == pytest.approx(0.01, rel=0.02)
        assert not any(isinstance(m, torch.nn.Linear) and m.bias is not None for m in model.modules())


def test_dcn_cross_layer_matches_the_formula():
    torch.manual_seed(1)
    model = build_model("dcn", 3, 2, 2)
    dense, emb = _inputs("dcn", batch=4, fields=3, dense=2, dim=2, seed=1)
    x0 = torch.cat([emb.reshape(4, -1), dense], 1)
    w, b = model.cross_w.detach(), model.cross_b.detach()
    cross = torch.stack([x * (x @ w) + x + b for x in x0])  # one sample at a time: x0 (x0^T w) + x0 + b
    deep = model.deep(x0)
    expected = torch.cat([cross, deep], 1) @ model.out.weight.detach().T
    torch.testing.assert_close(model(dense, emb).detach(), expected[:, 0])


@pytest.mark.parametrize("compiled_layout", [False, True])
@pytest.mark.parametrize("name", ["wdl", "dcn"])
def test_factored_forward_has_the_literal_gradients(name, compiled_layout, monkeypatch):
    """WDL and DCN compute their output layer factored (see their docstrings):
    in float64, value and every gradient match the formula as written, also in
    the layout they take under torch.compile (zero-padded matmuls, WDL's output
    layer as a product and sum), run here eagerly."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiled_layout)
    torch.manual_seed(4)
    model = build_model(name, 3, 2, 2).double()
    dense, emb = (t.double().requires_grad_() for t in _inputs(name, batch=5, fields=3, dense=2, dim=2, seed=4))
    flat = emb.reshape(5, -1)
    if name == "wdl":
        literal = torch.cat([flat, model.deep(dense)], 1) @ model.out.weight.T
    else:
        x0 = torch.cat([flat, dense], 1)
        cross = x0 * (x0 @ model.cross_w)[:, None] + x0 + model.cross_b
        literal = torch.cat([cross, model.deep(x0)], 1) @ model.out.weight.T
    inputs = [dense, emb, *model.parameters()]
    want = torch.autograd.grad(literal[:, 0].square().sum(), inputs)
    got_value = model(dense, emb)
    got = torch.autograd.grad(got_value.square().sum(), inputs)
    torch.testing.assert_close(got_value, literal[:, 0])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_deepfm_matches_brute_force_pairwise_fm():
    torch.manual_seed(2)
    fields, dim = 5, 3
    model = build_model("dfm", fields, I, dim)
    dense, emb = _inputs("dfm", batch=6, fields=fields, dim=dim, seed=2)
    emb = emb.double()
    first = emb[:, :, 0].sum(1)
    second = sum((emb[:, f, 1:] * emb[:, g, 1:]).sum(1) for f, g in itertools.combinations(range(fields), 2))
    dnn = model.double().dnn(emb[:, :, 1:].reshape(6, -1))[:, 0]
    torch.testing.assert_close(model(dense.double(), emb).detach(), (first + second + dnn).detach())


def test_deepfm_ignores_dense_features():
    model = build_model("dfm", F, I, D)
    dense, emb = _inputs("dfm")
    torch.testing.assert_close(model(dense, emb), model(torch.zeros_like(dense), emb))


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("dense", [I, 0])
def test_sgd_steps_decrease_the_loss(name, dense):
    """Labels planted by a fixed logistic model over embeddings and dense features."""
    torch.manual_seed(3)
    fields, dim, n = 4, 4, 512
    model = build_model(name, fields, dense, dim, shape=NARROW.get(name))
    emb = torch.nn.Parameter(torch.randn(n, fields, table_width(name, dim)) * 0.5)
    x = torch.randn(n, dense)
    truth = emb.detach().flatten(1).sum(1) + (x.sum(1) if dense else 0)
    y = (torch.rand(n) < torch.sigmoid(2 * truth)).float()
    opt = torch.optim.SGD([*model.parameters(), emb], lr=0.1)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x, emb), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.02, losses


def test_models_compile_as_one_graph():
    """fullgraph=True fails on any graph break (data-dependent control flow, host syncs)."""
    for name in MODEL_NAMES:
        model = build_model(name, F, I, D)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        dense, emb = _inputs(name, batch=8)
        torch.testing.assert_close(compiled(dense, emb), model(dense, emb))


def test_bad_names_and_sizes_are_clear_errors():
    with pytest.raises(HetGMPError, match="unknown model 'dnn'.*wdl, dcn, dfm"):
        build_model("dnn", F, I, D)
    with pytest.raises(HetGMPError, match="unknown model"):
        table_width("fm", D)
    with pytest.raises(HetGMPError, match="embed_dim"):
        build_model("wdl", F, I, 0)


def _planted_dataset(directory, rows=8000, fields=(50, 40, 30, 20), num_dense=3):
    """Labels from a logistic model over per-id weights and dense features; returns the oracle's AUC."""
    rng = np.random.default_rng(0)
    meta = DatasetMeta(fields=list(fields), num_ids=sum(fields), train_rows=rows - 2000, test_rows=2000, seed=0, num_dense=num_dense)
    sparse = np.stack([rng.integers(0, f, rows) + o for f, o in zip(fields, meta.offsets)], 1).astype(np.int32)
    dense = rng.normal(0, 1, (rows, num_dense)).astype(np.float32)
    logit = rng.normal(0, 1, meta.num_ids)[sparse].sum(1) + dense @ rng.normal(0, 1, num_dense)
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    directory.mkdir()
    cut = meta.train_rows
    save_split(directory, "train", dense[:cut], sparse[:cut], labels[:cut])
    save_split(directory, "test", dense[cut:], sparse[cut:], labels[cut:])
    write_meta(directory, meta)
    return roc_auc_score(labels[cut:], logit[cut:])


def test_reference_wdl_learns_a_planted_model(tmp_path):
    oracle = _planted_dataset(tmp_path / "ds")
    auc = train_reference_wdl(tmp_path / "ds", epochs=2, batch_size=512, lr=1e-2)
    assert oracle - 0.03 < auc <= oracle + 0.01, (auc, oracle)
