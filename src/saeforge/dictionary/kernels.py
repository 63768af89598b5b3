"""CPU kernels for the two passes over [batch, features] that bound the sparse step (numba).

    firing(pre_BF, low_F, add_F) → (rows, latents, pre + add) of the entries with pre > low, row-major
    top_k(pre_BF, k)             → (values, latents) [B, k] of each row's k largest, latents ascending

Both read each row of the [B, F] pre-activations once as 16 interleaved slices (their elementwise
maximum, vectorized, is one maximum per group of F/16 latents) and revisit only the groups that
can hold an answer, where torch needs a comparison, a `nonzero` and a gather (ReLU, JumpReLU) or
a full `topk` and a sort (TopK): a quarter to a third of torch's time at L0 32 of 4,096
(docs/performance.md). bfloat16 input (the encoder product under `--autocast`) is widened to
float32 row by row inside the kernels (its bits are float32's top half): values come back float32.
Without numba, on a GPU, in another dtype or for F not a multiple of 16 the same answers come
from torch. Inputs are NaN-free (a diverged run is stopped by the trainer).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from saeforge import threads

# numba's thread pool is as wide as NUMBA_NUM_THREADS when it starts (default: every core), and
# its idle OpenMP workers spin even where set_num_threads narrows the work: with torch at 1 thread
# (OMP_NUM_THREADS=1, as torchrun sets for each rank) a second thread burned ~40% more CPU.
# Start it as wide as torch is; _threads() still follows torch's count down from there.
os.environ.setdefault("NUMBA_NUM_THREADS", str(torch.get_num_threads()))

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; kept optional for odd platforms
    numba = None

BLOCK = 16


def usable(t: torch.Tensor) -> bool:
    return (numba is not None and t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64, torch.bfloat16)
            and t.dim() == 2 and t.is_contiguous() and t.shape[1] % BLOCK == 0 and not t.requires_grad)


def _split(pre_BF: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(floats, bfloat16 bits) for the kernels: one of them holds the rows, the other is empty."""
    F = pre_BF.shape[1]
    if pre_BF.dtype == torch.bfloat16:
        return np.empty((0, F), np.float32), pre_BF.view(torch.int16).numpy()
    return pre_BF.numpy(), np.empty((0, F), np.int16)


