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
