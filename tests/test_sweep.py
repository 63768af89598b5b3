import json
import math

import numpy as np
import pytest

from saeforge.cli import main
from saeforge.errors import UserError
from saeforge.evaluation.scaling import (analyze, bootstrap_power_law, fit_power_law, loss_tables, parse_grid, suggest,
                                         train_flops)

D, B = 128, 512


def synthetic_runs(alpha=0.5, beta=0.3, A=40.0, Bc=25.0, noise=0.0, l1=5.0, seed=0):
    """Loss = A·F^-α + B·S^-β on a √2 ladder: the optimum at budget C = 12·d·B·F·S has
    F* ∝ C^(β/(α+β)), S* ∝ C^(α/(α+β)), L* ∝ C^(-αβ/(α+β))."""
    rs = np.random.default_rng(seed)
    runs = []
    for i in range(13):
        for j in range(13):
            F, S = 64 * 2 ** (i / 2), 100 * 2 ** (j / 2)
            loss = (A * F ** -alpha + Bc * S ** -beta) * math.exp(noise * rs.normal())
            runs.append({"d_sae": F, "steps": S, "l1_coefficient": l1, "flops": train_flops(D, F, B * S), "loss_l1": loss,
                         "mse": loss, "l0": 1.0})
    return runs


def test_fit_power_law_is_exact_on_a_power_law():
    x = np.geomspace(1, 1e6, 20)
    k, e = fit_power_law(x, 3.0 * x ** -0.25)
    assert abs(e + 0.25) < 1e-9 and abs(k - 3.0) < 1e-6
    b = bootstrap_power_law(x, 3.0 * x ** -0.25 * np.exp(np.random.default_rng(0).normal(0, 0.05, 20)), n_boot=300)
    assert b["e_lo"] < -0.25 < b["e_hi"]


@pytest.mark.parametrize("alpha,beta,Bc", [(0.5, 0.3, 25.0), (0.3, 0.6, 400.0)])
def test_isoflop_analysis_recovers_known_exponents(alpha, beta, Bc):
    res = analyze(synthetic_runs(alpha, beta, Bc=Bc), D, B, alpha=0.1, n_boot=200)["l1"][5.0]
    assert len(res["optima"]) >= 5
    assert abs(res["features_vs_flops"]["e"] - beta / (alpha + beta)) < 0.05, res["features_vs_flops"]
    assert abs(res["steps_vs_flops"]["e"] - alpha / (alpha + beta)) < 0.05, res["steps_vs_flops"]
    assert abs(res["loss_vs_flops"]["e"] + alpha * beta / (alpha + beta)) < 0.03, res["loss_vs_flops"]
    assert abs(res["steps_vs_features"]["e"] - alpha / beta) < 0.15, res["steps_vs_features"]


def test_exponents_survive_noise_and_intervals_cover_them():
    res = analyze(synthetic_runs(noise=0.01, seed=3), D, B, alpha=0.1, n_boot=500)["l1"][5.0]
    f = res["features_vs_flops"]
    assert f["e_lo"] <= f["e"] <= f["e_hi"]
    assert f["e_lo"] - 0.05 < 0.375 < f["e_hi"] + 0.05, f


def test_seeds_average_per_cell_and_their_noise_widens_the_intervals():
    """Several seeds per cell: the point estimate is the seed-mean's, and the bootstrap that resamples
    each cell's seeds (refitting every parabola) gives intervals that cover the truth and widen with
    the seed noise; the L0 loss chooses λ per cell on the seed-mean."""
    def seeds(noise):
        runs = []
        for s in range(4):
            runs += [dict(r, seed=s) for r in synthetic_runs(noise=noise, seed=10 + s)]
        return runs

    quiet, noisy = seeds(0.002), seeds(0.02)
    mean = {}
    for r in noisy:
        mean.setdefault((r["d_sae"], r["steps"]), []).append(r["loss_l1"])
    averaged = [dict(r, loss_l1=float(np.mean(mean[(r["d_sae"], r["steps"])])), seed=0) for r in noisy if r["seed"] == 0]
    a = analyze(noisy, D, B, alpha=0.1, n_boot=300)["l1"][5.0]
    assert a["features_vs_flops"]["e"] == pytest.approx(analyze(averaged, D, B, alpha=0.1, n_boot=10)["l1"][5.0]
                                                         ["features_vs_flops"]["e"])
    q = analyze(quiet, D, B, alpha=0.1, n_boot=300)["l1"][5.0]
    width = {name: f["features_vs_flops"]["e_hi"] - f["features_vs_flops"]["e_lo"] for name, f in (("q", q), ("a", a))}
    assert width["a"] > 2 * width["q"], width
    assert a["features_vs_flops"]["e_lo"] - 0.02 < 0.375 < a["features_vs_flops"]["e_hi"] + 0.02
    assert len(a["boot"]["log_steps_at_pivot"]) > 250
    # L0 loss: two λ whose MSE and L0 trade off; the mean decides, not any one seed
    rows = []
    for s, (m1, m2) in enumerate([(10.0, 12.5), (10.0, 11.0), (10.0, 11.0)]):
        rows += [{"d_sae": 256, "steps": 100, "l1_coefficient": 1.0, "seed": s, "flops": 1.0, "mse": m1, "l0": 6.0,
                  "loss_l1": m1},
                 {"d_sae": 256, "steps": 100, "l1_coefficient": 2.0, "seed": s, "flops": 1.0, "mse": m2, "l0": 4.0,
                  "loss_l1": m2}]
    _, l0 = loss_tables(rows, alpha=1.0)
    _, M = l0[(256, 100)]
    assert M.shape == (2, 3) and M[:, 0].argmin() == 0 and M.mean(1).argmin() == 1  # seed 0 alone: λ 1; mean: λ 2


