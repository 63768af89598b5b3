import pytest
import torch

from saeforge import SparseAutoencoder
from saeforge.dictionary.init import METHODS, RARE_METHODS, initialize, rare_vectors, sample_size
from saeforge.errors import UserError
from saeforge.evaluation.metrics import mmcs
from saeforge.sources.toy import ToyData


@pytest.fixture(scope="module")
def toy():
    data = ToyData(32, 64, n_active=3, seed=3)
    n = sample_size("outlier", 64, 0.1, max_sample=1024)
    X = torch.cat([data.batch(-(i + 1), 1024)[0] for i in range(-(-n // 1024))])[:n]
    return data, X


@pytest.mark.parametrize("method", METHODS)
def test_atoms_are_unit_norm_tied_and_deterministic(toy, method):
    data, X = toy
    a, b, c = (SparseAutoencoder(32, 64) for _ in range(3))
    for sae, seed in ((a, 0), (b, 0), (c, 1)):
        initialize(sae, method, seed=seed, sample=X, rare_ratio=0.1, max_sample=1024)
    assert a.W_dec.shape == (64, 32) and a.W_enc.shape == (32, 64)
    torch.testing.assert_close(a.W_dec.norm(dim=1), torch.ones(64))
    torch.testing.assert_close(a.W_enc, a.W_dec.T)
    assert torch.equal(a.W_dec, b.W_dec)
    if method != "svd" or a.d_sae > a.d_in:  # svd's first d_in atoms do not depend on the seed
        assert not torch.equal(a.W_dec, c.W_dec)


def test_data_based_methods_start_above_orthogonal(toy):
    data, X = toy
    start = {}
    for method in METHODS:
        sae = SparseAutoencoder(32, 64)
        initialize(sae, method, seed=0, sample=X, rare_ratio=0.1, max_sample=1024)
        start[method] = mmcs(data.features_FD, sae.W_dec).item()
    for method in ("data", "svd", "average", "centroid", "outlier", "kmeans", "mod"):
        assert start[method] > start["orthogonal"] + 0.1, start
    # clustering beats raw rows; so does MOD (its top-8 codes overfit this 3-active toy, so it
    # is not asserted above kmeans here: at 128/512 with 5 active it is, see docs)
    assert start["kmeans"] > start["data"] + 0.1, start
    assert start["mod"] > start["data"] + 0.05, start


def test_rare_vectors_are_rarer_than_random_samples():
    """Rarity of a vector = the index of the ground-truth feature it is most aligned with
    (feature i fires ∝ 0.99**i, so a higher index is a rarer feature)."""
    data = ToyData(32, 64, n_active=3, seed=3)
    X = torch.cat([data.batch(-(i + 1), 1024)[0] for i in range(5)])

    def rarity(V):
        V = V / V.norm(dim=1, keepdim=True)
        return (V @ data.features_FD.T).argmax(1).float().mean().item()

    random_rows = rarity(X[torch.randperm(len(X), generator=torch.Generator().manual_seed(1))[:256]])
    got = {m: rarity(rare_vectors(X, m, 256, torch.Generator().manual_seed(0), max_sample=4096, seed=0))
           for m in RARE_METHODS}
    assert got["outlier"] > random_rows + 5, (got, random_rows)
    assert got["centroid"] > random_rows + 1, (got, random_rows)
    # `average` is not measurably rarer on toy data: the toy mean is small next to each input
    # (|cos(x, mean)| ≈ 0.2), so subtracting it changes little. Recorded, not asserted away.
    assert abs(got["average"] - random_rows) < 5


def test_bad_settings_are_user_errors(toy):
    _, X = toy
    sae = SparseAutoencoder(32, 64)
    with pytest.raises(UserError, match="rare-ratio must be in"):
        initialize(sae, "average", sample=X, rare_ratio=1.5)
    with pytest.raises(UserError, match="needs at least 64 sampled activations"):
        initialize(sae, "data", sample=X[:10])
    with pytest.raises(UserError, match="needs at least 251"):
        initialize(sae, "outlier", sample=X[:200], rare_ratio=0.1)
    with pytest.raises(UserError, match="needs a sample"):
        initialize(sae, "svd")
    with pytest.raises(UserError, match="unknown init"):
        initialize(sae, "kaiming")


def test_encoder_scale(toy):
    _, X = toy
    sae = SparseAutoencoder(32, 64)
    initialize(sae, "data", seed=0, sample=X, encoder_scale=0.1)
    torch.testing.assert_close(sae.W_enc, 0.1 * sae.W_dec.T)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))


def test_every_init_method_is_a_choice_of_the_cli():
    from saeforge.cli import build_parser
    from saeforge.config import ToyConfig
    from saeforge.options import build_config

    for method in METHODS:
        args = build_parser().parse_args(["toy", "--out", "o", "--init", method])
        assert build_config(ToyConfig, args).init == method


def test_toy_default_init_is_mod_and_starts_high(tmp_path):
    """The informed-init sweep made `mod` the toy default (docs/informed-init.md)."""
    import json

    from saeforge.cli import main

    assert main(["toy", "--d-model", "32", "--n-features", "64", "--n-active", "3", "--steps", "1", "--no-progress",
                 "--out", str(tmp_path / "t")]) == 0
    s = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert s["init"] == "mod" and s["mmcs_initial"] > 0.6


def test_datapoint_atoms_are_centred_sample_rows_blended_with_random_directions(toy):
    """Anthropic's / saev's data-point init: each atom is 0.8 of a centred sample row and 0.2 of a
    random direction (both unit), so it is close to one centred row but not equal to it."""
    from saeforge.dictionary.init import DATAPOINT_BLEND

    _, X = toy
    sae = SparseAutoencoder(32, 64)
    initialize(sae, "datapoint", seed=0, sample=X)
    Xc = torch.nn.functional.normalize(X - X.mean(0), dim=1)
    best = (sae.W_dec @ Xc.T).max(1).values
    # p·x̂ + (1−p)·r̂ with r̂ ⟂ x̂ nearly (random in 32 dims): cosine ≈ p / √(p² + (1−p)²) ≈ 0.97
    expect = DATAPOINT_BLEND / (DATAPOINT_BLEND ** 2 + (1 - DATAPOINT_BLEND) ** 2) ** 0.5
    assert best.min() > expect - 0.08 and best.max() < 1 - 1e-4, (best.min(), best.max())


@pytest.mark.parametrize("center", [True, False])
def test_center_init_starts_b_dec_at_the_sample_mean(tmp_path, center):
    from saeforge.config import ToyConfig
    from saeforge.pipeline import common

    X = torch.randn(20000, 8, generator=torch.Generator().manual_seed(0)) + torch.arange(8.0)
    run = common.start(ToyConfig(out=str(tmp_path / "run"), d_model=8, n_features=16, steps=10, init="orthogonal",
                                 center_init=center, device="cpu", progress=False))
    common.resolve(run, 8)
    sae = common.build_sae(run, 8, lambda n: X[:n])
    want = X[:16384].mean(0) if center else torch.zeros(8)
    torch.testing.assert_close(sae.b_dec.detach(), want)
    assert not (tmp_path / "run").exists()  # nothing written before training starts
