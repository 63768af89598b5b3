import json

import pytest
import torch
from safetensors.torch import save_file

import saeforge
from saeforge import SparseAutoencoder
from saeforge.dictionary.io import load_sparsity
from saeforge.errors import UserError


def _trained_like(d_in=24, d_sae=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    sae = SparseAutoencoder(d_in, d_sae)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) * 0.3)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=g) * 0.3)
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(d_in, generator=g))
    sae.metadata.update(model_name="tiny", hook_name="blocks.1.hook_resid_post", init="orthogonal")
    return sae


def test_round_trip(tmp_path):
    sae = _trained_like()
    saeforge.save(sae, tmp_path / "d", sparsity_F=torch.linspace(-10, 0, 80))
    back = saeforge.load(tmp_path / "d")
    for n, p in sae.named_parameters():
        assert torch.equal(p, getattr(back, n)), n
    assert back.metadata["hook_name"] == "blocks.1.hook_resid_post" and back.metadata["init"] == "orthogonal"
    assert torch.allclose(load_sparsity(tmp_path / "d"), torch.linspace(-10, 0, 80))
    assert not list((tmp_path / "d").glob(".*tmp"))  # no temporary files left behind
    x = torch.randn(10, 24)
    assert torch.allclose(back(x), sae(x))


def test_input_scale_is_folded(tmp_path):
    """Trained on s·x, the saved dictionary acts on raw x and reconstructs raw x."""
    sae, s = _trained_like(), 3.7
    saeforge.save(sae, tmp_path / "d", input_scale=s)
    raw = saeforge.load(tmp_path / "d")
    x = torch.randn(16, 24)
    assert torch.allclose(raw.encode(x), sae.encode(s * x), atol=1e-5)
    assert torch.allclose(raw(x), sae(s * x) / s, atol=1e-5)


def test_saeforge_directory_loads_in_saelens_with_same_encodings(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    sae = _trained_like()
    saeforge.save(sae, tmp_path / "d")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "d"))
    assert type(theirs).__name__ == "StandardSAE"
    x = torch.randn(50, 24)
    with torch.no_grad():
        assert torch.allclose(theirs.encode(x), sae.encode(x), atol=1e-6)
        assert torch.allclose(theirs.decode(theirs.encode(x)), sae(x), atol=1e-5)
    assert theirs.cfg.metadata.hook_name == "blocks.1.hook_resid_post"


def test_saelens_directory_loads_in_saeforge(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    cfg = sae_lens.StandardSAEConfig(d_in=24, d_sae=80)
    theirs = sae_lens.StandardSAE(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    theirs.save_model(str(tmp_path / "sl"))
    ours = saeforge.load(tmp_path / "sl")
    x = torch.randn(50, 24)
    with torch.no_grad():
        assert torch.allclose(ours.encode(x), theirs.encode(x), atol=1e-6)
        assert torch.allclose(ours(x), theirs.decode(theirs.encode(x)), atol=1e-5)


def test_saelens_without_b_dec_on_input_is_folded(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    theirs = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=8, d_sae=20, apply_b_dec_to_input=False))
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape) * 0.5)
    theirs.save_model(str(tmp_path / "sl"))
    ours = saeforge.load(tmp_path / "sl")
    x = torch.randn(30, 8)
    with torch.no_grad():
        assert torch.allclose(ours.encode(x), theirs.encode(x), atol=1e-5)


def _saved(tmp_path):
    saeforge.save(_trained_like(), tmp_path / "d")
    return tmp_path / "d"


def test_missing_weights_file(tmp_path):
    d = _saved(tmp_path)
    (d / "sae_weights.safetensors").unlink()
    with pytest.raises(UserError, match="missing sae_weights.safetensors"):
        saeforge.load(d)


def test_truncated_weights_file(tmp_path):
    d = _saved(tmp_path)
    data = (d / "sae_weights.safetensors").read_bytes()
    (d / "sae_weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or truncated"):
        saeforge.load(d)


def test_corrupt_cfg(tmp_path):
    d = _saved(tmp_path)
    (d / "cfg.json").write_text('{"d_in": 24, "d_sae"')
    with pytest.raises(UserError, match="not valid JSON"):
        saeforge.load(d)


def test_shape_mismatch_names_the_tensor(tmp_path):
    d = _saved(tmp_path)
    cfg = json.loads((d / "cfg.json").read_text())
    cfg["d_sae"] = 81
    (d / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"W_enc has shape \[24, 80\].*needs \[24, 81\]"):
        saeforge.load(d)


def test_missing_key_and_wrong_dtype(tmp_path):
    d = _saved(tmp_path)
    w = {"W_enc": torch.zeros(24, 80), "W_dec": torch.zeros(80, 24), "b_enc": torch.zeros(80)}
    save_file(w, d / "sae_weights.safetensors")
    with pytest.raises(UserError, match="missing tensor.*b_dec"):
        saeforge.load(d)
    w["b_dec"] = torch.zeros(24, dtype=torch.int32)
    save_file(w, d / "sae_weights.safetensors")
    with pytest.raises(UserError, match="b_dec has dtype torch.int32"):
        saeforge.load(d)


def test_not_a_directory(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        saeforge.load(tmp_path / "nope")


def test_tensors_are_written_as_safetensors_reads_them(tmp_path):
    """runtime.atomic_save_tensors writes the format itself (from the tensors' memory, no copy of the
    whole state): safetensors reads back every dtype and shape, the metadata too."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from saeforge.runtime import atomic_save_tensors

    g = torch.Generator().manual_seed(0)
    tensors = {"w": torch.randn(5, 3, generator=g), "b16": torch.randn(7, generator=g).bfloat16(),
               "i": torch.arange(6).reshape(2, 3), "mask": torch.rand(4, generator=g) > 0.5,
               "scalar": torch.tensor(2.5, dtype=torch.float64), "empty": torch.zeros(0, 4),
               "strided": torch.randn(4, 6, generator=g).t()}
    atomic_save_tensors(tmp_path / "t.safetensors", tensors, metadata={"id": "x"})
    back = load_file(tmp_path / "t.safetensors")
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    with safe_open(tmp_path / "t.safetensors", "pt") as f:
        assert f.metadata() == {"id": "x"}
