"""The dictionary directory (docs/design.md, "Files"): save, load, and check.

    cfg.json                  SAELens 6 config (architecture, d_in, d_sae, the architecture's own
                              fields) + saeforge's metadata
    sae_weights.safetensors   W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in]
                              and the architecture's extra tensors

A transcoder is saved as SAELens saves one: `d_out` in cfg.json, W_dec [d_sae, d_out], b_dec
[d_out], W_skip [d_out, d_in] (SAELens's orientation), `apply_b_dec_to_input` false, and the
architecture `transcoder` / `skip_transcoder` (ReLU), `jumprelu_transcoder` /
`jumprelu_skip_transcoder` (JumpReLU, and BatchTopK and Matryoshka, whose inference is a
threshold); TopK has no SAELens transcoder class, so a TopK transcoder is `topk_transcoder` /
`topk_skip_transcoder`, which saeforge (and circuit-tracer's format, formats.py) reads.
    sparsity.safetensors      "sparsity": log10 firing frequency per feature (optional on load)

Files are written atomically (runtime.py). Only JSON and safetensors are read.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import torch

from saeforge.dictionary.architectures import SAVED
from saeforge.dictionary.crosslayer import CrossLayerTranscoder, is_clt, load_clt, save_clt
from saeforge.dictionary.sae import SAE
from saeforge.errors import UserError
from saeforge.runtime import (atomic_save_tensors, atomic_write_json, check_json, read_json, read_tensor_metadata,
                              read_tensors)

CFG, WEIGHTS, SPARSITY = "cfg.json", "sae_weights.safetensors", "sparsity.safetensors"
SAVE_ID = "saeforge_save_id"  # the safetensors header key that ties a file to its save
# The SAELens config layout we write (its 6.x format); not a claim about the installed version.
SAELENS_FORMAT = "6.0.0"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
# SAELens metadata keys that saeforge fills from its own metadata when it knows them.
SAELENS_METADATA_KEYS = ("model_name", "hook_name", "hook_name_out", "hook_head_index", "context_size", "prepend_bos",
                         "dataset_path", "model_from_pretrained_kwargs")
# a transcoder's cfg.json architecture: (saved name of its architecture, skip) <-> SAELens's transcoder names
TRANSCODERS = {("standard", False): "transcoder", ("standard", True): "skip_transcoder",
               ("jumprelu", False): "jumprelu_transcoder", ("jumprelu", True): "jumprelu_skip_transcoder",
               ("topk", False): "topk_transcoder", ("topk", True): "topk_skip_transcoder"}
TRANSCODER_OF = {name: key for key, name in TRANSCODERS.items()}


def save(sae: SAE, path: str | Path, *, sparsity_F: torch.Tensor | None = None, input_scale: float = 1.0,
         output_scale: float | None = None) -> Path:
    """Write the dictionary directory. `input_scale` s is the factor training inputs were
    multiplied by (`output_scale` a transcoder's targets'); it is folded in (`SAE.folded`) so the
    saved dictionary acts on raw activations."""
    if isinstance(sae, CrossLayerTranscoder):  # its own layout (crosslayer.py)
        return save_clt(sae, path, input_scale=input_scale, output_scale=output_scale)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    s = float(input_scale)
    weights = sae.folded(s, output_scale)
    if "W_skip" in weights:
        weights["W_skip"] = weights["W_skip"].t().contiguous()  # SAELens's [d_out, d_in]
    dtype = next(k for k, v in DTYPES.items() if v == sae.W_enc.dtype)
    meta = {k: v for k, v in sae.metadata.items()}
    meta["input_scale_folded"] = s
    if sae.transcoder:
        meta["output_scale_folded"] = s if output_scale is None else float(output_scale)
    # every file of one save carries its id, cfg.json (written last) too: load() refuses a mix of two saves
    save_id = meta["save_id"] = uuid.uuid4().hex
    sl_meta = {"sae_lens_version": SAELENS_FORMAT, "sae_lens_training_version": SAELENS_FORMAT}
    sl_meta |= {k: meta[k] for k in SAELENS_METADATA_KEYS if k in meta}
    cfg = {
        **sae.saved_config(),
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": dtype,
        "device": "cpu",
        "apply_b_dec_to_input": not sae.transcoder,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": sl_meta,
        "saeforge": meta,
    }
    if sae.transcoder:
        cfg["architecture"] = TRANSCODERS[cfg["architecture"], sae.W_skip is not None]
        cfg["d_out"] = sae.d_out
    atomic_save_tensors(path / WEIGHTS, weights, metadata={SAVE_ID: save_id})
    if sparsity_F is not None:
        atomic_save_tensors(path / SPARSITY, {"sparsity": sparsity_F.float()}, metadata={SAVE_ID: save_id})
    atomic_write_json(path / CFG, cfg)
    return path


def check_one_save(path: Path, cfg: dict[str, Any], file: str) -> None:
    """cfg.json and `file` must come from one save (a save cut short by a kill leaves a mix)."""
    ours = (cfg.get("saeforge") or {}).get("save_id")
    theirs = read_tensor_metadata(path / file).get(SAVE_ID)
    if ours != theirs and (ours or theirs):
        raise UserError(f"{path}: cfg.json and {file} come from two different saves (one was interrupted); "
                        "rerun the run with --resume to save its dictionary whole")


CFG_FIELDS = {"d_in": (int, True), "d_sae": (int, True), "d_out": (int, False), "architecture": (str, False),
              "dtype": (str, False),
              "apply_b_dec_to_input": (bool, False), "normalize_activations": (str, False),
              "activation_fn": (str, False), "activation_fn_str": (str, False), "metadata": (dict, False),
              "saeforge": (dict, False), "model_name": (str, False), "hook_name": (str, False),
              "hook_point": (str, False), "hook_name_out": (str, False), "context_size": (int, False),
              "k": (int, False),
              "rescale_acts_by_decoder_norm": (bool, False)}
# metadata fields saeforge reads back (analysis, eval, inspect): in `metadata`, `saeforge` or at the top level
META_FIELDS = {"model_name": (str, False), "hook_name": (str, False), "hook_name_out": (str, False),
               "dataset_path": (str, False), "context_size": (int, False), "input_scale_folded": (float, False),
               "output_scale_folded": (float, False), "save_id": (str, False)}


def _read_cfg(path: Path) -> dict[str, Any]:
    cfg_path = path / CFG
    if not cfg_path.is_file():
        raise UserError(f"{path} is not a dictionary directory: {CFG} is missing")
    cfg = check_json(read_json(cfg_path, "the file is corrupt or truncated"), str(cfg_path), CFG_FIELDS)
    for key in ("metadata", "saeforge"):
        check_json(cfg.get(key) or {}, f"{cfg_path} ({key})", META_FIELDS)
    for key in ("d_in", "d_sae", "d_out"):
        if key in cfg and cfg[key] < 1:
            raise UserError(f"{cfg_path}: {key} must be a positive integer, got {cfg[key]!r}")
    arch = cfg.get("architecture") or "standard"
    if arch not in SAVED and arch not in TRANSCODER_OF:
        raise UserError(f"{cfg_path}: architecture {arch!r} is not supported; saeforge loads "
                        f"{', '.join(map(repr, [*SAVED, *TRANSCODER_OF]))} dictionaries")
    if arch in TRANSCODER_OF:
        if "d_out" not in cfg:
            raise UserError(f"{cfg_path}: a {arch} needs d_out (the width of the activations it writes)")
        if cfg.get("apply_b_dec_to_input"):
            raise UserError(f"{cfg_path}: a {arch} does not centre its input: apply_b_dec_to_input must be false")
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None):
        raise UserError(f"{cfg_path}: normalize_activations={norm!r} is not supported; re-save it with the "
                        "normalization folded into the weights (normalize_activations 'none')")
    return cfg


def load(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> SAE:
    """Load a saeforge or SAELens dictionary directory of an architecture saeforge has."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"dictionary directory {path} does not exist")
    if is_clt(path):
        return load_clt(path, device=device)
    cfg = _read_cfg(path)
    arch = cfg.get("architecture") or "standard"
    base, skip = TRANSCODER_OF.get(arch, (arch, False))
    tc = {"d_out": cfg["d_out"], "skip": skip} if arch in TRANSCODER_OF else {}  # a transcoder's shape
    cls = SAVED[base]
    settings = cls.from_saved_config(cfg, str(path / CFG))
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    tensors = read_tensors(path / WEIGHTS, "the dictionary weights")
    if skip and "W_skip" in tensors:
        tensors["W_skip"] = tensors["W_skip"].t()  # SAELens's [d_out, d_in] to x @ W_skip's [d_in, d_out]
    expected = {k: tuple(v.shape) for k, v in cls(d_in, d_sae, settings, device="meta", **tc).state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise UserError(f"{path / WEIGHTS}: missing tensor(s) {', '.join(missing)}; expected {', '.join(expected)}")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise UserError(f"{path / WEIGHTS}: unexpected tensor(s) {', '.join(extra)}; a {cls.architecture} dictionary "
                        f"has only {', '.join(expected)}")
    for name, shape in expected.items():
        t = tensors[name]
        if tuple(t.shape) != shape:
            dims = f"d_in={d_in}, d_sae={d_sae}" + (f", d_out={cfg['d_out']}" if "d_out" in cfg else "")
            if name == "W_skip":
                shape = shape[::-1]  # as the file holds it
                t = t.t()
            raise UserError(f"{path / WEIGHTS}: {name} has shape {list(t.shape)}, but cfg.json ({dims}) needs "
                            f"{list(shape)}")
        if not t.is_floating_point():
            raise UserError(f"{path / WEIGHTS}: {name} has dtype {t.dtype}; weights must be floating point")
        if not torch.isfinite(t).all():
            raise UserError(f"{path / WEIGHTS}: {name} contains NaN or infinite values")
    check_one_save(path, cfg, WEIGHTS)  # well-formed, but perhaps under another save's cfg.json
    cfg_dtype = cfg.get("dtype") or "float32"
    if dtype is None:
        if cfg_dtype.removeprefix("torch.") not in DTYPES:
            raise UserError(f"{path / CFG}: dtype {cfg_dtype!r} is unknown; use one of {', '.join(DTYPES)}")
        dtype = DTYPES[cfg_dtype.removeprefix("torch.")]
    sae = cls(d_in, d_sae, settings, device=device, dtype=dtype, **tc)
    cls.fold_saved(cfg, tensors)
    if cfg.get("apply_b_dec_to_input", True) is False and not sae.transcoder:
        # (x W + b) == ((x - b_dec) W + b + b_dec W): fold, so encode() stays one formula.
        tensors["b_enc"] = tensors["b_enc"].double() + tensors["b_dec"].double() @ tensors["W_enc"].double()
    with torch.no_grad():
        for name, t in tensors.items():
            getattr(sae, name).copy_(t.to(device=device, dtype=dtype))
    meta = dict(cfg.get("saeforge") or {})
    for k, v in (cfg.get("metadata") or {}).items():
        meta.setdefault(k, v)
    for k in ("model_name", "hook_name", "hook_name_out", "context_size"):  # SAELens keeps some at top level
        if k in cfg:
            meta.setdefault(k, cfg[k])
    if "hook_point" in cfg:
        meta.setdefault("hook_name", cfg["hook_point"])
    sae.metadata = meta
    return sae


def load_sparsity(path: str | Path) -> torch.Tensor | None:
    """log10 firing frequency per feature, or None when the directory has no sparsity file."""
    file = Path(path) / SPARSITY
    if not file.exists():
        return None
    t = read_tensors(file, "feature log-sparsity")
    if (Path(path) / CFG).is_file():
        check_one_save(Path(path), _read_cfg(Path(path)), SPARSITY)
    if "sparsity" not in t:
        raise UserError(f"{file}: missing tensor 'sparsity'")
    return t["sparsity"]


def log_sparsity(firing_counts_F: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """log10 of firing frequency, with never-fired features at log10(1e-10) like SAELens."""
    freq = firing_counts_F.double() / max(n_tokens, 1)
    return torch.log10(freq + 1e-10).float()


__all__ = ["save", "load", "load_sparsity", "log_sparsity"]
