"""The synthetic benchmark's generator and metrics, against SAELens's own (sae_lens.synthetic)."""

import json
import subprocess
import sys

import pytest
import torch

import saeforge
from saeforge.cli import main
from saeforge.evaluation import metrics
from saeforge.sources.synthetic import SyntheticData

SMALL = dict(d_model=32, n_features=200, roots=8, branching=3, depth=2, seed=1)


def test_firing_rates_follow_the_probabilities_through_the_hierarchy():
    data = SyntheticData.generate(**SMALL, exclusive=0.0)
    _, a = data.batch(0, 100_000)
    rate = (a > 0).double().mean(0)
    h = data.hierarchy
    # independent Bernoulli draws, a child kept only where its parent fired: rate = p · rate(parent)
    parent = h.parent_F
    expect = data.probs_F.double() * torch.where(parent >= 0, rate[parent.clamp(min=0)], torch.ones_like(rate))
    sigma = (expect * (1 - expect) / 100_000).sqrt()
    assert ((rate - expect).abs() <= 5 * sigma + 1e-4).all()
    roots = parent < 0
    torch.testing.assert_close(rate[roots], data.probs_F.double()[roots], atol=5e-3, rtol=0)


def test_hierarchy_and_mutual_exclusion_hold_on_every_sample():
    data = SyntheticData.generate(**SMALL, exclusive=1.0, correlation_rank=4, magnitude_std=0.3)
    h = data.hierarchy
    assert h.groups and len(h.children_of()) > 50
    _, a = data.batch(3, 20_000)
    on = a > 0
    kids = (h.parent_F >= 0).nonzero()[:, 0]
    assert not (on[:, kids] & ~on[:, h.parent_F[kids]]).any(), "a child fired without its parent"
    for _, sibs in h.groups.values():
        for row in sibs.tolist():
            row = [s for s in row if s >= 0]
            assert on[:, row].sum(1).max() <= 1, "two mutually exclusive siblings fired together"
    assert on[:, kids].any(0).float().mean() > 0.9  # and children do fire
    # a pure function of (seed, step)
    assert torch.equal(data.batch(3, 20_000)[1], a) and not torch.equal(data.batch(4, 20_000)[1], a)


def test_the_sparse_sampler_draws_what_the_dense_one_draws():
    """sampler.py (only the firing entries, geometric skipping, thinning) against the dense draws
    (a number per feature and sample) on every kind of unit: free features with correlated firing,
    a rescaling exclusive parent, a grandchild, a parentless exclusive group, zero magnitudes."""
    from saeforge.sources.synthetic import Hierarchy

    F, n = 40, 200_000
    nodes = [{"feature_index": 0, "scale_children_by_parent": True, "mutually_exclusive_children": True,
              "children": [{"feature_index": 1, "children": [{"feature_index": 4}, {"feature_index": 5}]},
                           {"feature_index": 2}, {"feature_index": 3}]},
             {"feature_index": None, "mutually_exclusive_children": True,
              "children": [{"feature_index": 6}, {"feature_index": 7}, {"feature_index": 8}]},
             {"feature_index": 9, "children": [{"feature_index": 10}, {"feature_index": 11}]}]
    g = torch.Generator().manual_seed(0)
    p_F = 0.05 + 0.45 * torch.rand(F, generator=g)
    L_FR = 0.4 * torch.randn(F, 3, generator=g)
    L_FR *= (0.9 / (L_FR ** 2).sum(1, keepdim=True)).sqrt().clamp(max=1)
    args = (torch.randn(F, 16, generator=g), torch.zeros(16), p_F, torch.ones(F), torch.full((F,), 0.8),
            Hierarchy(F, nodes), L_FR, 1 - (L_FR ** 2).sum(1))
    (_, dense), (_, sparse) = (SyntheticData(*args, seed=2, sparse=s).batch(0, n) for s in (False, True))
    on_d, on_s = (dense > 0).double(), (sparse > 0).double()
    rate_d, rate_s = on_d.mean(0), on_s.mean(0)
    sigma = (rate_d * (1 - rate_d) / n).sqrt()
    assert ((rate_d - rate_s).abs() <= 5 * sigma + 1e-3).all()
    def mean_and_se(a, on):  # a firing entry's mean magnitude (children scaled by a parent included)
        k = on.sum(0)
        mean = a.double().sum(0) / k
        return mean, ((a.double() ** 2).sum(0) / k - mean ** 2).sqrt() / k.sqrt()

    (mean_d, se_d), (mean_s, se_s) = mean_and_se(dense, on_d), mean_and_se(sparse, on_s)
    assert ((mean_d - mean_s).abs() <= 5 * (se_d ** 2 + se_s ** 2).sqrt()).all()
    free = slice(12, F)  # the low-rank correlation among features drawn by thinning
    corr_d, corr_s = torch.corrcoef(on_d[:, free].T), torch.corrcoef(on_s[:, free].T)
    assert (corr_d - corr_s).abs().max() < 0.02 and corr_d.fill_diagonal_(0).abs().max() > 0.05
    for on in (on_s, on_d):
        assert on[:, [1, 2, 3]].sum(1).max() == 1 and on[:, [6, 7, 8]].sum(1).max() == 1
        assert not (on[:, [4, 5]].amax(1) > on[:, 1]).any()