def _threads() -> None:
    from numba.np.ufunc import parallel

    if not parallel._is_initialized and threads.governor.fixed is not None:
        # a count fixed before the pool starts (--threads): start it that wide, as OMP_NUM_THREADS would.
        # A wider pool's idle worker took CPU from a 1-thread run under load (docs/performance.md, section 4)
        numba.config.NUMBA_NUM_THREADS = min(threads.governor.fixed, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


# ---------------------------------------------------------------- entries above a threshold
def firing(pre_BF: torch.Tensor, low_F: torch.Tensor,
           add_F: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, latents, values) of the entries with pre > low, row-major (CSR order); values are
    pre + add (add: e.g. the encoder bias, when pre was computed without it)."""
    if not usable(pre_BF):
        mask_BF = pre_BF > low_F
        rows, cols = nonzero(mask_BF)
        vals = pre_BF[rows, cols]
        return rows, cols, vals if add_F is None else vals + add_F[cols]
    _threads()
    B, F = pre_BF.shape
    pre, bits = _split(pre_BF)
    dtype = torch.float32 if pre_BF.dtype == torch.bfloat16 else pre_BF.dtype
    low = torch.as_tensor(low_F, dtype=dtype).expand(F).contiguous().numpy()
    add = np.zeros(F, pre.dtype) if add_F is None else add_F.detach().to(dtype).contiguous().numpy()
    crow = np.zeros(B + 1, np.int64)
    empty_i, empty_v = np.empty(0, np.int64), np.empty(0, pre.dtype)
    _firing(pre, bits, low, add, crow[1:], empty_i, empty_i, empty_v, False)  # counts per row
    np.cumsum(crow, out=crow)
    n = int(crow[-1])
    rows, cols, vals = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, pre.dtype)
    _firing(pre, bits, low, add, crow, rows, cols, vals, True)
    return torch.from_numpy(rows), torch.from_numpy(cols), torch.from_numpy(vals)


def nonzero(mask_BF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`mask.nonzero()` as (rows, columns), in two levels for a sparse mask: the mask read as 8-byte
    words, `nonzero` over the words, then over the bytes of the words that hold an entry
    (a third of one `nonzero` over [B, F] at L0 32 of 4,096; torch's fallback of `firing`)."""
    B, F = mask_BF.shape
    if F % 8 or not mask_BF.is_contiguous():
        return mask_BF.nonzero().unbind(1)
    rows, words = (mask_BF.view(torch.int64) != 0).nonzero().unbind(1)
    at, bit = mask_BF.view(B, F // 8, 8)[rows, words].nonzero().unbind(1)
    return rows[at], words[at] * 8 + bit


# ---------------------------------------------------------------- each row's k largest
def top_k(pre_BF: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries of each row: (values [B, k], latents [B, k]), latents ascending within
    a row. The same entries as `pre.topk(k)` (among equal values either may be kept)."""
    B, F = pre_BF.shape
    if not usable(pre_BF) or F < k * BLOCK:
        vals_BK, idx_BK = pre_BF.topk(k, dim=1, sorted=False)
        idx_BK, order = idx_BK.sort(dim=1)
        return vals_BK.gather(1, order), idx_BK
    _threads()
    pre, bits = _split(pre_BF)
    vals, idx = np.empty((B, k), pre.dtype), np.empty((B, k), np.int64)
    _top_k(pre, bits, k, vals, idx)
    return torch.from_numpy(vals), torch.from_numpy(idx)


if numba is not None:
    jit = numba.njit(parallel=True, cache=True, nogil=True, fastmath={"nnan", "nsz"})  # ±inf allowed (AuxK masks with -inf)

    # A row of F entries is read as BLOCK interleaved slices of width G = F / BLOCK: group g holds
    # the entries g, G + g, 2G + g, ...; one pass of elementwise maxima over the slices (vectorized)
    # gives every group's maximum, and visiting the hit groups slice by slice yields latents ascending.
    @numba.njit(cache=True, inline="always")
    def _group_max(row, low, mx):
        G = len(mx)
        for g in range(G):
            mx[g] = row[g] - low[g]
        for s in range(1, BLOCK):
            for g in range(G):
                mx[g] = max(mx[g], row[s * G + g] - low[s * G + g])

    @numba.njit(cache=True, inline="always")
    def _row(pre, bits, b, buf):
        """Row b as floats: `pre[b]`, or bfloat16 `bits[b]` widened into buf (float32's top half)."""
        if bits.shape[0] == 0:
            return pre[b]
        src, out = bits[b], buf.view(np.uint32)
        for i in range(len(src)):
            out[i] = np.uint32(np.uint16(src[i])) << 16
        return buf

    @jit
    def _firing(pre, bits, low, add, counts, rows, cols, vals, fill):
        """Count (fill False) or write (fill True, from the row pointers in `counts`) the entries above `low`."""
        B, F = max(pre.shape[0], bits.shape[0]), pre.shape[1]
        G = F // BLOCK
        for b in numba.prange(B):
            row = _row(pre, bits, b, np.empty(F if len(bits) else 0, pre.dtype))
            mx = np.empty(G, pre.dtype)
            _group_max(row, low, mx)
            hit = np.empty(G, np.int64)
            n_hit = 0
            for g in range(G):
                if mx[g] > 0:
                    hit[n_hit] = g
                    n_hit += 1
            j = counts[b] if fill else 0
            for s in range(BLOCK):
                for h in range(n_hit):
                    f = s * G + hit[h]
                    if row[f] > low[f]:
                        if fill:
                            rows[j], cols[j], vals[j] = b, f, row[f] + add[f]
                        j += 1
            if not fill:
                counts[b] = j

    @numba.njit(cache=True, inline="always")
    def _count_at_least(a, n, t):
        c = 0
        for i in range(n):
            c += a[i] >= t
        return c

    @numba.njit(cache=True, inline="always")
    def _bisect(a, n, k, slack):
        """(t, found): a t with #(a[:n] ≥ t) ≥ k, by bisection on the value (vectorized counts, no
        data-dependent branch per element); found when k ≤ #(a ≥ t) ≤ k + slack, or when the values
        ≥ t beyond the k largest all equal t (ties). Not found after 64 halvings: the caller sorts."""
        lo, hi = np.inf, -np.inf  # the finite range: ±inf (AuxK's mask) are handled by counting
        for i in range(n):
            if np.isfinite(a[i]):
                lo, hi = min(lo, a[i]), max(hi, a[i])
        if _count_at_least(a, n, np.inf) >= k:
            return np.inf, True
        if lo > hi or _count_at_least(a, n, lo) < k:  # fewer than k finite values above -inf
            return -np.inf, True
        if _count_at_least(a, n, hi) >= k:
            return hi, True
        for _ in range(64):  # #(≥ lo) ≥ k > #(≥ hi)
            mid = lo / 2 + hi / 2
            if mid <= lo or mid >= hi:  # lo and hi adjacent: found if every value in [lo, hi) is lo
                above = 0
                for i in range(n):
                    above += a[i] > lo
                return lo, above == _count_at_least(a, n, hi)
            c = _count_at_least(a, n, mid)
            if c < k:
                hi = mid
            else:
                lo = mid
                if c <= k + slack:
                    return lo, True
        return lo, False

    @jit
    def _top_k(pre, bits, k, vals, idx):
        """Per row: T with at least k group maxima ≥ T (so the row's k-th largest is ≥ T); the
        entries ≥ T of those groups, latents ascending (about k to 2k of them); V with exactly k of
        them ≥ V (or the tie value: then the entries > V and as many = V as make k)."""
        B, F = max(pre.shape[0], bits.shape[0]), pre.shape[1]
        G = F // BLOCK
        zero = np.zeros(F, pre.dtype)
        for b in numba.prange(B):
            row = _row(pre, bits, b, np.empty(F if len(bits) else 0, pre.dtype))
            mx = np.empty(G, pre.dtype)
            _group_max(row, zero, mx)
            T = _bisect(mx, G, k, k // 2)[0]
            hit = np.empty(G, np.int64)
            n_hit = 0
            for g in range(G):
                if mx[g] >= T:
                    hit[n_hit] = g
                    n_hit += 1
            cand_v, cand_i = np.empty(n_hit * BLOCK, pre.dtype), np.empty(n_hit * BLOCK, np.int64)
            n = 0
            for s in range(BLOCK):
                for h in range(n_hit):
                    f = s * G + hit[h]
                    if row[f] >= T:
                        cand_v[n], cand_i[n] = row[f], f
                        n += 1
            V, found = _bisect(cand_v, n, k, 0)
            if not found:  # values spread over too many binades for 64 halvings: sort them
                V = np.sort(cand_v[:n])[n - k]
            above = 0
            for j in range(n):
                above += cand_v[j] > V
            ties = k - above
            out = 0
            for j in range(n):
                v = cand_v[j]
                if v > V or (v == V and ties > 0):
                    ties -= v == V
                    vals[b, out], idx[b, out] = v, cand_i[j]
                    out += 1
