"""Is the ground truth a resting point of the training objective? Start an SAE at the true features
and train on toy data: where it drifts to is the best MMCS that λ allows, whatever the optimizer.

    python scripts/reproduce/toy_truth_drift.py --n-features 1024 --l1s 0.1 0.3 1.0 --lr 1e-3 --steps 2000

Decoder rows = the true features, encoder columns = the same (a matched filter) with bias
-0.1; no resampling; lr constant, then linear decay over the last half. Prints MMCS and the
mean best cosine of each eighth of the features (commonest first) every steps/10 steps, then a
Markdown table of the final values. docs/toy.md reports its figures.
"""
import argparse
import sys
import time

import torch

from saeforge import SparseAutoencoder
from saeforge.config import ToyConfig
from saeforge.evaluation.metrics import max_cosines
from saeforge.sources.toy import ToyData
from saeforge.training.trainer import Trainer


def drift(d_model: int, n_features: int, l1: float, lr: float, steps: int, seed: int):
    data = ToyData(d_model, n_features, seed=seed)
    sae = SparseAutoencoder(d_model, n_features)
    with torch.no_grad():
        sae.W_dec.copy_(data.features_FD)
        sae.W_enc.copy_(data.features_FD.T)
        sae.b_enc.fill_(-0.1)
        sae.b_dec.zero_()
    cfg = ToyConfig.from_values(dict(l1_coefficient=l1, lr=lr, lr_decay_steps=steps // 2, progress=False,
                                     log_every=10**9, steps=steps, resample="none", d_model=d_model,
                                     n_features=n_features, seed=seed))
    trainer = Trainer(sae, cfg.resolved(steps, d_model))
    eighth = max(1, n_features // 8)
    last = {}

    def report(tr: Trainer, out) -> bool:
        if tr.step % max(1, steps // 10) == 0 or tr.step == steps:
            cos_F = max_cosines(data.features_FD, tr.sae.W_dec.detach())
            tiers = [float(cos_F[i:i + eighth].mean()) for i in range(0, n_features, eighth)]
            l0 = float((out.codes() > 0).float().sum(1).mean())
            last.update(mmcs=float(cos_F.mean()), tiers=tiers, l0=l0)
            print(f"λ {l1:g} step {tr.step:5d}  MMCS {last['mmcs']:.4f}  L0 {l0:5.2f}  by eighth: "
                  + " ".join(f"{t:.3f}" for t in tiers), flush=True)
        return False

    trainer.fit(data.batches(cfg.batch_size), steps, callback=report)
    return last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-features", type=int, default=1024)
    ap.add_argument("--l1s", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rows = []
    for l1 in a.l1s:
        t0 = time.perf_counter()
        r = drift(a.d_model, a.n_features, l1, a.lr, a.steps, a.seed)
        rows.append((l1, r, time.perf_counter() - t0))
    print(f"\n{a.d_model}/{a.n_features}, start at the truth, lr {a.lr:g}, batch {ToyConfig.batch_size}, "
          f"{a.steps} steps (decay over the last half), seed {a.seed}:\n")
    print("| λ | L0 | MMCS | commonest eighth | rarest eighth | wall s |\n|---|---|---|---|---|---|")
    for l1, r, s in rows:
        print(f"| {l1:g} | {r['l0']:.2f} | {r['mmcs']:.4f} | {r['tiers'][0]:.3f} | {r['tiers'][-1]:.3f} | {s:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
