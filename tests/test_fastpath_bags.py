"""Every model's fast step with multi-hot bags against the plain-autograd reference.

The reference pools with torch's F.embedding_bag field by field (its
padding_idx the field's padding id), the fast step with pool_bags: they share
no pooling code. Bags (3, 1, 2) over fields of 15, 10 and 15 ids; fields 0
and 2 pad (global ids 0 and 25), and some of field 0's bags are padding only.
"""

import copy
import importlib.util
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from hetgmp.errors import HetGMPError  # noqa: E402
from hetgmp.fastpath import FastStep, FastStepConfig, ReferenceStep  # noqa: E402
from hetgmp.models import DCNv2Shape, DLRMShape, MODEL_NAMES, Bags, build_model, table_width  # noqa: E402

FIELD_SIZES, BAG_SIZES, PADDING = (15, 10, 15), (3, 1, 2), (0, -1, 25)
OFFSETS = (0, 15, 25)
ROWS, DENSE, BATCH, DIM = sum(FIELD_SIZES), 2, 16, 4
SMALL = {"dlrm": DLRMShape(bottom=(7, 5), top=(6, 4)), "dcnv2": DCNv2Shape(bottom=(7,), cross_layers=2, cross_rank=3, top=(6, 4))}
LR = {"wdl": 0.5, "dcn": 0.3, "dfm": 0.1, "dlrm": 0.3, "dcnv2": 0.3}
HAVE_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
DEVICE = torch.device("cuda" if os.environ["TRITON_INTERPRET"] != "1" and torch.cuda.is_available() else "cpu")


def _bag_batches(n, seed=0):
    """(dense, ids (B, 6), labels): each column's ids inside its field, about a third of the padded
    fields' slots padding, and the first two samples' field-0 bags padding only."""
    gen = torch.Generator().manual_seed(seed)
    field_of_column = [f for f, k in enumerate(BAG_SIZES) for _ in range(k)]
    out = []
    for _ in range(n):
        cols = []
        for f in field_of_column:
            ids = OFFSETS[f] + (FIELD_SIZES[f] * torch.rand(BATCH, generator=gen) ** 3).long()
            if PADDING[f] >= 0:
                ids = torch.where(torch.rand(BATCH, generator=gen) < 0.35, PADDING[f], ids)
            cols.append(ids)
        ids_BL = torch.stack(cols, 1)
        ids_BL[:2, :3] = PADDING[0]
        out.append((torch.rand(BATCH, DENSE, generator=gen), ids_BL, (torch.rand(BATCH, generator=gen) < 0.3).float()))
    return [tuple(t.to(DEVICE) for t in b) for b in out]


def _train(step_cls, model, table, cfg, bags, batches):
    model, table = copy.deepcopy(model), table.clone()
    step = step_cls(model, table, cfg, bags=bags)
    losses = [step.step(*b).item() for b in batches]
    return model, step.table_ED, step.acc_E, losses


