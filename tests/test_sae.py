import pytest
import torch

from saeforge import SparseAutoencoder
from saeforge.dictionary.architectures.standard import SPARSE_BELOW
from saeforge.dictionary.architectures.standard import fast_step as loss_and_grads
from saeforge.dictionary.init import initialize


def _random_sae(d_in, d_sae, g, dtype=torch.float64):
    sae = SparseAutoencoder(d_in, d_sae, dtype=dtype)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.5)
    return sae


@pytest.mark.parametrize("l1", [0.0, 0.7, 5.0])
def test_fused_step_matches_autograd(rng, l1):
    sae = _random_sae(12, 40, rng)
    x = torch.randn(33, 12, generator=rng, dtype=torch.float64)
    out = loss_and_grads(sae, x, l1)
    fused = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad(set_to_none=True)
    total, mse, sparsity, _, _ = sae.loss(x, l1)
    total.backward()
    assert torch.allclose(out.loss, total.detach(), rtol=1e-12)
    assert torch.allclose(out.mse, mse.detach(), rtol=1e-12)
    assert torch.allclose(out.sparsity, sparsity.detach(), rtol=1e-12)
    for n, p in sae.named_parameters():
        assert torch.allclose(fused[n], p.grad, rtol=1e-9, atol=1e-10), n
    # firing sums: Σ_b f_b, positive exactly for features that fired
    f = sae.encode(x).detach()
    assert torch.allclose(out.feature_sums_F, f.sum(0))
    assert ((out.feature_sums_F > 0) == (f > 0).any(0)).all()


@pytest.mark.parametrize("sparse", [True, None])
def test_sparse_step_matches_autograd(rng, sparse):
    """Codes as sparse as a trained dictionary's (about 3% fire): the sparse step, forced or chosen
    by itself below SPARSE_BELOW, gives autograd's loss, gradients, codes and firing sums."""
    sae = _random_sae(12, 80, rng)
    with torch.no_grad():
        sae.b_enc.sub_(4.0)
    x = torch.randn(64, 12, generator=rng, dtype=torch.float64)
    out = loss_and_grads(sae, x, 0.7, sparse=sparse)
    fast = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad(set_to_none=True)
    total, mse, sparsity, f, _ = sae.loss(x, 0.7)
    total.backward()
    assert 0 < float((f > 0).float().mean()) < SPARSE_BELOW and out.codes(dense=False).layout == torch.sparse_csr
    torch.testing.assert_close(out.loss, total.detach())
    torch.testing.assert_close(out.sparsity, sparsity.detach())
    for n, p in sae.named_parameters():
        torch.testing.assert_close(fast[n], p.grad, msg=n)
    torch.testing.assert_close(out.codes(), f.detach())
    torch.testing.assert_close(out.feature_sums_F, f.detach().sum(0))


def test_loss_definition(rng):
    """MSE summed over d_in and averaged over the batch; penalty Σ f_i ‖W_dec,i‖."""
    sae = _random_sae(5, 7, rng)
    x = torch.randn(4, 5, generator=rng, dtype=torch.float64)
    f = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    xh = f @ sae.W_dec + sae.b_dec
    expect_mse = sum(((x[b] - xh[b]) ** 2).sum() for b in range(4)) / 4
    expect_l1 = sum((f[b] * sae.W_dec.norm(dim=1)).sum() for b in range(4)) / 4
    total, mse, sp, _, _ = sae.loss(x, 5.0)
    assert torch.allclose(mse, expect_mse) and torch.allclose(sp, expect_l1)
    assert torch.allclose(total, expect_mse + 5.0 * expect_l1)
    assert torch.allclose(sae(x), xh)


def test_unit_norm_projection_keeps_rows_on_sphere(rng):
    sae = SparseAutoencoder(16, 64)
    initialize(sae, "orthogonal", seed=0)
    x = torch.randn(128, 16, generator=rng)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(5):
        loss_and_grads(sae, x, 1.0)
        sae.remove_parallel_grad_()
        # the decoder gradient is tangent: orthogonal to each row
        assert (sae.W_dec.grad * sae.W_dec).sum(-1).abs().max() < 1e-5
        opt.step()
        sae.normalize_decoder_()
        assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-6)


@pytest.mark.parametrize("method", ["orthogonal", "xavier"])
def test_baseline_inits(method):
    a, b, c = (SparseAutoencoder(32, 96) for _ in range(3))
    initialize(a, method, seed=3)
    initialize(b, method, seed=3)
    initialize(c, method, seed=4)
    assert torch.equal(a.W_dec, b.W_dec) and not torch.equal(a.W_dec, c.W_dec)
    assert torch.allclose(a.W_dec.norm(dim=1), torch.ones(96), atol=1e-5)
    assert torch.equal(a.W_enc, a.W_dec.T)
    if method == "orthogonal":  # columns orthogonal before row scaling: the Gram of columns is diagonal-ish
        gram = a.W_dec.T @ a.W_dec
        off = gram - torch.diag(torch.diag(gram))
        assert off.abs().max() < 0.6
