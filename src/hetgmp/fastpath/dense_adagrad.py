"""Adagrad for the dense weights, with no host read in its step: a CUDA graph can replay it.

torch.optim.Adagrad reads its step counter on the host each step (for lr_decay) and refuses
nothing under capture, so a captured step would bake one step's values in. This is its
update without lr_decay and weight decay (the defaults `--optimizer adagrad` uses), in the
same state layout ("sum", "step") so that checkpoints load into either:

    sum += g * g;   w -= lr * g / (sqrt(sum) + eps)
"""

from __future__ import annotations

import torch


class CapturableAdagrad(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 0.01, eps: float = 1e-10, initial_accumulator_value: float = 0.0) -> None:
        defaults = dict(lr=lr, eps=eps, initial_accumulator_value=initial_accumulator_value, lr_decay=0.0, weight_decay=0.0,
                        foreach=None, maximize=False, differentiable=False, fused=None)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                # Made now, not at the first step: a graph's step must find them in place.
                self.state[p]["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                self.state[p]["sum"] = torch.full_like(p, initial_accumulator_value, memory_format=torch.preserve_format)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            sums = [self.state[p]["sum"] for p in params]
            torch._foreach_addcmul_(sums, grads, grads, value=1.0)
            std = torch._foreach_sqrt(sums)
            torch._foreach_add_(std, group["eps"])
            torch._foreach_addcdiv_(params, grads, std, value=-group["lr"])
            torch._foreach_add_([self.state[p]["step"] for p in params], 1.0)
        return None
