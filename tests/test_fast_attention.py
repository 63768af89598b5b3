"""Fused attention (fast_attention.py) gives TransformerLens's forward, and steps aside where it cannot."""

import copy

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from saeforge.sources import fast_attention
from saeforge.sources.language_model import load_model


def configs():
    base = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=24, d_vocab=61, act_fn="gelu", seed=0)
    yield "standard", HookedTransformerConfig(**base, positional_embedding_type="standard")
    yield "rotary + grouped-query", HookedTransformerConfig(**base, positional_embedding_type="rotary", rotary_dim=8,
                                                            n_key_value_heads=2, normalization_type="RMS")


@pytest.mark.parametrize("name, cfg", list(configs()))
def test_fused_forward_equals_transformerlens(name, cfg):
    stock = HookedTransformer(cfg)
    fused = copy.deepcopy(stock)
    assert fast_attention.enable(fused) == cfg.n_layers
    tokens = torch.randint(0, cfg.d_vocab, (3, cfg.n_ctx), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(fused(tokens), stock(tokens), rtol=1e-4, atol=1e-4)
        _, want = stock.run_with_cache(tokens)
        _, got = fused.run_with_cache(tokens)  # every hook cached, patterns included: TransformerLens's own path
    assert set(got.keys()) == set(want.keys()) and "blocks.0.attn.hook_pattern" in got
    for key in ("blocks.1.hook_resid_post", "blocks.0.attn.hook_z", "blocks.1.attn.hook_pattern"):
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)


def test_the_embedded_model_loads_fused_and_matches_its_stock_forward():
    fused, stock = load_model("embedded"), load_model("embedded", fused_attention=False)
    assert hasattr(fused.blocks[0].attn, "_tl_forward") and not hasattr(stock.blocks[0].attn, "_tl_forward")
    tokens = fused.to_tokens("def main(argv=None):\n    return parse(argv)\n")
    with torch.no_grad():
        torch.testing.assert_close(fused(tokens), stock(tokens), rtol=1e-4, atol=1e-4)


def test_unsupported_configurations_keep_transformerlens_attention():
    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, n_ctx=8, d_vocab=11, act_fn="relu",
                                  positional_embedding_type="alibi")
    assert fast_attention.enable(HookedTransformer(cfg)) == 0
