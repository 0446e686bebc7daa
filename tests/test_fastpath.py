"""The fast training step against the plain-autograd reference, on CPU.

Same start (model copy, table clone), same batches: after a few steps the
table, the Adagrad accumulator and every dense weight must agree within 1e-5.
The Triton kernels run under Triton's interpreter (set before triton loads).
"""

import copy
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from hetgmp.errors import HetGMPError  # noqa: E402
from hetgmp.fastpath import FastStep, FastStepConfig, ReferenceStep  # noqa: E402
from hetgmp.models import build_model, table_width  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIELDS, DENSE, ROWS, BATCH = 3, 2, 40, 16
HAVE_TRITON = importlib.util.find_spec("triton") is not None
# With a GPU and Triton compiled (TRITON_INTERPRET=0) the comparisons run on it, graphs and kernels included.
DEVICE = torch.device("cuda" if os.environ["TRITON_INTERPRET"] != "1" and torch.cuda.is_available() else "cpu")


def _batches(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.rand(BATCH, DENSE, generator=gen),
         (ROWS * torch.rand(BATCH, FIELDS, generator=gen) ** 4).long(),
         (torch.rand(BATCH, generator=gen) < 0.3).float())
        for _ in range(n)
    ]


def _train(step_cls, model, table, cfg, batches):
    model, table = copy.deepcopy(model), table.clone()
    step = step_cls(model, table, cfg)
    losses = [step.step(*b).item() for b in batches]
    return model, step.table_ED, step.acc_E, losses


def test_fast_step_counts_versions_and_correct_samples():
    batches = _batches(3)
    versions = torch.zeros(ROWS, dtype=torch.int64)
    model = build_model("wdl", FIELDS, DENSE, 4)
    table = torch.randn(ROWS, 4)
    step = FastStep(model, table, FastStepConfig(kernel="torch", accuracy=True), versions_E=versions)
    for dense, ids, labels in batches:
        with torch.no_grad():
            want_correct = ((model(dense, table[ids]) > 0) == (labels > 0.5)).sum()
        step.step(dense, ids, labels)
        assert step.correct.item() == want_correct.item()
    want = torch.bincount(torch.cat([ids.flatten() for _, ids, _ in batches]), minlength=ROWS)
    assert torch.equal(versions, want)


