"""TransformerLens attention through torch's fused `scaled_dot_product_attention`.

The model forward dominates a live run (docs/performance.md) and most of it is TransformerLens's
attention: the [batch, head, pos, pos] scores, their causal mask, softmax and NaN check as
separate passes. `enable(model)` gives every attention layer a forward that computes q, k, v
(and rotary) with TransformerLens's own code and hooks, then z with one fused kernel and hook_z,
then the output projection as TransformerLens does. A layer falls back to TransformerLens's forward
whenever the fused kernel could not reproduce it: a hook on its scores or pattern (run_with_cache
of everything, attention analysis), a KV cache, an attention or padding mask, and configurations
it does not cover (ALiBi, relative biases, attention sinks, soft-capping, hook_result, QK-norm…).
The result equals TransformerLens's to float rounding (tests/test_fast_attention.py).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

UNSUPPORTED_ARCHITECTURES = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")


def supported(attn) -> bool:
    cfg = attn.cfg
    return (cfg.positional_embedding_type in ("standard", "rotary", "shortformer")
            and (getattr(attn, "_attention_dir_override", None) or cfg.attention_dir) == "causal"
            and not cfg.use_attn_result and not getattr(cfg, "use_attention_sinks", False)
            and not getattr(cfg, "load_in_4bit", False) and not getattr(cfg, "use_logn_attn", False)
            and getattr(cfg, "clip_qkv", None) is None and not (cfg.attn_scores_soft_cap or 0) > 0
            and cfg.original_architecture not in UNSUPPORTED_ARCHITECTURES)


def enable(model) -> int:
    """Give every supported attention layer of `model` the fused forward; returns how many."""
    from transformer_lens.components.abstract_attention import AbstractAttention

    n = 0
    for module in model.modules():
        if isinstance(module, AbstractAttention) and supported(module) and not hasattr(module, "_tl_forward"):
            module._tl_forward = module.forward
            module.forward = types.MethodType(_fused_forward, module)
            n += 1
    return n


def _hooked(hook_point) -> bool:
    return bool(hook_point._forward_hooks or hook_point._forward_pre_hooks)


def _fused_forward(self, query_input, key_input, value_input, past_kv_cache_entry=None,
                   additive_attention_mask=None, attention_mask=None, position_bias=None):
    if (past_kv_cache_entry is not None or additive_attention_mask is not None or attention_mask is not None
            or position_bias is not None or _hooked(self.hook_attn_scores) or _hooked(self.hook_pattern)):
        return self._tl_forward(query_input, key_input, value_input, past_kv_cache_entry=past_kv_cache_entry,
                                additive_attention_mask=additive_attention_mask, attention_mask=attention_mask,
                                position_bias=position_bias)
    q, k, v = self.calculate_qkv_matrices(query_input, key_input, value_input)  # [batch, pos, head, d_head]
    if self.cfg.positional_embedding_type == "rotary":
        q = self.hook_rot_q(self.apply_rotary(q, 0, None))
        k = self.hook_rot_k(self.apply_rotary(k, 0, None))
    if k.shape[2] != q.shape[2]:  # grouped-query attention: each key/value head serves a group of query heads
        k = torch.repeat_interleave(k, q.shape[2] // k.shape[2], dim=2)
        v = torch.repeat_interleave(v, q.shape[2] // v.shape[2], dim=2)
    z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2).to(q.dtype),
                                       is_causal=True, scale=1.0 / float(self.attn_scale))
    z = self.hook_z(z.transpose(1, 2))  # [batch, pos, head, d_head]
    w = self.W_O.reshape(-1, self.W_O.shape[-1]).T  # [d_model, head · d_head], as TransformerLens's rearrange
    return F.linear(z.reshape(z.shape[0], z.shape[1], -1).to(w.dtype), w, self.b_O)