def test_a_batch_is_the_same_at_any_thread_count():
    data = SyntheticData.generate(**SMALL, exclusive=0.5, correlation_rank=4, magnitude_std=0.3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        wide = data.batch(5, 4096)
        torch.set_num_threads(1)
        narrow = data.batch(5, 4096)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(wide[0], narrow[0]) and torch.equal(wide[1], narrow[1])


def test_mcc_is_one_on_the_truth_and_at_chance_for_random_directions():
    data = SyntheticData.generate(**SMALL)
    F = data.features_FD
    cos = lambda W: torch.nn.functional.normalize(W, dim=1) @ F.T  # noqa: E731
    assert metrics.mcc(cos(F))[0] == pytest.approx(1.0, abs=1e-5)
    assert metrics.mcc(cos(F[torch.randperm(200)]))[0] == pytest.approx(1.0, abs=1e-5)
    g = torch.Generator().manual_seed(0)
    chance = [metrics.mcc(cos(torch.randn(200, 32, generator=g)))[0] for _ in range(3)]
    assert max(chance) - min(chance) < 0.02 and 0.2 < chance[0] < 0.5  # well below 1, stable for the size
    # the data's features do not come from the stream that the same --seed gives the SAE's random init
    from saeforge.dictionary.architectures import create
    from saeforge.dictionary.init import initialize
    sae = create("standard", 32, 200)
    initialize(sae, "orthogonal", seed=SMALL["seed"])
    assert metrics.mcc(cos(sae.W_dec.detach()))[0] < max(chance) + 0.03


@pytest.fixture(scope="module")
def saelens_model(tmp_path_factory):
    synth = pytest.importorskip("sae_lens.synthetic")
    cfg = synth.SyntheticModelConfig(
        num_features=256, hidden_dim=32,
        firing_probability=synth.ZipfianFiringProbabilityConfig(exponent=1.0, max_prob=0.4, min_prob=0.02),
        hierarchy=synth.HierarchyConfig(total_root_nodes=8, branching_factor=4, max_depth=2,
                                        mutually_exclusive_portion=0.5, compensate_probabilities=True),
        correlation=synth.LowRankCorrelationConfig(rank=4, correlation_scale=0.1),
        std_firing_magnitudes=synth.FoldedNormalMagnitudeConfig(mean=0.2, std=0.1), bias=0.5, seed=3)
    model = synth.SyntheticModel(cfg)
    path = tmp_path_factory.mktemp("synthetic") / "model"
    model.save(path)
    return model, path


def test_a_saelens_synthetic_model_reads_as_it_is(saelens_model):
    model, path = saelens_model
    data = SyntheticData.read_saelens(path)
    gen = model.activation_generator
    assert torch.equal(data.features_FD, model.feature_dict.feature_vectors.data)
    assert torch.equal(data.bias_D, model.feature_dict.bias.data)
    for ours, theirs in ((data.probs_F, gen.firing_probabilities), (data.mean_F, gen.mean_firing_magnitudes),
                         (data.std_F, gen.std_firing_magnitudes)):
        assert torch.equal(ours, theirs)
    parents = {c: p for p, c in data.hierarchy.children_of()}

    def walk(node, parent):
        if parent is not None:
            assert parents.pop(node.feature_index) == parent
        for child in node.children:
            walk(child, node.feature_index)

    for root in model.hierarchy.roots:
        walk(root, None)
    assert not parents
    # SAELens samples from the global RNG: equal in distribution, not draw for draw
    torch.manual_seed(0)
    theirs = model.activation_generator.sample(100_000)
    ours = data.batch(0, 100_000)[1]
    rate_t, rate_o = (theirs > 0).double().mean(0), (ours > 0).double().mean(0)
    sigma = (rate_t * (1 - rate_t) / 100_000).sqrt()
    assert ((rate_t - rate_o).abs() <= 6 * sigma + 2e-3).all()
    assert float((theirs > 0).sum(1).double().mean()) == pytest.approx(float((ours > 0).sum(1).double().mean()), rel=0.02)
    assert float(theirs[theirs > 0].mean()) == pytest.approx(float(ours[ours > 0].mean()), rel=0.02)


def test_metrics_agree_with_saelens_eval_on_the_same_dictionary(saelens_model, tmp_path):
    synth = pytest.importorskip("sae_lens.synthetic")
    from sae_lens import SAE

    model, path = saelens_model
    out = tmp_path / "run"
    assert main(["toy", "--synthetic-model", str(path), "--architecture", "topk", "--k", "6", "--steps", "150",
                 "--batch-size", "512", "--eval-samples", "50000", "--out", str(out), "--no-progress"]) == 0
    ours = json.loads((out / "summary.json").read_text())["ground_truth"]
    torch.manual_seed(0)
    theirs = synth.eval_sae_on_synthetic_data(SAE.load_from_disk(str(out)), model.feature_dict,
                                              model.activation_generator, num_samples=50_000)
    assert ours["mcc"] == pytest.approx(theirs.mcc, abs=1e-5)  # a function of the weights only
    assert ours["uniqueness"] == pytest.approx(theirs.uniqueness, abs=1e-9)
    assert ours["l0"] == pytest.approx(theirs.sae_l0, rel=0.03)
    assert ours["true_l0"] == pytest.approx(theirs.true_l0, rel=0.03)
    for name, value in (("f1", theirs.classification.f1_score), ("precision", theirs.classification.precision),
                        ("recall", theirs.classification.recall), ("shrinkage", theirs.shrinkage),
                        ("explained_variance", theirs.explained_variance)):
        assert ours[name] == pytest.approx(value, abs=0.02), name
    assert abs(ours["dead_latents"] - theirs.dead_latents) <= 3
    assert 0 <= ours["absorption"] <= 1 and ours["parent_recall_with_child"] is not None
    assert saeforge.load(out).W_dec.shape == (256, 32)


@pytest.mark.parametrize("break_it, says", [
    (lambda p: (p / "synthetic_model.safetensors").unlink(), "not a SAELens synthetic model"),
    (lambda p: (p / "synthetic_model_config.json").write_text("{not json"), "synthetic_model_config.json"),
    (lambda p: (p / "hierarchy.json").write_text(json.dumps({"roots": [{"feature_index": 9999}]})), "out of range"),
    (lambda p: (p / "hierarchy.json").write_text(json.dumps({"roots": [{"feature_index": "a"}]})), "integer feature_index"),
])
def test_a_malformed_synthetic_model_is_one_line_exit_2(saelens_model, tmp_path, break_it, says):
    _, path = saelens_model
    bad = tmp_path / "bad"
    subprocess.run(["cp", "-r", str(path), str(bad)], check=True)
    break_it(bad)
    p = subprocess.run([sys.executable, "-m", "saeforge", "toy", "--synthetic-model", str(bad), "--steps", "5",
                        "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    lines = (p.stdout + p.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("saeforge: error:") and says in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_mixture_latents_count_rows_that_carry_two_features():
    """A dictionary that is the true features scores the data's own chance level; one whose rows
    are each the sum of two distinct features is all mixtures."""
    from saeforge.dictionary.architectures import create
    from saeforge.sources.synthetic import recovery

    data = SyntheticData.generate(**{**SMALL, "d_model": 128, "n_features": 64, "roots": 4})  # features nearly ⟂
    F_FD = data.features_FD
    sae = create("standard", 128, 64)
    with torch.no_grad():
        sae.W_dec.copy_(F_FD)
        sae.W_enc.copy_(F_FD.T)
    truth = recovery(sae, data, 2000)
    assert truth["mixture_latents"] == truth["mixture_chance"] < 16
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(F_FD + F_FD.roll(1, 0), dim=1))
    assert recovery(sae, data, 2000)["mixture_latents"] == 64
