"""Dead-feature resampling: give features that stopped firing a new direction.

Dead = no firing for `dead_window` tokens (the trainer's on-device counter
`tokens_since_fired_F`, updated every step without a host sync). At every resampling step
(`--resample-every N`, or the steps listed in `--resample-at`; never in the last interval of
the budget, so a new feature gets time to settle) the dead features are reinitialized by:

- anthropic ("Towards Monosemanticity", the baseline): score `resample_sample` inputs by the
  dictionary's squared reconstruction error; draw one input per dead feature with probability
  ∝ (error)²; decoder row = that input, normalized; encoder column = the same direction ×
  0.2 × the mean encoder-column norm of the alive features; encoder bias 0.
- clustered (the first seed's proposal): keep the `resample_worst` worst-reconstructed of
  those inputs, cluster them with MiniBatchKMeans (`resample_clusters` clusters), rank the
  clusters by mean error and deal the dead features round-robin over the worst k =
  min(#dead, #clusters) of them, so that one frequent failure mode cannot take every dead
  feature; from each dealt cluster, a member not used yet. Its direction (normalized) is
  `centroid`: x minus its cluster's centroid (default), or `residual`: x − x̂, what the
  dictionary misses on it. On toy data residual directions point at unlearned features far
  more often (tests/test_resample.py), but on the embedded model with many dead features
  centroid directions trained to a lower loss with fewer dead features (docs/resampling.md),
  so centroid is the default. Encoder as for anthropic.
- none.

Both reset the Adam moments of the rows they touch (W_enc columns, b_enc entries, W_dec rows)
and the features' firing counters. Every decision comes from the run's seed and step, so a
run is reproducible, and (issue 7) one rank can decide and broadcast.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import distributed
from .errors import UserError

if TYPE_CHECKING:
    from .train import Trainer

METHODS = ("none", "anthropic", "clustered")
DIRECTIONS = ("residual", "centroid")
ENCODER_SCALE = 0.2  # Towards Monosemanticity's factor on the alive features' mean encoder norm


def check_settings(cfg: Any, total_steps: int, total_tokens: int) -> None:
    """Refuse settings that cannot do what was asked, before any training happens."""
    if cfg.resample == "none":
        return
    if cfg.resample_every < 1 and not cfg.resample_at:
        raise UserError(f"--resample {cfg.resample} needs --resample-every >= 1 (got {cfg.resample_every}) "
                        "or --resample-at STEP,STEP")
    window = cfg.dead_window or 10 * cfg.batch_size
    if window >= total_tokens:
        raise UserError(f"the dead window ({window} tokens) is not shorter than training ({total_tokens} tokens): "
                        "no feature could ever count as dead; lower --dead-window or train longer")
    if not resample_steps(cfg, total_steps):
        raise UserError(f"--resample {cfg.resample}: no resampling step falls inside the {total_steps} training "
                        "steps (resampling stops one interval before the end); lower --resample-every")


def resample_steps(cfg: Any, total_steps: int) -> list[int]:
    if cfg.resample_at:
        return sorted(s for s in parse_steps(cfg.resample_at) if 0 < s < total_steps)
    every = cfg.resample_every
    return list(range(every, total_steps - every + 1, every)) if every > 0 else []


def parse_steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise UserError(f"--resample-at must be comma-separated step numbers, got {text!r}") from None
    if any(s < 1 for s in steps):
        raise UserError(f"--resample-at steps must be >= 1, got {text!r}")
    return steps


class Resampler:
    """Called by the trainer after each step; acts on the scheduled steps only.

    `sample(n, step)` returns n activations [n, d_in] from the training distribution (the toy
    generator, or the live buffer) without advancing the training stream."""

    def __init__(self, cfg: Any, sample: Callable[[int, int], torch.Tensor], total_steps: int):
        self.cfg, self.sample = cfg, sample
        self.steps = set(resample_steps(cfg, total_steps))

    def __call__(self, tr: "Trainer") -> dict[str, Any] | None:
        if self.cfg.resample == "none" or tr.step not in self.steps:
            return None
        t0 = time.perf_counter()
        dead_F = tr.tokens_since_fired_F >= tr.dead_window
        idx = torch.nonzero(dead_F).flatten()  # one host sync, on resampling steps only
        event = {"step": tr.step, "dead": int(len(idx)), "method": self.cfg.resample}
        if len(idx):  # the dead set is the same on every rank; rank 0 decides the directions
            dev = tr.sae.W_dec.device
            if distributed.is_main():
                dirs_KD = self.directions(tr, len(idx)).to(dev, torch.float32).contiguous()
            else:
                dirs_KD = torch.empty(len(idx), tr.sae.d_in, device=dev)
            distributed.broadcast_(dirs_KD)
            reinitialize(tr, idx, dirs_KD)
        event["seconds"] = round(time.perf_counter() - t0, 4)
        tr.extra_state.setdefault("resample_events", []).append(event)
        return event


    def directions(self, tr: "Trainer", k: int) -> torch.Tensor:
        X_ND = self.sample(self.cfg.resample_sample, tr.step).to(tr.sae.W_dec.device, torch.float32)
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + tr.step)
        if self.cfg.resample == "anthropic":
            return anthropic_directions(tr.sae, X_ND, k, g)
        return clustered_directions(tr.sae, X_ND, k, g, worst=self.cfg.resample_worst,
                                    clusters=self.cfg.resample_clusters, direction=self.cfg.resample_direction,
                                    seed=self.cfg.seed * 1_000_003 + tr.step)


@torch.no_grad()
def squared_errors(sae, X_ND: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    return torch.cat([(sae(X_ND[i:i + chunk]) - X_ND[i:i + chunk]).pow(2).sum(-1) for i in range(0, len(X_ND), chunk)])


@torch.no_grad()
def anthropic_directions(sae, X_ND: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    loss_N = squared_errors(sae, X_ND).cpu().double()
    p = loss_N.pow(2)
    if not torch.isfinite(p).all() or p.sum() <= 0:
        p = torch.ones_like(p)
    pick = torch.multinomial(p / p.sum(), k, replacement=len(p) < k, generator=g)
    return X_ND[pick.to(X_ND.device)]


@torch.no_grad()
def clustered_directions(sae, X_ND: torch.Tensor, k: int, g: torch.Generator, *, worst: int, clusters: int,
                         direction: str, seed: int) -> torch.Tensor:
    from sklearn.cluster import MiniBatchKMeans

    loss_N = squared_errors(sae, X_ND)
    n_worst = max(min(worst, len(X_ND)), 1)
    top = torch.topk(loss_N, n_worst).indices
    Xw_ND = X_ND[top]
    Rw_ND = Xw_ND - sae(Xw_ND)  # the residual: what the dictionary misses on each worst input
    C = max(1, min(clusters, n_worst))
    km = MiniBatchKMeans(n_clusters=C, random_state=seed % 2**31, n_init=1, batch_size=min(1024, n_worst))
    labels = km.fit_predict(Xw_ND.cpu().numpy())
    lw = loss_N[top].cpu().numpy()
    mean_loss = np.array([lw[labels == c].mean() if (labels == c).any() else -np.inf for c in range(C)])
    ranked = [c for c in np.argsort(-mean_loss) if np.isfinite(mean_loss[c])][: min(k, C)]
    rs = np.random.default_rng(seed % 2**63)
    pools = {c: list(rs.permutation(np.flatnonzero(labels == c))) for c in ranked}
    rows = []
    for j in range(k):
        c = ranked[j % len(ranked)]
        i = pools[c].pop() if pools[c] else int(rs.choice(np.flatnonzero(labels == c)))
        if direction == "residual":
            rows.append(Rw_ND[i])
        else:
            rows.append(Xw_ND[i] - torch.from_numpy(km.cluster_centers_[c]).to(Xw_ND))
    return torch.stack(rows)


@torch.no_grad()
def reinitialize(tr: "Trainer", idx_K: torch.Tensor, dirs_KD: torch.Tensor) -> None:
    """New decoder rows and encoder columns for features idx_K; their Adam moments zeroed."""
    sae = tr.sae
    dirs_KD = dirs_KD / dirs_KD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    alive_F = torch.ones(sae.d_sae, dtype=torch.bool, device=idx_K.device)
    alive_F[idx_K] = False
    enc_norms_F = sae.W_enc.norm(dim=0)
    scale = enc_norms_F[alive_F].mean() if alive_F.any() else torch.tensor(1.0, device=enc_norms_F.device)
    sae.W_dec[idx_K] = dirs_KD.to(sae.W_dec.dtype)
    sae.W_enc[:, idx_K] = (dirs_KD.T * ENCODER_SCALE * scale).to(sae.W_enc.dtype)
    sae.b_enc[idx_K] = 0.0
    for p, sl in ((sae.W_enc, (slice(None), idx_K)), (sae.b_enc, (idx_K,)), (sae.W_dec, (idx_K,))):
        st = tr.opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                st[key][sl] = 0.0
    tr.tokens_since_fired_F[idx_K] = 0
