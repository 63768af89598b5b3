"""Feature absorption (Chanin et al. 2024), as SAEBench's `FeatureAbsorptionCalculator` computes its
absorption fraction, on a parent concept of the code hierarchy instead of a first letter.

For a parent task (a keyword, inside a string, an identifier), on labelled tokens:

1. a logistic-regression probe on the model's activations (training half) gives the parent's
   direction p (unit);
2. its **main latents** come from k-sparse probing on the dictionary's latents, k = 1 … `K_MAX`
   (latents ranked by how much more they fire on the parent's tokens, a logistic regression on
   the top k): k grows while each step raises the test F1 by more than `F1_JUMP` (SAEBench's
   feature-splitting rule; k = 1 always counts). SAEBench's absorption eval ranks latents by an
   L1-regularized probe instead; ours is its sparse-probing eval's ranking, signed;
3. on the test half's parent positives where the model's probe fires (score > 0), each token's
   absorption fraction: with a = x·p and each latent's projection f_i·cos(d_i, p), let m be the
   main latents' summed projection and A the top `MAX_ABSORBERS` projections of other latents with
   cos ≥ `ABSORBER_COS` and a positive projection. Fraction 0 if m ≥ a or A < `PROPORTION`·a,
   1 if m ≤ 0, else min(A, a − m) / (min(A, a − m) + m). Full absorption: the main latents are
   silent, the top-projecting latent has cos ≥ `FULL_COS` and carries ≥ `PROPORTION` of a.

The thresholds are SAEBench's. `HIERARCHY` names the children whose tokens the fraction is also
broken down by (a latent for `def` swallowing "keyword" is what absorption means here).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from saeforge.dictionary.sae import SAE
from saeforge.evaluation.probing import document_resamples, fit_probe, interval

K_MAX = 10
F1_JUMP = 0.03
ABSORBER_COS = 0.1
FULL_COS = 0.025
PROPORTION = 0.4
MAX_ABSORBERS = 3
HIERARCHY = {
    "tok.keyword": ("kw.def", "kw.class", "kw.return", "kw.if", "kw.else", "kw.for", "kw.in", "kw.not", "kw.import",
                    "kw.from", "kw.None", "kw.True", "kw.False", "kw.is", "kw.and", "kw.or"),
    "tok.string": ("str.docstring", "str.fstring", "str.bytes", "str.raw", "str.triple"),
    "tok.name": ("name.builtin", "name.self", "name.upper", "name.camel", "name.snake", "name.dunder",
                 "name.private"),
    "tok.op": ("depth.1", "depth.2", "depth.3+"),
}


def _f1(pred: np.ndarray, y: np.ndarray) -> float:
    tp = float((pred & y).sum())
    return 2 * tp / max(float(pred.sum() + y.sum()), 1.0)


def main_latents(f_NF: torch.Tensor, y_N: np.ndarray, train: np.ndarray, test: np.ndarray) -> list[int]:
    """The parent's main latents by SAEBench's feature-splitting rule (module docstring, step 2)."""
    y_tr = y_N[train]
    diff_F = f_NF[train][y_tr].mean(0) - f_NF[train][~y_tr].mean(0)  # signed: latents that fire for the parent
    order = torch.argsort(diff_F, descending=True)[:min(K_MAX, f_NF.shape[1])].tolist()
    best, main = -1.0, order[:1]
    for k in range(1, len(order) + 1):
        x = f_NF[:, order[:k]].numpy()
        f1 = _f1(fit_probe(x[train], y_tr.astype(np.int64), x[test]) == 1, y_N[test])
        if f1 <= best + F1_JUMP:
            break
        best, main = f1, order[:k]
    return main


def fractions(acts_ND: torch.Tensor, f_NF: torch.Tensor, W_dec_FD: torch.Tensor, probe_D: torch.Tensor,
              main: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per token: the absorption fraction and whether it is full absorption (module docstring, step 3)."""
    p = probe_D / probe_D.norm()
    cos_F = torch.nn.functional.cosine_similarity(W_dec_FD.float(), p[None, :], dim=-1)
    a_N = acts_ND.float() @ p
    proj_NF = f_NF * cos_F
    m_N = proj_NF[:, main].sum(1)
    others = torch.ones(len(cos_F), dtype=torch.bool)
    others[main] = False
    cand_NF = torch.where(others & (cos_F >= ABSORBER_COS) & (proj_NF > 0), proj_NF, torch.zeros(()))
    absorbers_N = cand_NF.topk(min(MAX_ABSORBERS, cand_NF.shape[1]), dim=1).values.sum(1)
    covered = torch.minimum(absorbers_N, a_N - m_N)
    frac = torch.where(m_N <= 0, torch.ones(()), covered / (covered + m_N).clamp_min(1e-12))
    none = (m_N >= a_N) | (absorbers_N < PROPORTION * a_N)
    frac = torch.where(none, torch.zeros(()), frac).clamp(0, 1)
    top_proj, top_idx = proj_NF.topk(1, dim=1)
    full = ((f_NF[:, main] < 1e-8).all(1) & (cos_F[top_idx[:, 0]] >= FULL_COS) & (a_N >= 0)
            & (top_proj[:, 0] >= PROPORTION * a_N))
    return frac.numpy(), full.numpy()


def absorption(sae: SAE, f_NF: torch.Tensor, data, split, seed: int = 0,
               hierarchy: dict[str, tuple[str, ...]] | None = None) -> dict[str, Any]:
    """Absorption of every parent of `hierarchy` (default `HIERARCHY`) the labelled data kept
    (interp.Labelled, with its probe split), with the fraction broken down by child, and a 95%
    interval over documents for the mean over parents."""
    from sklearn.linear_model import LogisticRegression

    out: dict[str, Any] = {}
    per_doc: list[tuple[np.ndarray, np.ndarray]] = []
    for parent, children in (HIERARCHY if hierarchy is None else hierarchy).items():
        if parent not in data.tasks:
            continue
        j = data.tasks.index(parent)
        y_N = data.labels_NT[:, j]
        train, test = split.train[j], split.test[j]
        lr = LogisticRegression(C=1.0, max_iter=1000).fit(data.acts_ND[train].numpy(), y_N[train].astype(np.int64))
        probe_D = torch.from_numpy(lr.coef_[0]).float()
        main = main_latents(f_NF, y_N, train, test)
        halves = ~data.train_N & y_N
        scores = lr.decision_function(data.acts_ND.numpy())
        idx = np.flatnonzero(halves & (scores > 0))  # the test half's parent positives the probe finds
        if not len(idx):
            continue
        frac, full = fractions(data.acts_ND[idx], f_NF[idx], sae.W_dec.detach().float().cpu(), probe_D, main)
        by_child = {}
        for child in children:
            if child in data.tasks:
                m = data.labels_NT[idx, data.tasks.index(child)]
                if m.sum() >= 10:
                    by_child[child] = float(frac[m].mean())
        out[parent] = {"absorption_fraction": float(frac.mean()), "full_absorption_rate": float(full.mean()),
                       "main_latents": main, "tokens": int(len(idx)), "by_child": by_child}
        per_doc.append((data.doc_N[idx], frac))
    if not out:
        return {"parents": {}, "mean_absorption_fraction": None, "interval": None}
    samples = []
    for w in document_resamples(int(data.doc_N.max()) + 1, seed):
        samples.append(np.mean([np.average(f, weights=w[d]) if w[d].sum() else f.mean() for d, f in per_doc]))
    mean = float(np.mean([v["absorption_fraction"] for v in out.values()]))
    return {"parents": out, "mean_absorption_fraction": mean,
            "interval": interval(samples)}
