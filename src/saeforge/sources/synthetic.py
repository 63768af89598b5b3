"""Synthetic features with a hierarchy, Zipf firing and correlation: SAELens's synthetic models.

The field's ground-truth benchmark (SAELens `sae_lens.synthetic`, SynthSAEBench). Choice by
choice, as SAELens makes it (docs/benchmark.md defines the metrics):

1. Features: `n_features` unit vectors in `d_model` dims (Gaussian, normalized); a sample is
   x = a @ F + b, with b a fixed random vector of norm `bias` (0: none).
2. Base firing probabilities, Zipf: r_i = 1/(i+1)^exponent rescaled linearly onto
   [min_prob, max_prob], so feature 0 is the most frequent.
3. Hierarchy: a forest built breadth first, features numbered in that order (roots first, so
   the roots are the most frequent features): `roots` trees, each parent has `branching`
   children, down to `depth` levels. A child fires only where its parent fires (applied
   level by level, so a grandchild needs both). A share `exclusive` of the parents have
   mutually exclusive children: where several fire, one chosen uniformly at random keeps
   firing. `compensate` multiplies each child's probability by 1/p(parent) and, in an
   exclusive group, by 1 + Σ p(siblings)/p(parent), so that effective rates come close to
   the base rates (SAELens's correction, clamped at 1).
4. Firing: independent Bernoulli(p_i), or with `correlation_rank` > 0 a low-rank Gaussian
   copula: z = ε @ Lᵀ + η·√diag (L ~ N(0, scale²), diag = 1 − ‖L_i‖²), feature i fires iff
   z_i > Φ⁻¹(1 − p_i).
5. Magnitudes: a firing feature's coefficient is ReLU(mean_i + std_i·N(0, 1)).

`read_saelens(dir)` reads a directory that SAELens's `SyntheticModel.save` wrote
(synthetic_model_config.json, synthetic_model.safetensors, hierarchy.json) as it is: its
features, bias, stored probabilities (already compensated), correlation factor, hierarchy and
magnitude configs; sampling then follows the rules above with saeforge's generator (SAELens
draws from the global RNG, so samples are equal in distribution, not draw for draw).
Batches are a pure function of (seed, step), as in toy.py (StepData). On a CPU they come from
sampler.py (only the firing entries are drawn, the same at any thread count); elsewhere from the
dense draws of `batch` (a number per feature and sample: other samples, the same distribution).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from saeforge.dictionary import kernels
from saeforge.dictionary.sparse import crow_of, csr
from saeforge.errors import UserError
from saeforge.evaluation import metrics
from saeforge.runtime import read_json, read_tensors
from saeforge.sources.sampler import Sampler, stream_key
from saeforge.sources.toy import StepData

CONFIG_FILE, WEIGHTS_FILE, HIERARCHY_FILE = "synthetic_model_config.json", "synthetic_model.safetensors", "hierarchy.json"


class Hierarchy:
    """A forest of features as flat tensors: parent of each feature (−1: none), its depth, and
    the mutually exclusive sibling groups, padded (−1) into one matrix per depth."""

    def __init__(self, n_features: int, nodes: list[dict[str, Any]]):
        self.parent_F = torch.full((n_features,), -1, dtype=torch.long)
        self.rescale_F = torch.zeros(n_features, dtype=torch.bool)  # child scaled by parent / parent's mean
        depth_of: dict[int, int] = {}
        groups: dict[int, list[tuple[int, list[int]]]] = {}

        def walk(node: dict[str, Any], parent: int, depth: int) -> None:
            me = node.get("feature_index") if isinstance(node, dict) else "?"
            kids = node.get("children") if isinstance(node, dict) else None
            if (me is not None and (not isinstance(me, int) or isinstance(me, bool))) or not isinstance(kids or [], list) \
                    or not all(isinstance(k, dict) for k in kids or []):
                raise UserError(f"hierarchy: a node needs an integer feature_index (or null) and a list of child nodes, "
                                f"got {node!r:.80}")
            if me is not None:
                if not 0 <= me < n_features or me in depth_of:
                    raise UserError(f"hierarchy: feature {me} is out of range or has two parents")
                depth_of[me] = depth
                self.parent_F[me] = parent
                self.rescale_F[me] = parent >= 0 and bool(node.get("_parent_rescales"))
            kids = node.get("children") or []
            here = me if me is not None else parent  # an organizational node passes its parent on
            for k in kids:
                walk({**k, "_parent_rescales": node.get("scale_children_by_parent", False)}, here, depth + 1)
            sibs = [k["feature_index"] for k in kids if k.get("feature_index") is not None]
            if node.get("mutually_exclusive_children") and len(sibs) >= 2:
                groups.setdefault(depth + 1, []).append((here, sibs))

        for root in nodes:
            walk(root, -1, 0)
        self.depth_F = torch.zeros(n_features, dtype=torch.long)
        for f, d in depth_of.items():
            self.depth_F[f] = d
        self.max_depth = max(depth_of.values(), default=0)
        self.groups = {d: (torch.tensor([p for p, _ in g]),
                           torch.tensor([s + [-1] * (max(map(len, (x for _, x in g))) - len(s)) for _, s in g]))
                       for d, g in groups.items()}
        self.levels = [(self.depth_F == d).logical_and(self.parent_F >= 0).nonzero()[:, 0]
                       for d in range(self.max_depth + 1)]
        self.nodes = nodes

    def to(self, device: torch.device) -> Hierarchy:
        """The index tensors apply_ uses, moved once (not per batch)."""
        self.parent_F, self.rescale_F = self.parent_F.to(device), self.rescale_F.to(device)
        self.levels = [t.to(device) for t in self.levels]
        self.groups = {d: (p.to(device), s.to(device)) for d, (p, s) in self.groups.items()}
        return self

    def children_of(self) -> list[tuple[int, int]]:
        """(parent, child) pairs of features."""
        kids = (self.parent_F >= 0).nonzero()[:, 0]
        return list(zip(self.parent_F[kids].tolist(), kids.tolist()))

    def compensation(self, p_F: torch.Tensor) -> torch.Tensor:
        """SAELens's correction factors (hierarchy.compute_probability_correction_factors)."""
        c_F = torch.ones_like(p_F)
        has = self.parent_F >= 0
        c_F[has] = 1 / p_F[self.parent_F[has]]
        for parents, sibs in self.groups.values():
            for parent, row in zip(parents.tolist(), sibs.tolist()):
                row = [s for s in row if s >= 0]
                node_p = float(p_F[parent]) if parent >= 0 else 1.0
                total = float(p_F[row].sum())
                for s in row:
                    c_F[s] *= 1 + max(0.0, total - float(p_F[s])) / node_p
        return c_F

    def apply_(self, a_FB: torch.Tensor, mean_F: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Children off where their parent is off (or scaled by it), then one winner per exclusive
        group. Feature-major [F, B], so every gather and scatter moves whole rows."""
        dev = a_FB.device
        for d in range(1, self.max_depth + 1):
            kids = self.levels[d]
            if kids.numel():
                par = self.parent_F[kids]
                pv_KB = a_FB[par]
                gate_KB = (pv_KB > 0).to(a_FB.dtype)
                scale = self.rescale_F[kids]
                if scale.any():
                    gate_KB = torch.where(scale[:, None], pv_KB / mean_F[par, None], gate_KB)
                a_FB[kids] *= gate_KB
            if d in self.groups:
                parents, sibs = self.groups[d]
                valid = sibs >= 0
                vals_GSB = a_FB[sibs.clamp(min=0)]
                on = (vals_GSB > 0) & valid[..., None]
                on &= ((parents < 0)[:, None] | (a_FB[parents.clamp(min=0)] > 0))[:, None]
                score = torch.where(on, torch.rand(on.shape, generator=g, device=dev, dtype=a_FB.dtype), -1.0)
                best_GB = score.amax(1)  # the winner: the active sibling with the highest uniform score
                keep = ~on | (score == best_GB[:, None])
                a_FB[sibs[valid]] = (vals_GSB * keep)[valid]
        return a_FB


def zipf(n: int, exponent: float, max_prob: float, min_prob: float) -> torch.Tensor:
    r = 1 / torch.arange(1, n + 1, dtype=torch.float32) ** exponent
    return torch.tensor([max_prob]) if n == 1 else min_prob + (max_prob - min_prob) * (r - r.min()) / (r.max() - r.min())


def forest(n_features: int, roots: int, branching: int, depth: int, exclusive: float,
           g: torch.Generator) -> list[dict[str, Any]]:
    """Breadth-first trees over features 0, 1, …: roots first, then their children, level by level."""
    nxt = iter(range(n_features))
    top = [{"feature_index": i, "children": []} for _, i in zip(range(roots), nxt)]
    level, parents = top, list(top)
    for _ in range(depth):
        below = []
        for node in level:
            node["children"] = [{"feature_index": i, "children": []} for _, i in zip(range(branching), nxt)]
            below += node["children"]
        level = below
        parents += [n for n in below]
    eligible = [n for n in parents if len(n["children"]) >= 2]
    pick = torch.randperm(len(eligible), generator=g)[: int(len(eligible) * exclusive)]
    for i in pick.tolist():
        eligible[i]["mutually_exclusive_children"] = True
    return top


def magnitudes(spec: Any, n: int, seed: int | None, where: str) -> torch.Tensor:
    """A float, or one of SAELens's MagnitudeConfig dicts (constant, linear, exponential, folded_normal)."""
    if isinstance(spec, (int, float)):
        return torch.full((n,), float(spec))
    if not isinstance(spec, dict):
        raise UserError(f"{where}: a magnitude must be a number or a config object, got {spec!r}")
    kind = spec.get("generator_name")
    try:
        if kind == "constant":
            return torch.full((n,), float(spec.get("value", 1.0)))
        if kind in ("linear", "exponential"):
            a, b = float(spec["start"]), float(spec["end"])
            if n == 1:
                return torch.tensor([a])
            return torch.linspace(a, b, n) if kind == "linear" else a * (b / a) ** torch.linspace(0, 1, n)
        if kind == "folded_normal":
            gen = torch.Generator().manual_seed(seed) if seed is not None else None
            v = (float(spec.get("mean", 1.0)) + torch.randn(n, generator=gen) * float(spec.get("std", 0.0))).abs()
            lo, hi = spec.get("min_value"), spec.get("max_value")
            return v.clamp(min=lo, max=hi) if lo is not None or hi is not None else v
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{where}: magnitude config {spec!r} is malformed ({e})") from None
    raise UserError(f"{where}: magnitude generator {kind!r} is not one saeforge reads "
                    "(constant, linear, exponential, folded_normal)")


class SyntheticData(StepData):
    """Samples x = a @ F + b from a synthetic model; `batch(step, B)` returns (x_BD, a_BF)."""

    def __init__(self, features_FD: torch.Tensor, bias_D: torch.Tensor, probs_F: torch.Tensor,
                 mean_F: torch.Tensor, std_F: torch.Tensor, hierarchy: Hierarchy | None = None,
                 corr_factor_FR: torch.Tensor | None = None, corr_diag_F: torch.Tensor | None = None,
                 *, seed: int = 0, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 sparse: bool | None = None):
        self.device, self.dtype, self.seed = torch.device(device), dtype, seed
        put = lambda t: None if t is None else t.to(self.device, dtype)  # noqa: E731
        self.features_FD, self.bias_D, self.probs_F = put(features_FD), put(bias_D), put(probs_F)
        self.mean_F, self.std_F = put(mean_F), put(std_F)
        self.n_features, self.d_model = features_FD.shape
        self.hierarchy = None if hierarchy is None else hierarchy.to(self.device)
        self.corr_factor_FR, self.corr_sqrt_diag_F = put(corr_factor_FR), None
        if corr_factor_FR is not None:
            self.corr_sqrt_diag_F = put(corr_diag_F).sqrt()
            self.corr_threshold_F = math.sqrt(2) * torch.erfinv(1 - 2 * self.probs_F)
        # the sparse sampler (sampler.py) on a CPU; the dense draws below where numba cannot run
        if sparse is None:
            sparse = self.device.type == "cpu" and kernels.numba is not None
        self.sampler = None if not sparse else Sampler(
            probs_F.cpu(), mean_F.cpu(), std_F.cpu(), hierarchy, None if corr_factor_FR is None else corr_factor_FR.cpu(),
            None if corr_diag_F is None else corr_diag_F.cpu())

    @classmethod
    def generate(cls, d_model: int, n_features: int, *, seed: int = 0, zipf_exponent: float = 1.0,
                 max_prob: float = 0.3, min_prob: float = 0.01, roots: int = 0, branching: int = 4, depth: int = 1,
                 exclusive: float = 0.0, compensate: bool = True, correlation_rank: int = 0,
                 correlation_scale: float = 0.075, magnitude_mean: float = 1.0, magnitude_std: float = 0.0,
                 bias: float = 0.0, device: torch.device | str = "cpu") -> SyntheticData:
        g = torch.Generator().manual_seed((seed + 1) * 2_654_435_761 % 2**32)  # not the stream --seed gives the init
        f_FD = torch.randn(n_features, d_model, generator=g)
        f_FD /= f_FD.norm(dim=1, keepdim=True)
        b_D = torch.randn(d_model, generator=g)
        b_D *= bias / b_D.norm()
        p_F = zipf(n_features, zipf_exponent, max_prob, min_prob)
        h = Hierarchy(n_features, forest(n_features, roots, branching, depth, exclusive, g)) if roots else None
        if h is not None and compensate:
            p_F = (p_F * h.compensation(p_F)).clamp(max=1.0)
        L = d = None
        if correlation_rank:
            L = torch.randn(n_features, correlation_rank, generator=g) * correlation_scale
            sq = (L ** 2).sum(1, keepdim=True)
            L = torch.where(sq > 0.99, L * (0.99 / sq).sqrt(), L)
            d = 1 - (L ** 2).sum(1)
        mean_F, std_F = torch.full((n_features,), magnitude_mean), torch.full((n_features,), magnitude_std)
        return cls(f_FD, b_D, p_F, mean_F, std_F, h, L, d, seed=seed, device=device)

    @classmethod
    def read_saelens(cls, path: str | Path, *, seed: int = 0, device: torch.device | str = "cpu") -> SyntheticData:
        path = Path(path)
        where = f"--synthetic-model {path}"
        if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise UserError(f"{where}: not a SAELens synthetic model (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
        cfg = read_json(path / CONFIG_FILE, where)
        w = read_tensors(path / WEIGHTS_FILE, where)
        try:
            n, d = int(cfg["num_features"]), int(cfg["hidden_dim"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{where}: {CONFIG_FILE} needs integer num_features and hidden_dim") from None
        shapes = {"feature_vectors": (n, d), "bias": (d,), "firing_probabilities": (n,)}
        for name, shape in shapes.items():
            if name not in w or tuple(w[name].shape) != shape:
                raise UserError(f"{where}: {WEIGHTS_FILE} needs {name} of shape {shape}, "
                                f"got {tuple(w[name].shape) if name in w else 'none'}")
        p = w["firing_probabilities"].float()
        if not ((p >= 0) & (p <= 1)).all():
            raise UserError(f"{where}: firing_probabilities must lie in [0, 1]")
        L = w.get("correlation_factor")
        if L is not None and (L.shape[0] != n or w.get("correlation_diag") is None):
            raise UserError(f"{where}: correlation_factor must be [num_features, rank] with correlation_diag")
        h = None
        if (path / HIERARCHY_FILE).is_file():
            raw = read_json(path / HIERARCHY_FILE, where)
            if not isinstance(raw, dict) or not isinstance(raw.get("roots"), list):
                raise UserError(f"{where}: {HIERARCHY_FILE} needs a list 'roots'")
            h = Hierarchy(n, raw["roots"])
        base = cfg.get("seed")
        mean_F = magnitudes(cfg.get("mean_firing_magnitudes", 1.0), n, None if base is None else base + 2, where)
        std_F = magnitudes(cfg.get("std_firing_magnitudes", 0.0), n, None if base is None else base + 1, where)
        return cls(w["feature_vectors"].float(), w["bias"].float(), p, mean_F, std_F, h,
                   None if L is None else L.float(), None if L is None else w["correlation_diag"].float(),
                   seed=seed, device=device)

    def _sparse(self, step: int, B: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_BD, codes as CSR) from the sparse sampler: x = a @ F + bias over the firing entries."""
        crow, cols, vals = (torch.from_numpy(t) for t in self.sampler.sample(stream_key(self.seed, step), B))
        codes = csr(crow, cols, vals.to(self.dtype), (B, self.n_features))
        x_BD = torch.addmm(self.bias_D.cpu().expand(B, -1), codes, self.features_FD.cpu())
        return x_BD.to(self.device), codes

    def inputs(self, step: int, batch_size: int) -> torch.Tensor:
        if self.sampler is None:
            return self.batch(step, batch_size)[0]
        return self._sparse(step, batch_size)[0]

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_BD, a_BF) for training step `step`."""
        if self.sampler is not None:
            x_BD, codes = self._sparse(step, batch_size)
            return x_BD, codes.to_dense().to(self.device)
        # the dense draws (a GPU): feature-major, a_BF is a transposed view
        g = self._generator(step)
        kw = dict(generator=g, device=self.device, dtype=self.dtype)
        F, B = self.n_features, batch_size
        if self.corr_factor_FR is None:
            fire_FB = torch.rand(F, B, **kw) < self.probs_F[:, None]
        else:
            z_FB = self.corr_factor_FR @ torch.randn(self.corr_factor_FR.shape[1], B, **kw)
            z_FB += torch.randn(F, B, **kw) * self.corr_sqrt_diag_F[:, None]
            fire_FB = z_FB > self.corr_threshold_F[:, None]
        f, b = kernels.nonzero(fire_FB)  # magnitudes drawn only where a feature fires
        a_FB = torch.zeros(F, B, device=self.device, dtype=self.dtype)
        a_FB[f, b] = (self.mean_F[f] + self.std_F[f] * torch.randn(len(f), **kw)).relu_()
        if self.hierarchy is not None:
            self.hierarchy.apply_(a_FB, self.mean_F, g)
        # x = a @ F + bias as a sparse product over the firing entries (~L0 per sample, not all F)
        a_BF = a_FB.T
        b, f = kernels.nonzero((a_FB != 0).T.contiguous())  # sample-major: CSR order
        codes = csr(crow_of(torch.bincount(b, minlength=B)), f, a_BF[b, f], (B, F))
        return torch.addmm(self.bias_D.expand(B, -1), codes, self.features_FD), a_BF

    def describe(self) -> dict[str, Any]:
        h = self.hierarchy
        return {"n_features": self.n_features, "d_model": self.d_model, "expected_l0_before_hierarchy":
                float(self.probs_F.sum()), "hierarchy_depth": 0 if h is None else h.max_depth,
                "hierarchy_children": 0 if h is None else len(h.children_of()),
                "exclusive_groups": 0 if h is None else sum(len(p) for p, _ in h.groups.values()),
                "correlated": self.corr_factor_FR is not None, "bias_norm": float(self.bias_D.norm())}


ABSORPTION_COS = 0.3  # a child's latent "carries" its parent when its decoder row has cosine ≥ this with the parent
MIXTURE_COS = 0.3  # a decoder row is a mixture when it has |cosine| ≥ this with two or more true features


@torch.no_grad()
def recovery(sae: Any, data: SyntheticData, n_samples: int = 100_000, batch_size: int = 10_000,
             first: int = 2 * 10**9) -> dict[str, Any]:
    """The benchmark's metrics of a dictionary on fresh samples (steps −first, …); docs/benchmark.md
    defines each. MCC, uniqueness, precision / recall / F1, shrinkage, L0 and dead latents as
    SAELens's eval_sae_on_synthetic_data computes them; absorption on the hierarchy; mixture latents
    (decoder rows with |cos| ≥ MIXTURE_COS to two or more true features) beside the same count for
    the true features themselves (`mixture_chance`: how many would count as mixtures if the
    dictionary were the features exactly, since the features overlap)."""
    W_GD, F_FD = sae.W_dec.detach().float(), data.features_FD.float()
    Fn_FD = torch.nn.functional.normalize(F_FD, dim=1)
    cos_GF = torch.nn.functional.normalize(W_GD, dim=1) @ Fn_FD.T
    best_G = cos_GF.abs().argmax(1)
    score, latent_of_F = metrics.mcc(cos_GF)
    mixtures = int(((cos_GF.abs() >= MIXTURE_COS).sum(1) >= 2).sum())
    chance = int(((Fn_FD @ Fn_FD.T).abs() >= MIXTURE_COS).sum(1).ge(2).sum())
    G = W_GD.shape[0]
    tp, fp, fn = (torch.zeros(G, dtype=torch.float64, device=W_GD.device) for _ in range(3))
    fired_G = torch.zeros(G, dtype=torch.bool, device=W_GD.device)
    h = getattr(data, "hierarchy", None)  # the seed's ToyData has none
    pairs = h.children_of() if h is not None else []
    pairs = [(p, c) for p, c in pairs if latent_of_F[p] >= 0 and latent_of_F[c] >= 0]
    par = torch.tensor([p for p, _ in pairs], dtype=torch.long, device=W_GD.device)
    kid = torch.tensor([c for _, c in pairs], dtype=torch.long, device=W_GD.device)
    lat_of_F = latent_of_F.to(W_GD.device)
    carries_P = cos_GF[lat_of_F[kid], par] >= ABSORPTION_COS if pairs else None
    both = absorbed = parent_seen = 0
    n = true_l0 = sae_l0 = shrink = sq_res = sq_norm = 0.0
    sum_x = torch.zeros(data.d_model, dtype=torch.float64, device=W_GD.device)
    for j in range(-(-n_samples // batch_size)):
        x_BD, a_BF = data.batch(-(first + j), min(batch_size, n_samples - j * batch_size))[:2]
        f_BG = sae.encode(x_BD)
        xh_BD = sae.decode(f_BG)
        on_BG, true_BF = f_BG != 0, a_BF > 0
        gt_BG = true_BF[:, best_G]
        tp += (on_BG & gt_BG).sum(0)
        fp += (on_BG & ~gt_BG).sum(0)
        fn += (~on_BG & gt_BG).sum(0)
        fired_G |= on_BG.any(0)
        n += len(x_BD)
        true_l0 += float(true_BF.sum())
        sae_l0 += float(on_BG.sum())
        norms = x_BD.norm(dim=1)
        ok = norms > 1e-6
        shrink += float((xh_BD.norm(dim=1)[ok] / norms[ok]).sum())
        sq_res += float((x_BD - xh_BD).double().pow(2).sum())
        sq_norm += float(x_BD.double().pow(2).sum())
        sum_x += x_BD.double().sum(0)
        if pairs:
            co_BP = true_BF[:, par] & true_BF[:, kid]
            lp_BP, lc_BP = on_BG[:, lat_of_F[par]], on_BG[:, lat_of_F[kid]]
            both += int(co_BP.sum())
            parent_seen += int((co_BP & lp_BP).sum())
            absorbed += int((co_BP & ~lp_BP & lc_BP & carries_P).sum())
    precision = torch.where(tp + fp > 0, tp / (tp + fp), 0.0)
    recall = torch.where(tp + fn > 0, tp / (tp + fn), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    variance = sq_norm / n - float((sum_x / n).pow(2).sum())
    return {
        "mcc": score, "uniqueness": metrics.uniqueness(cos_GF), "precision": float(precision.mean()),
        "recall": float(recall.mean()), "f1": float(f1.mean()), "l0": sae_l0 / n, "true_l0": true_l0 / n,
        "dead_latents": int((~fired_G).sum()), "shrinkage": shrink / n,
        "explained_variance": 1 - (sq_res / n) / variance if variance > 1e-10 else float(sq_res < 1e-10),
        "absorption": absorbed / both if both else None,
        "parent_recall_with_child": parent_seen / both if both else None, "eval_samples": n,
        "mixture_latents": mixtures, "mixture_chance": chance,
    }
