"""The training loop: train -> train_loop -> train_step.

With one worker `train_loop` steps through the fast step instead
(`hetgmp.train.fast`: one CUDA graph per step on a GPU), with several through
the sharded fast step (`hetgmp.train.sharded_fast`; unless --optimizer adagrad
or --skip-nonfinite, which the general step trains over the same sharded
table); everything around the step (logs, evaluation, checkpoints, the
NaN/inf check) is the same for all, and so is the table: a checkpoint of one
step resumes in the other.

Gradient convention: every worker back-propagates its local mean loss divided
by the world size, dense gradients are all-reduced with SUM (one flattened
buffer, one collective per step, overlapping the table's exchange), and the
embedding applies the sparse gradients it receives unscaled. The result is the
gradient of the global batch's mean loss; with one worker it is the plain
mean loss.

The steady-state loop never waits on the device: each step's loss and
correct count go into a device-side window, read (`.item()`) only at log,
evaluation and checkpoint points. Those reads also catch a NaN/inf loss,
naming the first bad step, before any checkpoint could save its weights.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import time
from functools import partial
from typing import Any, Callable

import torch
import torch.distributed as dist

from hetgmp.distributed import DistContext, init_distributed, shutdown
from hetgmp.errors import HetGMPError
from hetgmp.fastpath import ShardedFastStep
from hetgmp.fastpath.flat_grads import FlatGradients
from hetgmp.fastpath.objective import correct_count, ctr_loss
from hetgmp.models import describe_shape, shape_of
from hetgmp.models.bags import pool_rows
from hetgmp.train import checkpoint as ckpt
from hetgmp.train import reshard
from hetgmp.train.config import TrainConfig
from hetgmp.train.data import Batch
from hetgmp.train.agree import check_same_settings
from hetgmp.train.evaluate import evaluate
from hetgmp.train.fast import FastSteps
from hetgmp.train.sharded_fast import ShardedFastSteps
from hetgmp.train.liveness import start_heartbeat
from hetgmp.train.logs import RunLog
from hetgmp.train.nonfinite import NonFiniteGuard
from hetgmp.train.rundir import with_model_folder
from hetgmp.train.setup import Run, build_run
from hetgmp.train.steps import Steps


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Join the launcher's job (or run alone), train, evaluate; returns rank 0's last records."""
    cfg.validate()
    ctx = init_distributed(cfg.device)
    heartbeat = start_heartbeat(ctx)
    lock = None
    try:
        if ctx.device.type == "cpu":
            torch.set_num_threads(cpu_threads(ctx.local_world_size))
        check_same_settings(cfg, ctx)
        cfg = with_model_folder(cfg, ctx)  # every run leaves its model
        lock = ckpt.claim_directory(cfg.checkpoint_dir, cfg.resume, cfg.force, ctx) if cfg.checkpoint_dir else None
        run = build_run(cfg, ctx)
        start = resume(run) if cfg.resume else 0
        log = RunLog(ctx.is_main, cfg.output, cfg.metrics, run.total_steps, start, cfg.progress, cfg.tensorboard)
        try:
            log.info(describe(run, start))
            return train_loop(run, start, log)
        except HetGMPError as e:
            log.note(f"error: {e}")  # the CLI prints it; the log file keeps it too
            raise
        finally:
            log.close()
            if isinstance(run.fast, ShardedFastStep):
                run.fast.release()
    except RuntimeError as e:  # a failed collective: name the lost worker, if one was lost
        error = heartbeat.explain(e, "while the job ran", ckpt.resume_hint(cfg.checkpoint_dir)) if heartbeat else e
        if error is e:
            raise
        raise error from e
    finally:
        if heartbeat:
            heartbeat.stop()
        if lock:
            lock.release()
        shutdown()


