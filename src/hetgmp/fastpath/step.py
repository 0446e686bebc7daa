"""The single-GPU training step: fixed shapes, no host syncs, one CUDA graph.

One step, for a batch of B samples with F id fields and I dense features:

    sort the ids                           (once: the gather and the update share it)
    emb_BFD = table[ids_BF]                (rows read in sorted order; a fresh leaf tensor)
    loss    = BCE-with-logits(model(dense_BI, emb_BFD), labels_B), mean
                                           (multi-hot: ids_BL, L = sum(bag sizes), and the
                                           rows pooled per field first: models/bags.py)
    backward                               (to emb_BFD and the dense weights only:
                                            the table never gets a dense gradient)
    sparse update of the table rows        (hetgmp.kernels.sparse_update)
    dense optimizer step                   (SGD, or Adam with capturable=True)

Options reorder this without changing its arithmetic (FastStepConfig):
`overlap` runs the sort, gather and update on a second stream, the update
launched from the rows' gradient hook in the middle of backward;
`sort_ahead` sorts the next batch's ids during this step (fastpath/ahead.py);
`implicit_row_grad` (WDL) has the update build the rows' gradient itself.

On CUDA with `cuda_graph=True`, the first `warmup_steps` calls run eagerly on
a side stream (compiling kernels, sizing allocator pools), the next call
captures the step in a CUDA graph, and every call from then on replays it.
Every call trains on its batch exactly once.

Input protocol under a graph: the graph reads fixed input buffers. `step(d, i, y)`
copies the batch into them (three device copies; the ids buffer is int32
while the table has fewer than 2^31 rows) unless the arguments *are* those
buffers: a loader may write each batch straight into `input_buffers()` and
call `step(*fast.input_buffers())`. Or, with a `source` (a function that
draws the next batch on the device from state it keeps there, see
BatchSource), `step_from_source()` draws the batch inside the graph: then a
replay is the only launch of a step. Every batch must have the shapes of the
first. The returned loss is a device tensor that the next replay overwrites:
read it (or `.clone()` it) before the next call. Learning rates are baked
into the graph at capture; the graph reads and writes the table, the
accumulator and the model's parameters where they are, so restore a
checkpoint in place (`load_state_dict`, `copy_`), never by swapping tensors.

Off CUDA (or with `cuda_graph=False`) the same step runs eagerly.

TF32 (`tf32=True`) lets fp32 matmuls use tensor cores with 10-bit mantissas;
bf16 autocast (`amp="bf16"`) runs the MLP in bf16 with fp32 weights and loss.
Both round the MLP's activations, not the embedding table or the optimizer
state; their effect on AUC has to be measured on real data (see
benchmarks/GPU_NOTES.md).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from hetgmp.errors import HetGMPError
from hetgmp.fastpath.ahead import SortAhead
from hetgmp.fastpath.captured import GraphReplay, beside, join
from hetgmp.fastpath.config import BatchSource, FastStepConfig, autocast, compile_model, fast_dense_optimizer, matmul_precision
from hetgmp.fastpath.inputs import InputBuffers
from hetgmp.fastpath.objective import correct_count, ctr_loss, nan_unless_finite, scored
from hetgmp.models.bags import Bags, pool_rows
from hetgmp.models.base import has_dense_part, has_row_weights
from hetgmp.kernels import Rank1Grad, new_scratch, resolve_backend, sparse_update
from hetgmp.kernels.bag_pool import pool_from_table, pooled_grad
from hetgmp.kernels.gather import SortedIds, gather_rows, id_dtype, sort_ids


class FastStep:
    """Owns the table (and Adagrad accumulator), the model and the dense
    optimizer; `step(dense_BI, ids_BF, labels_B) -> loss` trains one batch.

    The table (float32 [E, D], D = the model's table width) and the model are
    used in place, on the table's device; so are the row-wise Adagrad
    accumulator (float32 [E], zeros if not given) and, if given, the versions
    (int64 [E], += each row's occurrences per step, as the embedding runtime
    counts them). With `bags` (multi-hot data) a batch's ids are (B, sum(bag
    sizes)) and the step pools each field's rows before the model:

        fast = FastStep(model.cuda(), table_ED, FastStepConfig(lr=0.01, dense_lr=0.01))
        for dense_BI, ids_BF, labels_B in batches:
            loss = fast.step(dense_BI, ids_BF, labels_B)
    """

    def __init__(
        self,
        model: nn.Module,
        table_ED: torch.Tensor,
        cfg: FastStepConfig,
        acc_E: torch.Tensor | None = None,
        versions_E: torch.Tensor | None = None,
        source: BatchSource | None = None,
        bags: Bags | None = None,
    ) -> None:
        cfg.check()
        self.source = source
        self.cfg = cfg
        self.device = table_ED.device
        self.model = model
        self.bags = bags
        self.kernel = resolve_backend(cfg.kernel, self.device)
        # Bags pooled by the Triton kernel arrive pooled; else the pooling runs in the model's
        # compiled graph, which fuses it.
        self.pools_from_table = bags is not None and cfg.fused_pooling and self.kernel == "triton"
        model_bags = None if self.pools_from_table else bags
        # The loss in the model's (compiled) function (objective.scored), but with implicit_row_grad.
        inside = not cfg.implicit_row_grad
        self._forward = self._compiled(lambda dense_BI, rows_BLD, ids_BL, labels_B: scored(
            model(dense_BI, pool_rows(model_bags, rows_BLD, ids_BL)), labels_B, inside))
        # Split forward (FastStepConfig.overlap): the dense part first, then the head on the rows.
        self._split = cfg.overlap and has_dense_part(model)
        if self._split:
            self._dense_part = self._compiled(model.dense_part)
            self._head = self._compiled(lambda dense_out, rows_BLD, ids_BL, labels_B: scored(
                model.head(dense_out, pool_rows(model_bags, rows_BLD, ids_BL)), labels_B, inside))
        self._slot_weights: torch.Tensor | None = None  # pooled from the table: the step's PooledGrad weights
        self.table_ED = table_ED.detach()
        self.acc_E = acc_E
        self.versions_E = versions_E
        if cfg.sparse_optimizer == "rowwise_adagrad" and acc_E is None:
            self.acc_E = torch.zeros(len(table_ED), dtype=torch.float32, device=self.device)
        if cfg.sparse_optimizer == "sgd":
            self.acc_E = None
        self.use_graph = cfg.cuda_graph and self.device.type == "cuda"
        self._sparse_stream = torch.cuda.Stream(self.device) if cfg.overlap and self.device.type == "cuda" else None
        if cfg.implicit_row_grad and (not has_row_weights(model) or bags is not None):
            raise HetGMPError(f"implicit_row_grad needs a model whose rows reach the logit through one linear layer "
                              f"(one with row_weights(), as WDL) and one row per field; {type(model).__name__} "
                              f"{'has none' if bags is None else 'pools bags'}: leave implicit_row_grad off")
        self._kept: tuple[torch.Tensor, torch.Tensor] | None = None  # implicit_row_grad: (dloss/dlogit, row weight)
        if self.use_graph and self.kernel == "reference":
            raise HetGMPError("the 'reference' sparse update syncs with the host and cannot be captured: use kernel 'triton' or 'torch', or cuda_graph=False")
        self.optimizer, self._dense_step = fast_dense_optimizer(list(model.parameters()), cfg.dense_optimizer, cfg.dense_lr, self.device,
                                                                cfg.skip_nonfinite, cfg.compile)
        self._scratch: torch.Tensor | None = None
        self._inputs = InputBuffers(self.device, None, id_dtype(len(table_ED)), None)
        self._replay = GraphReplay(self.device, self.use_graph, cfg.warmup_steps,
                                   before_capture=lambda: self.optimizer.zero_grad(set_to_none=True))
        self._ahead: SortAhead | None = None
        # Device scalars each step writes in place (graphs of several keys write the same ones):
        # accuracy: the samples whose logit sign matched the label; skip_nonfinite: 1.0 if skipped.
        self.correct = torch.zeros((), dtype=torch.int64, device=self.device) if cfg.accuracy else None
        self.skipped = torch.zeros((), dtype=torch.float32, device=self.device) if cfg.skip_nonfinite else None
        # Called at the end of every step with (loss, correct) device tensors, inside the
        # graph when captured: a trainer records them there instead of launching a copy
        # between replays. Set it before the first step.
        self.record: Callable[[torch.Tensor, torch.Tensor | None], None] | None = None

    def step(self, dense_BI: torch.Tensor, ids_BF: torch.Tensor, labels_B: torch.Tensor) -> torch.Tensor:
        """Train on one batch; returns the mean loss as a device tensor (no sync)."""
        if not self.use_graph:
            return self._train(dense_BI, ids_BF, labels_B)
        inputs = self._inputs.load(dense_BI, ids_BF, labels_B)
        return self.replay("inputs", lambda: self._train(*inputs))

    def step_from_source(self) -> torch.Tensor:
        """Train on the next batch of `source` (see BatchSource); the batch is drawn inside the graph
        (with `sort_ahead`, one step ahead: see hetgmp.fastpath.ahead)."""
        if self.source is None:
            raise HetGMPError("step_from_source() needs a FastStep built with a source")
        if self.cfg.sort_ahead:
            return self.sort_ahead().step()
        return self.replay("source", lambda: self._train(*self.source()))

    def sort_ahead(self) -> SortAhead:
        """The batch slots of `sort_ahead` (its `start()` draws the first batch)."""
        if not self.cfg.sort_ahead or self.source is None:
            raise HetGMPError("sort_ahead() needs FastStepConfig(sort_ahead=True) and a source")
        if self._ahead is None:
            self._ahead = SortAhead(self)
        return self._ahead

    def replay(self, key: object, train: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run `train` (one step, returning its loss) eagerly, or warmed up, captured as the graph
        of `key` and replayed (captured.GraphReplay: graphs of several keys are replayed one at a
        time, sharing one memory pool)."""
        return self._replay(key, train)

    def input_buffers(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The graph's (dense_BI, ids_BF, labels_B) buffers: a CUDA-graph step has them after its first call."""
        return self._inputs.get()

    def _compiled(self, fn: Callable) -> Callable:
        return compile_model(fn, self.cfg.compile, self.cfg.autotune, self.device)

    def _train(self, dense_BI: torch.Tensor, ids_BF: torch.Tensor, labels_B: torch.Tensor, order: SortedIds | None = None) -> torch.Tensor:
        """One step; `order`: the ids' sort, if already done (sort_ahead)."""
        ids_N = ids_BF.reshape(-1)
        with matmul_precision(self.cfg, self.device):
            with self._on_sparse_stream():
                if order is None and self.cfg.gather == "sorted":
                    order = sort_ids(ids_N, len(self.table_ED))
                emb_BFD = self._rows(ids_BF, order)
            dense_out = None
            if self._split:
                with autocast(self.cfg, self.device):
                    dense_out = self._dense_part(dense_BI)
            self._join_sparse_stream()
            if not self.cfg.implicit_row_grad:
                emb_BFD.requires_grad_()
            with autocast(self.cfg, self.device):
                if self._split:
                    logits_B, loss = self._head(dense_out, emb_BFD, ids_BF, labels_B)
                else:
                    logits_B, loss = self._forward(dense_BI, emb_BFD, ids_BF, labels_B)
            if loss is None:
                loss = ctr_loss(logits_B, labels_B)
            if self.cfg.accuracy:
                self.correct.copy_(correct_count(logits_B, labels_B))
            self.optimizer.zero_grad(set_to_none=True)
            early = self._update_in_backward(ids_N, emb_BFD, logits_B, order)
            loss.backward()
        dense_grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        # The rows' gradient, or what it is made of (implicit_row_grad: dloss/dlogit, whose
        # finiteness with the dense weights' gradients makes the rows' finite).
        grad_ND = self._kept[0] if self.cfg.implicit_row_grad else emb_BFD.grad.reshape(-1, emb_BFD.shape[-1]).contiguous()
        if self.cfg.skip_nonfinite:
            loss, grad_ND = self._skip_if_nonfinite(loss.detach(), grad_ND, dense_grads)
        elif self.cfg.flag_nonfinite:
            loss = nan_unless_finite(loss.detach(), [grad_ND, *dense_grads])
        if not early:
            self._update(ids_N, grad_ND, order)
        self._dense_step()
        self._join_sparse_stream()
        loss = loss.detach()
        if self.record is not None:
            self.record(loss, self.correct)
        return loss

    def _update(self, ids_N: torch.Tensor, grad_ND: torch.Tensor | Rank1Grad, order: SortedIds | None) -> None:
        """The table's update from the rows' gradient ((B F, D) pooled, with pools_from_table)."""
        if self.pools_from_table:
            grad_ND = pooled_grad(grad_ND, self.bags, self._slot_weights)
        if self.acc_E is not None and self.kernel == "triton" and self._scratch is None:
            self._scratch = new_scratch(len(ids_N), grad_ND.shape[1], self.device)
        sparse_update(self.table_ED, ids_N, grad_ND, self.cfg.lr, self.acc_E, self.cfg.adagrad_eps,
                      counts_E=self.versions_E, backend=self.kernel, scratch_TD=self._scratch, order=order)

    def _update_in_backward(self, ids_N: torch.Tensor, emb_BFD: torch.Tensor, logits_B: torch.Tensor, order: SortedIds | None) -> bool:
        """Hook the table's update into backward (True), or leave it for after (False: a step that
        may be skipped needs every gradient first)."""
        if self.cfg.implicit_row_grad:
            logits_B.register_hook(lambda grad_B: self._update_rank1(ids_N, grad_B, order))
            return True
        if self.cfg.overlap and not self.cfg.skip_nonfinite:
            emb_BFD.register_hook(lambda grad_BFD: self._update_beside(ids_N, grad_BFD, order))
            return True
        return False

    def _update_rank1(self, ids_N: torch.Tensor, grad_B: torch.Tensor, order: SortedIds | None) -> None:
        """The logits' gradient hook (implicit_row_grad): the update starts (on the sparse stream,
        with overlap) from dloss/dlogit and the rows' weight as this forward used it -- a copy,
        since the dense optimizer changes the weight in place later in the step. Both stay
        referenced until the step is over."""
        self._kept = (grad_B, self.model.row_weights().detach().clone())
        with self._on_sparse_stream():
            self._update(ids_N, Rank1Grad(*self._kept), order)

    def _update_beside(self, ids_N: torch.Tensor, grad_BFD: torch.Tensor, order: SortedIds | None) -> None:
        """The gradient hook of the rows (overlap): the update starts on the sparse stream while
        backward goes on. The gradient stays referenced (as the rows' .grad) until the step joins
        the two streams, so its memory is not reused under the update."""
        with self._on_sparse_stream():
            # Pooled bags' gradient goes in as it is (PooledGrad reads it strided): no copy.
            rows_grad = grad_BFD if self.pools_from_table else grad_BFD.reshape(-1, grad_BFD.shape[-1]).contiguous()
            self._update(ids_N, rows_grad, order)

    def _on_sparse_stream(self) -> contextlib.AbstractContextManager:
        """Run a block on the sparse stream after what the current stream has queued (overlap on CUDA)."""
        return beside(self._sparse_stream, self.device)

    def _join_sparse_stream(self) -> None:
        join(self._sparse_stream, self.device)

    def _skip_if_nonfinite(self, loss: torch.Tensor, grad_ND: torch.Tensor, dense_grads: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss or 0, gradient or zeros) and the dense gradients zeroed in place when anything is not finite."""
        bad = ~torch.isfinite(nan_unless_finite(loss, [grad_ND, *dense_grads]))
        for g in dense_grads:
            g.masked_fill_(bad, 0.0)
        self.skipped.copy_(bad.reshape(()))
        if self.optimizer.defaults.get("fused"):
            self.optimizer.found_inf = self.skipped
        return loss.masked_fill(bad, 0.0), grad_ND.masked_fill(bad, 0.0)

    def _rows(self, ids_BF: torch.Tensor, order: SortedIds | None) -> torch.Tensor:
        """The model's rows input, a fresh tensor: (B, F, D) one-hot, (B, L, D) bags, or (B, F, D) bags
        pooled from the table (pools_from_table)."""
        dtype = torch.bfloat16 if self.cfg.bf16_rows else self.table_ED.dtype
        if self.pools_from_table:
            pooled_BFD, self._slot_weights = pool_from_table(self.table_ED, ids_BF, self.bags, dtype, use_triton=True)
            return pooled_BFD
        ids_N = ids_BF.reshape(-1)
        if order is None:
            rows_ND = self.table_ED.index_select(0, ids_N).to(dtype)
        else:
            rows_ND = gather_rows(self.table_ED, order, dtype, use_triton=self.kernel == "triton")
        return rows_ND.view(*ids_BF.shape, -1)

