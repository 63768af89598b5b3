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

import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from saeforge import threads
from saeforge.errors import UserError
from saeforge.runtime import check_json
from saeforge.sources.language_model import hook_width

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Source(Protocol):
    d_in: int

    def fill(self, storage: torch.Tensor, idx: torch.Tensor, origin_N: torch.Tensor) -> None: ...
    def state(self) -> dict[str, Any]: ...


class ModelSource:
    """Runs the model on contexts up to the hooked layer; the hook writes into the buffer's rows.

    Position 0 (BOS) of every context is skipped (see data.py). Rows a pass produces beyond
    what a fill asked for are carried (on the device) into the next fill, so no context is
    wasted and the data order is a pure function of the context stream. Every row written
    gets its origin, its index in the stream of rows (context · (n_ctx − 1) + position − 1),
    so that `replay` can compute it again.

    `stream_from(k)` is the context stream from context k on (batches of whole contexts).
    """

    def __init__(self, model, hook: str | list[str], stream_from: Callable[[int], Iterator[torch.Tensor]],
                 stop_at_layer: int | None, contexts_read: int = 0):
        self.model, self.stop_at_layer = model, stop_at_layer
        self.hooks = [hook] if isinstance(hook, str) else list(hook)  # several: their activations side by side
        self.hook = self.hooks[0]
        if not callable(stream_from):  # a plain iterator of batches: no replay
            stream_from = (lambda it: lambda k: it)(stream_from)
        self.stream_from = stream_from
        self.widths = [hook_width(model, h) for h in self.hooks]
        self.d_in = sum(self.widths)
        self.device = next(model.parameters()).device
        self.rows_per_context = model.cfg.n_ctx - 1
        self.contexts_read = contexts_read
        self.contexts: Iterator[torch.Tensor] | None = None  # opened at the first fill (or by replay)
        self.carry: torch.Tensor | None = None
        self.carry_origin = 0
        self.forward_seconds = 0.0  # time in the model's forward passes (the end-to-end breakdown)

    def state(self) -> dict[str, Any]:
        return {"contexts_read": self.contexts_read, "carry_rows": 0 if self.carry is None else len(self.carry)}

    def _forward(self, tokens: torch.Tensor, keep: Callable[[torch.Tensor], None]) -> None:
        parts: dict[str, torch.Tensor] = {}

        def hook_fn(act, hook):
            rows = act[:, 1:].reshape(-1, act.shape[-1])
            if len(self.hooks) == 1:
                keep(rows)
            else:
                parts[hook.name] = rows
            return act

        threads.tick()
        t0 = time.perf_counter()
        self.model.run_with_hooks(tokens.to(self.device), fwd_hooks=[(h, hook_fn) for h in self.hooks],
                                  stop_at_layer=self.stop_at_layer, return_type=None)
        if len(self.hooks) > 1:
            keep(torch.cat([parts[h] for h in self.hooks], dim=1))
        self.forward_seconds += time.perf_counter() - t0

    @torch.no_grad()
    def fill(self, storage: torch.Tensor, idx: torch.Tensor, origin_N: torch.Tensor) -> None:
        pos = 0
        if self.carry is not None:
            take = min(len(self.carry), len(idx))
            storage.index_copy_(0, idx[:take], self.carry[:take])
            origin_N.index_copy_(0, idx[:take], torch.arange(self.carry_origin, self.carry_origin + take,
                                                             device=origin_N.device))
            self.carry = self.carry[take:] if take < len(self.carry) else None
            self.carry_origin += take
            pos = take
        if self.contexts is None:
            self.contexts = self.stream_from(self.contexts_read)
        while pos < len(idx):
            tokens = next(self.contexts)
            first = self.contexts_read * self.rows_per_context
            self.contexts_read += tokens.shape[0]

            def write(rows, start=pos):
                take = min(len(rows), len(idx) - start)
                storage.index_copy_(0, idx[start:start + take], rows[:take].to(storage.dtype))
                origin_N.index_copy_(0, idx[start:start + take], torch.arange(first, first + take,
                                                                              device=origin_N.device))
                if take < len(rows):
                    self.carry = rows[take:].to(storage.dtype).clone()
                    self.carry_origin = first + take

            self._forward(tokens, write)
            pos += tokens.shape[0] * (tokens.shape[1] - 1)

    @torch.no_grad()
    def replay(self, storage: torch.Tensor, idx_K: torch.Tensor, origin_K: torch.Tensor, carry_rows: int,
               batch: int) -> None:
        """Compute again the rows of origins origin_K (into storage rows idx_K) and the carry, by
        running the model over the same batches of contexts as the first time (`batch` contexts
        per pass, from a multiple of `batch`), ending where the stream stood: at contexts_read."""
        end = self.contexts_read * self.rows_per_context
        self.carry_origin = end - carry_rows
        lo = min(int(origin_K.min()) if len(origin_K) else end, self.carry_origin)
        first_context = lo // self.rows_per_context // batch * batch
        where = torch.full((end - first_context * self.rows_per_context,), -1, dtype=torch.long, device=idx_K.device)
        where[origin_K - first_context * self.rows_per_context] = idx_K
        self.contexts = self.stream_from(first_context)
        read, carried = first_context, []
        while read < self.contexts_read:
            tokens = next(self.contexts)
            first = read * self.rows_per_context
            read += tokens.shape[0]

            def write(rows, first=first):
                rows = rows.to(storage.dtype)
                sel = where[first - first_context * self.rows_per_context:][: len(rows)]
                hit = sel >= 0
                storage.index_copy_(0, sel[hit], rows[hit])
                if first + len(rows) > self.carry_origin:
                    carried.append(rows[max(0, self.carry_origin - first):])

            self._forward(tokens, write)
        if read != self.contexts_read:
            raise UserError("the checkpoint's buffer cannot be rebuilt: the dataset no longer gives the same "
                            "contexts (was --contexts-per-pass changed?)")
        self.carry = torch.cat(carried).clone() if carry_rows else None


