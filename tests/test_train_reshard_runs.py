"""A checkpoint of 2 workers resumed for real on 1 worker and on 3 (with a plan): the rows the tables then hold,
the final AUC against the uninterrupted run, and the refusals (the rules: train/reshard.py)."""

import shutil

import numpy as np
import pytest
import torch

from cli_runs import assert_clean_error, hetgmp
from hetgmp.train.config import TrainConfig
from hetgmp.train.loop import resume
from hetgmp.train.setup import build_run
from tinydata import read_metrics
from workers import run_workers

pytestmark = pytest.mark.slow

# 8,400 train rows over 711 ids with a strong planted signal: 4 epochs of 35 global batches of 240 rows
# end near the data's best AUC, where the order of the last 40 batches moves it by about 0.001 (measured
# over 6 orders: 0.0007..0.0014 below the 2-worker run) while the same 40 batches from scratch end 0.008 lower.
SYNTH = ("--rows", "12000", "--scale", "0.00002", "--signal", "2", "--test-fraction", "0.3", "--no-progress")
SAVED_AT, TOTAL, AUC_TOLERANCE = 100, 140, 0.003


def _train(root, ckpt, batch_size, *extra, data="ds"):
    return hetgmp("train", "--data", str(root / data), "--device", "cpu", "--no-progress", "--embed-dim", "8", "--epochs", "4",
                  "--batch-size", str(batch_size), "--val", "--eval-every", "1000", "--log-every", "1000",
                  "--checkpoint-dir", str(root / ckpt), *extra, timeout=240, OMP_NUM_THREADS="1")


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _final_auc(metrics):
    return read_metrics(metrics, "eval")[-1]["auc"]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """The uninterrupted 2-worker run (global batch 240), saved at step SAVED_AT and at its end; its final AUC."""
    root = tmp_path_factory.mktemp("reshard")
    _ok(hetgmp("synth", *SYNTH, "--output", str(root / "ds")))
    _ok(_train(root, "full", 120, "--nproc", "2", "--checkpoint-every", str(SAVED_AT), "--metrics", str(root / "full.jsonl")))
    return root, _final_auc(root / "full.jsonl")


def _saved_at_cut(root, name):
    """A checkpoint folder holding only the uninterrupted run's step-SAVED_AT checkpoint, as a run killed after it leaves it."""
    step = f"step-{SAVED_AT:06d}"
    (root / name).mkdir()
    shutil.copytree(root / "full" / step, root / name / step)
    (root / name / "latest").write_text(step + "\n")
    return root / name


def test_two_worker_checkpoint_resumes_on_one_worker_at_the_uninterrupted_auc(two_workers):
    root, full_auc = two_workers
    _saved_at_cut(root, "one")
    out = _ok(_train(root, "one", 240, "--resume", "--metrics", str(root / "one.jsonl"))).stdout
    assert (f"resumed at step {SAVED_AT} from a checkpoint of 2 workers (plan random(seed=0)) at its step {SAVED_AT}, "
            "rows re-placed for 1 worker; step fast") in out
    assert read_metrics(root / "one.jsonl", "train")[-1]["step"] == TOTAL
    assert _final_auc(root / "one.jsonl") == pytest.approx(full_auc, abs=AUC_TOLERANCE)
    # The tolerance tells resumed from not resumed: the last 40 batches alone end far from it.
    _ok(_train(root, "scratch", 240, "--iter", str(TOTAL - SAVED_AT), "--metrics", str(root / "scratch.jsonl")))
    assert abs(_final_auc(root / "scratch.jsonl") - full_auc) > AUC_TOLERANCE


def test_two_worker_checkpoint_resumes_on_three_workers_with_a_plan(two_workers):
    root, full_auc = two_workers
    _ok(hetgmp("partition", str(root / "ds"), "--parts", "3", "--output", str(root / "plan3.npz"), "--batch-size", "80"))
    _saved_at_cut(root, "three")
    out = _ok(_train(root, "three", 80, "--nproc", "3", "--partition", str(root / "plan3.npz"), "--resume",
                     "--metrics", str(root / "three.jsonl"))).stdout
    assert f"from a checkpoint of 2 workers (plan random(seed=0)) at its step {SAVED_AT}, rows re-placed for 3 workers" in out
    assert _final_auc(root / "three.jsonl") == pytest.approx(full_auc, abs=AUC_TOLERANCE)