def cpu_threads(local_world_size: int) -> int:
    """Cores of this machine split evenly among its workers, unless OMP_NUM_THREADS says otherwise."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // local_world_size)


def describe(run: Run, start: int) -> str:
    cfg, ctx = run.cfg, run.ctx
    where = f"resumed at step {start}{run.resume_note}" if start else "from scratch"
    if cfg.resume and not start:
        where += f" (no checkpoint in {cfg.checkpoint_dir} yet)"
    shape = shape_of(cfg.model, cfg.shape())
    model = cfg.model if shape is None else f"{cfg.model} ({describe_shape(shape)})"
    return (
        f"training {model} d={cfg.embed_dim} on {cfg.data}: {ctx.world_size} worker(s) on {ctx.device.type}, "
        f"batch {cfg.batch_size}/worker, {run.total_steps} steps ({run.steps_per_epoch}/epoch), "
        f"placement {run.plan_id}, {run.mirrors_note}, bound {cfg.bound}, {where}; {run.step_note}"
    )


def train_loop(run: Run, start: int, log: RunLog) -> dict[str, Any]:
    cfg = run.cfg
    window = StepWindow(cfg.log_every, run.ctx, start)
    guard = NonFiniteGuard(cfg.skip_nonfinite, run.ctx.world_size)
    last: dict[str, Any] = {"step": start, "train": None, "eval": None, "checkpoint": None}
    clock = Clock()
    steps = choose_steps(run, guard, start, window, log.info)
    for step in range(start, run.total_steps):
        steps.train(step)
        window.add(steps.counters())
        if cfg.skip_nonfinite:
            window.add_counter("skipped_batches", steps.skipped())
        done = step + 1
        log.advance()
        if done % cfg.log_every == 0:
            last["train"] = report_train(run, window, done, clock, log)
        if cfg.val and cfg.eval_every and done % cfg.eval_every == 0:
            steps.check_point()
            last["eval"] = run_eval(run, window, done, clock, log, last)
        if cfg.checkpoint_dir and cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
            steps.check_point()
            last["checkpoint"] = save(run, window, done, clock, last)
    return finish(run, window, clock, log, last)


def choose_steps(run: Run, guard: NonFiniteGuard, start: int, window: "StepWindow", note: Callable[[str], None]) -> Steps:
    """What trains each batch: the sharded fast step, the one-worker fast step or the general step."""
    if isinstance(run.fast, ShardedFastStep):
        return ShardedFastSteps(run.fast, run.stream, window, run.total_steps, run.cfg.log_every, run.scanned_steps, note)
    if run.fast:
        return FastSteps(run.fast, run.stream, window)
    return GeneralSteps(run, guard, start, window)


class GeneralSteps:
    """Trains batch `step` through the embedding runtime (`train_step`), handing the
    table the next batch's ids one step ahead so that it can prefetch their rows."""

    def __init__(self, run: Run, guard: NonFiniteGuard, start: int, window: "StepWindow") -> None:
        self.run, self.guard, self.window = run, guard, window
        self.flat = FlatGradients([p for p in run.model.parameters() if p.requires_grad], run.ctx.device)
        self.batch = run.stream.batch(start) if start < run.total_steps else None

    def train(self, step: int) -> None:
        """Train batch `step`; its loss and correct count go to the window."""
        run = self.run
        next_batch = run.stream.batch(step + 1) if step + 1 < run.total_steps else None
        self.window.record(*train_step(run, self.batch, next_batch, self.guard, self.flat))
        self.batch = next_batch

    def counters(self) -> Any:
        return self.run.emb.counters

    def skipped(self) -> torch.Tensor:
        return self.guard.skipped()

    def check_point(self) -> None:
        """Nothing to check: the table's reads grow it as they need."""


def train_step(run: Run, batch: Batch, next_batch: Batch | None, guard: NonFiniteGuard,
               flat: FlatGradients) -> tuple[torch.Tensor, torch.Tensor]:
    """One step; returns the loss to record (see nonfinite.py) and the correct count as device scalars.

    The dense gradients accumulate in `flat`, whose spare element carries the worker's
    non-finite flag; their all-reduce runs while the table exchanges rows (`emb.step` uses
    its own process group), and the dense optimizer steps once it is done.
    """
    emb_BFD = pool_rows(run.bags, guard.gate(run.emb(batch.ids)), batch.ids)
    logits_B = run.model(batch.dense, emb_BFD)
    loss = ctr_loss(logits_B, batch.labels)
    guard.begin(loss.detach())
    flat.point()
    (loss / run.ctx.world_size).backward()
    guard.flag_dense(flat.buffer)
    work = flat.all_reduce(None, run.ctx.world_size)
    run.emb.step(next_ids=None if next_batch is None else next_batch.ids)
    if work is not None:
        work.wait()
    guard.before_dense_step(run.dense_opt, flat.spare[0])
    run.dense_opt.step()
    correct = correct_count(logits_B, batch.labels)
    return guard.loss_record(loss.detach()), correct


