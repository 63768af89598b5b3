"""`saeforge toy`: train on fresh toy batches (known features) until MMCS >= --target-mmcs or --steps.

MMCS is computed on the device after every step into a trace (no host sync); the trace is
read every `check_every` steps to decide whether to stop, so steps_to_mmcs is exact to the
step while the run may go on up to check_every − 1 steps past the target. Every rank
generates the step's global batch and trains on its slice of rows, so a run ends where a
single process ends, for any number of ranks; a resumed run ends with the same weights.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from saeforge.config import ToyConfig
from saeforge.evaluation.metrics import max_cosines, mmcs
from saeforge.pipeline import common
from saeforge.sources.synthetic import SyntheticData, recovery
from saeforge.sources.toy import ToyData

THRESHOLDS = ("0.95", "0.98", "0.99")


def run_toy(cfg: ToyConfig) -> dict[str, Any]:
    run = common.start(cfg)
    steps, device = run.steps, run.device
    data = make_data(cfg, device)
    run.cfg = cfg = replace(cfg, d_model=data.d_model, n_features=data.n_features)
    common.check_same_run(run, {k: getattr(cfg, k) for k in ("d_model", "n_features", "n_active", "decay",
                                                             "correlated", "seed", "architecture", "data",
                                                             "synthetic_model")})
    common.resolve(run, cfg.d_model)
    cfg = run.cfg
    # fresh draws from the same distribution, never trained on: steps −1, −2, … for the init;
    # −(10⁶ + 1000·step), … for resampling at `step`
    sae = common.build_sae(run, cfg.d_model, lambda n: data.fresh(n, 1))
    sae.metadata.update(source="toy", d_model=cfg.d_model, n_features=cfg.n_features, seed=cfg.seed,
                        data=cfg.synthetic_model or cfg.data)
    trainer = common.make_trainer(run, sae, lambda n, step, part: data.fresh(n, 10**6 + step * 1000 + part * 10**9))

    def mmcs_of(W_dec: torch.Tensor) -> torch.Tensor:  # a feature shard holds some of the atoms
        return mmcs(data.features_FD, W_dec) if sae.shards is None else sae.shards.max(
            max_cosines(data.features_FD, W_dec)).mean()

    trace = torch.full((steps + 1,), float("nan"), device=device)
    trace[0] = mmcs_of(sae.W_dec)
    saved = trainer.state.mmcs_trace
    trace[: len(saved)] = torch.tensor(saved, device=device)
    reached: dict[str, int | None] = {t: None for t in THRESHOLDS}

    def scan() -> float:
        done = trace[: trainer.step + 1].cpu()
        for t in THRESHOLDS:
            if reached[t] is None:
                hit = (done >= float(t)).nonzero()
                reached[t] = int(hit[0, 0]) if hit.numel() else None
        return float(done[trainer.step])

    def on_step(tr, _out) -> bool:
        trace[tr.step] = mmcs_of(tr.sae.W_dec)
        if cfg.checkpoint_every and tr.step % cfg.checkpoint_every == 0:
            tr.state.mmcs_trace = trace[: tr.step + 1].tolist()
        if tr.step % cfg.log_every == 0 or tr.step % cfg.check_every == 0:
            current = scan()
            tr.log_extra["mmcs"] = current
            return cfg.target_mmcs > 0 and current >= cfg.target_mmcs
        return False

    local = run.local_batch
    batches = (x[run.rank * local:(run.rank + 1) * local] for x in data.batches(cfg.batch_size, start=trainer.step))
    trainer.fit(batches, steps, callback=on_step)
    final = scan()
    trainer.state.mmcs_trace = trace[: trainer.step + 1].tolist()
    last = trainer.last_log
    summary = {
        "d_model": cfg.d_model, "n_features": cfg.n_features, **common.finish(run, trainer),
        "beta2": cfg.beta2, "lr_decay_steps": cfg.lr_decay_steps,
        "n_active": cfg.n_active, "decay": cfg.decay, "correlated": cfg.correlated,
        "mmcs_initial": float(trace[0]), "mmcs_final": final, "steps_to_mmcs": reached,
        "dead_features": trainer.dead_count(), "l0": last.get("l0"), "explained_variance": last.get("explained_variance"),
        "data": cfg.synthetic_model or cfg.data,
    }
    if cfg.eval_samples and run.rank == 0:  # the benchmark's metrics on fresh samples (docs/benchmark.md)
        summary["ground_truth"] = recovery(trainer.sae, data, cfg.eval_samples)
        if isinstance(data, SyntheticData):
            summary["synthetic"] = data.describe()
    return common.write_summary(run, trainer, summary)


def make_data(cfg: ToyConfig, device: torch.device) -> ToyData | SyntheticData:
    if cfg.synthetic_model:
        return SyntheticData.read_saelens(cfg.synthetic_model, seed=cfg.seed, device=device)
    if cfg.data == "synthetic":
        return SyntheticData.generate(
            cfg.d_model, cfg.n_features, seed=cfg.seed, zipf_exponent=cfg.zipf_exponent, max_prob=cfg.max_prob,
            min_prob=cfg.min_prob, roots=cfg.hierarchy_roots, branching=cfg.hierarchy_branching,
            depth=cfg.hierarchy_depth, exclusive=cfg.exclusive_share, correlation_rank=cfg.correlation_rank,
            correlation_scale=cfg.correlation_scale, magnitude_std=cfg.magnitude_std, bias=cfg.bias_norm, device=device)
    return ToyData(cfg.d_model, cfg.n_features, n_active=cfg.n_active, decay=cfg.decay,
                   correlated=cfg.correlated, seed=cfg.seed, device=device)
