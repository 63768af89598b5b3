"""The synthetic data's sparse sampler: only the entries that fire are drawn (numba, CPU).

The dense way (synthetic.py on a GPU) draws a uniform or a normal for every (feature, sample),
~F·B random numbers for ~L0·B firing entries. Here, with the same rules, in distribution:

- A feature without a parent fires at positions drawn by geometric skipping: the gap to the
  next firing sample is ⌊log u / log(1 − p)⌋, one draw per firing entry. With correlation, its
  probability varies per sample, p_ib = Φ̄((t_i − L_i·ε_b)/√d_i): candidates are drawn at the
  block's highest p (blocks of THIN_BLOCK samples) and kept with p_ib / that bound (thinning), exact.
- A child is drawn only where its parent fired (its parent's list, level by level), since it
  is switched off everywhere else; an exclusive group's siblings are drawn together there and
  one of those that fired is kept, uniformly (reservoir sampling).
- Magnitudes: ReLU(mean + std·N(0, 1)) per firing entry (a zero counts as not firing).

Random numbers come from a counter-based stream per (seed, step, unit): splitmix64, so units
run in parallel and a batch is a pure function of (seed, step) whatever the thread count.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from saeforge.dictionary.kernels import _threads as threads
from saeforge.dictionary.kernels import numba

THIN_BLOCK = 128  # samples per block of the thinning bound (correlated firing without a parent)
# Φ̄ tabulated on [−8, 8] for u < Φ̄(c) without an erfc per draw: linear interpolation errs by at
# most max|Φ̄''|·h²/8 ≈ 1.2e-7, so a u within _MARGIN of the table is decided by erfc itself.
_TAB_LO, _TAB_N = -8.0, 8192
_TAB_PER = _TAB_N / 16.0  # table entries per unit of c
_TAIL_TABLE = 0.5 * torch.special.erfc(torch.linspace(-8, 8, _TAB_N + 1, dtype=torch.float64) / math.sqrt(2)).numpy()
_MARGIN = 1e-6
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(z: int) -> int:
    """splitmix64's finalizer in Python (the stream keys; the kernels use the same function)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return z ^ (z >> 31)


def stream_key(seed: int, step: int) -> int:
    """A 64-bit key per (seed, step) (steps may be negative: fresh samples)."""
    return _mix64((_mix64(seed % 2**64) + step * _GOLDEN) % 2**64)