class ActivationBuffer:
    """`restore`: the snapshot (`snapshot()`) of a buffer to rebuild exactly, instead of a first fill."""

    REPLAYED = 2  # a snapshot stores the rows older than this many buffers of the stream; newer ones are replayed

    def __init__(self, source: Source, n_rows: int, batch_size: int, device: torch.device | str,
                 dtype: torch.dtype = torch.float32, seed: int = 0, scale: float | list[float] | None = None,
                 restore: tuple[dict[str, Any], dict[str, torch.Tensor]] | None = None,
                 widths: list[int] | None = None):
        if n_rows < 2 * batch_size:
            raise UserError(f"the activation buffer holds {n_rows} rows, fewer than 2 batches of {batch_size}; "
                            "raise --buffer-mb or lower --batch-size")
        self.source, self.batch_size = source, batch_size
        self.storage = torch.empty(n_rows, source.d_in, dtype=dtype, device=device)
        self.origin_N = torch.zeros(n_rows, dtype=torch.long, device=device)  # each row's index in the stream
        self.gen = torch.Generator().manual_seed(seed)  # the batch order: a function of the seed and data only
        self.sample_gen = sample_generator(seed)  # init and resampling draws, apart from the batch order
        self.device = torch.device(device)
        self.half = n_rows // 2 // batch_size * batch_size
        self.widths = widths  # several hooks side by side (ModelSource with hooks): a scale for each
        if restore is not None:
            self._restore(*restore)
            if widths is None:
                self.scale = scale
            else:  # several hooks: a scale each (a resumed pass of several hooks was refused here before)
                self.set_scales(scale)
            return
        all_rows = torch.arange(n_rows, device=device)
        self.source.fill(self.storage, all_rows, self.origin_N)
        self._check_finite(all_rows)
        if widths is None:
            self.scale = scale if scale is not None else self.estimate_scale()
        else:
            self.set_scales(scale if scale is not None else [self.estimate_scale(cols=c) for c in self.column_slices()])
        self._new_cycle()

    def column_slices(self) -> list[slice]:
        ends = torch.tensor(self.widths).cumsum(0).tolist()
        return [slice(e - w, e) for w, e in zip(self.widths, ends)]

    def set_scales(self, scales: list[float]) -> None:
        """One scale per hook: the batches are multiplied column by column."""
        self.scales = list(scales)
        self.scale = torch.cat([torch.full((w,), s) for w, s in zip(self.widths, self.scales)]).to(self.device)

    def snapshot(self, contexts_per_pass: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """What rebuilds this buffer exactly (a ModelSource's): its permutation, RNG and row origins,
        plus the rows older than REPLAYED buffers of the stream (about 1/16 of them), which are
        stored as they are; the others are recomputed by the model on resume."""
        lo = max(0, self.source.contexts_read * self.source.rows_per_context - self.REPLAYED * len(self.storage))
        old = torch.nonzero(self.origin_N < lo).flatten()
        meta = {"rows": len(self.storage), "d_in": self.storage.shape[1], "served": self.served, "replay_from": lo,
                "contexts_per_pass": contexts_per_pass, **self.source.state()}
        return meta, {"perm": self.perm, "origin": self.origin_N, "rng": self.gen.get_state(),
                      "sample_rng": self.sample_gen.get_state(),
                      "old_idx": old, "old_rows": self.storage[old]}

    def _restore(self, meta: dict[str, Any], t: dict[str, torch.Tensor]) -> None:
        self.gen.set_state(t["rng"])
        if "sample_rng" in t:  # (snapshots before it existed: the sampler starts over)
            self.sample_gen.set_state(t["sample_rng"])
        self.perm, self.served = t["perm"].to(self.device), meta["served"]
        self.origin_N.copy_(t["origin"])
        self.storage.index_copy_(0, t["old_idx"].to(self.device), t["old_rows"].to(self.device, self.storage.dtype))
        new = torch.nonzero(self.origin_N >= meta["replay_from"]).flatten()
        self.source.replay(self.storage, new, self.origin_N[new], meta["carry_rows"], meta["contexts_per_pass"])

    @staticmethod
    def fits(meta: dict[str, Any], t: dict[str, torch.Tensor], n_rows: int, d_in: int) -> bool:
        """Whether a snapshot rebuilds a buffer of this shape (False: --buffer-mb changed); a damaged
        snapshot is a UserError."""
        check_json(meta, "the checkpoint's buffer snapshot", {k: (int, True) for k in (
            "rows", "d_in", "served", "replay_from", "contexts_per_pass", "contexts_read", "carry_rows")})
        if (meta["rows"], meta["d_in"]) != (n_rows, d_in):
            return False
        shapes = {"perm": (n_rows,), "origin": (n_rows,), "old_idx": (len(t.get("old_idx", ())),),
                  "old_rows": (len(t.get("old_idx", ())), d_in)}
        if (set(shapes) | {"rng"}) - set(t) or any(tuple(t[k].shape) != v for k, v in shapes.items()) or not (
                0 <= meta["served"] <= n_rows and 0 <= meta["carry_rows"] and meta["contexts_per_pass"] >= 1
                and t["perm"].dtype == t["origin"].dtype == t["old_idx"].dtype == torch.long
                and t["rng"].dtype == torch.uint8):
            raise UserError("the checkpoint's buffer snapshot is damaged; delete the checkpoint to start over")
        return True

    @staticmethod
    def rows_for(memory_mb: float, d_in: int, dtype: torch.dtype, carry_rows: int = 0) -> int:
        """How many rows fit in `memory_mb` MiB, leaving room for one pass's carry."""
        row_bytes = d_in * torch.finfo(dtype).bits // 8
        return int(memory_mb * 2**20) // row_bytes - carry_rows

    def estimate_scale(self, n: int = 65536, cols: slice = slice(None)) -> float:
        """s with E‖s·x‖² = d_in, from up to n rows of the first fill (of columns `cols`)."""
        rows = self.storage[: min(n, len(self.storage)), cols].float()
        mean_sq = rows.pow(2).sum(-1).mean().item()
        if not mean_sq > 0:
            raise UserError("the activations are all zero; is the hook point right?")
        return (rows.shape[1] / mean_sq) ** 0.5

    def _check_finite(self, idx: torch.Tensor) -> None:
        """Refuse rows holding NaN or Inf where they enter (one host sync per fill): training on them
        would diverge, or, for a row no batch happens to draw, pass silently."""
        if not bool(torch.isfinite(self.storage[idx]).all()):
            raise UserError("the activations hold non-finite values (NaN or Inf) where they enter the buffer: "
                            "check the model's weights at this hook, the cache, or the activations given")

    def _new_cycle(self) -> None:
        self.perm = torch.randperm(len(self.storage), generator=self.gen).to(self.device)
        self.served = 0

    def __iter__(self) -> "ActivationBuffer":
        return self

    def __next__(self) -> torch.Tensor:
        if self.served >= self.half:
            self.source.fill(self.storage, self.perm[: self.served], self.origin_N)
            self._check_finite(self.perm[: self.served])
            self._new_cycle()
        rows = self.perm[self.served: self.served + self.batch_size]
        self.served += self.batch_size
        return self.storage[rows].float().mul_(self.scale)

    def sample(self, n: int, gen: torch.Generator | None = None) -> torch.Tensor:
        """n distinct random rows of the current buffer (scaled, float32), for initializers and
        resamplers; drawn with `gen` (default: the buffer's sampler), never with the batch order's
        generator, so that what a dictionary samples does not change the batches (nor another
        dictionary's, when several train from one buffer)."""
        idx = torch.randperm(len(self.storage), generator=gen or self.sample_gen)[:n].to(self.device)
        return self.storage[idx].float().mul_(self.scale)


def sample_generator(seed: int) -> torch.Generator:
    """The generator of `ActivationBuffer.sample` for a buffer seeded `seed` (one per dictionary
    when several share a buffer: each draws what its own single run would)."""
    return torch.Generator().manual_seed((seed + 1) * 1_000_003)
