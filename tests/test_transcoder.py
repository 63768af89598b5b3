"""Transcoders: every architecture reads one width and reconstructs another (optionally with a skip
connection), its fast step giving autograd's loss and gradients."""

import pytest
import torch

from saeforge.dictionary.architectures import ARCHITECTURES

D, E, F, B = 12, 7, 40, 48
SETTINGS = {"standard": {}, "topk": {"k": 5, "aux_k": 6, "aux_k_coefficient": 0.25},
            "batchtopk": {"k": 5, "aux_k": 6, "aux_k_coefficient": 0.25},
            "matryoshka": {"k": 5, "aux_k": 6, "aux_k_coefficient": 0.25, "matryoshka_sizes": "4,16"},
            "jumprelu": {"jumprelu_bandwidth": 0.5}}


def transcoder(arch, skip, seed=0, **kw):
    sae = ARCHITECTURES[arch](D, F, d_out=E, skip=skip, dtype=torch.float64, **(SETTINGS[arch] | kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return sae


def data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g, dtype=torch.float64), torch.randn(B, E, generator=g, dtype=torch.float64)


def grads(sae):
    out = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("arch", sorted(SETTINGS))
@pytest.mark.parametrize("skip", [False, True])
def test_fast_step_matches_autograd_and_the_written_out_loss(arch, skip):
    sae = transcoder(arch, skip)
    if arch == "jumprelu":  # sparse enough for the sparse step, many entries inside θ's kernel
        with torch.no_grad():
            sae.threshold.copy_(torch.rand(F, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
            sae.b_enc.sub_(3.0)
    x, y = data()
    dead_F = torch.arange(F) % 3 == 0
    ref = sae.loss(x, 0.7, dead_F, y)
    ref.total.backward()
    want = grads(sae)
    assert set(want) == {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"W_skip"} if skip else set()) | \
        ({"threshold"} if arch == "jumprelu" else set())
    assert sae.W_dec.shape == (F, E) and sae.b_dec.shape == (E,)
    # the loss written out: the input is not centred, the target is y, the skip adds x @ W_skip
    f = ref.f_BF.detach()
    x_hat = f @ sae.W_dec + sae.b_dec + (x @ sae.W_skip if skip else 0)
    torch.testing.assert_close(ref.mse.detach(), (x_hat - y).pow(2).sum(-1).mean().detach())
    f_inf = sae.encode(x).detach()  # inference (batch-wise selections: their threshold)
    if arch not in ("batchtopk", "matryoshka"):
        torch.testing.assert_close(f_inf, f)
    torch.testing.assert_close(sae(x).detach(), (f_inf @ sae.W_dec + sae.b_dec + (x @ sae.W_skip if skip else 0)).detach())
    sparse_modes = (True, False) if arch in ("standard", "jumprelu") else (None,)
    for sparse in sparse_modes:
        out = sae.step(x, 0.7, dead_F, y, **({} if sparse is None else {"sparse": sparse})) if arch != "standard" \
            else _standard(sae, x, y, sparse)
        torch.testing.assert_close(out.loss, ref.total.detach())
        torch.testing.assert_close(out.mse, ref.mse.detach())
        got = grads(sae)
        for n in want:
            torch.testing.assert_close(got[n], want[n], msg=f"{n} (sparse {sparse})")
        torch.testing.assert_close(out.codes(), f)
        torch.testing.assert_close(out.err_BD, (x_hat - y).detach())


def _standard(sae, x, y, sparse):
    from saeforge.dictionary.architectures.standard import fast_step

    return fast_step(sae, x, 0.7, sparse=sparse, y_BE=y)


def test_a_transcoder_needs_its_targets_and_a_skip_needs_a_transcoder():
    from saeforge.errors import UserError

    sae = transcoder("topk", False)
    with pytest.raises(ValueError, match="targets"):
        sae.loss(data()[0], 0.0)
    with pytest.raises(UserError, match="skip"):
        ARCHITECTURES["topk"](D, F, skip=True, k=5)


@pytest.mark.parametrize("skip", [False, True])
def test_folded_weights_undo_the_input_and_target_scales(skip):
    """Trained on s·x against t·y, the folded weights map raw x to raw y."""
    sae = transcoder("standard", skip)
    x, _ = data()
    s, t = 0.37, 2.9
    want = sae(s * x).detach() / t
    raw = ARCHITECTURES["standard"](D, F, d_out=E, skip=skip, dtype=torch.float64)
    raw.load_state_dict(sae.folded(s, t))
    torch.testing.assert_close(raw(x).detach(), want)


@pytest.mark.parametrize("arch", sorted(SETTINGS))
@pytest.mark.parametrize("skip", [False, True])
def test_saved_transcoders_load_back_and_saelens_loads_them_with_our_outputs(tmp_path, arch, skip):
    import saeforge
    from saeforge.dictionary.io import save

    sae = transcoder(arch, skip).float()
    sae.metadata = {"hook_name": "blocks.1.ln2.hook_normalized", "hook_name_out": "blocks.1.hook_mlp_out"}
    x, _ = data()
    x = x.float()
    s, t = 0.5, 3.0  # trained on s·x against t·y: saved for raw activations
    want = sae(s * x).detach() / t
    out = save(sae, tmp_path / "tc", input_scale=s, output_scale=t)
    cfg = __import__("json").loads((out / "cfg.json").read_text())
    assert cfg["d_out"] == E and cfg["apply_b_dec_to_input"] is False
    back = saeforge.load(out)
    assert back.transcoder and back.d_out == E and (back.W_skip is not None) == skip
    assert back.metadata["hook_name_out"] == "blocks.1.hook_mlp_out"
    torch.testing.assert_close(back(x).detach(), want, rtol=1e-5, atol=1e-5)
    if arch == "topk":  # SAELens has no TopK transcoder
        assert cfg["architecture"] == ("topk_skip_transcoder" if skip else "topk_transcoder")
        return
    from sae_lens import SAE

    theirs = SAE.load_from_disk(str(out))
    kind = "" if arch == "standard" else "JumpReLU"  # BatchTopK and Matryoshka infer with a threshold
    assert type(theirs).__name__ == kind + ("SkipTranscoder" if skip else "Transcoder")
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(theirs.encode(x), back.encode(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder"])
def test_we_load_saelens_transcoders(tmp_path, name):
    import saeforge
    from sae_lens.saes.transcoder import (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig, JumpReLUTranscoder,
                                          JumpReLUTranscoderConfig, SkipTranscoder, SkipTranscoderConfig, Transcoder,
                                          TranscoderConfig)

    cls, cfg_cls = {"transcoder": (Transcoder, TranscoderConfig), "skip_transcoder": (SkipTranscoder, SkipTranscoderConfig),
                    "jumprelu_transcoder": (JumpReLUTranscoder, JumpReLUTranscoderConfig),
                    "jumprelu_skip_transcoder": (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig)}[name]
    theirs = cls(cfg_cls(d_in=D, d_sae=F, d_out=E, apply_b_dec_to_input=False))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        if hasattr(theirs, "threshold"):
            theirs.threshold.abs_()
    theirs.save_model(str(tmp_path / name))
    ours = saeforge.load(tmp_path / name)
    x, _ = data()
    x = x.float()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), rtol=1e-5, atol=1e-5)


def test_a_transcoder_directory_whose_d_out_disagrees_is_one_clear_error(tmp_path):
    import json

    import saeforge
    from saeforge.dictionary.io import save
    from saeforge.errors import UserError

    out = save(transcoder("standard", True).float(), tmp_path / "tc")
    cfg = json.loads((out / "cfg.json").read_text())
    (out / "cfg.json").write_text(json.dumps(cfg | {"d_out": E + 1}))
    with pytest.raises(UserError, match=r"W_dec has shape \[40, 7\], but cfg.json \(d_in=12, d_sae=40, d_out=8\)"):
        saeforge.load(out)
    (out / "cfg.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "d_out"}))
    with pytest.raises(UserError, match="needs d_out"):
        saeforge.load(out)


def _pairs(n=4000, k=24, seed=0):
    """One active feature per row: input x = a·e_i (input dictionary), target y = a·d_i (output dictionary)."""
    g = torch.Generator().manual_seed(seed)
    e_KD = torch.nn.functional.normalize(torch.randn(k, D, generator=g), dim=1)
    d_KE = torch.nn.functional.normalize(torch.randn(k, E, generator=g), dim=1)
    i = torch.randint(0, k, (n,), generator=g)
    a = torch.rand(n, generator=g)[:, None] + 0.5
    return torch.cat([a * e_KD[i], a * d_KE[i]], 1), e_KD, d_KE


@pytest.mark.parametrize("method, k", [("data", 24), ("kmeans", 24)])  # mod, svd, …: kmeans's encoder path
def test_informed_init_of_a_transcoder_pairs_each_atom_with_the_inputs_that_lead_to_it(method, k):
    from saeforge.dictionary.init import initialize

    sample, e_KD, d_KE = _pairs(k=k)
    sae = ARCHITECTURES["topk"](D, k, d_out=E, k=2)
    initialize(sae, method, seed=0, sample=sample, encoder_scale=0.5)
    W_FE, W_DF = sae.W_dec, sae.W_enc
    assert torch.allclose(W_FE.norm(dim=1), torch.ones(k)) and torch.allclose(W_DF.norm(dim=0), torch.full((k,), 0.5))
    atom = (W_FE @ d_KE.T).argmax(1)  # the output feature each atom writes
    hit = (W_FE @ d_KE.T).max(1).values > 0.99
    assert hit.sum() >= (k // 2 if method == "data" else k - 2)  # clustering finds (nearly) every output feature
    # and fires most on the inputs that lead to it: per atom, the mean pre-activation over each feature's rows
    x, y = sample[:, :D], sample[:, D:]
    feature_N = (y @ d_KE.T).argmax(1)
    pre_NF = x @ W_DF + sae.b_enc
    mean_KF = torch.stack([pre_NF[feature_N == j].mean(0) for j in range(k)])
    assert (mean_KF.argmax(0)[hit] == atom[hit]).all()


def test_a_transcoder_baseline_init_draws_its_own_encoder():
    from saeforge.dictionary.init import initialize

    sae = ARCHITECTURES["standard"](D, F, d_out=D, skip=True)  # same widths: still not tied
    with torch.no_grad():
        sae.W_skip.fill_(1.0)
    initialize(sae, "orthogonal", seed=0)
    assert not torch.allclose(sae.W_enc, sae.W_dec.T) and torch.allclose(sae.W_enc.norm(dim=0), torch.ones(F))
    assert sae.W_skip.abs().sum() == 0  # SAELens's skip starts at 0


@pytest.mark.parametrize("method", ["clustered", "anthropic"])
def test_resampling_a_transcoder_writes_the_missing_target_and_reads_the_input_behind_it(method):
    """A transcoder that knows every (input → output) feature of the pairs but one: the renewed latent's
    decoder row is that output feature and its encoder column the input feature that leads to it."""
    from saeforge.training.resample import anthropic_directions, clustered_directions, new_parameters

    k = 8
    sample, e_KD, d_KE = _pairs(n=3000, k=k, seed=1)
    sae = ARCHITECTURES["standard"](D, k, d_out=E)
    with torch.no_grad():
        sae.W_dec.copy_(d_KE)
        sae.W_enc.copy_(e_KD.T)
        sae.W_dec[5] = 0  # feature 5 is dead: nothing writes d_5
        sae.W_enc[:, 5] = -e_KD[5]
    g = torch.Generator().manual_seed(0)
    if method == "clustered":
        dirs = clustered_directions(sae, sample, 1, g, worst=256, clusters=8, direction="residual", seed=0)
    else:
        dirs = anthropic_directions(sae, sample, 1, g)
    new = new_parameters(sae, torch.tensor([5]), dirs, "alive")
    assert new["W_dec"].shape == (1, E) and new["W_enc"].shape == (D, 1)
    assert float(new["W_dec"][0] @ d_KE[5]) > 0.95
    assert float(torch.nn.functional.normalize(new["W_enc"][:, 0], dim=0) @ e_KD[5]) > 0.95


def test_a_transcoder_trains_from_one_forward_with_clustered_resampling(model_dir, text_dir, tmp_path, capsys):
    import json

    import saeforge
    from saeforge.cli import main

    args = ["--model", str(model_dir), "--dataset", str(text_dir), "--tokens", "25600", "--batch-size", "128",
            "--contexts-per-pass", "4", "--buffer-mb", "1", "--eval-tokens", "1024", "--no-progress",
            "--resample", "clustered", "--resample-every", "20", "--dead-window", "256", "--lr-decay-steps", "40",
            "--hook", "blocks.1.ln2.hook_normalized", "--target-hook", "blocks.1.hook_mlp_out", "--dict-size", "64",
            "--architecture", "standard", "--skip-connection", "--init", "mod"]
    assert main(["train", *args, "--out", str(tmp_path / "tc")]) == 0
    s = json.loads((tmp_path / "tc" / "summary.json").read_text())
    assert s["target_hook"] == "blocks.1.hook_mlp_out" and s["d_out"] == 32 and s["skip_connection"]
    # the saved transcoder (scales folded in) spliced into the model reproduces its training figures
    assert s["resample_events"] > 0 and s["explained_variance"] > 0.5
    assert abs(s["explained_variance"] - s["train_explained_variance"]) < 0.1
    assert s["ce_clean"] <= s["ce_spliced"] + 0.05 and s["kl_divergence"] > 0
    tc = saeforge.load(tmp_path / "tc")
    assert tc.transcoder and tc.W_skip is not None and tc.metadata["hook_name_out"] == "blocks.1.hook_mlp_out"
    # wrong order, and a cache: one line each, nothing written
    for extra, says in ((["--hook", "blocks.1.hook_mlp_out", "--target-hook", "blocks.1.ln2.hook_normalized"],
                         "runs before --hook"),
                        (["--hook", "blocks.1.ln2.hook_normalized", "--target-hook", "blocks.1.hook_mlp_out",
                          "--cache", str(tmp_path / "none")], "no such"),
                        (["--skip-connection", "--hook", "blocks.1.hook_resid_post"], "transcoder's")):
        out = tmp_path / "bad"
        base = [a for a in args if a not in ("--skip-connection",)]
        i = base.index("--hook")
        base = base[:i] + base[i + 4:]  # without the input and target hooks
        assert main(["train", *base, *extra, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("saeforge: error:") and says in err[0], err
        assert not out.exists()


@pytest.fixture(scope="module")
def layer_set(model_dir, text_dir, tmp_path_factory):
    """A transcoder per layer of the tiny model, from one pass (BatchTopK, with a skip connection)."""
    from saeforge.cli import main

    out = tmp_path_factory.mktemp("tcset") / "set"
    assert main(["train", "--model", str(model_dir), "--dataset", str(text_dir), "--tokens", "6144", "--batch-size", "128",
                 "--contexts-per-pass", "4", "--buffer-mb", "1", "--eval-tokens", "512", "--no-progress",
                 "--hooks", "blocks.0.ln2.hook_normalized,blocks.1.ln2.hook_normalized",
                 "--target-hooks", "blocks.0.hook_mlp_out,blocks.1.hook_mlp_out",
                 "--dictionaries", "architecture=batchtopk,k=8,dict_size=64,skip_connection=true",
                 "--out", str(out)]) == 0
    return out


def test_circuit_tracer_loads_our_set_with_our_feature_activations(layer_set, tmp_path):
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    import saeforge
    from saeforge.dictionary.formats import read_circuit_tracer

    dirs = sorted(p.parent for p in layer_set.glob("*/cfg.json"))
    ours = [saeforge.load(d) for d in dirs]
    assert [s.metadata["hook_name"] for s in ours] == ["blocks.0.ln2.hook_normalized", "blocks.1.ln2.hook_normalized"]
    from saeforge.cli import main

    ct = tmp_path / "ct"
    assert main(["export", str(layer_set), "--out", str(ct)]) == 0
    assert main(["export", str(layer_set), "--out", str(ct)]) == 2  # nothing good overwritten
    import yaml

    cfg = yaml.safe_load((ct / "config.yaml").read_text())
    assert cfg["feature_input_hook"] == "ln2.hook_normalized" and cfg["feature_output_hook"] == "hook_mlp_out"
    theirs = load_transcoder_set({i: str(ct / f) for i, f in enumerate(cfg["transcoders"])}, scan=cfg["scan"],
                                 feature_input_hook=cfg["feature_input_hook"],
                                 feature_output_hook=cfg["feature_output_hook"], device=torch.device("cpu"),
                                 lazy_encoder=False, lazy_decoder=False)
    x = torch.randn(64, ours[0].d_in, generator=torch.Generator().manual_seed(0))
    back = read_circuit_tracer(ct)
    with torch.no_grad():
        for layer, (mine, again) in enumerate(zip(ours, back)):
            acts = mine.encode(x)
            assert (acts > 0).any()
            torch.testing.assert_close(theirs[layer].encode(x), acts, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(theirs[layer](x), mine(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(again(x), mine(x), rtol=1e-5, atol=1e-5)
            assert again.metadata["hook_name_out"] == f"blocks.{layer}.hook_mlp_out"


def test_a_set_from_one_pass_equals_its_layers_trained_alone_and_splices_as_a_replacement_model(
        layer_set, model_dir, text_dir, tmp_path, capsys):
    import json

    import saeforge
    from saeforge.cli import main

    capsys.readouterr()
    name = "blocks.1.ln2.hook_normalized-architecturebatchtopk-k8-dict_size64-skip_connectionTrue"
    assert (layer_set / name / "cfg.json").exists()
    assert main(["train", "--model", str(model_dir), "--dataset", str(text_dir), "--tokens", "6144", "--batch-size", "128",
                 "--contexts-per-pass", "4", "--buffer-mb", "1", "--eval-tokens", "0", "--no-progress",
                 "--hook", "blocks.1.ln2.hook_normalized", "--target-hook", "blocks.1.hook_mlp_out",
                 "--architecture", "batchtopk", "--k", "8", "--dict-size", "64", "--skip-connection",
                 "--out", str(tmp_path / "alone")]) == 0
    together, alone = saeforge.load(layer_set / name), saeforge.load(tmp_path / "alone")
    for p in ("W_enc", "b_enc", "W_dec", "b_dec", "W_skip"):
        torch.testing.assert_close(getattr(together, p), getattr(alone, p), rtol=1e-4, atol=1e-5, msg=p)
    capsys.readouterr()
    dirs = sorted(str(p.parent) for p in layer_set.glob("*/cfg.json"))
    assert main(["eval", *dirs, "--together", "--model", str(model_dir), "--dataset", str(text_dir),
                 "--tokens", "512", "--no-progress"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert [d["target_hook"] for d in ev["dictionaries"]] == ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"]
    assert ev["kl_divergence"] > 0 and ev["ce_spliced"] > 0
    # each dictionary's own figures are on the clean activations: as when it is evaluated alone
    assert main(["eval", dirs[0], "--model", str(model_dir), "--dataset", str(text_dir), "--tokens", "512",
                 "--no-progress"]) == 0
    alone_ev = json.loads(capsys.readouterr().out)
    assert alone_ev["explained_variance"] == pytest.approx(ev["dictionaries"][0]["explained_variance"], abs=1e-5)


def test_what_circuit_tracer_cannot_hold_is_refused_in_one_line(tmp_path, capsys):
    from saeforge.cli import main
    from saeforge.dictionary.io import save

    def saved(name, arch, layer, d_out=D, target="hook_mlp_out"):
        sae = ARCHITECTURES[arch](D, F, d_out=d_out, **SETTINGS[arch])
        sae.metadata = {"hook_name": f"blocks.{layer}.ln2.hook_normalized", "hook_name_out": f"blocks.{layer}.{target}"}
        return str(save(sae, tmp_path / name))

    cases = [([saved("topk", "topk", 0, D)], "TopK transcoder"),
             ([saved("wide", "standard", 0, E)], "12 → 7"),
             ([saved("l1", "standard", 1, D)], "every layer from 0"),
             ([saved("a", "standard", 0, D), saved("b", "standard", 1, D, "hook_resid_post")], "one hook")]
    for paths, says in cases:
        out = tmp_path / "out"
        assert main(["export", *paths, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("saeforge: error:") and says in err[0], err
        assert not out.exists()


def test_inspect_shows_what_a_transcoders_features_read_and_write(layer_set, model_dir, text_dir, tmp_path, capsys):
    import json

    from saeforge.cli import main

    d = sorted(p.parent for p in layer_set.glob("*/cfg.json"))[0]
    assert main(["inspect", str(d), "--out", str(tmp_path / "r"), "--model", str(model_dir), "--dataset", str(text_dir),
                 "--tokens", "512", "--no-progress"]) == 0
    html = (tmp_path / "r" / "index.html").read_text()
    data = json.loads(html.split('<script id="data" type="application/json">')[1].split("</script>")[0])
    assert data["meta"]["hook"] == "blocks.0.ln2.hook_normalized → blocks.0.hook_mlp_out"  # reads → writes
    assert any(f["promoted"] and f["contexts"] for f in data["features"])  # its contexts, its token effects


def test_a_pairs_cache_trains_transcoders_and_sweeps_their_sizes(model_dir, text_dir, tmp_path, capsys):
    import json

    import saeforge
    from saeforge.cli import main

    cache = tmp_path / "pairs"
    assert main(["harvest", "--model", str(model_dir), "--dataset", str(text_dir), "--tokens", "8000",
                 "--contexts-per-shard", "16", "--hook", "blocks.1.ln2.hook_normalized",
                 "--target-hook", "blocks.1.hook_mlp_out", "--out", str(cache), "--no-progress"]) == 0
    m = json.loads((cache / "manifest.json").read_text())
    assert (m["d_in"], m["d_out"], m["target_hook"]) == (32, 32, "blocks.1.hook_mlp_out")
    assert main(["train", "--cache", str(cache), "--target-hook", "blocks.1.hook_mlp_out", "--tokens", "4096",
                 "--batch-size", "128", "--buffer-mb", "1", "--dict-size", "64", "--k", "8", "--eval-tokens", "512",
                 "--no-progress", "--out", str(tmp_path / "tc")]) == 0
    s = json.loads((tmp_path / "tc" / "summary.json").read_text())
    assert s["target_hook"] == "blocks.1.hook_mlp_out" and saeforge.load(tmp_path / "tc").transcoder
    capsys.readouterr()
    assert main(["train", "--cache", str(cache), "--tokens", "4096", "--no-progress", "--out", str(tmp_path / "sae")]) == 2
    assert "give --target-hook" in capsys.readouterr().err and not (tmp_path / "sae").exists()
    assert main(["sweep", "--cache", str(cache), "--out", str(tmp_path / "sw"), "--sizes", "32,64,128",
                 "--steps", "8,16,32", "--ks", "8", "--architecture", "topk", "--batch-size", "64",
                 "--no-progress"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "sw" / "runs.jsonl").read_text().splitlines()]
    assert len(rows) == 9 and all(r["d_out"] == 32 and r["explained_variance"] < 1 for r in rows)
    ev = {(r["d_sae"], r["steps"]): r["explained_variance"] for r in rows}
    assert all(ev[F, 32] > ev[F, 8] for F in (32, 64, 128))  # the targets' reconstruction improves with training
    one = [r for r in rows if r["d_sae"] == 64 and r["steps"] == 16][0]
    assert one["flops_train"] == 12 * 32 * 64 * one["tokens"]  # (d_in + d_out) / 2 = 32