def _compare(model_name, cfg, mode="sum", steps=3):
    torch.manual_seed(0)
    bags = Bags(BAG_SIZES, PADDING, mode)
    model = build_model(model_name, len(FIELD_SIZES), DENSE, DIM, SMALL.get(model_name)).to(DEVICE)
    table = (torch.randn(ROWS, table_width(model_name, DIM)) * 0.3).to(DEVICE)
    batches = _bag_batches(steps)
    fast = _train(FastStep, model, table, cfg, bags, batches)
    ref = _train(ReferenceStep, model, table, cfg, bags, batches)
    torch.testing.assert_close(fast[1], ref[1], rtol=0, atol=2e-5)
    if cfg.sparse_optimizer == "rowwise_adagrad":
        torch.testing.assert_close(fast[2], ref[2], rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(fast[0].named_parameters(), ref[0].parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=2e-5, msg=lambda m: f"{name}: {m}")
    assert fast[3] == pytest.approx(ref[3], abs=1e-5)
    moved = (fast[1] - table).abs().amax(1) > 0
    assert moved[[1, 5, 16]].all(), "rows of every field's bags must move"
    # A padding row is left out of its bag: no gradient, no update (row 25 pads field 2).
    torch.testing.assert_close(fast[1][[0, 25]], table[[0, 25]], rtol=0, atol=0)


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_every_model_pools_bags_as_embedding_bag_does(model_name):
    lr = LR[model_name]
    _compare(model_name, FastStepConfig(lr=lr, dense_lr=lr, kernel="torch"))


@pytest.mark.parametrize("model_name", ["dlrm", "dcnv2"])
def test_mean_pooling_with_adagrad_and_adam(model_name):
    cfg = FastStepConfig(lr=0.1, dense_lr=0.01, sparse_optimizer="rowwise_adagrad", dense_optimizer="adam", kernel="torch")
    _compare(model_name, cfg, mode="mean")


@needs_triton
@pytest.mark.parametrize("model_name, cfg, mode", [
    ("dlrm", FastStepConfig(lr=0.3, dense_lr=0.3, kernel="triton"), "sum"),
    ("dcnv2", FastStepConfig(lr=0.1, dense_lr=0.01, sparse_optimizer="rowwise_adagrad", dense_optimizer="adam", kernel="triton"), "mean"),
    # Overlapped: the bottom MLP first, and the update reads the pooled rows' gradient in place, a
    # strided slice of the gradient of DCNv2's [embeddings, bottom].
    ("dcnv2", FastStepConfig(lr=0.3, dense_lr=0.3, kernel="triton", overlap=True), "sum"),
    ("wdl", FastStepConfig(lr=0.5, dense_lr=0.5, kernel="triton", overlap=True, sort_ahead=False), "sum"),
    ("dfm", FastStepConfig(lr=0.1, dense_lr=0.1, kernel="triton", fused_pooling=False), "mean"),
])
def test_bags_pooled_from_the_table_match_the_reference(model_name, cfg, mode):
    # The Triton kernel: one kernel pools the bags from the table and the update reads the pooled
    # gradient (unless fused_pooling is off: the rows gathered, pooled in the model's graph).
    _compare(model_name, cfg, mode)


@needs_triton
def test_fused_pooling_skips_a_nonfinite_step():
    bags = Bags(BAG_SIZES, PADDING)
    model = build_model("dlrm", 3, DENSE, DIM, SMALL["dlrm"]).to(DEVICE)
    table = (torch.randn(ROWS, DIM) * 0.3).to(DEVICE)
    step = FastStep(model, table, FastStepConfig(lr=0.3, dense_lr=0.3, kernel="triton", skip_nonfinite=True), bags=bags)
    assert step.pools_from_table
    dense, ids, labels = _bag_batches(1)[0]
    before = table.clone()
    dense[0, 0] = float("nan")
    step.step(dense, ids, labels)
    assert step.skipped.item() == 1.0 and torch.equal(table, before)


def test_overlapped_step_pools_in_the_head():
    # WDL's overlap runs its tower first and the head on the pooled rows.
    _compare("wdl", FastStepConfig(lr=0.5, dense_lr=0.5, sparse_optimizer="rowwise_adagrad", kernel="torch", overlap=True))


def test_bf16_bags_sum_in_fp32():
    # 100 bf16 rows summed in bf16 keep 8 bits of the total: pool_bags sums in fp32 as the reference does.
    _compare("dlrm", FastStepConfig(lr=0.3, dense_lr=0.3, amp="bf16", bf16_rows=True, kernel="torch"), steps=1)


def test_one_hot_dlrm_and_dcnv2_fast_steps_match_the_reference():
    torch.manual_seed(0)
    for name in ("dlrm", "dcnv2"):
        model = build_model(name, 3, DENSE, DIM, SMALL[name]).to(DEVICE)
        table = (torch.randn(ROWS, DIM) * 0.3).to(DEVICE)
        batches = [(d, ids[:, [0, 3, 4]], y) for d, ids, y in _bag_batches(3, seed=2)]
        cfg = FastStepConfig(lr=0.3, dense_lr=0.3, kernel="torch", overlap=True)
        fast = _train(FastStep, model, table, cfg, None, batches)
        ref = _train(ReferenceStep, model, table, cfg, None, batches)
        torch.testing.assert_close(fast[1], ref[1], rtol=0, atol=2e-5)
        assert fast[3] == pytest.approx(ref[3], abs=1e-5)


def test_implicit_row_gradient_is_refused_with_bags():
    cfg = FastStepConfig(kernel="torch", implicit_row_grad=True)
    with pytest.raises(HetGMPError, match="one row per field; WDL pools bags"):
        FastStep(build_model("wdl", 3, DENSE, DIM), torch.zeros(ROWS, DIM), cfg, bags=Bags(BAG_SIZES, PADDING))