def _compare(model_name, cfg, steps=4):
    torch.manual_seed(0)
    dim = 4
    model = build_model(model_name, FIELDS, DENSE, dim).to(DEVICE)
    # A larger init than N(0, 0.01) so that the embeddings move the loss visibly.
    table = (torch.randn(ROWS, table_width(model_name, dim)) * 0.3).to(DEVICE)
    batches = [tuple(t.to(DEVICE) for t in b) for b in _batches(steps)]
    fast = _train(FastStep, model, table, cfg, batches)
    ref = _train(ReferenceStep, model, table, cfg, batches)
    torch.testing.assert_close(fast[1], ref[1], rtol=0, atol=1e-5)
    if cfg.sparse_optimizer == "rowwise_adagrad":
        torch.testing.assert_close(fast[2], ref[2], rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(fast[0].named_parameters(), ref[0].parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5, msg=lambda m: f"{name}: {m}")
    assert fast[3] == pytest.approx(ref[3], abs=1e-5)
    assert not torch.equal(fast[1], table), "the step must move the table"


@pytest.mark.parametrize("model_name", ["wdl", "dcn", "dfm"])
def test_fast_step_matches_reference_sgd(model_name):
    lr = {"wdl": 0.5, "dcn": 0.3, "dfm": 0.1}[model_name]
    _compare(model_name, FastStepConfig(lr=lr, dense_lr=lr, kernel="torch"))


@pytest.mark.parametrize("kernel", ["torch", pytest.param("triton", marks=pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed"))])
def test_fast_step_matches_reference_adagrad_adam(kernel):
    _compare("wdl", FastStepConfig(lr=0.1, dense_lr=0.01, sparse_optimizer="rowwise_adagrad", dense_optimizer="adam", kernel=kernel))


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_fast_step_with_triton_kernel_matches_reference():
    _compare("dcn", FastStepConfig(lr=0.3, dense_lr=0.3, kernel="triton"), steps=3)


@pytest.mark.parametrize("model_name", ["wdl", "dcn"])
def test_overlapped_step_matches_reference(model_name):
    # overlap: WDL runs its tower before the head (dense_part / head), both models update the
    # table from the rows' gradient hook in the middle of backward; the arithmetic is the same.
    _compare(model_name, FastStepConfig(lr=0.3, dense_lr=0.3, sparse_optimizer="rowwise_adagrad", kernel="torch", overlap=True))


@pytest.mark.parametrize("kernel", ["torch", pytest.param("triton", marks=pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed"))])
@pytest.mark.parametrize("overlap", [False, True])
def test_implicit_row_gradient_matches_reference(kernel, overlap):
    # WDL's rows reach the logit through one linear layer: the update builds each occurrence's
    # gradient from dloss/dlogit and that layer's weight (before the dense optimizer moves it).
    cfg = FastStepConfig(lr=0.5, dense_lr=0.5, kernel=kernel, implicit_row_grad=True, overlap=overlap, flag_nonfinite=True)
    _compare("wdl", cfg)
    with pytest.raises(HetGMPError, match="implicit_row_grad needs a model.*DCN has none"):
        FastStep(build_model("dcn", FIELDS, DENSE, 4).to(DEVICE), torch.zeros(ROWS, 4, device=DEVICE), cfg)


def test_sort_ahead_trains_the_source_batches_in_order():
    # sort_ahead draws (and sorts) each batch one step before training on it: the weights
    # after n steps must be those of the plain step on the same n batches, and the source
    # must have been asked for one batch more.
    torch.manual_seed(0)
    model, table = build_model("dcn", FIELDS, DENSE, 4), torch.randn(ROWS, 4) * 0.3
    batches = _batches(5)
    drawn = []

    def source():
        drawn.append(len(drawn))
        return batches[len(drawn) - 1]

    cfg = FastStepConfig(lr=0.3, dense_lr=0.3, sparse_optimizer="rowwise_adagrad", kernel="torch", overlap=True)
    ahead = FastStep(copy.deepcopy(model), table.clone(), FastStepConfig(**{**vars(cfg), "sort_ahead": True}), source=source)
    losses = [ahead.step_from_source().item() for _ in range(4)]
    plain = _train(FastStep, model, table, cfg, batches[:4])
    assert len(drawn) == 5
    torch.testing.assert_close(ahead.table_ED, plain[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(ahead.acc_E, plain[2], rtol=0, atol=1e-6)
    for p, q in zip(ahead.model.parameters(), plain[0].parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    assert losses == pytest.approx(plain[3], abs=1e-6)


def test_bf16_autocast_step_matches_bf16_reference():
    _compare("wdl", FastStepConfig(lr=0.5, dense_lr=0.5, amp="bf16", kernel="torch"), steps=2)


def test_config_errors_name_the_field():
    with pytest.raises(HetGMPError, match="dense_optimizer='rmsprop'.*amp='fp8'"):
        FastStepConfig(dense_optimizer="rmsprop", amp="fp8").check()
    with pytest.raises(HetGMPError, match="sort_ahead=True needs gather='sorted'"):
        FastStepConfig(sort_ahead=True, gather="plain").check()
    with pytest.raises(HetGMPError, match="input buffers exist only for a CUDA-graph step"):
        FastStep(build_model("wdl", 2, 1, 2), torch.zeros(5, 2), FastStepConfig(kernel="torch")).input_buffers()


def test_graph_input_buffers_take_int32_ids_and_fixed_shapes():
    # The capture itself needs CUDA; the buffer protocol around it does not.
    fast = FastStep(build_model("wdl", FIELDS, DENSE, 4), torch.zeros(ROWS, 4), FastStepConfig(kernel="torch"))
    first, second = _batches(2)
    buffers = fast._inputs.load(*first)
    assert buffers[1].dtype == torch.int32 and torch.equal(buffers[1], first[1].int())
    assert fast._inputs.load(*second) is buffers and torch.equal(buffers[0], second[0])
    assert fast._inputs.load(*buffers) is buffers and fast.input_buffers() is buffers
    with pytest.raises(HetGMPError, match="fixed shapes"):
        fast._inputs.load(second[0][:3], second[1][:3], second[2][:3])


def test_gpu_benchmark_runs_its_code_path_on_cpu(tmp_path):
    # Without the interpreter the CPU run takes the torch kernel: the code path
    # in seconds (the Triton kernels are held to the reference above).
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT / "src")
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--device", "cpu", "--quick", "--profile"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    table = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert len(table) >= 3 and "FAILED" not in out.stdout, out.stdout
    assert "max abs diff" in out.stdout and "profile of" in out.stdout


@pytest.mark.parametrize("gather", ["sorted", "plain"])
def test_gather_orders_agree(gather):
    _compare("wdl", FastStepConfig(lr=0.5, dense_lr=0.5, kernel="torch", gather=gather), steps=3)


def test_bf16_rows_step_matches_bf16_reference():
    # One step: after it the tables differ by float rounding, which a bf16 cast
    # of the next step's rows can turn into a whole bf16 ulp.
    cfg = FastStepConfig(lr=0.5, dense_lr=0.5, amp="bf16", bf16_rows=True, kernel="torch")
    _compare("wdl", cfg, steps=1)
    with pytest.raises(HetGMPError, match="bf16_rows=True needs amp='bf16'"):
        FastStepConfig(bf16_rows=True).check()
    with pytest.raises(HetGMPError, match="autotune=True needs compile=True"):
        FastStepConfig(autotune=True).check()


@pytest.mark.parametrize("model_name, optimizer, autotune", [("dlrm", "sgd", True), ("dcnv2", "adam", False)])
def test_compiled_step_matches_reference(model_name, optimizer, autotune):
    # compile: the model with the loss compiled; on CUDA also the dense optimizer's foreach step
    # (config.fast_dense_optimizer), autotune's matmul kernels and a CUDA graph. fp32.
    cfg = FastStepConfig(lr=0.3, dense_lr=0.01, dense_optimizer=optimizer, kernel="triton", compile=True, autotune=autotune)
    _compare(model_name, cfg)


def test_the_compiled_dense_step_is_taken_on_cuda_only_and_not_when_skipping():
    from hetgmp.fastpath.config import fast_dense_optimizer

    params = list(build_model("wdl", FIELDS, DENSE, 4).parameters())
    for name in ("sgd", "adam"):
        opt, step = fast_dense_optimizer(params, name, 0.1, torch.device("cuda"), skip_nonfinite=False, compile=True)
        assert opt.defaults["foreach"] and not opt.defaults["fused"] and step != opt.step
        opt, step = fast_dense_optimizer(params, name, 0.1, torch.device("cpu"), skip_nonfinite=False, compile=True)
        assert step == opt.step
    opt, step = fast_dense_optimizer(params, "adam", 0.1, torch.device("cuda"), skip_nonfinite=True, compile=True)
    assert opt.defaults["fused"] and step == opt.step  # found_inf: a skipped step needs fused Adam
    opt, step = fast_dense_optimizer(params, "sgd", 0.1, torch.device("cuda"), skip_nonfinite=False, compile=False)
    assert opt.defaults["fused"] and step == opt.step
