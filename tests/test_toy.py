import torch

from saeforge.evaluation.metrics import explained_variance, l0, mmcs
from saeforge.sources.toy import ToyData


def test_features_are_unit_and_seeded():
    a = ToyData(32, 100, seed=1)
    b = ToyData(32, 100, seed=1)
    c = ToyData(32, 100, seed=2)
    assert torch.allclose(a.features_FD.norm(dim=1), torch.ones(100), atol=1e-5)
    assert torch.equal(a.features_FD, b.features_FD) and not torch.equal(a.features_FD, c.features_FD)
    assert torch.equal(a.batch(7, 64)[0], b.batch(7, 64)[0])
    assert not torch.equal(a.batch(7, 64)[0], a.batch(8, 64)[0])


def test_batches_resume_at_any_step():
    d = ToyData(16, 50, seed=0)
    it = d.batches(32)
    first = [next(it) for _ in range(5)]
    resumed = next(d.batches(32, start=3))
    assert torch.equal(first[3], resumed)


def test_empirical_firing_rates_match_probabilities():
    d = ToyData(16, 200, n_active=5, decay=0.99, seed=0)
    x, codes, p = d.batch(0, 200_000)
    # the 'no feature active' fix adds a uniform draw: P(empty)/F per feature
    p_empty = torch.prod(1 - p.double())
    expect = p.double() + p_empty / 200
    rate = (codes > 0).double().mean(0)
    sd = (expect * (1 - expect) / 200_000).sqrt()
    z = (rate - expect) / sd
    assert z.abs().max() < 5.5, z.abs().max()
    assert abs(float(p.mean()) - 5 / 200) < 1e-6  # rescaled to n_active on average
    assert abs(float((codes > 0).sum(1).double().mean()) - (5 + float(p_empty))) < 0.03
    assert (codes > 0).any(1).all()  # no empty sample
    # magnitudes of active codes are U[0,1): mean 1/2, variance 1/12 (the fill adds a few 1.0s)
    vals = codes[codes > 0]
    assert abs(float(vals.mean()) - 0.5) < 0.01 and abs(float(vals.var()) - 1 / 12) < 0.01
    assert torch.allclose(x, codes @ d.features_FD)
    # decay: early features fire far more than late ones on average over batches
    late, early = p[-20:].mean(), p[:20].mean()
    assert early > 3 * late


def test_uncorrelated_probabilities_follow_decay_exactly():
    d = ToyData(8, 64, decay=0.95, correlated=False, seed=0)
    p = d.probs(None)
    assert torch.allclose(p[1:] / p[:-1], torch.full((63,), 0.95), rtol=1e-5)


def test_mmcs_bounds():
    d = ToyData(64, 256, seed=0)
    assert abs(float(mmcs(d.features_FD, d.features_FD)) - 1.0) < 1e-6
    perm = d.features_FD[torch.randperm(256)] * 3.0  # order and scale don't matter
    assert abs(float(mmcs(d.features_FD, perm)) - 1.0) < 1e-6
    rand = torch.randn(256, 64, generator=torch.Generator().manual_seed(5))
    assert float(mmcs(d.features_FD, rand)) < 0.45
    # half recovered, half random: in between
    mixed = torch.cat([d.features_FD[:128], rand[:128]])
    assert 0.6 < float(mmcs(d.features_FD, mixed)) < 0.8


def test_l0_and_explained_variance():
    f = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 3.0]])
    assert float(l0(f)) == 1.5
    x = torch.randn(100, 4)
    assert abs(float(explained_variance(x, torch.zeros_like(x))) - 1.0) < 1e-6
    assert abs(float(explained_variance(x, x - x.mean(0)))) < 1e-5
