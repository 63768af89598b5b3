"""Reading a dictionary: load it against its model, splice it in, and study its features.

    sae, model, hook = load_with_model("runs/main")          # checked: model, hook, d_in
    with splice(model, sae, hook):                             # the reconstruction replaces the
        loss = model(tokens, return_type="loss")               # activation at positions 1..
    stats = collect(model, sae, hook, contexts, n_tokens=65536, features=[3, 17])
    stats.features[3].contexts[0].text()                       # '…for i in ⟦r⟧ange(…'

Per feature: firing frequency, top-activating contexts (token strings from the model's own
tokenizer, so byte-level and BPE models alike, the activating token marked), a histogram of
its nonzero activations, and the output tokens its decoder direction promotes and
suppresses through the unembedding (W_dec,i · W_U; the final LayerNorm's scale is left out,
so magnitudes are relative). For the whole dictionary: firing frequencies, the feature-density
histogram (log10 frequency), dead (never fired) and dense (fires on > 10% of tokens) counts.

Two passes over the same held-out contexts: the first counts every feature's firing and
maximum, the second keeps the top-k contexts and histogram of the features asked for.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from saeforge.dictionary.sae import SAE
from saeforge.errors import UserError

DENSE = 0.1  # a feature firing on more than this fraction of tokens counts as dense


def load_with_model(path: str | Path, model: Any = None, hook: str | None = None, device: str = "cpu"):
    """(sae, model, hook): the dictionary and the model it was trained on, checked against
    each other: the recorded model name (if `model` is a name), the hook, and d_in."""
    from saeforge.dictionary.io import load
    from saeforge.sources.language_model import hook_width, load_model, resolve_hook

    sae = load(path, device=device)
    meta = sae.metadata
    hook = hook or meta.get("hook_name")
    if isinstance(model, str) or model is None:
        spec = model or meta.get("model_name")
        if not spec:
            raise UserError(f"{path} does not record the model it was trained on; pass the model")
        if model and meta.get("model_name") and not _same_model(model, meta["model_name"]):
            raise UserError(f"{path} was trained on model {meta['model_name']!r}, not {model!r}")
        model = load_model(spec, device)
    if not hook:
        raise UserError(f"{path} does not record its hook point; pass the hook")
    resolve_hook(model, hook)
    width = hook_width(model, hook)
    if width != sae.d_in:
        raise UserError(f"dictionary d_in {sae.d_in} does not match {hook} of the model (width {width}); "
                        "is this the model it was trained on?")
    target = target_hook(sae, path)
    if target:
        resolve_hook(model, target)
        if hook_width(model, target) != sae.d_out:
            raise UserError(f"transcoder d_out {sae.d_out} does not match {target} of the model (width "
                            f"{hook_width(model, target)}); is this the model it was trained on?")
    return sae.to(next(model.parameters()).device), model, hook


def target_hook(sae: SAE, path: Any = "") -> str | None:
    """The hook a transcoder writes (its cfg.json's hook_name_out); None for an SAE."""
    if not sae.transcoder:
        return None
    out = sae.metadata.get("hook_name_out")
    if not out:
        raise UserError(f"{path}: the transcoder does not record the hook it writes (hook_name_out in cfg.json's "
                        "metadata)")
    return out


def load_others(first: SAE, paths: tuple[str, ...] | list[str], hook: str, device: str = "cpu") -> list[SAE]:
    """More dictionaries to evaluate beside `first`: each of its model, hook and shape."""
    from saeforge.dictionary.io import load

    out = []
    for path in paths:
        sae = load(path, device=device)
        meta = sae.metadata
        if (sae.d_in, sae.d_sae) != (first.d_in, first.d_sae):
            raise UserError(f"{path} is a {sae.d_in}→{sae.d_sae} dictionary, the first a {first.d_in}→{first.d_sae}: "
                            "give dictionaries of one shape")
        if meta.get("hook_name") and meta["hook_name"] != hook:
            raise UserError(f"{path} reads {meta['hook_name']}, the first {hook}: give dictionaries of one hook")
        model = first.metadata.get("model_name")
        if model and meta.get("model_name") and not _same_model(model, meta["model_name"]):
            raise UserError(f"{path} was trained on model {meta['model_name']!r}, the first on {model!r}")
        out.append(sae)
    return out


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


@contextlib.contextmanager
def splice(model, sae: SAE, hook: str, positions_from: int = 1):
    """Within the block, the model's forward replaces the hook's activation at positions
    `positions_from`.. (1: BOS is left alone, as in training) by the dictionary's reconstruction."""

    def fn(act, hook=None):
        x = act[:, positions_from:]
        act[:, positions_from:] = sae(x.to(sae.W_enc.dtype)).to(act.dtype)
        return act

    with model.hooks(fwd_hooks=[(hook, fn)]):
        yield model


@dataclass
class Context:
    tokens: list[str]  # the window's token strings
    marked: int  # index of the activating token in `tokens`
    activation: float

    def text(self, left: str = "⟦", right: str = "⟧") -> str:
        return "".join(f"{left}{t}{right}" if i == self.marked else t for i, t in enumerate(self.tokens))


@dataclass
class FeatureReport:
    index: int
    frequency: float
    max_activation: float
    contexts: list[Context] = field(default_factory=list)
    histogram: list[int] = field(default_factory=list)  # counts of nonzero activations
    bin_edges: list[float] = field(default_factory=list)
    promoted: list[tuple[str, float]] = field(default_factory=list)
    suppressed: list[tuple[str, float]] = field(default_factory=list)
    label: dict[str, Any] | None = None  # its best Python label (interp.latent_labels): task, f1, precision, recall


@dataclass
class DictionaryReport:
    n_tokens: int
    frequency_F: torch.Tensor
    features: dict[int, FeatureReport]

    @property
    def dead(self) -> int:
        return int((self.frequency_F == 0).sum())

    @property
    def dense(self) -> int:
        return int((self.frequency_F > DENSE).sum())

    def density_histogram(self, bins: int = 40) -> tuple[list[int], list[float]]:
        """Histogram of log10(firing frequency) over the features that fired at all."""
        alive = self.frequency_F[self.frequency_F > 0].double().log10()
        if alive.numel() == 0:
            return [], []
        lo, hi = float(alive.min()), float(alive.max()) + 1e-9
        counts = torch.histc(alive, bins=bins, min=lo, max=hi)
        return counts.long().tolist(), torch.linspace(lo, hi, bins + 1).tolist()


def _acts(model, sae, hook, tokens, stop_at_layer):
    seen = {}

    def grab(act, hook=None):
        seen["x"] = act[:, 1:]
        return act

    model.run_with_hooks(tokens, fwd_hooks=[(hook, grab)], stop_at_layer=stop_at_layer, return_type=None)
    return sae.encode(seen["x"].to(sae.W_enc.dtype))  # [batch, n_ctx-1, F]


@torch.no_grad()
def collect(model, sae: SAE, hook: str, contexts: Iterator[torch.Tensor], n_tokens: int, *,
            features: list[int] | int = 24, top_k: int = 10, window: tuple[int, int] = (24, 6), bins: int = 30,
            n_effects: int = 10, progress: bool = False) -> DictionaryReport:
    """Study the dictionary on `n_tokens` activation positions of `contexts` (see module doc).
    `features`: the indices to study, or a count: that many alive features spread evenly over
    the range of firing frequencies (from the rarest to the most frequent)."""
    from saeforge.sources.language_model import resolve_hook

    stop = resolve_hook(model, hook)
    bar = tqdm(total=2 * n_tokens, disable=not progress, file=sys.stderr, desc="inspect", unit="tok", dynamic_ncols=True)
    batches, seen, counts_F, max_F = _first_pass(model, sae, hook, stop, contexts, n_tokens, bar)
    freq_F = counts_F.double().cpu() / seen
    feats = _pick(features, freq_F, sae.d_sae)
    idx = torch.tensor(feats, dtype=torch.long, device=max_F.device)
    hi_K = max_F[idx].clamp_min(1e-6)
    top_val, top_pos, hist = _second_pass(model, sae, hook, stop, batches, idx, hi_K, top_k, bins, bar)
    bar.close()
    sizes = [t.shape[0] * (t.shape[1] - 1) for t in batches]
    starts = torch.tensor([0] + sizes).cumsum(0).tolist()
    # what a feature writes, read through the unembedding: a residual-width decoder only (an SAE on the
    # residual stream or attn / MLP outputs; a transcoder writing hook_mlp_out); none for other widths
    writes = sae.W_dec.shape[1] == model.W_U.shape[0]
    effects_KV = (sae.W_dec[idx].float() @ model.W_U.detach().float()) if writes else None  # [K, vocab]
    reports = {}
    for k, fi in enumerate(feats):
        rep = FeatureReport(fi, float(freq_F[fi]), float(max_F[fi]), histogram=hist[k].tolist(),
                            bin_edges=torch.linspace(0, float(hi_K[k]), bins + 1).tolist())
        for j in range(top_k):
            val = float(top_val[j, k])
            if val <= 0:
                break
            rep.contexts.append(_context(model, batches, starts, int(top_pos[j, k]), val, window))
        if effects_KV is None:
            reports[fi] = rep
            continue
        n_eff = min(n_effects, effects_KV.shape[1])
        for sign, target in ((1, rep.promoted), (-1, rep.suppressed)):
            v, i = (sign * effects_KV[k]).topk(n_eff)
            target.extend((model.to_single_str_token(int(t)), float(sign * x)) for t, x in zip(i.tolist(), v.tolist()))
        reports[fi] = rep
    return DictionaryReport(seen, freq_F, reports)


def _first_pass(model, sae, hook, stop, contexts, n_tokens, bar):
    """The contexts read, the positions seen, and each feature's firing count and largest activation."""
    device = next(model.parameters()).device
    batches: list[torch.Tensor] = []
    counts_F = torch.zeros(sae.d_sae, dtype=torch.long, device=device)
    max_F = torch.zeros(sae.d_sae, device=device)
    seen = 0
    while seen < n_tokens:
        try:
            tokens = next(contexts).to(device)
        except StopIteration:
            break
        f = _acts(model, sae, hook, tokens, stop)
        counts_F += (f > 0).sum((0, 1))
        max_F = torch.maximum(max_F, f.amax((0, 1)))
        batches.append(tokens)
        seen += f.shape[0] * f.shape[1]
        bar.update(f.shape[0] * f.shape[1])
    if seen == 0:
        raise UserError("no held-out context to inspect the dictionary on")
    return batches, seen, counts_F, max_F


def _pick(features: list[int] | int, freq_F: torch.Tensor, d_sae: int) -> list[int]:
    """The features to study: the given indices, or a count spread over the alive features' frequencies."""
    if isinstance(features, int):
        alive = torch.nonzero(freq_F > 0).flatten()
        order = alive[torch.argsort(freq_F[alive])]
        n = min(features, len(order))
        pick = torch.linspace(0, len(order) - 1, n).round().long() if n else torch.zeros(0, dtype=torch.long)
        return sorted(set(order[pick].tolist()))
    bad = [i for i in features if not 0 <= i < d_sae]
    if bad:
        raise UserError(f"feature indices {bad} are out of range (the dictionary has {d_sae})")
    return list(features)


def _second_pass(model, sae, hook, stop, batches, idx, hi_K, top_k: int, bins: int, bar):
    """The studied features' top activations (values, flat positions: [top_k, K]) and histograms [K, bins]."""
    device, K = idx.device, len(idx)
    top_val = torch.full((top_k, K), -1.0, device=device)
    top_pos = torch.zeros((top_k, K), dtype=torch.long, device=device)  # flat position: (batch, row, pos)
    hist = torch.zeros((K, bins), dtype=torch.long, device=device)
    base = 0
    for tokens in batches:
        f = _acts(model, sae, hook, tokens, stop)[..., idx]  # [batch, pos, K]
        Bn, P, _ = f.shape
        flat = f.reshape(-1, K)
        v, i = flat.topk(min(top_k, flat.shape[0]), dim=0)
        allv = torch.cat([top_val, v])
        allp = torch.cat([top_pos, i + base])
        keep = allv.topk(top_k, dim=0).indices
        top_val, top_pos = allv.gather(0, keep), allp.gather(0, keep)
        nz = flat > 0
        binned = (flat / hi_K * bins).long().clamp_(0, bins - 1)
        for k in range(K):
            hist[k] += torch.bincount(binned[nz[:, k], k], minlength=bins)
        base += Bn * P
        bar.update(Bn * P)
    return top_val, top_pos, hist


def _context(model, batches, starts: list[int], flat_pos: int, val: float, window: tuple[int, int]) -> Context:
    """The tokens around a flat activation position (activation positions start after BOS)."""
    b = max(i for i, s in enumerate(starts[:-1]) if s <= flat_pos)
    row, pos = divmod(flat_pos - starts[b], batches[b].shape[1] - 1)
    pos += 1
    lo, hi = max(0, pos - window[0]), min(batches[b].shape[1], pos + window[1] + 1)
    return Context(list(model.to_str_tokens(batches[b][row, lo:hi].cpu())), pos - lo, val)
