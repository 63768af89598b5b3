"""Dictionary initializers: the baselines, and the first seed's informed (data-based) methods.

Every method writes d_sae unit-norm decoder rows (atoms) and sets the encoder from them:
W_enc = encoder_scale · W_decᵀ (a feature starts by detecting what it writes), b_enc = 0;
b_dec is left to the caller (real activations: the sample mean; toy data: 0, as in the seed).

- orthogonal, xavier: torch's initializers on W_dec, rows rescaled to unit norm (no data).
- data: d_sae distinct random rows of a sample X of the activation stream.
- datapoint (Anthropic's 2025 data-point init, saev's default): d_sae random rows, centred on the
  sample mean, each blended with a random (Kaiming-uniform) direction: p·x̂ + (1 − p)·r̂ with
  p = DATAPOINT_BLEND (0.8, Anthropic's value for SAEs) and both parts unit-norm, so p means the
  same at any activation scale.
- svd: the top min(d_sae, d_in) right singular vectors of X (signed so X projects positively),
  the rest random rows as in `data` (the seed does not say how to get d_sae > d_in atoms).
- average, centroid, outlier: a fraction `rare_ratio` of the atoms from "rare-feature vectors"
  (a row minus the mean; a MiniBatchKMeans cluster member minus its centroid; the strongest
  LocalOutlierFactor outliers), the rest random rows.
- kmeans (saeforge's): spherical k-means centroids of the normalized rows; averaging inputs
  that point the same way cancels the other features mixed into them.
- mod (saeforge's): kmeans, then rounds of the method of optimal directions (Engan et al.
  1999): top-k projection codes, then the least-squares decoder for them.

A transcoder (reading x, writing y) cannot start W_enc = W_decᵀ: its atoms live in the target
space. Its decoder comes from the targets by the same method, and its encoder from the pairs:
- orthogonal, xavier: an encoder of its own, drawn the same way (unit columns);
- data, datapoint: the inputs of the very pairs whose targets became atoms (blended alike);
- the others: each atom's encoder column is the mean input of the sample rows whose target
  projects most on it (weighted by the projection; a spherical k-means assignment): a latent
  starts by detecting the inputs that lead to what it writes.
The informed encoders read inputs minus the sample mean (b_enc = −mean @ W_enc), as an SAE's
encoder reads x − b_dec: a transcoder's input is not centred, and its mean would make every
latent fire at once.

scikit-learn sees at most `max_sample` rows (LOF is quadratic). Deterministic from the seed.
docs/design.md ("Initialization") gives the details, docs/informed-init.md the measurements.
"""

from __future__ import annotations

import numpy as np
import torch

from saeforge.dictionary.sae import SAE
from saeforge.errors import UserError

BASELINES = ("orthogonal", "xavier")
DATA_METHODS = ("data", "datapoint", "svd", "kmeans", "mod")
RARE_METHODS = ("average", "centroid", "outlier")
METHODS = BASELINES + DATA_METHODS + RARE_METHODS
LOF_NEIGHBORS = 250
KMEANS_PER_ATOM = 32
KMEANS_MAX_SAMPLE = 65536
KMEANS_ITERS = 20
MOD_ITERS = 10
MOD_TOPK = 8
DATAPOINT_BLEND = 0.8


def sample_size(method: str, d_sae: int, rare_ratio: float, max_sample: int = 4096) -> int:
    """Rows of the stream a method wants: enough distinct rows for every atom, and the bounded
    sklearn sample on top."""
    if method in BASELINES:
        return 0
    if method in ("kmeans", "mod"):
        return max(d_sae, min(KMEANS_PER_ATOM * d_sae, KMEANS_MAX_SAMPLE))
    return d_sae + (max_sample if method in ("centroid", "outlier") else 0)


