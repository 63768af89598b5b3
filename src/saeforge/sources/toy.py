"""Toy data with known ground-truth features: the first seed's experimental setup.

It follows the generator of the open replication of Sharkey, Braun & Millidge's toy models
(HoagyC/sparse_coding, whose data code came from the seed's author), choice by choice:

1. Features: `n_features` rows drawn from an isotropic Gaussian in `d_model` dims, each
   scaled to unit norm. They are the truth a dictionary is scored against (MMCS).
2. Base rates: feature i fires with probability ∝ decay**i (decay 0.99: feature 0 is ~e^10
   times likelier than feature 1023), so late features are rare.
3. Correlation: a random symmetric matrix with entries U[0,1), symmetrized as (C + Cᵀ)/2 and
   shifted by 1.001·|λ_min|·I when its smallest eigenvalue is negative, is the covariance of
   a Gaussian z. As in the replication, one z is drawn per batch: probabilities become
   Φ(z_i)·decay**i, shared by the batch's samples. The Cholesky factor is computed once
   (the replication rebuilt the sampler every batch, ~60 ms at 1,024 features).
4. Rescaling: the probabilities are multiplied so their mean is n_active / n_features, i.e.
   on average `n_active` features fire per sample (clamped at 1, never reached by defaults).
5. Magnitudes: an active feature's coefficient is uniform in [0, 1). One uniform draw u per
   (sample, feature) decides both: active iff u < p, and then u / p is exactly U[0, 1).
6. A sample with no active feature gets one: a uniformly chosen feature with coefficient 1.0
   (the replication's rule; it happens to ~e^-5 ≈ 0.7% of samples at n_active 5).
7. x = codes @ features. No noise.

Batches are a pure function of (seed, step): batch k is the same whether a run was resumed
or not, and no generator state needs checkpointing.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class StepData:
    """Data drawn as a pure function of (seed, step): `batch(step, B)` returns x_BD first.
    Subclasses set `seed` and `device` and define `batch`."""

    seed: int
    device: torch.device

    def _generator(self, step: int) -> torch.Generator:
        # Distinct, reproducible stream per (seed, step); offset so step streams never reuse the
        # stream that drew the features.
        g = torch.Generator(device=self.device)
        g.manual_seed((self.seed * 1_000_003 + step + 1) % (2**63))
        return g

    def batches(self, batch_size: int, start: int = 0) -> Iterator[torch.Tensor]:
        """Endless stream of inputs x_BD, starting at step `start` (what a resumed run needs)."""
        step = start
        while True:
            yield self.inputs(step, batch_size)
            step += 1

    def fresh(self, n: int, first: int) -> torch.Tensor:
        """n inputs from steps −first, −first−1, … (batches of 1,024): the same distribution,
        never trained on, a pure function of `first` (initializers and resampling draw here)."""
        return torch.cat([self.inputs(-(first + j), 1024) for j in range(-(-n // 1024))])[:n]

    def inputs(self, step: int, batch_size: int) -> torch.Tensor:
        """x_BD of `batch(step, B)` alone (a generator may skip building the rest)."""
        return self.batch(step, batch_size)[0]

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError


class ToyData(StepData):
    def __init__(
        self,
        d_model: int,
        n_features: int,
        *,
        n_active: float = 5.0,
        decay: float = 0.99,
        correlated: bool = True,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.d_model, self.n_features, self.n_active = d_model, n_features, n_active
        self.seed, self.device, self.dtype = seed, torch.device(device), dtype
        g = torch.Generator().manual_seed(seed)
        feats_FD = torch.randn(n_features, d_model, generator=g, dtype=torch.float64)
        self.features_FD = (feats_FD / feats_FD.norm(dim=1, keepdim=True)).to(self.device, dtype)
        self.decay_F = (decay ** torch.arange(n_features, dtype=torch.float64)).to(self.device, dtype)
        self.chol_FF = None
        if correlated:
            C = torch.rand(n_features, n_features, generator=g, dtype=torch.float64)
            C = (C + C.T) / 2
            min_eig = torch.linalg.eigvalsh(C)[0]
            if min_eig < 0:
                C -= 1.001 * min_eig * torch.eye(n_features, dtype=torch.float64)
            self.chol_FF = torch.linalg.cholesky(C).to(self.device, dtype)

    def probs(self, z_F: torch.Tensor | None = None) -> torch.Tensor:
        """Firing probability of each feature given the batch's Gaussian draw z (None: uncorrelated)."""
        p_F = self.decay_F if z_F is None else torch.special.ndtr(z_F) * self.decay_F
        return (p_F * (self.n_active / self.n_features / p_F.mean())).clamp_(max=1.0)

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_BD, codes_BF, probs_F) for training step `step`."""
        g = self._generator(step)
        kw = dict(generator=g, device=self.device, dtype=self.dtype)
        z_F = None if self.chol_FF is None else self.chol_FF @ torch.randn(self.n_features, **kw)
        p_F = self.probs(z_F)
        u_BF = torch.rand(batch_size, self.n_features, **kw)
        active_BF = u_BF < p_F
        codes_BF = torch.where(active_BF, u_BF / p_F, 0.0)
        empty_B = ~active_BF.any(dim=1)
        rows = empty_B.nonzero()[:, 0]
        if rows.numel():
            cols = torch.randint(0, self.n_features, (rows.numel(),), generator=g, device=self.device)
            codes_BF[rows, cols] = 1.0
        return codes_BF @ self.features_FD, codes_BF, p_F
