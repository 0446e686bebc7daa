"""NaN or inf in the loss or the gradients: stop at the next check, or skip the batch.

Every step, on the device and without a host sync, a worker's batch is *bad*
when its loss, the gradient flowing into the embedding table, or its dense
gradient holds a NaN or inf. The flag rides as one extra element of the
dense all-reduce buffer, so every worker learns how many workers were bad at
no extra collective.

Default: a step with any bad worker records its loss as NaN; the loss window
is read at the next log, evaluation or checkpoint point (`StepWindow.check_finite`),
which stops the run naming the first bad step and the last good checkpoint.
No checkpoint is written after a bad step, so "last good" really is good.

`--skip-nonfinite`: a bad worker's batch contributes nothing. Its embedding
gradient is zeroed in backward, before the table's exchange sends it, and
its dense gradient before the all-reduce; the step goes on with the other
workers' gradients. When every worker was bad, every gradient is zero:
plain SGD and Adagrad then change no parameter (Adagrad's step counter still
moves, which matters only with an lr decay, never set here), Adam, whose
moments would move the weights, is built fused and skips the step through
`found_inf` on the device (parameters, moments and step counter untouched),
and the table's SGD and row-wise Adagrad change no row (only the rows'
update counts move). Skipped batches are counted per TRAIN line
(`skipped_batches`, summed over workers) and the loss averages the others.

Why per worker and not per global step: skipping the others' table updates
too would need the flag before the table's exchange starts, an extra wait
on a collective every step.
"""

from __future__ import annotations

import torch


class _Gate(torch.autograd.Function):
    """Identity forward; backward checks (and with skip, zeroes) the embedding gradient."""

    @staticmethod
    def forward(ctx, emb_BFD: torch.Tensor, guard: "NonFiniteGuard") -> torch.Tensor:
        ctx.guard = guard
        return emb_BFD.view_as(emb_BFD)

    @staticmethod
    def backward(ctx, grad_BFD: torch.Tensor):
        return ctx.guard.gate_embedding_grad(grad_BFD), None


class NonFiniteGuard:
    """One worker's per-step finiteness flag (a device bool) and what it does with it."""

    def __init__(self, skip: bool, world_size: int) -> None:
        self.skip = skip
        self.world = world_size
        self.bad: torch.Tensor | None = None

    def gate(self, emb_BFD: torch.Tensor) -> torch.Tensor:
        """Wrap the table's output so that backward passes its gradient through `gate_embedding_grad`."""
        return _Gate.apply(emb_BFD, self)

    def begin(self, loss: torch.Tensor) -> None:
        """Call between the loss and backward."""
        self.bad = ~torch.isfinite(loss)

    def gate_embedding_grad(self, grad: torch.Tensor) -> torch.Tensor:
        self.bad = self.bad | ~torch.isfinite(grad).all()
        return grad.masked_fill(self.bad, 0.0) if self.skip else grad

    def flag_dense(self, flat: torch.Tensor) -> None:
        """`flat`: the dense gradients followed by one spare element. Adds the dense check,
        zeroes a bad worker's gradients when skipping, and stores the flag in the spare."""
        self.bad = self.bad | ~torch.isfinite(flat[:-1]).all()
        if self.skip:
            flat.masked_fill_(self.bad, 0.0)
        flat[-1] = self.bad.to(flat.dtype)

    def before_dense_step(self, optimizer: torch.optim.Optimizer, bad_workers: torch.Tensor) -> None:
        """`bad_workers`: the all-reduced spare element. With skip, a fused optimizer (Adam)
        skips a step where every worker was bad on the device."""
        self.bad_workers = bad_workers
        if self.skip and optimizer.defaults.get("fused"):
            optimizer.found_inf = (bad_workers >= self.world).to(torch.float32).reshape(())

    def loss_record(self, loss: torch.Tensor) -> torch.Tensor:
        """What the loss window stores: NaN for a step to stop at; 0 for a skipped batch."""
        if self.skip:
            return loss.masked_fill(self.bad, 0.0)
        return loss.masked_fill(self.bad_workers > 0, float("nan"))

    def skipped(self) -> torch.Tensor:
        """1.0 if this worker's batch was skipped this step (a StepWindow counter)."""
        return self.bad.to(torch.float32) if self.skip else torch.zeros((), device=self.bad.device)
