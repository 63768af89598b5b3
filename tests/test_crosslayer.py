"""Cross-layer transcoders: the model written out, its gradients, init, files (circuit-tracer's CLT loader)."""

import pytest
import torch

from saeforge.dictionary.crosslayer import CrossLayerTranscoder, initialize_clt

L, D, F, E, B = 3, 6, 10, 5, 32


def clt(activation, seed=0, d_out=E, **kw):
    settings = {"topk": {"k": 3, "aux_k": 4}, "standard": {}, "jumprelu": {"jumprelu_bandwidth": 0.5}}[activation]
    c = CrossLayerTranscoder(L, D, F, d_out, activation, dtype=torch.float64, **(settings | kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in c.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        if activation == "jumprelu":
            c.threshold.abs_()
    return c


def rows(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, L * D, generator=g, dtype=torch.float64), torch.randn(B, L * E, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("activation", ["topk", "standard", "jumprelu"])
def test_every_layer_writes_its_own_and_every_later_target(activation):
    c = clt(activation)
    x, y = rows()
    f = c.encode(x).reshape(B, L, F)
    # written out: f_i from layer i's input alone; ŷ_j = Σ_{i ≤ j} f_i W_dec_i[:, j − i] + b_dec_j
    for i in range(L):
        torch.testing.assert_close(f[:, i], c.encode_layer(x[:, i * D:(i + 1) * D], i))
    want = torch.stack([sum(f[:, i] @ c.decoders()[i][:, j - i] for i in range(j + 1)) + c.b_dec[j] for j in range(L)], 1)
    torch.testing.assert_close(c(x).reshape(B, L, E), want)
    torch.testing.assert_close(torch.stack([c.layer_output([f[:, i] for i in range(L)], j) for j in range(L)], 1), want)
    if activation == "topk":
        assert ((f > 0).sum(-1) <= 3).all()
    out = c.loss(x, 0.1, torch.arange(L * F) % 4 == 0, y)
    torch.testing.assert_close(out.mse, (want.reshape(B, -1) - y).pow(2).sum(-1).mean())
    out.total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in c.parameters())
    assert float(c.decoders()[L - 1].grad.abs().sum()) > 0  # the last layer's features learn too


def test_a_layer_does_not_write_into_earlier_layers():
    c = clt("standard")
    x, y = rows()
    c.loss(x, 0.0, None, y).total.backward()
    g_enc = c.W_enc.grad.clone()
    c.zero_grad()
    y2 = y.clone()
    y2[:, :E] += 1.0  # change only layer 0's target: layers 1, 2's encoders cannot help it
    c.loss(x, 0.0, None, y2).total.backward()
    torch.testing.assert_close(c.W_enc.grad[1:], g_enc[1:])
    assert not torch.allclose(c.W_enc.grad[0], g_enc[0])


@pytest.mark.parametrize("method", ["orthogonal", "mod"])
def test_init_gives_each_layer_a_transcoder_start(method):
    c = CrossLayerTranscoder(L, D, F, E, "topk", k=3)
    x, y = rows()
    sample = torch.cat([x, y], 1).float().repeat(20, 1) + 0.01 * torch.randn(20 * B, L * (D + E))
    initialize_clt(c, method, seed=0, sample=sample if method != "orthogonal" else None, encoder_scale=0.5)
    for i, W in enumerate(c.decoders()):
        assert torch.allclose(W.reshape(F, -1).norm(dim=-1), torch.ones(F), atol=1e-5)
        assert torch.allclose(c.W_enc[i].norm(dim=0), torch.full((F,), 0.5), atol=1e-5)


@pytest.mark.parametrize("activation", ["standard", "jumprelu", "topk"])
def test_saved_clt_loads_back_and_circuit_tracer_reads_it(tmp_path, activation):
    import saeforge
    from saeforge.dictionary.io import save

    c = clt(activation, d_out=D).float()  # circuit-tracer's CLT reads and writes d_model
    c.metadata = {"hook_name": "blocks.0.ln2.hook_normalized"}
    x, _ = rows()
    x = x.float()
    s, t = [0.5, 1.0, 2.0], [3.0, 0.25, 1.5]  # per-layer scales training saw
    xs = x.reshape(B, L, D) * torch.tensor(s)[:, None]
    want = c(xs.reshape(B, -1)).reshape(B, L, D) / torch.tensor(t)[:, None]
    save(c, tmp_path / "clt", input_scale=s, output_scale=t)
    back = saeforge.load(tmp_path / "clt")
    assert isinstance(back, CrossLayerTranscoder) and back.activation == activation
    torch.testing.assert_close(back(x).reshape(B, L, D), want, rtol=1e-5, atol=1e-5)
    if activation == "topk":
        return  # circuit-tracer's CLT is ReLU or JumpReLU
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt

    theirs = load_clt(str(tmp_path / "clt"), lazy_decoder=False, lazy_encoder=False, dtype=torch.float32,
                      device=torch.device("cpu"))
    with torch.no_grad():
        acts = theirs.encode(x.reshape(B, L, D).transpose(0, 1))  # [L, B, F]
        torch.testing.assert_close(acts.transpose(0, 1).reshape(B, -1), back.encode(x), rtol=1e-5, atol=1e-5)
        assert (acts > 0).any()
        out = theirs(x.reshape(B, L, D).transpose(0, 1))  # [L, B, D]
        torch.testing.assert_close(out.transpose(0, 1), back(x).reshape(B, L, D), rtol=1e-4, atol=1e-4)


def _train(model_dir, text_dir, out, *extra, tokens="12800", eval_tokens="512"):
    from saeforge.cli import main

    return main(["train", "--model", str(model_dir), "--dataset", str(text_dir), "--tokens", tokens,
                 "--batch-size", "128", "--contexts-per-pass", "4", "--buffer-mb", "1", "--eval-tokens", eval_tokens,
                 "--no-progress", "--hooks", "blocks.0.ln2.hook_normalized,blocks.1.ln2.hook_normalized",
                 "--target-hooks", "blocks.0.hook_mlp_out,blocks.1.hook_mlp_out", "--cross-layer", "--dict-size", "32",
                 "--out", str(out), *extra])


def test_a_clt_trains_on_every_layer_from_one_forward_resumes_and_evaluates(model_dir, text_dir, tmp_path, capsys):
    import json

    import saeforge
    from saeforge.cli import main

    assert _train(model_dir, text_dir, tmp_path / "clt", "--architecture", "standard") == 0
    s = json.loads((tmp_path / "clt" / "summary.json").read_text())
    assert s["cross_layer"] and s["n_layers"] == 2 and len(s["layers"]) == 2
    assert s["explained_variance"] > 0.1 and abs(s["explained_variance"] - s["train_explained_variance"]) < 0.1
    clt = saeforge.load(tmp_path / "clt")
    assert isinstance(clt, CrossLayerTranscoder) and clt.metadata["hook_names_out"][1] == "blocks.1.hook_mlp_out"
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "clt"), "--model", str(model_dir), "--dataset", str(text_dir), "--tokens", "512",
                 "--contexts-per-pass", "4", "--no-progress"]) == 0  # the held-out tokens training's evals read
    ev = json.loads(capsys.readouterr().out)
    assert ev["explained_variance"] == pytest.approx(s["explained_variance"], abs=1e-5)
    # a layer's pages: its features' contexts where they read, token effects of all they write
    assert main(["inspect", str(tmp_path / "clt"), "--layer", "1", "--out", str(tmp_path / "pages"), "--model",
                 str(model_dir), "--dataset", str(text_dir), "--tokens", "512", "--no-progress"]) == 0
    html = (tmp_path / "pages" / "index.html").read_text()
    data = json.loads(html.split('<script id="data" type="application/json">')[1].split("</script>")[0])
    assert data["meta"]["hook"] == "blocks.1.ln2.hook_normalized → blocks.1.hook_mlp_out … blocks.1.hook_mlp_out"
    assert any(f["promoted"] and f["contexts"] for f in data["features"])
    view = clt.layer_view(0)
    x = torch.randn(8, clt.layer_in)
    torch.testing.assert_close(view.encode(x), clt.encode_layer(x, 0))
    assert main(["inspect", str(tmp_path / "clt"), "--layer", "2", "--out", str(tmp_path / "p2"), "--no-progress"]) == 2
    assert "--layer must be in [0, 1]" in capsys.readouterr().err
    # an interrupted run resumed ends as the uninterrupted one (the buffer rebuilt, the hooks' scales kept)
    args = ("--architecture", "topk", "--k", "8", "--checkpoint-every", "25",
            "--buffer-mb", "0.25", "--lr-decay-steps", "0")  # one buffer size and lr schedule for both budgets
    assert _train(model_dir, text_dir, tmp_path / "whole", *args, eval_tokens="0") == 0
    assert _train(model_dir, text_dir, tmp_path / "cut", *args, tokens="6400", eval_tokens="0") == 0
    assert _train(model_dir, text_dir, tmp_path / "cut", *args, "--resume", eval_tokens="0") == 0
    whole, cut = saeforge.load(tmp_path / "whole"), saeforge.load(tmp_path / "cut")
    for (name, a), (_, b) in zip(whole.named_parameters(), cut.named_parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_a_clt_needs_every_layer_and_a_model(model_dir, text_dir, tmp_path, capsys):
    from saeforge.cli import main

    base = ["train", "--model", str(model_dir), "--dataset", str(text_dir), "--tokens", "1280", "--no-progress",
            "--cross-layer", "--out", str(tmp_path / "bad")]
    for extra, says in (
            (["--hooks", "blocks.1.ln2.hook_normalized", "--target-hooks", "blocks.1.hook_mlp_out"], "every block"),
            (["--hooks", "blocks.0.ln2.hook_normalized,blocks.1.hook_resid_mid",
              "--target-hooks", "blocks.0.hook_mlp_out,blocks.1.hook_mlp_out"], "every block"),
            (["--hooks", "blocks.0.ln2.hook_normalized"], "--target-hooks"),
            (["--hooks", "blocks.0.ln2.hook_normalized,blocks.1.ln2.hook_normalized",
              "--target-hooks", "blocks.0.hook_mlp_out,blocks.1.hook_mlp_out", "--architecture", "batchtopk"], "topk"),
            (["--hooks", "blocks.0.ln2.hook_normalized,blocks.1.ln2.hook_normalized",
              "--target-hooks", "blocks.0.hook_mlp_out,blocks.1.hook_mlp_out", "--resample", "clustered"], "--resample"),
            (["--hooks", "blocks.0.ln2.hook_normalized,blocks.1.ln2.hook_normalized",
              "--target-hooks", "blocks.0.hook_mlp_out,blocks.1.hook_mlp_out", "--feature-shards", "2"],
             "not sharded yet")):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("saeforge: error:") and says in err[0], err
        assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("act", ["relu", "jump_relu"])
def test_we_load_a_clt_circuit_tracer_wrote(tmp_path, act):
    import saeforge
    from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder as Theirs

    theirs = Theirs(L, F, D, activation_function=act, lazy_decoder=False, lazy_encoder=False, device=torch.device("cpu"),
                    dtype=torch.float32)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        if act == "jump_relu":
            theirs.activation_function.threshold.abs_()
    theirs.to_safetensors(str(tmp_path / "ct"))
    ours = saeforge.load(tmp_path / "ct")
    assert isinstance(ours, CrossLayerTranscoder) and ours.activation == ("jumprelu" if act == "jump_relu" else "standard")
    x = torch.randn(B, L, D, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x.reshape(B, -1)), theirs.encode(x.transpose(0, 1)).transpose(0, 1)
                                   .reshape(B, -1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x.reshape(B, -1)).reshape(B, L, D), theirs(x.transpose(0, 1)).transpose(0, 1),
                                   rtol=1e-4, atol=1e-4)
