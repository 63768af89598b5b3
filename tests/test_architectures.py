"""TopK, BatchTopK, Matryoshka and JumpReLU: fast steps against autograd, SAELens's own training
losses and saved formats, resume, and the flags' one-line errors."""

import json

import pytest
import torch

import saeforge
from saeforge.cli import main
from saeforge.dictionary import blocks
from saeforge.dictionary.architectures import BatchTopKSAE, JumpReLUSAE, MatryoshkaSAE, StandardSAE, TopKSAE, topk
from saeforge.errors import UserError
from saeforge.evaluation import metrics

D, F, B = 12, 40, 48


def randomized(sae, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return sae


def step_is_autograd(sae, x, dead_F):
    """The fast step's loss, mse, gradients and codes are autograd's on `loss`; returns the step's output."""
    out = sae.step(x, 0.0, dead_F)
    assert all(p.grad.is_contiguous() for p in sae.parameters())  # fused Adam on the CPU misreads strided ones
    fast = {n: p.grad.clone() for n, p in sae.named_parameters()}
    for p in sae.parameters():
        p.grad = None
    ref = sae.loss(x, 0.0, dead_F)
    ref.total.backward()
    torch.testing.assert_close(out.loss, ref.total.detach())
    torch.testing.assert_close(out.mse, ref.mse.detach())
    for n, p in sae.named_parameters():
        torch.testing.assert_close(fast[n], p.grad, msg=n)
    torch.testing.assert_close(out.codes(), ref.f_BF.detach())
    return out


@pytest.mark.parametrize("cls, kw", [(TopKSAE, {"k": 5}), (BatchTopKSAE, {"k": 5}),
                                     (MatryoshkaSAE, {"k": 5, "matryoshka_sizes": "4,16"})])
@pytest.mark.parametrize("dead", [False, True])
def test_sparse_step_matches_autograd(cls, kw, dead):
    sae = randomized(cls(D, F, dtype=torch.float64, aux_k=6, aux_k_coefficient=0.25, **kw))
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dead_F = (torch.arange(F) % 3 == 0) if dead else torch.zeros(F, dtype=torch.bool)
    out = step_is_autograd(sae, x, dead_F)
    assert (out.sparsity > 0) == dead
    per_row = (out.codes() > 0).sum(1)
    assert per_row.float().mean() <= 5 and (cls is not TopKSAE or (per_row <= 5).all())


@pytest.mark.parametrize("cls, kw", [(TopKSAE, {"k": 3}), (BatchTopKSAE, {"k": 3}),
                                     (MatryoshkaSAE, {"k": 3, "matryoshka_sizes": "50,120"})])
def test_the_step_over_blocks_of_latents_is_the_whole_step(monkeypatch, cls, kw):
    """At many latents the encoder product and the selections (AuxK's too) run block by block, never
    holding [batch, latents]: here blocks of 48 of 200 latents (the last one short) give autograd's
    loss, gradients and codes over the whole [B, F]."""
    F_many = 200
    monkeypatch.setattr(blocks, "BLOCK_BYTES", B * 48 * 8)
    monkeypatch.setattr(topk.RowTopK, "FOLD", 2)  # the candidates folded along the way, not only at the end
    assert blocks.latent_blocks(B, F_many, 3, 8) == [(0, 48), (48, 96), (96, 144), (144, 192), (192, 200)]
    sae = randomized(cls(D, F_many, dtype=torch.float64, aux_k=6, aux_k_coefficient=0.25, **kw))
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dead_F = torch.arange(F_many) % 7 == 0
    assert step_is_autograd(sae, x, dead_F).sparsity > 0
    # inference on the same blocks: the codes as a CSR matrix (no [B, F]), decoded as the dense ones are
    with torch.no_grad():
        sae.b_enc.sub_(2.0)  # BatchTopK infers with its threshold (0 here): fewer than all latents fire
        wide = sae.codes_of(x)
        assert wide.layout == torch.sparse_csr
        torch.testing.assert_close(wide.to_dense(), sae.encode(x))
        torch.testing.assert_close(sae(x[None]), sae.decode(sae.encode(x), x)[None])
        for got, want in zip(metrics.firing(wide), metrics.firing(sae.encode(x))):
            torch.testing.assert_close(got, want, check_dtype=False)


@pytest.mark.parametrize("cls, kw", [(StandardSAE, {}), (JumpReLUSAE, {"jumprelu_bandwidth": 0.5}),
                                     (JumpReLUSAE, {"jumprelu_bandwidth": 0.5, "jumprelu_sparsity": "tanh"})])
def test_relu_and_jumprelu_steps_over_blocks_of_latents_are_the_whole_step(monkeypatch, cls, kw):
    """ReLU + L1 and JumpReLU at many latents: the entries that fire (and, for JumpReLU, those in θ's
    kernel) found block by block, no [B, F] tensor, then the sparse step: autograd's loss, gradients
    and codes over the whole [B, F]; inference codes as a CSR matrix, as `encode`'s."""
    F_many = 200
    monkeypatch.setattr(blocks, "BLOCK_BYTES", B * 48 * 8)  # blocks of 48 latents, the last one short
    sae = randomized(cls(D, F_many, dtype=torch.float64, **kw))
    with torch.no_grad():
        sae.b_enc.sub_(2.0)  # a few codes fire per row, some in θ's kernel
        if cls is JumpReLUSAE:
            sae.threshold.copy_(torch.rand(F_many, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert blocks.several(sae, x)
    out = sae.step(x, 0.7)
    fast = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad(set_to_none=True)
    ref = sae.loss(x, 0.7)
    ref.total.backward()
    assert 0 < float((ref.f_BF > 0).float().mean()) < 0.5
    torch.testing.assert_close(out.loss, ref.total.detach())
    for n, p in sae.named_parameters():
        torch.testing.assert_close(fast[n], p.grad, msg=n)
    torch.testing.assert_close(out.codes(), ref.f_BF.detach())
    with torch.no_grad():
        wide = sae.codes_of(x)
        assert wide.layout == torch.sparse_csr
        torch.testing.assert_close(wide.to_dense(), sae.encode(x))
        torch.testing.assert_close(sae(x[None]), sae.decode(sae.encode(x), x)[None])


@pytest.mark.parametrize("sparsity", ["step", "tanh"])
def test_jumprelu_sparse_step_matches_autograd(sparsity):
    """Codes as sparse as a trained dictionary's: the sparse step (forced, and chosen by itself)
    gives autograd's loss and gradients, θ's estimator included (a wide kernel, many entries in it)."""
    sae = randomized(JumpReLUSAE(D, F, dtype=torch.float64, jumprelu_bandwidth=0.5, jumprelu_sparsity=sparsity))
    with torch.no_grad():
        sae.threshold.copy_(torch.rand(F, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
        sae.b_enc.sub_(3.0)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = sae.loss(x, 0.7)
    ref.total.backward()
    want = {n: p.grad.clone() for n, p in sae.named_parameters()}
    assert 0 < float((ref.f_BF > 0).float().mean()) < 0.05 and ((sae.pre(x) - sae.threshold).abs() < 0.25).sum() > 20
    for sparse in (True, None):
        sae.zero_grad(set_to_none=True)
        out = sae.step(x, 0.7, sparse=sparse)
        torch.testing.assert_close(out.loss, ref.total.detach())
        torch.testing.assert_close(out.sparsity, ref.sparsity.detach())
        for n, p in sae.named_parameters():
            torch.testing.assert_close(p.grad, want[n], msg=n)
        torch.testing.assert_close(out.codes(), ref.f_BF.detach())
        torch.testing.assert_close(out.feature_sums_F, ref.f_BF.detach().sum(0))


def test_batchtopk_learns_a_threshold_and_infers_with_it():
    sae = randomized(BatchTopKSAE(D, F, k=4))
    x = torch.randn(256, D, generator=torch.Generator().manual_seed(2))
    for _ in range(300):
        sae.step(x, 0.0)
    kept = sae.step(x, 0.0).codes()
    smallest = kept[kept > 0].min()
    assert 0 < float(sae.topk_threshold) and abs(float(sae.topk_threshold) - float(smallest)) < 0.05 * float(smallest)
    # inference: per-input threshold, about k latents per input on these inputs
    assert abs(float((sae.encode(x) > 0).sum(1).float().mean()) - 4) < 0.5


def test_jumprelu_gradients_equal_saelens_jumprelu_training_loss():
    from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    ours = randomized(JumpReLUSAE(D, F, jumprelu_init_threshold=0.3, jumprelu_bandwidth=0.5))
    theirs = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=D, d_sae=F, jumprelu_init_threshold=0.3,
                                                           jumprelu_bandwidth=0.5, l0_coefficient=0.7))
    with torch.no_grad():
        ours.threshold.uniform_(0.1, 0.6, generator=torch.Generator().manual_seed(3))
        for n, p in ours.named_parameters():
            getattr(theirs, n).copy_(p)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(4))
    out = ours.step(x, 0.7)
    step_in = TrainStepInput(sae_in=x, coefficients={"l0": 0.7}, dead_neuron_mask=None, n_training_steps=0,
                             is_logging_step=False)
    ref = theirs.training_forward_pass(step_in)
    ref.loss.backward()
    torch.testing.assert_close(out.loss, ref.loss.detach(), rtol=1e-5, atol=1e-5)
    for n, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, getattr(theirs, n).grad, rtol=1e-4, atol=1e-5, msg=n)
    assert ours.threshold.grad.abs().sum() > 0  # the estimator reaches the threshold


def test_saelens_topk_with_decoder_norm_rescaling_loads_with_its_codes(tmp_path):
    """SAELens's TopK training default (rescale_acts_by_decoder_norm true) loads with the norms
    folded in: the same codes and reconstructions as SAELens's own SAE."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig

    theirs = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D, d_sae=F, k=5, rescale_acts_by_decoder_norm=True))
    with torch.no_grad():
        for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(theirs, n).copy_(torch.randn(getattr(theirs, n).shape, generator=torch.Generator().manual_seed(7)))
    theirs.save_model(str(tmp_path / "sl"))
    assert json.loads((tmp_path / "sl" / "cfg.json").read_text())["rescale_acts_by_decoder_norm"] is True
    ours = saeforge.load(tmp_path / "sl")
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make, saved", [
    (lambda: TopKSAE(D, F, k=5), "topk"),
    (lambda: JumpReLUSAE(D, F, jumprelu_init_threshold=0.2), "jumprelu"),
    (lambda: BatchTopKSAE(D, F, k=5), "jumprelu"),
    (lambda: MatryoshkaSAE(D, F, k=5, matryoshka_sizes="8"), "jumprelu"),
])
def test_saved_in_saelens_layout_and_loaded_back_by_both(tmp_path, make, saved):
    import sae_lens

    sae = randomized(make())
    if isinstance(sae, BatchTopKSAE):
        sae.topk_threshold.fill_(0.4)
    if isinstance(sae, JumpReLUSAE):
        with torch.no_grad():
            sae.threshold.uniform_(0.0, 0.5, generator=torch.Generator().manual_seed(5))
    saeforge.save(sae, tmp_path / "d", input_scale=2.0)
    assert json.loads((tmp_path / "d" / "cfg.json").read_text())["architecture"] == saved
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(6))
    want = sae.encode(2.0 * x)  # the input scale is folded into the saved weights
    back = saeforge.load(tmp_path / "d")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "d"))
    torch.testing.assert_close(back.encode(x), want)
    torch.testing.assert_close(theirs.encode(x), want)
    torch.testing.assert_close(back.encode(x.reshape(4, -1, D)), want.reshape(4, -1, F))  # [batch, pos, d_in]
    torch.testing.assert_close(theirs.decode(want), sae.decode(want) / 2.0)


TOY = ["toy", "--init", "orthogonal", "--d-model", "16", "--n-features", "32", "--batch-size", "64", "--no-progress",
       "--log-every", "10", "--target-mmcs", "0", "--lr-decay-steps", "0"]


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "matryoshka"])
def test_toy_run_resumes_to_the_same_weights(tmp_path, arch):
    flags = [*TOY, "--architecture", arch, "--k", "4", "--checkpoint-every", "20", "--dead-window", "256",
             "--matryoshka-sizes", "8", "--l0-coefficient", "0.1"]
    full = json.loads(_run(tmp_path / "full", *flags, "--steps", "60"))
    _run(tmp_path / "part", *flags, "--steps", "20")
    _run(tmp_path / "part", *flags, "--steps", "60", "--resume")
    a, b = saeforge.load(tmp_path / "full"), saeforge.load(tmp_path / "part")
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    assert full["steps"] == 60
    s = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert s["architecture"] == arch and s["resample"] == "none" and s["mmcs_final"] > s["mmcs_initial"]


def _run(out, *args):
    assert main([*args, "--out", str(out)]) == 0
    return (out / "summary.json").read_text()


@pytest.mark.parametrize("flags, msg", [
    (["--architecture", "topk", "--k", "64"], "--k must be in [1, 32]"),
    (["--architecture", "topk", "--k", "0"], "--k must be >= 1"),
    (["--architecture", "matryoshka", "--matryoshka-sizes", "8,4"], "strictly increasing"),
    (["--architecture", "matryoshka", "--matryoshka-sizes", "8,64"], "exceeds the dictionary size 32"),
    (["--architecture", "gated"], "--architecture 'gated' is unknown"),
])
def test_bad_architecture_flags_are_one_line_errors(tmp_path, capsys, flags, msg):
    assert main([*TOY, "--steps", "5", "--out", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("saeforge: error: ") and msg in err[0], err
    assert not (tmp_path / "o").exists()


def test_k_larger_than_the_dictionary_in_python():
    with pytest.raises(UserError, match="--k must be in"):
        TopKSAE(8, 16, k=17)


@pytest.mark.parametrize("name, kw", [("standard", {}), ("topk", {"k": 5}), ("batchtopk", {"k": 5}),
                                      ("matryoshka", {"k": 5, "matryoshka_sizes": "8,32"}), ("jumprelu", {})])
@pytest.mark.parametrize("sparse", [False, True])
def test_steps_under_bf16_autocast_keep_float32_and_agree(name, kw, sparse):
    """--autocast (the GPU path, here on CPU): the [B, F] products in bfloat16, the gradients float32
    and as the float32 step's up to bfloat16's rounding (dense and sparse steps alike)."""
    from saeforge.dictionary.architectures import create
    sae = randomized(create(name, 16, 64, **kw))
    with torch.no_grad():
        sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.t())
        sae.b_enc.fill_(-1.2 if sparse else 0.3)  # ReLU / JumpReLU: sparse codes take the sparse step
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(1))
    dead_F = torch.arange(64) % 4 == 0
    want = sae.step(x, 0.3, dead_F)
    grads = {n: p.grad.clone() for n, p in sae.named_parameters()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = sae.step(x, 0.3, dead_F)
    assert got.loss.dtype == torch.float32 and got.loss.item() == pytest.approx(want.loss.item(), rel=0.02)
    for n, p in sae.named_parameters():
        assert p.grad.dtype == torch.float32, n
        cos = torch.nn.functional.cosine_similarity(p.grad.flatten(), grads[n].flatten(), dim=0)
        # θ's estimator counts the entries within bandwidth / 2 of θ, which bfloat16's rounding moves
        # (a run still trains as well: the test below)
        assert cos > (0.7 if n == "threshold" else 0.99), (n, float(cos))
    assert torch.equal(got.feature_sums_F > 0, want.feature_sums_F > 0) or name != "standard"


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_autocast_training_holds_accuracy(architecture):
    """A run with --autocast ends within 0.02 explained variance of the same run in float32."""
    from saeforge.sources.toy import ToyData
    acts = ToyData(16, 48, n_active=3, decay=0.99, correlated=False, seed=3).fresh(8192, 1)
    kw = dict(architecture=architecture, k=3, dict_size=48, steps=300, batch_size=256, progress=False)
    _, exact = saeforge.train(acts, **kw)
    _, half = saeforge.train(acts, **kw, autocast=True)
    assert exact["train_explained_variance"] > 0.5
    assert half["train_explained_variance"] == pytest.approx(exact["train_explained_variance"], abs=0.02)