def test_suggest_predicts_on_the_fitted_law():
    res = analyze(synthetic_runs(), D, B, alpha=0.1, n_boot=200)
    C = 1e15
    s = suggest(res, C)
    f = res["l1"][5.0]["features_vs_flops"]
    assert math.isclose(s["d_sae"]["value"], f["k"] * C ** f["e"])
    assert s["d_sae"]["lo"] <= s["d_sae"]["value"] <= s["d_sae"]["hi"]
    assert s["steps"]["lo"] <= s["steps"]["value"] <= s["steps"]["hi"]


def test_malformed_grids_are_user_errors(tmp_path, capsys):
    for text, msg in (("256,abc", "comma-separated"), ("0,256", "> 0"), ("256,256", "repeats"), ("", "empty")):
        with pytest.raises(UserError, match=msg):
            parse_grid(text, "sizes")
    cache = tmp_path / "nocache"
    for flags, msg in ((["--sizes", "64,x"], "comma-separated"), (["--steps", "-5"], "> 0"), ([], "no such directory")):
        code = main(["sweep", "--cache", str(cache), "--out", str(tmp_path / "sw"), "--no-progress", *flags])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("saeforge: error:") and msg in err[0], err
    code = main(["sweep", "--out", str(tmp_path / "empty"), "--suggest", "1e12"])
    assert code == 2 and "no finished run" in capsys.readouterr().err


@pytest.fixture(scope="module")
def cache(model_dir, text_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweepcache") / "cache"
    assert main(["harvest", "--model", str(model_dir), "--dataset", str(text_dir), "--tokens", "8000",
                 "--contexts-per-shard", "16", "--out", str(out), "--no-progress"]) == 0
    return out


def test_tiny_real_sweep_runs_end_to_end_and_resumes(cache, tmp_path, capsys):
    out = tmp_path / "sw"
    args = ["sweep", "--cache", str(cache), "--out", str(out), "--batch-size", "64", "--no-progress", "--l1s", "0.5"]
    assert main([*args, "--sizes", "32,64", "--steps", "10,20"]) == 0
    first = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    assert len(first) == 4
    for r in first:
        assert r["tokens"] == 64 * r["steps"] and r["flops"] == 12 * 32 * r["d_sae"] * r["tokens"]
        assert r["loss_l1"] == pytest.approx(r["mse"] + 0.5 * r["sparsity"]) and 0 <= r["dead_fraction"] <= 1
        assert r["eval_rows"] > 0
    # an interruption mid-write leaves a cut line: that run is redone, finished ones are not
    text = (out / "runs.jsonl").read_text().splitlines()
    (out / "runs.jsonl").write_text("\n".join(text[:3]) + "\n" + text[3][:25])
    capsys.readouterr()
    assert main([*args, "--sizes", "32,64,128", "--steps", "10,20,40"]) == 0
    rows = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    assert len(rows) == 9 and len({(r["d_sae"], r["steps"]) for r in rows}) == 9
    assert rows[:3] == first[:3]  # never redone
    fits = json.loads((out / "fits.json").read_text())
    assert fits["l1"]["0.5"]["optima"] and (out / "scaling-l1-0.5.png").stat().st_size > 1000
    # one budget with 3 sizes is too few to fit a law: --suggest says so
    code = main(["sweep", "--out", str(out), "--suggest", "1e12"])
    assert code == 2 and "too few FLOP budgets" in capsys.readouterr().err


def test_a_topk_sweep_varies_k(cache, tmp_path):
    out = tmp_path / "k"
    assert main(["sweep", "--cache", str(cache), "--out", str(out), "--batch-size", "64", "--no-progress",
                 "--architecture", "topk", "--ks", "2,8", "--sizes", "32,64", "--steps", "10"]) == 0
    rows = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted((r["d_sae"], r["k"]) for r in rows) == [(32, 2), (32, 8), (64, 2), (64, 8)]
    assert all(r["sparsity_axis"] == "k" and r["loss_l1"] == r["mse"] and r["architecture"] == "topk" for r in rows)
    by_k = {r["k"]: r["l0"] for r in rows if r["d_sae"] == 64}
    assert by_k[2] <= 2 and by_k[2] < by_k[8] <= 8


def test_runs_of_one_budget_train_side_by_side_as_they_would_alone(cache, tmp_path):
    """One pass over the cache feeds every run of a step budget; each ends as its sweep alone does."""
    args = ["sweep", "--cache", str(cache), "--batch-size", "64", "--no-progress", "--l1s", "0.5", "--steps", "20"]
    assert main([*args, "--sizes", "32,64", "--out", str(tmp_path / "both")]) == 0
    assert main([*args, "--sizes", "64", "--out", str(tmp_path / "alone")]) == 0
    both = {r["d_sae"]: r for r in map(json.loads, (tmp_path / "both" / "runs.jsonl").read_text().splitlines())}
    alone = json.loads((tmp_path / "alone" / "runs.jsonl").read_text().splitlines()[0])
    assert both[64]["trained_with"] == 2 and alone["trained_with"] == 1
    for key in ("mse", "sparsity", "l0", "explained_variance", "dead_fraction", "tokens"):
        assert both[64][key] == alone[key], key
