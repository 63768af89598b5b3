"""Feature sharding: a dictionary too wide for one device, its features split across ranks.

With `--feature-shards S` the torchrun world is a D × S grid (D = world / S data groups):
consecutive ranks form a feature group that trains one dictionary on the same batch, rank
(d, s) owning features [s·F/S, (s+1)·F/S): those columns of W_enc and entries of b_enc
(and JumpReLU's threshold), those rows of W_dec, and their Adam moments and firing
counters; b_dec is replicated. Per step (docs/distributed.md, "Feature sharding"):

    x_c = x − b_dec                      backward: one all-reduce of b_dec's [B, D] share
    f_s = act(x_c @ W_enc,s + b_enc,s)   local; TopK selects the global top k exactly
    x̂   = Σ_s f_s @ W_dec,s + b_dec      one all-reduce of [B, D], not [B, F]
    L   = ‖x − x̂‖² + Σ_s penalty_s       every rank of the group holds the same loss

so each rank's autograd backward gives exactly its own slice of the unsharded gradient; the
data-parallel all-reduce then runs over the data group only. Checkpoints and the saved
dictionary are gathered whole, and a checkpoint loads onto any layout (sliced by feature).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from saeforge.errors import UserError



class _SumOverGroup(torch.autograd.Function):
    """Forward: the sum of every rank's partial tensor. Backward: identity (every rank holds the
    same loss, so each partial receives the full gradient of the sum)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, group: Any) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t, group=group)
        return t

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return g, None


class _CopyToGroup(torch.autograd.Function):
    """Forward: identity (a replicated input). Backward: the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        return t

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        g = g.clone()
        dist.all_reduce(g, group=ctx.group)
        return g, None


class FeatureShards:
    """This rank's place in the data × feature grid and the collectives over its feature group."""

    def __init__(self, shards: int, d_sae: int):
        world, rank = dist.get_world_size(), dist.get_rank()  # S divides both: checked by pipeline/common.py
        self.shards, self.total = shards, d_sae
        self.index, self.data_rank, self.data_world = rank % shards, rank // shards, world // shards
        self.size = d_sae // shards
        self.lo, self.hi = self.index * self.size, (self.index + 1) * self.size
        # every rank creates every group, in the same order (torch.distributed's rule)
        self.group = self.data_group = None
        for d in range(self.data_world):
            g = dist.new_group(list(range(d * shards, (d + 1) * shards)))
            if d == self.data_rank:
                self.group = g
        for s in range(shards):
            g = dist.new_group(list(range(s, world, shards)))
            if s == self.index:
                self.data_group = g

    # ------------------------------------------------------------ inside the loss (autograd)
    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return _SumOverGroup.apply(t, self.group)

    def copy(self, t: torch.Tensor) -> torch.Tensor:
        return _CopyToGroup.apply(t, self.group)

    @torch.no_grad()
    def top_k(self, score_BF: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, local latents) of this shard's entries among the k largest scores of each row
        over all shards, row-major: each shard offers its own top min(k, F/S), the candidates are
        gathered, and the global top k is taken over them, exactly as over the whole row."""
        kl = min(k, score_BF.shape[1])
        vals_BK, idx_BK = score_BF.topk(kl, dim=1)
        parts = [torch.empty_like(vals_BK) for _ in range(self.shards)]
        dist.all_gather(parts, vals_BK.contiguous(), group=self.group)
        all_BC = torch.cat(parts, dim=1)  # shard s's candidates at columns [s·kl, (s+1)·kl)
        chosen_BC = torch.zeros_like(all_BC, dtype=torch.bool)
        chosen_BC.scatter_(1, all_BC.topk(min(k, all_BC.shape[1]), dim=1).indices, True)
        mine_BK = chosen_BC[:, self.index * kl:(self.index + 1) * kl] & torch.isfinite(vals_BK)
        rows, j = mine_BK.nonzero().unbind(1)
        cols = idx_BK[rows, j]
        order = torch.argsort(rows * score_BF.shape[1] + cols)  # CSR order: rows, then latents
        return rows[order], cols[order]

    @torch.no_grad()
    def max(self, t: torch.Tensor) -> torch.Tensor:
        """The elementwise maximum over the feature group (e.g. each true feature's best cosine)."""
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return t

    def count(self, n: int) -> int:
        """A count summed over the feature group (e.g. dead latents)."""
        t = torch.tensor([n], dtype=torch.long)
        dist.all_reduce(t, group=self.group)
        return int(t)

    # ------------------------------------------------------------ whole ↔ own slices
    def own(self, t: torch.Tensor, axis: int) -> torch.Tensor:
        return t.narrow(axis, self.lo, self.size).clone()

    @torch.no_grad()
    def whole(self, t: torch.Tensor, axis: int) -> torch.Tensor:
        """The full tensor from every shard's slice along `axis` (all ranks of the group get it)."""
        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(self.shards)]
        dist.all_gather(parts, t, group=self.group)
        return torch.cat(parts, dim=axis)


@torch.no_grad()
def rebuilt(sae: Any, d_sae: int, how: Any) -> Any:
    """A new instance of sae's architecture and settings with d_sae features, its feature-indexed
    parameters `how(p, axis)` of sae's (a shard's slice, or the whole gathered), the others copied."""
    shape = {"d_out": sae.d_out, "skip": sae.W_skip is not None} if sae.transcoder else {}  # W_skip: replicated
    new = type(sae)(sae.d_in, d_sae, sae.cfg, device=sae.W_enc.device, dtype=sae.W_enc.dtype, **shape)
    for name, p in sae.named_parameters():
        axis = sae.feature_axes.get(name)
        getattr(new, name).copy_(p if axis is None else how(p.detach(), axis))
    new.metadata = dict(sae.metadata)
    return new


def check(cfg: Any) -> None:
    """Settings that feature sharding cannot run, refused before anything is read."""
    if cfg.feature_shards <= 1:
        return
    if not cfg.sae.shardable:
        raise UserError(f"--feature-shards: --architecture {cfg.architecture} cannot split its features over ranks "
                        f"(its selection needs every latent); use one of {', '.join(cfg.shardable_architectures())}")
    if cfg.resample not in ("none", "auto"):
        raise UserError("--feature-shards trains without dead-feature resampling; give --resample none")
    if cfg.max_grad_norm:
        raise UserError("--feature-shards: --max-grad-norm needs the norm over every shard's gradient, not yet "
                        "computed; give --max-grad-norm 0")