@torch.no_grad()
def initialize(sae: SAE, method: str, *, seed: int = 0, sample: torch.Tensor | None = None,
               rare_ratio: float = 0.0, max_sample: int = 4096, encoder_scale: float = 1.0) -> None:
    """Set the dictionary's atoms and encoder by `method` (see the module docstring). A transcoder's
    sample rows are its (input, target) pairs side by side (`SAE.split`)."""
    if method not in METHODS:
        raise UserError(f"unknown init {method!r}; choose one of {', '.join(METHODS)}")
    if not 0.0 <= rare_ratio <= 1.0:
        raise UserError(f"--rare-ratio must be in [0, 1], got {rare_ratio}")
    g = torch.Generator().manual_seed(seed)
    F, E = sae.d_sae, sae.d_out
    X_in = None
    if method in BASELINES:
        W_FE = _baseline(method, F, E, g)
    else:
        if sample is None:
            raise UserError(f"--init {method} needs a sample of the activations")
        S = sample.detach().to("cpu", torch.float32)
        width = sae.d_in + (E if sae.transcoder else 0)
        if S.ndim != 2 or S.shape[1] != width:
            raise UserError(f"--init {method}: the sample has shape {list(S.shape)}, expected [n, {width}]")
        X_in, X = sae.split(S)
        X = X if X is not None else X_in
        need = F if method != "svd" else max(F - E, 0) + E
        if method in RARE_METHODS:
            need = max(F, LOF_NEIGHBORS + 1 if method == "outlier" else 1)
        if len(X) < need:
            raise UserError(f"--init {method} needs at least {need} sampled activations, got {len(X)}")
        pick = torch.Generator().manual_seed(seed + 1)  # the pairs' draw (data, datapoint)
        if sae.transcoder and method in ("data", "datapoint"):
            rows = torch.randperm(len(X), generator=pick)[:F]
            W_FE = X[rows] if method == "data" else datapoint_blend(X, F, g, rows=rows)
        else:
            W_FE = _informed(X, method, F, rare_ratio, g, max_sample, seed)
    W_FE = W_FE / W_FE.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sae.W_dec.copy_(W_FE)
    if not sae.transcoder:
        W_DF = W_FE.T
    elif method in BASELINES:
        W_DF = _baseline(method, F, sae.d_in, g).T
    else:  # from centred inputs, the mean folded into b_enc below (a transcoder's input is not centred)
        Xc = X_in - X_in.mean(0)
        if method == "data":
            W_DF = Xc[rows].T
        elif method == "datapoint":
            W_DF = datapoint_blend(X_in, F, g, rows=rows).T
        else:
            W_DF = coded_inputs(Xc, X, W_FE, g)
    if sae.transcoder:  # its own encoder directions, unit columns
        W_DF = W_DF / W_DF.norm(dim=0, keepdim=True).clamp_min(1e-12)
    sae.W_enc.copy_(W_DF * encoder_scale)
    sae.b_enc.zero_()
    if X_in is not None and sae.transcoder:  # pre = (x − mean) @ W_enc: an informed encoder reads deviations
        sae.b_enc.copy_(-(X_in.mean(0) @ sae.W_enc))
    sae.b_dec.zero_()
    if sae.W_skip is not None:
        sae.W_skip.zero_()
    sae.metadata["init"] = method
    sae.metadata["encoder_scale"] = encoder_scale
    if method in RARE_METHODS:
        sae.metadata["rare_ratio"] = rare_ratio


def _baseline(method: str, F: int, D: int, g: torch.Generator) -> torch.Tensor:
    W_FD = torch.empty(F, D, dtype=torch.float32)
    if method == "orthogonal":
        torch.nn.init.orthogonal_(W_FD, generator=g)
    else:
        torch.nn.init.xavier_uniform_(W_FD, generator=g)
    return W_FD


def coded_inputs(X_in: torch.Tensor, Y: torch.Tensor, W_FE: torch.Tensor, g: torch.Generator,
                 topk: int = 1, chunk: int = 8192) -> torch.Tensor:
    """A transcoder's encoder [d_in, F] from (input, target) pairs: column k is the mean input of the
    rows whose target projects most on atom k (weighted by the projection; `topk` atoms per row); an
    atom no row reaches gets a random row's input. (Top-8 projection codes, as `mod` uses, credit
    an atom with rows of its neighbours wherever atoms crowd the target space.)"""
    F = len(W_FE)
    topk = min(topk, F)
    S_DF = torch.zeros(X_in.shape[1], F)
    for i in range(0, len(Y), chunk):
        v, idx = (Y[i:i + chunk] @ W_FE.T).topk(topk, dim=1)
        A_NF = torch.zeros(len(v), F).scatter_(1, idx, v.clamp_min(0))
        S_DF += X_in[i:i + chunk].T @ A_NF
    unused = S_DF.norm(dim=0) < 1e-12
    if unused.any():
        S_DF[:, unused] = _random_rows(X_in, int(unused.sum()), g).T
    return S_DF


