"""saeforge.train: the Python API on a tensor, an iterable and a model, with the CLI's checks."""

import math

import pytest
import torch

import saeforge
from saeforge.config import ActivationTrainConfig
from saeforge.sources.toy import ToyData


def toy_acts(n=16384, scale=7.0):
    """Activations built from 48 known directions in 16 dims, far from unit scale."""
    data = ToyData(16, 48, n_active=3, decay=0.99, correlated=False, seed=3)
    return data.fresh(n, 1) * scale, data.features_FD


@torch.no_grad()
def explained_variance(sae, x):
    return float(1 - (sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_a_tensor_trains_to_a_dictionary_on_raw_activations(tmp_path):
    acts, _ = toy_acts()
    kw = dict(architecture="topk", k=3, dict_size=48, steps=400, batch_size=256, progress=False)
    sae, summary = saeforge.train(acts, **kw)
    assert summary["architecture"] == "topk" and summary["steps"] == 400 and summary["lr"] == 3e-3  # lr auto
    assert summary["input_scale"] == pytest.approx((16 / acts.pow(2).sum(1).mean()).item() ** 0.5, rel=0.05)
    # the scale is folded in: the dictionary reconstructs raw activations as well as it did scaled ones
    assert explained_variance(sae, acts[:4096]) == pytest.approx(summary["train_explained_variance"], abs=0.05)
    assert explained_variance(sae, acts[:4096]) > 0.6
    again, _ = saeforge.train(acts, **kw, out=str(tmp_path / "run"))  # same seed, same dictionary; out kept
    torch.testing.assert_close(again.W_dec, sae.W_dec)
    assert (tmp_path / "run" / "sae_weights.safetensors").is_file()
    assert saeforge.load(tmp_path / "run").metadata["source"] == "activations"


def test_an_iterable_and_the_toy_defaults():
    acts, features = toy_acts()
    batches = (acts[i:i + 1000] for i in range(0, len(acts), 1000))  # batch sizes unlike the training batch
    sae, summary = saeforge.train(batches, defaults="toy", dict_size=48, steps=40, batch_size=256, progress=False)
    assert summary["architecture"] == "standard" and summary["l1_coefficient"] == 0.3  # saeforge toy's defaults
    assert summary["init"] == "mod" and summary["steps"] == 40
    assert sae.W_dec.shape == (48, 16)


@pytest.mark.parametrize("kwargs, says", [
    (dict(k=0), "k= must be >= 1"),
    (dict(lamda=1.0), "unknown keyword(s) lamda"),
    (dict(hook="blocks.0.hook_resid_post"), "hook: only for a model source"),
    (dict(batch_size=10**6), "lower batch_size="),
    (dict(defaults="sweep"), "defaults must be one of"),
])
def test_bad_keywords_are_named(kwargs, says, tmp_path):
    acts, _ = toy_acts(2048)
    with pytest.raises(saeforge.UserError) as e:
        saeforge.train(acts, steps=5, progress=False, **kwargs)
    assert says in str(e.value) and "--" not in str(e.value)


def test_bad_sources_are_named():
    with pytest.raises(saeforge.UserError, match="ran out after 600 rows"):
        saeforge.train(iter([torch.randn(600, 8)]), steps=10, batch_size=64, progress=False)
    with pytest.raises(saeforge.UserError, match="floating-point tensors"):
        saeforge.train(torch.arange(100).reshape(10, 10), steps=10, progress=False)
    with pytest.raises(saeforge.UserError, match="expected a tensor"):
        saeforge.train(3.5, steps=10, progress=False)


def test_a_model_object_and_a_local_dataset(model, text_dir):
    """A HookedTransformer in hand, read on local text files, evaluated with the dictionary spliced in."""
    sae, summary = saeforge.train(model, dataset=str(text_dir), hook="blocks.0.hook_resid_post", dict_size=64,
                                  tokens=4096, batch_size=128, buffer_mb=1, contexts_per_pass=4, eval_tokens=512,
                                  progress=False)
    assert summary["hook"] == "blocks.0.hook_resid_post" and summary["dataset"] == str(text_dir)
    assert math.isfinite(summary["ce_loss_recovered"]) and 0 < summary["l0"] <= 32  # TopK k 32
    assert sae.metadata["hook_name"] == "blocks.0.hook_resid_post"


def test_the_keywords_are_the_train_command_flags():
    """Every option of saeforge train's config (its own fields and its architectures' settings) is a
    keyword (the API adds `defaults` only)."""
    acts, _ = toy_acts(2048)
    with pytest.raises(saeforge.UserError, match="unknown keyword"):
        saeforge.train(acts, not_a_flag=1)
    assert {"k", "l1_coefficient", "resample", "lr", "buffer_mb"} <= set(ActivationTrainConfig.options())