class Clock:
    """Wall time since the start, and training time net of evaluation and checkpoints."""

    def __init__(self) -> None:
        self.start = self.mark = time.perf_counter()
        self.paused = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def lap(self) -> float:
        """Training seconds since the last lap."""
        now = time.perf_counter()
        seconds, self.mark, self.paused = now - self.mark - self.paused, now, 0.0
        return max(seconds, 1e-9)

    def pause(self, seconds: float) -> None:
        self.paused += seconds


class StepWindow:
    """The steps since the last TRAIN line: per-step loss and correct count on device,
    and the embedding's per-step counters summed (host numbers or device scalars)."""

    def __init__(self, size: int, ctx: DistContext, first: int):
        self.ctx = ctx
        self.loss = torch.zeros(size, device=ctx.device)
        self.correct = torch.zeros(size, device=ctx.device)
        self.slot = torch.zeros(1, dtype=torch.long, device=ctx.device)  # record()'s next index, = n
        self.n = 0
        self.first = first  # step number (0-based) of the window's first step
        self.counters: dict[str, Any] = {}

    def record(self, loss: torch.Tensor, correct: torch.Tensor) -> None:
        """Store a step's loss and correct count at a device-side index: no host value, so a
        captured step (FastStep.record) can do it inside its graph. add() then counts the step."""
        self.loss.index_copy_(0, self.slot, loss.reshape(1).to(self.loss.dtype))
        self.correct.index_copy_(0, self.slot, correct.reshape(1).to(self.correct.dtype))
        self.slot += 1

    def add(self, counters: Any) -> None:
        """Count a step (after its record()) and add its embedding counters."""
        self.n += 1
        for key, value in _counter_items(counters):
            self.counters[key] = self.counters.get(key, 0) + value

    def add_counter(self, key: str, value: Any) -> None:
        self.counters[key] = self.counters.get(key, 0) + value

    def check_finite(self, run: Run) -> None:
        """Raise on the first non-finite loss of the window on any worker."""
        bad = (~torch.isfinite(self.loss[: self.n])).nonzero()
        first = torch.tensor([float(bad[0, 0]) if len(bad) else float(self.n)], device=self.ctx.device)
        if self.ctx.world_size > 1:
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        if int(first.item()) < self.n:
            raise non_finite_error(run, self.first + int(first.item()) + 1)

    def drain(self) -> dict[str, float]:
        """Window averages over steps and workers (one collective); empties the window."""
        keys = sorted(self.counters)
        values = [self.loss[: self.n].sum().double(), self.correct[: self.n].sum().double()]
        values += [torch.as_tensor(self.counters[k], dtype=torch.float64, device=self.ctx.device) for k in keys]
        totals = torch.stack(values)
        if self.ctx.world_size > 1:
            dist.all_reduce(totals)
        totals = totals.tolist()
        steps = self.n * self.ctx.world_size
        out = {"loss": totals[0] / steps, "correct": totals[1] / steps}
        out.update({k: v / steps for k, v in zip(keys, totals[2:])})
        self.first += self.n
        self.n, self.counters = 0, {}
        self.slot.zero_()
        return out


def _counter_items(counters: Any) -> list[tuple[str, Any]]:
    """The counters' numeric fields, read directly: dataclasses.asdict would deep-copy every
    field, a device scalar included (one copy on the device and ~50 us of host time per step)."""
    if counters is None:
        return []
    if dataclasses.is_dataclass(counters):
        items = [(f.name, getattr(counters, f.name)) for f in dataclasses.fields(counters)]
    else:
        items = list(dict(counters).items())
    return [(k, v) for k, v in items if isinstance(v, (int, float, torch.Tensor))]


def non_finite_error(run: Run, step: int) -> HetGMPError:
    latest = ckpt.latest_checkpoint(run.cfg.checkpoint_dir) if run.cfg.checkpoint_dir else None
    kept = f"the last good checkpoint {latest} is kept (resume from it with --resume)" if latest else "no checkpoint was saved (use --checkpoint-dir)"
    return HetGMPError(
        f"the training loss or a gradient became NaN or infinite at step {step}; {kept}. "
        "Check the dataset for NaN/inf features, lower --lr / --sparse-lr, or pass --skip-nonfinite to skip such batches"
    )