def _random_rows(X: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    return X[torch.randperm(len(X), generator=g)[:k]]


def _informed(X: torch.Tensor, method: str, F: int, rare_ratio: float, g: torch.Generator,
              max_sample: int, seed: int) -> torch.Tensor:
    D = X.shape[1]
    if method == "data":
        return _random_rows(X, F, g)
    if method == "datapoint":
        return datapoint_blend(X, F, g)
    if method == "kmeans":
        return spherical_kmeans(X, F, g)
    if method == "mod":
        return optimal_directions(X, spherical_kmeans(X, F, g))
    if method == "svd":
        _, _, Vh = torch.linalg.svd(X, full_matrices=False)
        k = min(F, D, len(Vh))
        V = Vh[:k]
        V = V * torch.where((X @ V.T).mean(0) >= 0, 1.0, -1.0)[:, None]
        return torch.cat([V, _random_rows(X, F - k, g)]) if F > k else V
    n_rare = 0 if rare_ratio == 0 else max(1, round(rare_ratio * F))
    rare = rare_vectors(X, method, n_rare, g, max_sample, seed) if n_rare else X[:0]
    return torch.cat([rare, _random_rows(X, F - len(rare), g)])


def datapoint_blend(X: torch.Tensor, k: int, g: torch.Generator, p: float = DATAPOINT_BLEND,
                    rows: torch.Tensor | None = None) -> torch.Tensor:
    """k rows: random sample rows (or `rows` of X) minus the sample mean, blended with Kaiming-uniform
    directions."""
    x_KD = (_random_rows(X, k, g) if rows is None else X[rows]) - X.mean(0)
    r_KD = torch.empty(k, X.shape[1])
    torch.nn.init.kaiming_uniform_(r_KD, a=5 ** 0.5, generator=g)
    unit = torch.nn.functional.normalize
    return p * unit(x_KD, dim=1) + (1 - p) * unit(r_KD, dim=1)


def spherical_kmeans(X: torch.Tensor, k: int, g: torch.Generator, iters: int = KMEANS_ITERS,
                     chunk: int = 8192) -> torch.Tensor:
    """k unit centroids of the normalized rows of X under cosine similarity (see `kmeans`)."""
    Xn_ND = X / X.norm(dim=1, keepdim=True).clamp_min(1e-12)
    C_KD = _random_rows(Xn_ND, k, g).clone()
    for _ in range(iters):
        best_N = torch.empty(len(Xn_ND))
        assign_N = torch.empty(len(Xn_ND), dtype=torch.long)
        for i in range(0, len(Xn_ND), chunk):
            best_N[i:i + chunk], assign_N[i:i + chunk] = (Xn_ND[i:i + chunk] @ C_KD.T).max(1)
        sums_KD = torch.zeros_like(C_KD).index_add_(0, assign_N, Xn_ND)
        empty = torch.bincount(assign_N, minlength=k) == 0
        if empty.any():  # reseed with the rows the current centroids explain worst
            worst = torch.argsort(best_N)[: int(empty.sum())]
            sums_KD[empty] = Xn_ND[worst]
        C_KD = sums_KD / sums_KD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return C_KD


def optimal_directions(X: torch.Tensor, C_KD: torch.Tensor, iters: int = MOD_ITERS, topk: int = MOD_TOPK,
                       chunk: int = 8192) -> torch.Tensor:
    """Refine unit atoms C_KD on X by the method of optimal directions (see `mod`)."""
    k = len(C_KD)
    topk = min(topk, k)
    for _ in range(iters):
        G_KK = torch.zeros(k, k)
        B_KD = torch.zeros_like(C_KD)
        for i in range(0, len(X), chunk):
            X_ND = X[i:i + chunk]
            v, idx = (X_ND @ C_KD.T).topk(topk, dim=1)
            A_NK = torch.zeros(len(X_ND), k).scatter_(1, idx, v.clamp_min(0))
            G_KK += A_NK.T @ A_NK
            B_KD += A_NK.T @ X_ND
        G_KK.diagonal().add_(1e-3 * G_KK.diagonal().mean().clamp_min(1e-12))
        new_KD = torch.linalg.solve(G_KK, B_KD)
        norms = new_KD.norm(dim=1, keepdim=True)
        C_KD = torch.where(norms > 1e-6, new_KD / norms.clamp_min(1e-12), C_KD)  # unused atoms stay
    return C_KD


def rare_vectors(X: torch.Tensor, method: str, k: int, g: torch.Generator, max_sample: int = 4096,
                 seed: int = 0) -> torch.Tensor:
    """k rare-feature vectors from X by `method` (average, centroid, outlier); not normalized."""
    if method == "average":
        return _random_rows(X, k, g) - X.mean(0)
    S = _random_rows(X, min(len(X), max_sample), g)
    if method == "centroid":
        from sklearn.cluster import MiniBatchKMeans

        k = min(k, len(S))
        km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=1, batch_size=min(1024, len(S))).fit(S.numpy())
        labels = km.labels_
        rs = np.random.default_rng(seed)
        rows = []
        for c in range(k):
            members = np.flatnonzero(labels == c)
            i = int(rs.choice(members)) if len(members) else int(rs.integers(len(S)))
            rows.append(S[i] - torch.from_numpy(km.cluster_centers_[c]).float())
        return torch.stack(rows)
    if method == "outlier":
        from sklearn.neighbors import LocalOutlierFactor

        lof = LocalOutlierFactor(n_neighbors=min(LOF_NEIGHBORS, len(S) - 1)).fit(S.numpy())
        order = np.argsort(lof.negative_outlier_factor_)[:k]  # most negative = strongest outliers
        return S[torch.from_numpy(order.copy())]
    raise ValueError(method)
