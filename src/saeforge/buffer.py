"""ActivationBuffer: a preallocated, device-resident store of activations that serves shuffled batches.

    source (model forward passes, or the disk cache) ──fill──► storage [rows, d_in] ──► batches x_BD

The storage is one tensor allocated once on the model's device, in the storage dtype
(float32 or bfloat16), sized from `--buffer-mb` (storage plus the refill carry stay within it).
It is cut into shards, the rows one forward pass produces (contexts_per_pass × (n_ctx − 1)):
the forward hook writes each pass's activations straight into their rows with `index_copy_`
on the device, so activations never pass through host memory when model and buffer share a
device.

Mixing: after the first fill, each cycle draws a random permutation of all rows and serves
batches from its first half; the rows just served are then refilled (their slots are scattered
across the shards) and a new permutation is drawn. Each activation is served exactly once,
and a batch mixes rows from contexts of up to twice the buffer's age. Batches are scaled by
`scale` (input normalization, E‖x‖² = d_in) and returned in float32.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch

from .errors import UserError
from .models import hook_width

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Source(Protocol):
    d_in: int

    def fill(self, storage: torch.Tensor, idx: torch.Tensor) -> None: ...
    def state(self) -> dict[str, Any]: ...


class ModelSource:
    """Runs the model on contexts up to the hooked layer; the hook writes into the buffer's rows.

    Position 0 (BOS) of every context is skipped (see data.py). Rows a pass produces beyond
    what a fill asked for are carried (on the device) into the next fill, so no context is
    wasted and the data order is a pure function of the context stream.
    """

    def __init__(self, model, hook: str, contexts: Iterator[torch.Tensor], stop_at_layer: int | None,
                 contexts_read: int = 0):
        self.model, self.hook, self.contexts, self.stop_at_layer = model, hook, contexts, stop_at_layer
        self.d_in = hook_width(model, hook)
        self.device = next(model.parameters()).device
        self.contexts_read = contexts_read
        self.carry: torch.Tensor | None = None

    def state(self) -> dict[str, Any]:
        return {"contexts_read": self.contexts_read}

    @torch.no_grad()
    def fill(self, storage: torch.Tensor, idx: torch.Tensor) -> None:
        pos = 0
        if self.carry is not None:
            take = min(len(self.carry), len(idx))
            storage.index_copy_(0, idx[:take], self.carry[:take])
            self.carry = self.carry[take:] if take < len(self.carry) else None
            pos = take
        while pos < len(idx):
            tokens = next(self.contexts).to(self.device)
            self.contexts_read += tokens.shape[0]

            def write(act, hook, start=pos):
                rows = act[:, 1:].reshape(-1, act.shape[-1])
                take = min(len(rows), len(idx) - start)
                storage.index_copy_(0, idx[start:start + take], rows[:take].to(storage.dtype))
                if take < len(rows):
                    self.carry = rows[take:].to(storage.dtype).clone()
                return act

            self.model.run_with_hooks(tokens, fwd_hooks=[(self.hook, write)], stop_at_layer=self.stop_at_layer,
                                      return_type=None)
            pos += tokens.shape[0] * (tokens.shape[1] - 1)


class ActivationBuffer:
    def __init__(self, source: Source, n_rows: int, batch_size: int, device: torch.device | str,
                 dtype: torch.dtype = torch.float32, seed: int = 0, scale: float | None = None):
        if n_rows < 2 * batch_size:
            raise UserError(f"the activation buffer holds {n_rows} rows, fewer than 2 batches of {batch_size}; "
                            "raise --buffer-mb or lower --batch-size")
        self.source, self.batch_size = source, batch_size
        self.storage = torch.empty(n_rows, source.d_in, dtype=dtype, device=device)
        self.gen = torch.Generator().manual_seed(seed)
        self.device = torch.device(device)
        all_rows = torch.arange(n_rows, device=device)
        self.source.fill(self.storage, all_rows)
        self.scale = scale if scale is not None else self.estimate_scale()
        self._new_cycle()

    @staticmethod
    def rows_for(memory_mb: float, d_in: int, dtype: torch.dtype, carry_rows: int = 0) -> int:
        """How many rows fit in `memory_mb` MiB, leaving room for one pass's carry."""
        row_bytes = d_in * torch.finfo(dtype).bits // 8
        return int(memory_mb * 2**20) // row_bytes - carry_rows

    def estimate_scale(self, n: int = 65536) -> float:
        """s with E‖s·x‖² = d_in, from up to n rows of the first fill."""
        rows = self.storage[: min(n, len(self.storage))].float()
        mean_sq = rows.pow(2).sum(-1).mean().item()
        if not mean_sq > 0:
            raise UserError("the activations are all zero; is the hook point right?")
        return (self.storage.shape[1] / mean_sq) ** 0.5

    def _new_cycle(self) -> None:
        self.perm = torch.randperm(len(self.storage), generator=self.gen).to(self.device)
        self.served = 0
        self.half = len(self.storage) // 2 // self.batch_size * self.batch_size

    def __iter__(self) -> "ActivationBuffer":
        return self

    def __next__(self) -> torch.Tensor:
        if self.served >= self.half:
            self.source.fill(self.storage, self.perm[: self.served])
            self._new_cycle()
        rows = self.perm[self.served: self.served + self.batch_size]
        self.served += self.batch_size
        return self.storage[rows].float().mul_(self.scale)

    def sample(self, n: int) -> torch.Tensor:
        """n distinct random rows of the current buffer (scaled, float32), for initializers and resamplers."""
        idx = torch.randperm(len(self.storage), generator=self.gen)[:n].to(self.device)
        return self.storage[idx].float().mul_(self.scale)