def report_train(run: Run, window: StepWindow, done: int, clock: Clock, log: RunLog) -> dict[str, Any]:
    window.check_finite(run)
    steps = window.n
    stats = window.drain()
    per_worker = steps * run.cfg.batch_size / clock.lap()
    world = run.ctx.world_size
    batches = steps * world
    if run.cfg.skip_nonfinite:  # the window holds 0 for a skipped batch's loss: average the others
        stats["skipped_batches"] = round(stats["skipped_batches"] * batches)
        kept = batches - stats["skipped_batches"]
        stats["loss"] = stats["loss"] * batches / kept if kept else float("nan")
    record = {
        "step": done, "epoch": (done - 1) // run.steps_per_epoch, "samples": done * run.cfg.batch_size * world,
        "loss": stats.pop("loss"), "accuracy": stats.pop("correct") / run.cfg.batch_size,
        "samples_per_s": per_worker * world, "samples_per_s_per_worker": per_worker, "world_size": world,
        "time_s": clock.elapsed(), **stats,
    }
    log.train(record)
    return record


def run_eval(run: Run, window: StepWindow, done: int, clock: Clock, log: RunLog, last: dict[str, Any]) -> dict[str, Any] | None:
    window.check_finite(run)
    began = time.perf_counter()
    result = evaluate(run.model, run.emb, run.eval_batches, run.dataset.test, run.ctx, run.bags)
    clock.pause(time.perf_counter() - began)
    last["eval_step"] = done
    if result is None:
        return None
    record = {"step": done, "epoch": (done - 1) // run.steps_per_epoch, "samples": done * run.cfg.batch_size * run.ctx.world_size,
              **result, "time_s": clock.elapsed()}
    log.eval(record)
    return record


def save(run: Run, window: StepWindow, done: int, clock: Clock, last: dict[str, Any]) -> str:
    window.check_finite(run)
    began = time.perf_counter()
    run.emb.flush()
    state = {
        "step": done, "epoch": (done - 1) // run.steps_per_epoch,
        "model": run.model.state_dict(), "dense_optimizer": run.dense_opt.state_dict(),
        "embedding": run.emb.state_dict(), "rng": ckpt.rng_state(),
    }
    folder = ckpt.save_checkpoint(run.cfg.checkpoint_dir, done, state, run.checkpoint_meta(), run.ctx)
    clock.pause(time.perf_counter() - began)
    last["checkpoint_step"] = done
    return str(folder)


def finish(run: Run, window: StepWindow, clock: Clock, log: RunLog, last: dict[str, Any]) -> dict[str, Any]:
    """The last TRAIN line, evaluation and checkpoint (the model), unless the final step just had them."""
    done = run.total_steps
    start = last["step"]
    if window.n:
        last["train"] = report_train(run, window, done, clock, log)
    if run.cfg.val and last.get("eval_step") != done:
        last["eval"] = run_eval(run, window, done, clock, log, last)
    if last.get("checkpoint_step") != done and done > start:
        last["checkpoint"] = save(run, window, done, clock, last)
    last["step"] = done
    folder, data = shlex.quote(run.cfg.checkpoint_dir), shlex.quote(run.cfg.data)
    log.info(f"model saved to {folder}; score it with hetgmp predict --checkpoint {folder} --data {data} --output preds.npy")
    return last


def resume(run: Run) -> int:
    """Restore the newest intact checkpoint, of any worker count and plan (its rows re-placed
    by global id, train/reshard.py); returns the step to continue from (0 if none)."""
    found = ckpt.load_checkpoint(run.cfg.checkpoint_dir, run.checkpoint_meta(), run.ctx, partial(reshard.resume_state, run))
    if found is None:
        return 0
    folder, state = found
    run.resume_note = reshard.describe_resume(ckpt.read_meta(folder), run)
    run.model.load_state_dict(state["model"])
    run.dense_opt.load_state_dict(ckpt.optimizer_state_for(run.dense_opt, state["dense_optimizer"]))
    run.emb.load_state_dict(state["embedding"])
    ckpt.set_rng_state(state["rng"])
    return int(state["step"])
