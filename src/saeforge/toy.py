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

from .errors import UserError


class ToyData:
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

    def _generator(self, step: int) -> torch.Generator:
        # Distinct, reproducible stream per (seed, step); offset so step streams never reuse the
        # stream that drew the features.
        g = torch.Generator(device=self.device)
        g.manual_seed((self.seed * 1_000_003 + step + 1) % (2**63))
        return g

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

    def batches(self, batch_size: int, start: int = 0) -> Iterator[torch.Tensor]:
        """Endless stream of inputs x_BD, starting at step `start` (what a resumed run needs)."""
        step = start
        while True:
            yield self.batch(step, batch_size)[0]
            step += 1


# ---------------------------------------------------------------------------- the toy run
THRESHOLDS = ("0.95", "0.98", "0.99")


def fit_defaults(cfg, steps: int):
    """Shrink the toy defaults' lr decay and resampling to a short --steps the user chose.

    The defaults decay the lr over the budget's last 2,500 of 5,000 steps and resample every
    250 steps before that; with, say, --steps 300 the decay takes the last half instead and
    resampling is off when no resampling step fits. Values the user gave are never changed."""
    from dataclasses import replace

    from .resample import resample_steps

    given = getattr(cfg, "given", None)
    if given is None:  # built in code, not by the CLI: take it as it is
        return cfg
    if "lr_decay_steps" not in given and cfg.lr_decay_steps > steps // 2:
        cfg = replace(cfg, lr_decay_steps=steps // 2)
    if cfg.resample != "none" and "resample" not in given and not resample_steps(cfg, steps):
        cfg = replace(cfg, resample="none")
    return cfg


def run_toy(cfg) -> dict:
    """`saeforge toy`: train on fresh toy batches until MMCS >= cfg.target_mmcs or cfg.steps.

    MMCS is computed on the device after every step into a trace (no host sync); the trace
    is read every `check_every` steps to decide whether to stop, so steps_to_mmcs is exact
    to the step while the run may go on up to check_every - 1 steps past the target.
    """
    import time

    from .dictionary import atomic_write_json
    from .init import initialize, sample_size
    from .metrics import mmcs
    from .sae import SparseAutoencoder
    from .train import Trainer, pick_device, prepare_out_dir

    from . import distributed

    t_start = time.perf_counter()
    distributed.setup(cfg.device)
    device = pick_device(cfg.device)
    out = prepare_out_dir(cfg.out, cfg.resume)
    world, rank = distributed.world(), distributed.rank()
    if cfg.batch_size % world:
        raise UserError(f"--batch-size {cfg.batch_size} (the global batch) must divide evenly over {world} ranks")
    steps = cfg.total_steps()
    cfg = fit_defaults(cfg, steps)
    data = ToyData(cfg.d_model, cfg.n_features, n_active=cfg.n_active, decay=cfg.decay,
                   correlated=cfg.correlated, seed=cfg.seed, device=device)
    sae = SparseAutoencoder(cfg.d_model, cfg.dict_size or cfg.n_features, device=device)
    t_init = time.perf_counter()
    sample = None
    n = sample_size(cfg.init, sae.d_sae, cfg.rare_ratio)
    if n:  # fresh draws from the same distribution (steps -1, -2, ... never train)
        sample = torch.cat([data.batch(-(i + 1), 1024)[0] for i in range(-(-n // 1024))])[:n]
    initialize(sae, cfg.init, seed=cfg.seed, sample=sample, rare_ratio=cfg.rare_ratio,
               encoder_scale=cfg.encoder_scale)
    init_s = time.perf_counter() - t_init
    sae.metadata.update(source="toy", d_model=cfg.d_model, n_features=cfg.n_features, seed=cfg.seed)

    def sampler(n: int, step: int) -> torch.Tensor:  # fresh draws, never trained on, fixed per step
        first = 10**6 + step * 1000
        return torch.cat([data.batch(-(first + j), 1024)[0] for j in range(-(-n // 1024))])[:n]

    trainer = Trainer(sae, cfg, out, sampler=sampler)
    trace = torch.full((steps + 1,), float("nan"), device=device)
    trace[0] = mmcs(data.features_FD, sae.W_dec)
    if cfg.resume and trainer.load_checkpoint():
        saved = trainer.extra_state.get("mmcs_trace", [])
        trace[: len(saved)] = torch.tensor(saved, device=device)
    elif (out / "metrics.jsonl").exists() and distributed.is_main():
        (out / "metrics.jsonl").unlink()  # a fresh run starts a fresh log

    reached: dict[str, int | None] = {t: None for t in THRESHOLDS}

    def scan() -> float:
        done = trace[: trainer.step + 1].cpu()
        for t in THRESHOLDS:
            if reached[t] is None:
                hit = (done >= float(t)).nonzero()
                reached[t] = int(hit[0, 0]) if hit.numel() else None
        return float(done[trainer.step])

    def on_step(tr: Trainer, _out) -> bool:
        trace[tr.step] = mmcs(data.features_FD, tr.sae.W_dec)
        if cfg.checkpoint_every and tr.step % cfg.checkpoint_every == 0:
            tr.extra_state["mmcs_trace"] = trace[: tr.step + 1].tolist()
        if tr.step % cfg.log_every == 0 or tr.step % cfg.check_every == 0:
            current = scan()
            tr.extra_state["log"] = {"mmcs": current}
            return cfg.target_mmcs > 0 and current >= cfg.target_mmcs
        return False

    # Every rank generates the step's global batch and trains on its own slice of rows, so a
    # run ends where a single process on the same global batches ends, for any number of ranks.
    local = cfg.batch_size // world
    batches = (x[rank * local:(rank + 1) * local] for x in data.batches(cfg.batch_size, start=trainer.step))
    trainer.fit(batches, steps, callback=on_step)
    final = scan()
    trainer.extra_state["mmcs_trace"] = trace[: trainer.step + 1].tolist()
    trainer.save_checkpoint()
    trainer.save_dictionary()
    last = getattr(trainer, "last_log", {})
    summary = {
        "d_model": cfg.d_model, "n_features": cfg.n_features, "dict_size": sae.d_sae,
        "init": cfg.init, "rare_ratio": cfg.rare_ratio, "encoder_scale": cfg.encoder_scale, "seed": cfg.seed, "l1": cfg.l1, "lr": cfg.lr, "batch_size": cfg.batch_size,
        "beta2": cfg.beta2, "lr_decay_steps": cfg.lr_decay_steps,
        "n_active": cfg.n_active, "decay": cfg.decay, "correlated": cfg.correlated,
        "mmcs_initial": float(trace[0]), "mmcs_final": final, "steps_to_mmcs": reached,
        "steps": trainer.step, "tokens": trainer.tokens,
        "dead_features": trainer.dead_count(), "l0": last.get("l0"),
        "explained_variance": last.get("explained_variance"), **trainer.resample_summary(),
        "init_s": round(init_s, 4), "train_s": round(trainer.train_seconds, 3),
        "wall_s": round(time.perf_counter() - t_start, 3), "device": str(device),
    }
    if distributed.is_main():
        atomic_write_json(out / "summary.json", summary)
    distributed.barrier()
    return summary
