"""circuit-tracer's transcoder formats, both ways (io.py holds saeforge's / SAELens's own).

A per-layer transcoder set, as circuit-tracer's `load_transcoder_set` / `load_relu_transcoder`
read it:

    config.yaml               model_kind: transcoder_set, scan, feature_input_hook and
                              feature_output_hook (per-block names, e.g. ln2.hook_normalized and
                              hook_mlp_out), transcoders: the layer files in layer order
    layer_{i}.safetensors     W_enc [d_sae, d_model] (the transpose of SAELens's), W_dec [d_sae,
                              d_model], b_enc, b_dec, optional W_skip [d_model, d_model] (applied
                              as x @ W_skipᵀ) and activation_function.threshold [d_sae]
                              (JumpReLU: pre · (pre > θ)); without a threshold the activation is ReLU

circuit-tracer's transcoders read and write d_model-wide activations, one per layer from 0 up,
with ReLU or a threshold: saeforge's standard transcoders are written as ReLU ones, JumpReLU,
BatchTopK and Matryoshka (whose inference is a threshold) with their thresholds. A TopK
transcoder has no such form (its top-k selection is per input) and is refused.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from saeforge.dictionary.architectures import ARCHITECTURES
from saeforge.dictionary.sae import SAE
from saeforge.errors import UserError
from saeforge.runtime import atomic_save_tensors, atomic_write_bytes, read_tensors

CONFIG = "config.yaml"
THRESHOLD = "activation_function.threshold"
BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _layer_hooks(sae: SAE, where: str) -> tuple[int, str, str]:
    """(layer, per-block input hook, per-block output hook) of a transcoder trained at blocks.L.*."""
    hook_in, hook_out = sae.metadata.get("hook_name"), sae.metadata.get("hook_name_out")
    m_in, m_out = BLOCK.match(hook_in or ""), BLOCK.match(hook_out or "")
    if not sae.transcoder or not m_in or not m_out or m_in.group(1) != m_out.group(1):
        raise UserError(f"{where}: circuit-tracer's transcoders read and write hooks of one block (blocks.L.…); "
                        f"this dictionary reads {hook_in!r} and writes {hook_out!r}")
    return int(m_in.group(1)), m_in.group(2), m_out.group(2)


def write_circuit_tracer(saes: list[SAE], out: str | Path, *, scan: str | None = None,
                         where: list[str] | None = None) -> Path:
    """Write transcoders (one per layer, any order) as a circuit-tracer transcoder set in `out`."""
    import yaml

    where = where or [f"dictionary {i}" for i in range(len(saes))]
    layers: dict[int, tuple[SAE, str]] = {}
    hooks = set()
    for sae, w in zip(saes, where):
        layer, h_in, h_out = _layer_hooks(sae, w)
        if sae.architecture == "topk":
            raise UserError(f"{w}: a TopK transcoder has no circuit-tracer form (it selects per input); train "
                            "batchtopk, jumprelu or standard, whose inference is a threshold or a ReLU")
        if sae.d_in != sae.d_out:
            raise UserError(f"{w}: circuit-tracer's transcoders read and write d_model; this one is "
                            f"{sae.d_in} → {sae.d_out}")
        if layer in layers:
            raise UserError(f"{w}: two transcoders at layer {layer} ({layers[layer][1]} and {w})")
        layers[layer] = (sae, w)
        hooks.add((h_in, h_out))
    if sorted(layers) != list(range(len(layers))):
        raise UserError(f"circuit-tracer needs a transcoder at every layer from 0 up; got layers {sorted(layers)}")
    if len(hooks) > 1:
        raise UserError(f"circuit-tracer's set reads one hook and writes one hook in every block; got {sorted(hooks)}")
    (h_in, h_out), = hooks
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for layer in range(len(layers)):
        sae = layers[layer][0]
        w = {"W_enc": sae.W_enc.detach().t(), "W_dec": sae.W_dec.detach(), "b_enc": sae.b_enc.detach(),
             "b_dec": sae.b_dec.detach()}
        if sae.W_skip is not None:
            w["W_skip"] = sae.W_skip.detach().t()
        threshold = inference_threshold(sae)
        if threshold is not None:
            w[THRESHOLD] = threshold
        name = f"layer_{layer}.safetensors"
        atomic_save_tensors(out / name, {k: v.float().contiguous().cpu() for k, v in w.items()})
        files.append(name)
    scan = scan or str(layers[0][0].metadata.get("model_name") or "saeforge")
    config = {"model_kind": "transcoder_set", "scan": scan, "feature_input_hook": h_in, "feature_output_hook": h_out,
              "transcoders": files}
    atomic_write_bytes(out / CONFIG, yaml.safe_dump(config, sort_keys=False).encode())
    return out


def inference_threshold(sae: SAE) -> torch.Tensor | None:
    """The per-latent threshold a dictionary infers with (JumpReLU's θ; BatchTopK's and Matryoshka's
    one threshold), or None for ReLU."""
    if hasattr(sae, "threshold"):
        return sae.threshold.detach().clamp_min(0)
    if hasattr(sae, "topk_threshold"):
        return sae.topk_threshold.detach().expand(sae.d_sae).clone()
    return None


def read_circuit_tracer(path: str | Path) -> list[SAE]:
    """The transcoders of a circuit-tracer transcoder set directory (config.yaml and its layer files),
    in layer order: ReLU ones as standard, thresholded ones as JumpReLU."""
    import yaml

    path = Path(path)
    cfg_path = path / CONFIG
    if not cfg_path.is_file():
        raise UserError(f"{path} is not a circuit-tracer transcoder set: {CONFIG} is missing")
    try:
        cfg = yaml.safe_load(cfg_path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{cfg_path}: not readable YAML ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("model_kind") != "transcoder_set":
        raise UserError(f"{cfg_path}: model_kind must be transcoder_set (a per-layer set)")
    files = cfg.get("transcoders")
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise UserError(f"{cfg_path}: 'transcoders' must list the layer files")
    h_in, h_out = cfg.get("feature_input_hook"), cfg.get("feature_output_hook")
    if not isinstance(h_in, str) or not isinstance(h_out, str):
        raise UserError(f"{cfg_path}: feature_input_hook and feature_output_hook must be hook names")
    out = []
    for layer, name in enumerate(files):
        file = (path / name) if not Path(name).is_absolute() else Path(name)
        t = read_tensors(file, "a circuit-tracer transcoder")
        missing = sorted({"W_enc", "W_dec", "b_enc", "b_dec"} - set(t))
        if missing:
            raise UserError(f"{file}: missing tensor(s) {', '.join(missing)}")
        F, D = t["W_enc"].shape
        expect = {"W_dec": (F, D), "b_enc": (F,), "b_dec": (D,), "W_skip": (D, D), THRESHOLD: (F,)}
        for k, shape in expect.items():
            if k in t and tuple(t[k].shape) != shape:
                raise UserError(f"{file}: {k} has shape {list(t[k].shape)}, W_enc {[F, D]} needs {list(shape)}")
        arch = "jumprelu" if THRESHOLD in t else "standard"
        sae = ARCHITECTURES[arch](D, F, d_out=D, skip="W_skip" in t)
        with torch.no_grad():
            sae.W_enc.copy_(t["W_enc"].t())
            sae.W_dec.copy_(t["W_dec"])
            sae.b_enc.copy_(t["b_enc"])
            sae.b_dec.copy_(t["b_dec"])
            if "W_skip" in t:
                sae.W_skip.copy_(t["W_skip"].t())
            if arch == "jumprelu":
                sae.threshold.copy_(t[THRESHOLD])
        sae.metadata = {"model_name": cfg.get("scan"), "hook_name": f"blocks.{layer}.{h_in}",
                        "hook_name_out": f"blocks.{layer}.{h_out}", "source": f"circuit-tracer {path}"}
        out.append(sae)
    return out


__all__ = ["write_circuit_tracer", "read_circuit_tracer", "inference_threshold"]