class Sampler:
    """Units (a feature, or an exclusive sibling group) grouped by level, as flat arrays."""

    def __init__(self, probs_F: torch.Tensor, mean_F: torch.Tensor, std_F: torch.Tensor, hierarchy=None,
                 corr_factor_FR: torch.Tensor | None = None, corr_diag_F: torch.Tensor | None = None):
        F = len(probs_F)
        self.p = probs_F.double().numpy().copy()
        self.mean, self.std = mean_F.double().numpy().copy(), std_F.double().numpy().copy()
        parent = np.full(F, -1, np.int64) if hierarchy is None else hierarchy.parent_F.cpu().numpy().copy()
        depth = np.zeros(F, np.int64) if hierarchy is None else hierarchy.depth_F.cpu().numpy().copy()
        self.rescale = np.zeros(F, np.bool_) if hierarchy is None else hierarchy.rescale_F.cpu().numpy().copy()
        group_of = np.full(F, -1, np.int64)
        groups: list[tuple[int, int, list[int]]] = []  # (depth, parent, members)
        for d, (parents, sibs) in ({} if hierarchy is None else hierarchy.groups).items():
            for par, row in zip(parents.tolist(), sibs.tolist()):
                members = [s for s in row if s >= 0]
                group_of[members] = len(groups)
                groups.append((d, par, members))
        units = [(int(depth[f]), int(parent[f]), [f]) for f in range(F) if group_of[f] < 0] + groups
        units.sort(key=lambda u: (u[0], u[2][0]))
        self.unit_parent = np.array([u[1] for u in units], np.int64)
        self.unit_ptr = np.cumsum([0] + [len(u[2]) for u in units]).astype(np.int64)
        self.members = np.array([f for u in units for f in u[2]], np.int64)
        depths = np.array([u[0] for u in units], np.int64)
        self.level_ptr = np.searchsorted(depths, np.arange(depths.max() + 2)).astype(np.int64)
        # correlated firing: fires iff L_i·ε + √d_i·η > t_i (η, ε standard normal)
        self.corr = corr_factor_FR is not None
        R = 0 if corr_factor_FR is None else corr_factor_FR.shape[1]
        self.L = np.zeros((F, R)) if corr_factor_FR is None else corr_factor_FR.double().numpy().copy()
        self.inv_sd = np.ones(F) if corr_diag_F is None else 1 / corr_diag_F.double().sqrt().numpy()
        with np.errstate(divide="ignore"):
            self.t = math.sqrt(2) * torch.erfinv(1 - 2 * probs_F.double()).numpy()  # ±inf at p = 1 / 0
        # the features drawn over every sample one by one (no parent, not in a group): thinning rows
        self.free = np.array([u[2][0] for u in units if u[1] < 0 and len(u[2]) == 1], np.int64)
        self.free_row = np.full(F, -1, np.int64)
        self.free_row[self.free] = np.arange(len(self.free))
        self.L_free = torch.from_numpy(self.L[self.free].astype(np.float32))
        self._work: tuple[np.ndarray, np.ndarray] | None = None  # per-feature lists [F, B]

    def sample(self, key: int, B: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(crow [B+1], cols, values) of batch `key`: the firing entries in CSR order, values > 0."""
        threads()
        F = len(self.p)
        eps = np.empty((B, self.L.shape[1]), np.float64)
        _normals(np.uint64(_mix64(key ^ _GOLDEN)), eps)
        key = np.uint64(key)
        z = (self.L_free @ torch.from_numpy(eps.astype(np.float32)).T).numpy() if self.corr \
            else np.zeros((1, B), np.float32)
        if self._work is None or self._work[0].shape[1] < B:  # kept: fresh pages cost ~1 ms a batch
            self._work = np.empty((F, B), np.int32), np.empty((F, B), np.float32)
        pos, val = self._work
        cnt = np.zeros(F, np.int64)
        chunk = numba.set_parallel_chunksize(8)  # units differ in work (Zipf): hand them out dynamically
        _draw(key, B, self.level_ptr, self.unit_ptr, self.members, self.unit_parent, self.p, self.t, self.inv_sd,
              self.L, eps, z, self.free_row, self.corr, self.mean, self.std, self.rescale, pos, val, cnt)
        numba.set_parallel_chunksize(chunk)
        crow = np.zeros(B + 1, np.int64)
        n = int(cnt.sum())
        cols, vals = np.empty(n, np.int64), np.empty(n, np.float32)
        _to_csr(pos, val, cnt, crow, cols, vals)
        return crow, cols, vals


if numba is not None:
    _U = numba.uint64
    jit = numba.njit(cache=True, nogil=True)
    inline = numba.njit(cache=True, inline="always")

    @inline
    def _mix(z):
        z = (z ^ (z >> _U(30))) * _U(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U(27))) * _U(0x94D049BB133111EB)
        return z ^ (z >> _U(31))

    @inline
    def _uniform(s):
        """(next state, a uniform in (0, 1))."""
        s = s + _U(_GOLDEN)
        return s, (float(_mix(s) >> _U(11)) + 0.5) * 2.0 ** -53

    @inline
    def _normal(s):
        s, u1 = _uniform(s)
        s, u2 = _uniform(s)
        return s, math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)

    @numba.njit(cache=True, nogil=True, parallel=True)
    def _normals(key, out):
        """out [B, R] of standard normals, a stream per row (Box–Muller's pairs)."""
        B, R = out.shape
        for b in numba.prange(B):
            s = _mix(key + _U(b + 1) * _U(_GOLDEN))
            for i in range(0, R, 2):
                s, u1 = _uniform(s)
                s, u2 = _uniform(s)
                r = math.sqrt(-2.0 * math.log(u1))
                out[b, i] = r * math.cos(2.0 * math.pi * u2)
                if i + 1 < R:
                    out[b, i + 1] = r * math.sin(2.0 * math.pi * u2)

    @inline
    def _tail(c):
        """Φ̄(c) = P(N(0, 1) > c)."""
        return 0.5 * math.erfc(c * 0.7071067811865476)

    @inline
    def _below_tail(u, c):
        """u < Φ̄(c), exactly: the table decides unless u is within _MARGIN of it."""
        x = (c - _TAB_LO) * _TAB_PER
        if x > 0 and x < _TAB_N:
            k = int(x)
            q = _TAIL_TABLE[k] + (x - k) * (_TAIL_TABLE[k + 1] - _TAIL_TABLE[k])
            if u < q - _MARGIN:
                return True
            if u > q + _MARGIN:
                return False
        return u < _tail(c)

    @inline
    def _tail_above(c):
        """An upper bound of Φ̄(c) within _MARGIN of it (the thinning's rate)."""
        x = (c - _TAB_LO) * _TAB_PER
        if x <= 0:
            return 1.0
        if x >= _TAB_N:
            return _tail(c)
        k = int(x)
        return min(1.0, _TAIL_TABLE[k] + (x - k) * (_TAIL_TABLE[k + 1] - _TAIL_TABLE[k]) + _MARGIN)

    @numba.njit(cache=True, nogil=True, fastmath=True)
    def _block_max(z):
        """max(z), vectorized (fastmath: no NaN here)."""
        m = z[0]
        for i in range(1, len(z)):
            m = max(m, z[i])
        return m

    @inline
    def _fires(s, f, b, p, t, inv_sd, L, eps, corr):
        """One Bernoulli draw of feature f at sample b."""
        s, u = _uniform(s)
        if not corr:
            return s, u < p[f]
        z = 0.0
        for r in range(L.shape[1]):
            z += L[f, r] * eps[b, r]
        return s, _below_tail(u, (t[f] - z) * inv_sd[f])

    @inline
    def _magnitude(s, f, pv, par, mean, std, rescale):
        """A firing entry's coefficient: ReLU(mean + std·N), times parent / parent's mean if rescaled."""
        m = mean[f]
        if std[f] != 0:
            s, n = _normal(s)
            m += std[f] * n
        m = max(m, 0.0)
        if rescale[f]:
            m *= pv / mean[par]
        return s, m

    @inline
    def _emit(f, b, m, pos, val, cnt):
        if m > 0:
            pos[f, cnt[f]], val[f, cnt[f]] = b, m
            cnt[f] += 1

    @jit
    def _free(s, f, B, p, t, inv_sd, z_row, corr, mean, std, rescale, pos, val, cnt):
        """A feature without parent or group over all B samples: geometric skipping (thinned)."""
        if p[f] <= 0:
            return
        for start in range(0, B, THIN_BLOCK if corr else B):
            stop = min(start + (THIN_BLOCK if corr else B), B)
            q = p[f]
            if corr:
                q = _tail_above((t[f] - _block_max(z_row[start:stop])) * inv_sd[f])
            if q <= 0:
                continue
            per_log = 1 / math.log1p(-q) if q < 1 else 0.0  # gap = ⌊log u / log(1 − q)⌋
            b = start - 1
            while True:
                s, u = _uniform(s)
                b += 1 + int(min(math.log(u) * per_log, B))
                if b >= stop:
                    break
                if corr:
                    s, u = _uniform(s)
                    if not _below_tail(u * q, (t[f] - z_row[b]) * inv_sd[f]):
                        continue
                s, m = _magnitude(s, f, 0.0, 0, mean, std, rescale)
                _emit(f, b, m, pos, val, cnt)

    @numba.njit(cache=True, nogil=True, parallel=True)
    def _draw(key, B, level_ptr, unit_ptr, members, unit_parent, p, t, inv_sd, L, eps, z, free_row, corr,
              mean, std, rescale, pos, val, cnt):
        for level in range(len(level_ptr) - 1):
            for u in numba.prange(level_ptr[level], level_ptr[level + 1]):
                s = _mix(key + _U(u + 1) * _U(_GOLDEN))
                lo, hi, par = unit_ptr[u], unit_ptr[u + 1], unit_parent[u]
                if par < 0 and hi - lo == 1:
                    f = members[lo]
                    _free(s, f, B, p, t, inv_sd, z[max(free_row[f], 0) if corr else 0], corr, mean, std, rescale,
                          pos, val, cnt)
                    continue
                n = B if par < 0 else cnt[par]  # the samples where the unit can fire
                for j in range(n):
                    b = j if par < 0 else pos[par, j]
                    pv = 1.0 if par < 0 else val[par, j]
                    seen, win, wm = 0, -1, 0.0
                    for i in range(lo, hi):
                        f = members[i]
                        s, on = _fires(s, f, b, p, t, inv_sd, L, eps, corr)
                        if not on:
                            continue
                        s, m = _magnitude(s, f, pv, par, mean, std, rescale)
                        if hi - lo == 1:
                            _emit(f, b, m, pos, val, cnt)
                        elif m > 0:  # an exclusive group: keep one of those that fired, uniformly
                            seen += 1
                            s, r = _uniform(s)
                            if r * seen < 1:
                                win, wm = f, m
                    if win >= 0:
                        _emit(win, b, wm, pos, val, cnt)

    @jit
    def _to_csr(pos, val, cnt, crow, cols, vals):
        """Feature-major lists → sample-major CSR (columns ascending within a row)."""
        F = len(cnt)
        for f in range(F):
            for j in range(cnt[f]):
                crow[pos[f, j] + 1] += 1
        for b in range(len(crow) - 1):
            crow[b + 1] += crow[b]
        at = crow[:-1].copy()
        for f in range(F):
            for j in range(cnt[f]):
                b = pos[f, j]
                cols[at[b]], vals[at[b]] = f, val[f, j]
                at[b] += 1