def _resume_and_read(ctx, cfg):
    """Build the run, resume it, and return what its table then holds and serves."""
    cfg.validate()
    run = build_run(cfg, ctx)
    step = resume(run)
    num_ids = run.dataset.meta.num_ids
    served = run.emb.read(torch.arange(num_ids).reshape(-1, 1)).reshape(num_ids, -1)  # remote rows and fresh mirrors
    # As arrays: a torch tensor sent back is shared memory that its process takes along when it ends.
    return step, run.steps_per_epoch, _arrays(run.emb.state_dict()), served.numpy(), _arrays(run.model.state_dict())


def _arrays(tensors):
    return {k: v.detach().cpu().numpy() for k, v in tensors.items()}


def _tensors(arrays):
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def _saved_rows(folder, world_size):
    """The checkpoint's ids, values, versions, accumulators of every rank, ordered by global id; rank 0's dense weights."""
    parts = [torch.load(folder / f"rank-{r}.pt", weights_only=True) for r in range(world_size)]
    merged = {k: torch.cat([p["embedding"][k] for p in parts]) for k in ("ids", "values", "versions", "accumulator")}
    order = torch.argsort(merged["ids"])
    return {k: v[order] for k, v in merged.items()}, parts[0]["model"]


def _checkpoint_of(root, saved_workers, name):
    """A checkpoint folder of `saved_workers` (2: the uninterrupted run's at step SAVED_AT; 1: a run of 20 steps) and its step."""
    if saved_workers == 2:
        return _saved_at_cut(root, name), SAVED_AT
    _ok(_train(root, name, 240, "--iter", "20"))
    return root / name, 20


@pytest.mark.parametrize("saved_workers, workers, plan", [(2, 3, "plan3.npz"), (2, 1, None), (1, 2, None)])
def test_resumed_tables_hold_the_saved_rows_by_global_id(two_workers, saved_workers, workers, plan):
    root, _ = two_workers
    if plan and not (root / plan).is_file():
        _ok(hetgmp("partition", str(root / "ds"), "--parts", "3", "--output", str(root / plan), "--batch-size", "80"))
    folder, saved_step = _checkpoint_of(root, saved_workers, f"tables-{saved_workers}-to-{workers}")
    cfg = TrainConfig(data=str(root / "ds"), embed_dim=8, epochs=4, batch_size=240 // workers, device="cpu", progress=False,
                      checkpoint_dir=str(folder), resume=True, partition=str(root / plan) if plan else None)
    saved, dense = _saved_rows(folder / f"step-{saved_step:06d}", saved_workers)
    owners = []
    for step, per_epoch, sd, served, model in run_workers(_resume_and_read, workers, args=(cfg,)):
        sd, served, model = _tensors(sd), torch.from_numpy(served), _tensors(model)
        assert step == round(saved_step * per_epoch / 35)  # the same epoch position; the saved runs had 35 steps an epoch
        ids = sd["ids"]
        assert torch.equal(ids, torch.sort(ids).values) and len(ids)
        for key in ("values", "versions", "accumulator"):
            assert torch.equal(sd[key], saved[key][ids]), key
        assert torch.equal(served, saved["values"])
        for name, weight in dense.items():
            assert torch.equal(model[name], weight), name
        owners.append(ids)
    assert torch.equal(torch.sort(torch.cat(owners)).values, saved["ids"])


def _listing(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_another_model_or_vocabulary_is_refused_and_nothing_written(two_workers):
    root, _ = two_workers
    folder = _saved_at_cut(root, "refused")
    before = _listing(folder)
    proc = _train(root, "refused", 240, "--embed-dim", "16", "--resume")
    assert_clean_error(proc, "train", "embed_dim: checkpoint 8, this run 16", "table_width: checkpoint 8, this run 16",
                       "resume with the same --model, --embed-dim, layer sizes, optimizers and dataset (the worker count and plan may differ)")
    assert _listing(folder) == before

    _ok(hetgmp("synth", *SYNTH[:-1], "--scale", "0.00004", "--output", str(root / "other")))
    _ok(hetgmp("partition", str(root / "other"), "--parts", "1", "--output", str(root / "other.npz"), "--batch-size", "240"))
    proc = _train(root, "refused", 240, "--partition", str(root / "other.npz"), "--resume")
    assert_clean_error(proc, "train", "partition vocabulary size (num_ids) is", "but the run has 711", "re-run `hetgmp partition")
    assert _listing(folder) == before
    assert np.load(root / "other.npz")["embed_partition"].shape != (711,)
