"""`hetgmp train` on one worker through the fast step, held to the general step on CPU.

Same seed, same batches: the two steps differ only in the order of float
sums, so losses, table, versions, accumulator and dense weights agree within
a tight tolerance; checkpoints cross between them; the AUC is the same.
"""

import shutil

import numpy as np
import pytest
import torch
from torch import nn

from hetgmp.cli import main
from hetgmp.errors import HetGMPError
from hetgmp.fastpath import FastStep, FastStepConfig
from hetgmp.train.checkpoint import optimizer_state_for
from hetgmp.train.config import TrainConfig
from hetgmp.train.data import BatchStream, EpochOrders, Rows, epoch_seed
from hetgmp.train.loop import resume, train
from hetgmp.train.setup import build_run
from hetgmp.train.fast import compiled_note
from hetgmp.data.arrays import load_dataset
from hetgmp.distributed import init_distributed
from hetgmp.embedding import EmbeddingConfig
from hetgmp.embedding.init import initial_rows
from test_train_checkpoint import _assert_same_state
from tinydata import read_metrics, write_planted

# Row-wise Adagrad's first updates of a rarely read row divide its gradient by sqrt(acc) + eps
# with acc about 1e-14: the summation order's last bits are amplified there (a few 1e-6).
TABLE_TOL = 1e-5
OPTIMIZERS = [("sgd", "sgd", 0.05, 0.05, 1e-6), ("adam", "rowwise_adagrad", 1e-3, 0.1, TABLE_TOL)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast")
    write_planted(root / "ds", train_rows=1050, test_rows=300)  # 11 steps an epoch, the last one wrapping
    return root / "ds"


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the CI machine's two cores are shared with other tests


def _cfg(data, out, step, **kw):
    base = dict(data=str(data), batch_size=100, iter=14, log_every=1, device="cpu", progress=False, step=step,
                metrics=str(out / f"{step}.jsonl"), checkpoint_dir=str(out / f"ck-{step}"))
    return TrainConfig(**{**base, **kw})


def _final_state(cfg):
    return torch.load(f"{cfg.checkpoint_dir}/step-{cfg.iter:06d}/rank-0.pt", weights_only=True)


def _assert_trained_alike(a, b, table_tol=TABLE_TOL):
    """Two checkpoints' states agree as far as float summation order lets them."""
    assert torch.equal(a["embedding"]["versions"], b["embedding"]["versions"])
    _assert_same_state(a["embedding"]["values"], b["embedding"]["values"], tol=table_tol)
    _assert_same_state(a["model"], b["model"], tol=1e-7)
    # Accumulators (about 1e-7) and Adam's moments (gradients of about 1e-4, some summing to near 0)
    # are small numbers: held relative to their size, with a floor far below it.
    torch.testing.assert_close(a["embedding"].get("accumulator"), b["embedding"].get("accumulator"), rtol=1e-4, atol=1e-13)
    torch.testing.assert_close(a["dense_optimizer"]["state"], b["dense_optimizer"]["state"], rtol=1e-4, atol=1e-10)
    assert a["dense_optimizer"]["param_groups"] == b["dense_optimizer"]["param_groups"]



@pytest.mark.parametrize("optimizer, sparse_optimizer, lr, sparse_lr, table_tol", OPTIMIZERS)
def test_fast_and_general_steps_train_the_same(data, tmp_path, optimizer, sparse_optimizer, lr, sparse_lr, table_tol):
    runs = {}
    for step in ("fast", "general"):
        cfg = _cfg(data, tmp_path, step, optimizer=optimizer, sparse_optimizer=sparse_optimizer, lr=lr, sparse_lr=sparse_lr)
        train(cfg)
        runs[step] = (read_metrics(tmp_path / f"{step}.jsonl", "train"), _final_state(cfg))
    (fast_lines, fast), (general_lines, general) = runs["fast"], runs["general"]
    assert [r["step"] for r in fast_lines] == list(range(1, 15))
    np.testing.assert_allclose([r["loss"] for r in fast_lines], [r["loss"] for r in general_lines], rtol=1e-5)
    assert [r["accuracy"] for r in fast_lines] == [r["accuracy"] for r in general_lines]
    assert fast["embedding"]["versions"].sum() == 14 * 100 * 4  # every occurrence of 14 full batches of 4 fields
    _assert_trained_alike(fast, general, table_tol)
    initial = initial_rows(torch.arange(100), EmbeddingConfig(num_ids=100, dim=16), torch.device("cpu"))
    assert (fast["embedding"]["values"] - initial).abs().max() > 1e-3  # it trained


def test_cli_picks_the_fast_step_and_matches_the_general_auc(data, tmp_path, capsys):
    aucs = {}
    for step in ("auto", "general"):
        metrics = tmp_path / f"{step}.jsonl"
        argv = ["train", "--data", str(data), "--batch-size", "100", "--iter", "20", "--log-every", "10", "--device", "cpu",
                "--no-progress", "--val", "--metrics", str(metrics), "--step", step]
        assert main(argv) == 0
        out = capsys.readouterr().out
        aucs[step] = read_metrics(metrics, "eval")[-1]["auc"]
        assert "TRAIN step 20" in out and "EVAL  step 20" in out
    assert aucs["auto"] == pytest.approx(aucs["general"], abs=1e-5) and aucs["auto"] > 0.75


def test_the_start_up_line_names_the_step_and_why(data, tmp_path, capsys):
    base = ["train", "--data", str(data), "--batch-size", "100", "--iter", "1", "--device", "cpu", "--no-progress"]
    assert main(base) == 0
    assert "; step fast (--step auto, one worker; eager on cpu, sparse update 'torch', next batch drawn and sorted a step ahead)" in capsys.readouterr().out
    assert main([*base, "--optimizer", "adagrad"]) == 0
    assert "; step fast (--step auto, one worker" in capsys.readouterr().out
    assert main([*base, "--step", "general"]) == 0
    assert "; step general (--step general)" in capsys.readouterr().out
    assert main([*base, "--skip-nonfinite"]) == 0
    assert "; step fast (--step auto, one worker" in capsys.readouterr().out
    assert main([*base, "--compile", "--autotune"]) == 0
    assert "a step ahead, model compiled (--autotune has no effect off a GPU))" in capsys.readouterr().out
    assert compiled_note(True, True, torch.device("cuda")) == ", model compiled, matmuls autotuned"
    assert compiled_note(False, False, torch.device("cuda")) == ""


def test_fast_and_general_steps_skip_the_same_nonfinite_batches(data, tmp_path):
    """A NaN in one training row: both steps skip the batches holding it (counted alike) and end alike."""
    poisoned = tmp_path / "poisoned"
    shutil.copytree(data, poisoned)
    dense = np.load(poisoned / "train_dense_feats.npy")
    dense[321, 0] = np.nan
    np.save(poisoned / "train_dense_feats.npy", dense)
    runs = {}
    for step in ("fast", "general"):
        cfg = _cfg(poisoned, tmp_path, step, skip_nonfinite=True, optimizer="adam", sparse_optimizer="rowwise_adagrad")
        train(cfg)
        runs[step] = (read_metrics(tmp_path / f"{step}.jsonl", "train"), _final_state(cfg))
    (fast_lines, fast), (general_lines, general) = runs["fast"], runs["general"]
    skipped = [r["skipped_batches"] for r in fast_lines]
    assert skipped == [r["skipped_batches"] for r in general_lines] and sum(skipped) >= 1
    np.testing.assert_allclose([r["loss"] for r in fast_lines], [r["loss"] for r in general_lines], rtol=1e-5)
    assert all(np.isfinite(r["loss"]) == (r["skipped_batches"] == 0) for r in fast_lines)  # a window of one skipped step has no loss
    _assert_trained_alike(fast, general)


@pytest.mark.parametrize("first, then", [("fast", "general"), ("general", "fast")])
def test_a_checkpoint_of_one_step_resumes_in_the_other(data, tmp_path, first, then):
    straight = _cfg(data, tmp_path / "straight", then, iter=12)
    train(straight)
    cut = _cfg(data, tmp_path / "cut", first, iter=6)
    train(cut)
    resumed = _cfg(data, tmp_path / "cut", then, iter=12, checkpoint_dir=cut.checkpoint_dir, resume=True)
    assert train(resumed)["step"] == 12
    _assert_trained_alike(_final_state(straight), _final_state(resumed))


def test_an_optimizer_keeps_its_own_run_flags_when_loading_a_checkpoint():
    """A general step's Adam state loads into the fast step's capturable Adam (and back) as capturable."""
    weight = nn.Parameter(torch.ones(3))
    general = torch.optim.Adam([weight], lr=0.1)
    weight.grad = torch.ones(3)
    general.step()
    capturable = torch.optim.Adam([nn.Parameter(torch.ones(3))], lr=0.1, capturable=True)
    capturable.load_state_dict(optimizer_state_for(capturable, general.state_dict()))
    assert capturable.param_groups[0]["capturable"] is True and capturable.state_dict()["state"][0]["step"] == 1
    general.load_state_dict(optimizer_state_for(general, capturable.state_dict()))
    assert general.param_groups[0]["capturable"] is False


def test_resuming_restores_the_fast_steps_table_bit_exactly(data, tmp_path):
    general = _cfg(data, tmp_path, "general", iter=5)
    train(general)
    saved = _final_state(general)["embedding"]
    fast_cfg = _cfg(data, tmp_path, "fast", iter=8, checkpoint_dir=general.checkpoint_dir, resume=True)
    run = build_run(fast_cfg, init_distributed("cpu"))  # one worker: no process group to leave
    assert resume(run) == 5
    fast = run.fast
    assert fast is not None and run.dense_opt is fast.optimizer
    # FastStep trains the embedding's own tensors: evaluation and checkpoints see what it trains.
    assert fast.table_ED.data_ptr() == run.emb.table.data_ptr() and fast.acc_E is run.emb.acc and fast.versions_E is run.emb.version
    assert torch.equal(fast.table_ED, saved["values"]) and torch.equal(fast.acc_E, saved["accumulator"])
    assert torch.equal(fast.versions_E, saved["versions"])


def test_every_option_takes_the_fast_step_on_any_worker_count(data):
    for options in ({"skip_nonfinite": True}, {"optimizer": "adagrad"}, {}):
        assert TrainConfig(data=str(data), **options).choose_step(4) == ("fast", "--step auto, 4 workers, sharded")
    assert TrainConfig(data=str(data), step="general").choose_step(4) == ("general", "--step general")


def test_a_batch_gathered_into_buffers_equals_the_batch(data):
    """The graph's feeding path (`batch_into`) gives the batches `batch` gives, every one full."""
    rows = Rows(load_dataset(data).train, slice(0, 1050), torch.device("cpu"))
    stream = BatchStream(rows, 100, 11, seed=3, rank=0)
    buffers = (torch.empty(100, 3), torch.empty(100, 4, dtype=torch.int32), torch.empty(100))
    for step in (0, 10, 11, 25):  # 10: the epoch's last batch wraps; 11: a new permutation
        want = stream.batch(step)
        stream.batch_into(step, buffers)
        assert torch.equal(buffers[0], want.dense) and torch.equal(buffers[1].long(), want.ids) and torch.equal(buffers[2], want.labels)


def test_the_device_cursor_draws_the_streams_batches(data):
    """EpochCursor (the batch drawn inside the graph) gives `batch(step)` for every step,
    through wrapping last batches, new permutations and a seek into the middle (a resume)."""
    from hetgmp.train.fast import EpochCursor

    rows = Rows(load_dataset(data).train, slice(0, 1050), torch.device("cpu"))
    reference = BatchStream(rows, 100, 11, seed=3, rank=0)
    for first in (0, 7):
        cursor = EpochCursor(BatchStream(rows, 100, 11, seed=3, rank=0))
        for step in range(first, 25):
            cursor.seek(step)
            got, want = cursor(), reference.batch(step)
            assert torch.equal(got[0], want.dense) and torch.equal(got[1], want.ids) and torch.equal(got[2], want.labels), step


def test_epoch_orders_drawn_ahead_are_the_documented_ones():
    orders = EpochOrders(50, seed=4, rank=1, device=torch.device("cpu"), epochs=3)
    want = [torch.randperm(50, generator=torch.Generator().manual_seed(epoch_seed(4, e, 1))) for e in range(3)]
    assert torch.equal(orders.get(0), want[0]) and orders._ahead[0] == 1
    assert torch.equal(orders.get(1), want[1]) and torch.equal(orders.get(2), want[2])  # drawn ahead
    assert orders._ahead is None  # the run has no epoch 3
    assert torch.equal(orders.get(0), want[0])  # out of turn (a resumed run): drawn on the spot


class _SqrtAtZero(nn.Module):
    """Loss finite, table gradient infinite: sqrt(0) has an infinite slope."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))

    def forward(self, dense_BI, emb_BFD):
        return torch.sqrt(emb_BFD - 1).sum((1, 2)) + dense_BI @ self.w


@pytest.mark.parametrize("flag", [False, True])
def test_a_nonfinite_gradient_under_a_finite_loss_makes_the_loss_nan(flag):
    cfg = FastStepConfig(kernel="torch", flag_nonfinite=flag)
    fast = FastStep(_SqrtAtZero(), torch.ones(5, 3), cfg)
    loss = fast.step(torch.ones(4, 2), torch.tensor([[0, 1], [2, 3], [4, 0], [1, 2]]), torch.ones(4))
    assert torch.isnan(loss).item() == flag
