"""The numba kernels give torch's answers: the entries above a threshold, each row's k largest."""

import os
import subprocess
import sys

import pytest
import torch

from saeforge.dictionary import kernels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_firing_is_torchs_comparison_and_nonzero(rng, dtype):
    pre = torch.randn(70, 96, generator=rng, dtype=dtype)
    low = torch.randn(96, generator=rng, dtype=dtype) + 1.5  # a few percent above, some rows empty
    add = torch.randn(96, generator=rng, dtype=dtype)
    assert kernels.usable(pre)
    rows, cols, vals = kernels.firing(pre, low, add)
    want_r, want_c = (pre > low).nonzero().unbind(1)
    assert torch.equal(rows, want_r) and torch.equal(cols, want_c) and len(rows) > 0
    assert torch.equal(vals, pre[want_r, want_c] + add[want_c])
    # torch's fallback (no numba path for a width that is not a multiple of the block), and its two-level nonzero
    odd = pre[:, :90].contiguous()
    r2, c2, v2 = kernels.firing(odd, low[:90])
    assert not kernels.usable(odd)
    assert torch.equal(torch.stack([r2, c2], 1), (odd > low[:90]).nonzero()) and torch.equal(v2, odd[r2, c2])
    mask = torch.rand(33, 64, generator=rng) < 0.05
    assert torch.equal(torch.stack(kernels.nonzero(mask), 1), mask.nonzero())


@pytest.mark.parametrize("k", [1, 5, 8])
def test_top_k_is_torchs_topk_sorted_by_latent(rng, k):
    pre = torch.randn(50, 128, generator=rng)
    pre[3] = 0.25  # a row of ties: any k of them
    pre[4, 40:] = -torch.inf  # AuxK masks the live latents with -inf
    vals, idx = kernels.top_k(pre, k)
    want = pre.topk(k, dim=1).values
    assert torch.equal(vals.sort(1, descending=True).values, want)
    assert (idx.diff(dim=1) > 0).all() and torch.equal(pre.gather(1, idx), vals)
    fb_vals, fb_idx = kernels.top_k(pre.double()[:, :120].contiguous(), k)  # fallback: 120 is not a multiple of 16
    assert torch.equal(fb_vals.sort(1, descending=True).values, pre.double()[:, :120].topk(k, dim=1).values)
    assert (fb_idx.diff(dim=1) > 0).all()


def test_top_k_edge_rows(rng):
    """Rows the bisection must not get wrong: mostly -inf (AuxK with few dead latents), fewer finite
    values than k, +inf, values spread over many binades, exact ties straddling the k-th place."""
    k = 4
    pre = torch.randn(6, 256, generator=rng)
    pre[0, :250] = -torch.inf
    pre[1, 2:] = -torch.inf  # 2 finite values < k: two -inf entries complete the k
    pre[2, 7] = pre[2, 9] = torch.inf
    pre[3] = torch.logspace(-30, 30, 256)[torch.randperm(256, generator=rng)]
    pre[4] = torch.randint(0, 3, (256,), generator=rng).float()  # heavy ties at the top value
    pre[5, 100:104] = 10.0
    pre[5, 17] = 11.0  # the k-th place is a tie among four 10s
    vals, idx = kernels.top_k(pre, k)
    assert torch.equal(vals.sort(1, descending=True).values, pre.topk(k, dim=1).values)
    assert (idx.diff(dim=1) > 0).all() and torch.equal(pre.gather(1, idx), vals)


def test_bfloat16_rows_are_widened_exactly(rng):
    """--autocast hands the kernels bfloat16 pre-activations: the same entries as torch on their
    float32 values (bfloat16 is float32's top half), values returned in float32."""
    pre = (torch.randn(40, 128, generator=rng) * 3).bfloat16()
    pre[2] = 0.5  # ties
    pre[3, 64:] = -torch.inf
    assert kernels.usable(pre)
    wide = pre.float()
    vals, idx = kernels.top_k(pre, 6)
    assert vals.dtype == torch.float32 and torch.equal(wide.gather(1, idx), vals)
    assert torch.equal(vals.sort(1, descending=True).values, wide.topk(6, dim=1).values)
    low, add = torch.randn(128, generator=rng) + 2.0, torch.randn(128, generator=rng)
    rows, cols, got = kernels.firing(pre, low, add)
    want_r, want_c = (wide > low).nonzero().unbind(1)
    assert torch.equal(rows, want_r) and torch.equal(cols, want_c) and len(rows) > 0
    assert torch.equal(got, wide[want_r, want_c] + add[want_c])


def test_numba_pool_is_as_wide_as_torch_so_no_idle_worker_spins():
    # a 1-thread process (OMP_NUM_THREADS=1, as under torchrun) starts no second numba worker;
    # a width the user chose is kept
    code = ("import saeforge.dictionary.kernels as k, numba, torch; k.firing(torch.ones(4, 16), torch.zeros(16)); "
            "print(numba.config.NUMBA_NUM_THREADS, numba.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    one = subprocess.run([sys.executable, "-c", code], env=env | {"OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, check=True)
    assert one.stdout.split() == ["1", "1"]
    mine = subprocess.run([sys.executable, "-c", code], env=env | {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"},
                          capture_output=True, text=True, check=True)
    assert mine.stdout.split() == ["2", "1"]
