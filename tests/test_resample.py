import json
from dataclasses import replace

import pytest
import torch

import saeforge
from saeforge import SparseAutoencoder
from saeforge.cli import main
from saeforge.config import ToyConfig, TrainConfig
from saeforge.dictionary.init import initialize
from saeforge.errors import UserError
from saeforge.sources.toy import ToyData
from saeforge.training.checkpoint import read_checkpoint
from saeforge.training.resample import Resampler, anthropic_directions, clustered_directions, unexplained
from saeforge.training.trainer import Trainer

SMALL = ["--init", "orthogonal", "--d-model", "16", "--n-features", "32", "--batch-size", "64", "--no-progress", "--log-every", "10"]


def _trained(method: str):
    data = ToyData(16, 32, n_active=3, seed=0)
    sae = SparseAutoencoder(16, 32)
    initialize(sae, "orthogonal", seed=0)
    cfg = TrainConfig.from_values(dict(
        out="unused", resample=method, resample_at="5", batch_size=64, l1_coefficient=0.1, lr=3e-3, dict_size=32,
        unit_norm_decoder=True, resample_sample=2048, resample_worst=256, resample_clusters=8, lr_warmup_steps=0,
        l1_warmup_steps=0, lr_decay_steps=0)).resolved(100, 16)
    sampler = lambda n, step, part=0: torch.cat([data.batch(-(1000 + j), 1024)[0] for j in range(-(-n // 1024))])[:n]
    tr = Trainer(sae, cfg)
    batches = data.batches(64)
    for _ in range(4):
        tr.train_step(next(batches))
    return tr, cfg, sampler, batches


@pytest.mark.parametrize("direction", ["residual", "centroid"])
def test_a_pool_scored_in_chunks_renews_as_one_pool_does(direction, monkeypatch):
    """A large pool is streamed (only the top candidates kept): the same renewals, directions and
    firing counts as the pool scored at once."""
    from saeforge.training import resample

    pool_ND = ToyData(16, 32, n_active=3, seed=5).fresh(2048, 7)
    sampler = lambda n, step, part: pool_ND[part * resample.POOL_CHUNK:][:n]
    out = {}
    for chunk in (4096, 300):
        tr, cfg, _, batches = _trained("clustered")
        cfg = replace(cfg, resample_direction=direction, resample_worst=64)
        tr.train_step(next(batches))
        tr.state.tokens_since_fired_F[[1, 7, 20]] = 10**9
        with torch.no_grad():
            tr.sae.b_enc[[1, 7]] = -1e3
        monkeypatch.setattr(resample, "POOL_CHUNK", chunk)
        event = Resampler(cfg, sampler)(tr)
        out[chunk] = event, tr.sae.W_dec.detach().clone()
    assert out[300][0]["dead"] == out[4096][0]["dead"] >= 2 and out[300][0]["pool"] == 2048
    torch.testing.assert_close(out[300][1], out[4096][1])


def test_the_auto_pool_grows_with_the_dictionary():
    cfg = replace(ToyConfig(), resample="clustered")  # --resample-sample auto, resolved by the run config
    sizes = [Resampler(replace(cfg, dict_size=f).resolved(5000, 8), None).pool_size(SparseAutoencoder(8, f))
             for f in (64, 256, 512, 1024)]
    assert sizes == [131072, 131072, 524288, 2097152]
    assert Resampler(replace(cfg, resample_sample=100).resolved(5000, 8), None).pool_size(SparseAutoencoder(8, 64)) == 100


@pytest.mark.parametrize("method", ["anthropic", "clustered"])
def test_dead_features_get_new_rows_and_fresh_adam_state(method):
    tr, cfg, sampler, batches = _trained(method)
    tr.train_step(next(batches))  # step 5: the scheduled step
    dead = torch.tensor([1, 7, 20])
    tr.state.tokens_since_fired_F.zero_()
    tr.state.tokens_since_fired_F[dead] = 10**9
    with torch.no_grad():
        tr.sae.b_enc[dead] = -1e3  # truly dead: they fire on no fresh input either
    before = {n: p.detach().clone() for n, p in tr.sae.named_parameters()}
    adam = {n: {k: v.clone() for k, v in tr.opt.state[p].items()} for n, p in tr.sae.named_parameters()}
    event = Resampler(cfg, sampler)(tr)
    assert event["dead"] == 3 and event["step"] == 5
    sae, alive = tr.sae, torch.ones(32, dtype=torch.bool)
    alive[dead] = False
    # alive features untouched, weights and optimizer state alike
    assert torch.equal(sae.W_dec[alive], before["W_dec"][alive])
    assert torch.equal(sae.W_enc[:, alive], before["W_enc"][:, alive])
    assert torch.equal(sae.b_enc[alive], before["b_enc"][alive])
    assert torch.equal(sae.b_dec, before["b_dec"])
    # dead ones got new unit directions, encoder = 0.2 × mean alive norm along them, bias 0
    assert not torch.isclose(sae.W_dec[dead], before["W_dec"][dead]).all(dim=1).any()
    torch.testing.assert_close(sae.W_dec[dead].norm(dim=1), torch.ones(3))
    enc_scale = before["W_enc"][:, alive].norm(dim=0).mean() * 0.2
    torch.testing.assert_close(sae.W_enc[:, dead], sae.W_dec[dead].T * enc_scale)
    assert torch.equal(sae.b_enc[dead], torch.zeros(3))
    for n, p in sae.named_parameters():
        st = tr.opt.state[p]
        for k in ("exp_avg", "exp_avg_sq"):
            if n == "W_enc":
                assert (st[k][:, dead] == 0).all() and torch.equal(st[k][:, alive], adam[n][k][:, alive])
            elif n in ("W_dec", "b_enc"):
                assert (st[k][dead] == 0).all() and torch.equal(st[k][alive], adam[n][k][alive])
            else:
                assert torch.equal(st[k], adam[n][k])
    assert (tr.state.tokens_since_fired_F[dead] == 0).all()


def test_alive_encoder_makes_new_features_fire_like_their_peers():
    tr, cfg, sampler, batches = _trained("clustered")
    tr.train_step(next(batches))
    dead = torch.tensor([0, 5])
    tr.state.tokens_since_fired_F.zero_()
    tr.state.tokens_since_fired_F[dead] = 10**9
    with torch.no_grad():
        tr.sae.b_enc[dead] = -1e3
        tr.sae.b_enc[8:] = -0.1 * torch.arange(24) / 24
    alive = torch.ones(32, dtype=torch.bool)
    alive[dead] = False
    norm, bias = tr.sae.W_enc[:, alive].norm(dim=0).median(), tr.sae.b_enc[alive].median()
    assert Resampler(replace(cfg, resample_encoder="alive"), sampler)(tr)["dead"] == 2
    torch.testing.assert_close(tr.sae.W_enc[:, dead], tr.sae.W_dec[dead].T * norm)
    torch.testing.assert_close(tr.sae.b_enc[dead], torch.full((2,), bias.item()))


def test_silent_in_the_window_but_firing_on_fresh_inputs_is_not_dead():
    tr, cfg, sampler, batches = _trained("clustered")
    tr.train_step(next(batches))
    tr.state.tokens_since_fired_F.zero_()
    tr.state.tokens_since_fired_F[[2, 3]] = 10**9  # not seen lately, but their encoders still fire
    with torch.no_grad():
        tr.sae.b_enc[3] = -1e3  # this one cannot fire at all
    W = tr.sae.W_dec.detach().clone()
    event = Resampler(cfg, sampler)(tr)
    assert (event["dead"], event["duplicates"], event["resampled"]) == (1, 0, 1)
    assert torch.equal(tr.sae.W_dec[2], W[2]) and not torch.equal(tr.sae.W_dec[3], W[3])


def test_stream_pool_draws_nothing_and_keeps_the_worst_training_inputs():
    """--resample-pool stream: an event renews the features silent since the last event from the
    worst inputs of the batches since then (no fresh draw); a feature silent for the trainer's
    window but not for the interval is not dead; the candidates are carried to the next event."""
    def no_draw(n, step, part):
        raise AssertionError("a stream pool draws no fresh inputs")

    tr, cfg, _, batches = _trained("clustered")
    cfg = replace(cfg, resample_pool="stream", resample_direction="residual", resample_worst=16, resample_at="8,12",
                  dead_window=128)
    tr.cfg = cfg
    rs = Resampler(cfg, no_draw)
    with torch.no_grad():
        tr.sae.b_enc[[3, 9]] = -1e3  # they fire in none of the interval's batches
    seen, events = [], []
    for _ in range(4):  # steps 5-8
        x_BD = next(batches)
        seen.append(x_BD)
        out = tr.train_step(x_BD)
        if tr.step == 8:
            tr.state.tokens_since_fired_F.zero_()
            tr.state.tokens_since_fired_F[[3, 9]] = 10**9
            tr.state.tokens_since_fired_F[2] = 300  # silent for the window (128), not for the interval (4 × 64)
            W = tr.sae.W_dec.detach().clone()
        rs.observe(tr, x_BD, out)
        events.append(rs(tr))
    assert events[:3] == [None] * 3 and (events[3]["dead"], events[3]["pool"]) == (2, 4 * 32)  # 32 per batch
    assert torch.equal(tr.sae.W_dec[2], W[2]) and not torch.equal(tr.sae.W_dec[3], W[3])
    assert rs.rows == [] and rs.fired_F is None  # the next interval starts empty…
    pool_ND = torch.cat(seen)
    assert len(rs.carry) == 8 * 16 and all(bool((pool_ND == r).all(1).any()) for r in rs.carry)  # …with these
    for _ in range(4):  # steps 9-12: the second event scores the carried candidates and the new rows
        x_BD = next(batches)
        out = tr.train_step(x_BD)
        rs.observe(tr, x_BD, out)
        event = rs(tr)
    assert event["step"] == 12 and event["pool"] == 8 * 16 + 4 * 64  # the 128 carried; 64 per batch of a 4-step interval


def test_duplicates_free_the_rarer_twin():
    tr, cfg, sampler, batches = _trained("clustered")
    tr.train_step(next(batches))
    tr.state.tokens_since_fired_F.zero_()
    sae = tr.sae
    X = sampler(2048, 0)
    with torch.no_grad():  # feature 9 becomes a near copy of 4 that fires less (higher threshold)
        sae.W_dec[9] = sae.W_dec[4] + 0.05 * torch.randn(16, generator=torch.Generator().manual_seed(0))
        sae.W_dec[9] /= sae.W_dec[9].norm()
        sae.W_enc[:, 9] = sae.W_enc[:, 4]
        sae.b_enc[9] = sae.b_enc[4] - 0.05
    fires_F = (sae.encode(X) > 0).sum(0)
    assert fires_F[9] < fires_F[4]
    W = sae.W_dec.detach().clone()
    assert Resampler(cfg, sampler)(tr)["resampled"] == 0  # off by default
    event = Resampler(replace(cfg, resample_duplicates=0.9), sampler)(tr)
    assert (event["dead"], event["duplicates"]) == (0, 1)
    assert torch.equal(sae.W_dec[4], W[4]) and not torch.equal(sae.W_dec[9], W[9])
    others = torch.ones(32, dtype=torch.bool)
    others[9] = False
    assert torch.equal(sae.W_dec[others], W[others])


def test_nothing_happens_off_schedule_or_with_none():
    tr, cfg, sampler, batches = _trained("clustered")
    tr.state.tokens_since_fired_F.fill_(10**9)
    W = tr.sae.W_dec.detach().clone()
    assert Resampler(cfg, sampler)(tr) is None  # step 4, scheduled at 5
    tr.state.step = 5
    assert Resampler(replace(cfg, resample="none"), sampler)(tr) is None
    assert torch.equal(tr.sae.W_dec, W)


def _half_learned():
    """A dictionary that knows the 16 most frequent of 32 true features and nothing else."""
    data = ToyData(128, 32, n_active=3, decay=0.9, seed=2, correlated=False)
    sae = SparseAutoencoder(128, 32)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.W_dec[:16] = data.features_FD[:16]
        sae.W_enc.copy_(sae.W_dec.T)
    X = torch.cat([data.batch(-(j + 1), 1024)[0] for j in range(8)])
    return data, sae, X


def _share_unlearned(data, V):
    V = V / V.norm(dim=1, keepdim=True)
    return ((V @ data.features_FD.T).abs().argmax(1) >= 16).float().mean().item()


@pytest.mark.parametrize("method", ["anthropic", "clustered-residual"])
def test_new_directions_point_at_features_not_yet_learned(method):
    data, sae, X = _half_learned()
    g = torch.Generator().manual_seed(0)
    if method == "anthropic":
        V = anthropic_directions(sae, X, 16, g)
    else:
        V = clustered_directions(sae, X, 16, g, worst=512, clusters=16, direction=method.split("-")[1], seed=0)
    random_rows = X[torch.randperm(len(X), generator=torch.Generator().manual_seed(1))[:256]]
    base = _share_unlearned(data, random_rows)
    got = _share_unlearned(data, V)
    assert base < 0.3  # frequent (learned) features dominate random inputs
    # (member − centroid directions do not: they point at whatever varies inside a cluster,
    # learned features included; docs/resampling.md compares the two in training)
    floor = 0.9 if method == "clustered-residual" else 0.5
    assert got >= floor, (method, got, base)


def test_clustered_spreads_over_failure_modes():
    """Residual directions of clustered resampling cover distinct unlearned features, not one."""
    data, sae, X = _half_learned()
    V = clustered_directions(sae, X, 16, torch.Generator().manual_seed(0), worst=512, clusters=16,
                             direction="residual", seed=0)
    V = V / V.norm(dim=1, keepdim=True)
    hit = (V @ data.features_FD.T).abs().argmax(1)
    assert len(set(hit.tolist())) >= 12, hit


def test_unexplained_ignores_shrinkage_and_keeps_what_is_missing():
    """The part of x no firing feature can explain: ~0 for an input made of learned features
    however the codes shrink them, the missing feature's component orthogonal to the firing
    rows otherwise. The plain residual x − x̂ is large in both cases."""
    data, sae, _ = _half_learned()
    with torch.no_grad():
        sae.W_enc.mul_(0.5)  # codes at half size: the plain residual is half of every input
    F_FD = data.features_FD
    known = 0.8 * F_FD[0] + 0.6 * F_FD[3]
    missing = known + 0.7 * F_FD[20]
    X = torch.stack([known, missing])
    u_ND = unexplained(sae, X)
    r_ND = X - sae(X).detach()
    assert r_ND[0].norm() > 0.4 and u_ND[0].norm() < 1e-3
    firing = sae.W_dec[(sae.encode(X[1:]) > 0)[0]].detach()  # rows of the features firing on x
    P = firing.T @ torch.linalg.pinv(firing.T)
    want = 0.7 * (F_FD[20] - P @ F_FD[20])
    assert torch.allclose(u_ND[1], want, atol=1e-3), (u_ND[1].norm(), want.norm())


def test_bad_settings_are_clear_errors(tmp_path, capsys):
    cfg = TrainConfig(out="x", resample="clustered", resample_every=0, batch_size=64, lr_decay_steps=0)
    with pytest.raises(UserError, match="resample-every >= 1"):
        cfg.resolved(100, 16)  # the run config checks resampling's settings against the budget
    with pytest.raises(UserError, match="not shorter than training"):
        replace(cfg, resample_every=10, dead_window=10**6).resolved(100, 16)
    with pytest.raises(UserError, match="no resampling step falls inside"):
        replace(cfg, resample_every=80).resolved(100, 16)
    # never in the last interval, nor once the learning rate decays
    assert replace(cfg, resample_every=10).resolved(100, 16).resample_steps() == list(range(10, 91, 10))
    assert replace(cfg, resample_every=10, lr_decay_steps=35).resolved(100, 16).resample_steps() == list(range(10, 61, 10))
    assert replace(cfg, resample_at="5,99,100,300", lr_decay_steps=35).resolved(100, 16).resample_steps() == [5, 99]
    for flags, msg in ((["--resample", "clustered", "--resample-every", "0"], "resample-every >= 1"),
                       (["--resample", "anthropic", "--steps", "20", "--dead-window", "100000"], "not shorter than training"),
                       (["--resample", "magic"], "--resample 'magic' is unknown"),
                       (["--resample", "clustered", "--resample-at", "5,x"], "comma-separated"),
                       (["--resample-direction", "up"], "residual or centroid"),
                       (["--resample-duplicates", "1.5"], "--resample-duplicates must be in [0, 1]"),
                       (["--resample-encoder", "loud"], "anthropic or alive"),
                       (["--adam-eps", "0"], "--adam-eps must be a finite number > 0")):
        assert main(["toy", *SMALL, "--out", str(tmp_path / "bad"), *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("saeforge: error:") and msg in err[0], err
        assert not (tmp_path / "bad" / "summary.json").exists()


def _toy(out, *extra):
    assert main(["toy", *SMALL, "--out", str(out), *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def test_toy_run_with_resampling_is_reproducible(tmp_path):
    flags = ["--steps", "60", "--target-mmcs", "0", "--resample", "clustered", "--resample-every", "15",
             "--dead-window", "128", "--lr", "3e-2", "--l1", "1", "--resample-sample", "2048",
             "--lr-decay-steps", "0", "--beta2", "0.999", "--resample-duplicates", "0.9"]
    full = _toy(tmp_path / "a", *flags)
    _toy(tmp_path / "b", *flags)
    a, b = saeforge.load(tmp_path / "a"), saeforge.load(tmp_path / "b")
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    events = json.loads((tmp_path / "a" / "checkpoint" / "state.json").read_text())["resample_events"]
    assert [e["step"] for e in events] == [15, 30, 45] and sum(e["resampled"] for e in events) > 0, events
    assert full["resampled"] == sum(e["dead"] + e["duplicates"] for e in events)


@pytest.mark.parametrize("method,pool", [("anthropic", "fresh"), ("clustered", "fresh"), ("clustered", "stream")])
def test_interrupted_run_resumes_across_resampling_to_the_same_weights(tmp_path, method, pool):
    data = ToyData(16, 32, n_active=3, seed=0)
    cfg = TrainConfig.from_values(dict(
        out=str(tmp_path), resample=method, resample_every=10, dead_window=128, batch_size=64, resample_pool=pool,
        resample_direction="residual", lr=3e-2, l1_coefficient=1.0, unit_norm_decoder=True, progress=False,
        resample_sample=1024, lr_warmup_steps=0, l1_warmup_steps=0, lr_decay_steps=0, resample_worst=128,
        resample_clusters=4, dict_size=32)).resolved(50, 16)
    sampler = lambda n, step, part=0: torch.cat([data.batch(-(10**6 + step * 1000 + j), 1024)[0] for j in range(-(-n // 1024))])[:n]

    def fresh(out):
        out.mkdir(exist_ok=True)
        sae = SparseAutoencoder(16, 32)
        initialize(sae, "orthogonal", seed=0)
        return Trainer(sae, replace(cfg, out=str(out)), out, resampler=Resampler(cfg, sampler))

    ref = fresh(tmp_path / "ref")
    ref.fit(data.batches(64), 50)
    part = fresh(tmp_path / "part")
    part.fit(data.batches(64), 50, callback=lambda tr, _: tr.step == 25)  # after the 2nd event, mid-interval
    part.save_checkpoint()
    resumed = fresh(tmp_path / "part")
    resumed.restore(read_checkpoint(tmp_path / "part"))
    assert resumed.step == 25
    resumed.fit(data.batches(64, start=25), 50)
    assert [e["step"] for e in resumed.state.resample_events] == [10, 20, 30, 40]
    assert sum(e["dead"] for e in ref.state.resample_events) > 0
    for (n, p), (_, q) in zip(ref.sae.named_parameters(), resumed.sae.named_parameters()):
        assert torch.equal(p, q), n


def test_toy_defaults_shrink_to_a_short_budget_but_never_override_the_user(tmp_path, capsys):
    small = ["--d-model", "16", "--n-features", "32", "--batch-size", "64", "--no-progress", "--target-mmcs", "0"]
    assert main(["toy", *small, "--steps", "40", "--out", str(tmp_path / "short")]) == 0
    s = json.loads((tmp_path / "short" / "summary.json").read_text())
    assert (s["resample"], s["lr_decay_steps"], s["steps"]) == ("none", 20, 40)  # no resampling step fits
    assert main(["toy", *small, "--steps", "600", "--out", str(tmp_path / "long")]) == 0
    s = json.loads((tmp_path / "long" / "summary.json").read_text())
    assert (s["resample"], s["lr_decay_steps"], s["resample_events"]) == ("clustered", 300, 1)  # at step 250
    # asked for explicitly, the same settings are an error, not silently dropped
    assert main(["toy", *small, "--steps", "40", "--resample", "clustered", "--out", str(tmp_path / "bad")]) == 2
    assert "no resampling step falls inside" in capsys.readouterr().err
    # on synthetic data auto is off (clustered resampling lost there: docs/methods-synthetic.md); asked for, it runs
    cfg = ToyConfig(out="x", d_model=16, n_features=32, batch_size=64, data="synthetic")
    assert cfg.resolved(600, 16).resample == "none"
    assert replace(cfg, synthetic_model="m", data="seed").resolved(600, 16).resample == "none"
    assert replace(cfg, data="seed").resolved(600, 16).resample == "clustered"
    assert replace(cfg, resample="clustered").resolved(600, 16).resample == "clustered"


def test_a_misshapen_stream_pool_in_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    flags = ["toy", *SMALL, "--target-mmcs", "0", "--resample", "clustered", "--resample-at", "10,25",
             "--out", str(tmp_path)]
    assert main([*flags, "--steps", "30"]) == 0
    state = tmp_path / "checkpoint" / "state.safetensors"
    tensors = load_file(state)
    assert tensors["resample.carry"].shape[1] == 16  # the stream pool's candidates (the toy default)
    tensors["resample.carry"] = tensors["resample.carry"][:, :5].contiguous()
    save_file(tensors, state)
    assert main([*flags, "--steps", "40", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("saeforge: error: checkpoint") and "resample.carry is misshapen" in err[-1]
