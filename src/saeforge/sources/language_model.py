"""Load a HookedTransformer: an official TransformerLens name, a local checkpoint, or the embedded model.

`load_model(spec)` understands three kinds of `spec`:

- `"embedded"` (the default): saeforge's own 4-layer byte-level model, shipped inside the
  package as `assets/tiny-stdlib-lm.safetensors` + `.json`. Its vocabulary is the 256 byte
  values, so it needs no tokenizer download; `ByteTokenizer` makes `to_tokens` / `to_string`
  work. It was trained by `scripts/tools/train_tiny_lm.py` on the source files of Python's standard
  library (docs/embedded-model.md: its bits per byte and a sample).
- a local directory holding `config.json` (HookedTransformerConfig fields) and
  `model.safetensors` (a HookedTransformer state dict), e.g. written by `save_model`. An
  optional `"tokenizer"` key in the JSON names the tokenizer: `"bytes"` or a HF tokenizer
  name or local path (loaded with `AutoTokenizer.from_pretrained`).
- a local Hugging Face checkpoint directory (`save_pretrained`, or a hub snapshot) of any
  architecture TransformerLens converts (GPT-2, GPT-NeoX / Pythia, Llama, …), read offline
  from its safetensors and converted as `from_pretrained` converts hub models.
- anything else is passed to `HookedTransformer.from_pretrained` (e.g. `gelu-4l`, the
  reference 4-layer model), which downloads from the Hugging Face hub.

Only safetensors and JSON are read from disk.
"""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import PreTrainedTokenizer

from saeforge.errors import UserError

EMBEDDED = "embedded"
BOS = 0  # byte 0 (NUL) never occurs in source text: it is the BOS/EOS/padding token
# A context is n_ctx tokens (data.py). A checkpoint without a learned position table (rotary, ALiBi)
# states its longest context in max_position_embeddings — 131072 for Llama 3, or anything a config
# says — which no table's shape checks; like TransformerLens's own configs of such models
# ("capped due to memory issues"), contexts are cut to this length.
MAX_ROTARY_CTX = 2048


class ByteTokenizer(PreTrainedTokenizer):
    """Token id = byte value of the UTF-8 encoding; id 0 (NUL) is BOS, EOS and padding.

    Behaves like a Hugging Face tokenizer with `add_bos_token=True`: `encode(text)` is
    `[0] + list(text.encode())`, so TransformerLens sees a tokenizer that prepends BOS and
    strips it when asked for `prepend_bos=False`. Decoding joins the bytes and decodes with
    `errors="replace"` (a lone byte of a multi-byte character shows as U+FFFD).
    """

    vocab_files_names: dict[str, str] = {}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("bos_token", "\x00")
        kwargs.setdefault("eos_token", "\x00")
        kwargs.setdefault("pad_token", "\x00")
        kwargs.setdefault("add_bos_token", True)
        kwargs.setdefault("name_or_path", "saeforge/bytes")
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        self.add_bos_token = kwargs["add_bos_token"]
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        return 256

    def get_vocab(self) -> dict[str, int]:
        return {chr(i): i for i in range(256)}

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        return [chr(b) for b in text.encode("utf-8")]

    def _convert_token_to_id(self, token: str) -> int:
        return ord(token) if len(token) == 1 and ord(token) < 256 else BOS

    def _convert_id_to_token(self, index: int) -> str:
        return chr(index)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return bytes(ord(t) for t in tokens).decode("utf-8", errors="replace")

    def build_inputs_with_special_tokens(self, ids0: list[int], ids1: list[int] | None = None) -> list[int]:
        bos = [BOS] if self.add_bos_token else []
        return bos + ids0 + ([] if ids1 is None else bos + ids1)

    def get_special_tokens_mask(self, ids0, ids1=None, already_has_special_tokens=False):
        if already_has_special_tokens:
            return [int(i == BOS) for i in ids0 + (ids1 or [])]
        bos = [1] if self.add_bos_token else []
        return bos + [0] * len(ids0) + ([] if ids1 is None else bos + [0] * len(ids1))

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        return ()


def _asset(name: str) -> Path:
    return Path(str(resources.files("saeforge") / "assets" / name))


def tiny_lm_config(**overrides: Any) -> dict[str, Any]:
    """Architecture of the embedded model (what scripts/tools/train_tiny_lm.py trains)."""
    cfg = dict(n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512, n_ctx=256, d_vocab=256,
               act_fn="gelu", normalization_type="LN", positional_embedding_type="standard",
               model_name="saeforge-tiny-stdlib-lm", default_prepend_bos=True, seed=0)
    cfg.update(overrides)
    return cfg


def build_model(config: dict[str, Any], tokenizer: str | None = "bytes", device: str | torch.device = "cpu"):
    """A HookedTransformer from config fields, randomly initialized (weights loaded by the caller)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(**{**config, "device": str(device)})
    tok = _tokenizer(tokenizer)
    meta = str(device) == "meta"  # shapes only, no memory
    with warnings.catch_warnings(), torch.device("meta") if meta else contextlib.nullcontext():
        warnings.simplefilter("ignore", DeprecationWarning)  # TransformerLens 3 deprecates HookedTransformer
        return HookedTransformer(cfg, tokenizer=tok, move_to_device=not meta,
                                 **({"default_padding_side": "right"} if tok is not None else {}))


def _tokenizer(name: str | None):
    if name is None:
        return None
    if name == "bytes":
        return ByteTokenizer()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load tokenizer {name!r}: {str(e).splitlines()[0]}") from None


def save_model(model, path: str | Path, tokenizer: str | None = "bytes", extra: dict[str, Any] | None = None) -> Path:
    """Write `config.json` + `model.safetensors`, loadable by `load_model(path)`."""
    from dataclasses import fields

    from saeforge.runtime import atomic_write_json

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    keep = {f.name for f in fields(type(model.cfg)) if f.init}
    cfg = {k: v for k, v in model.cfg.to_dict().items() if k in keep and _jsonable(v) and k != "device"}
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = out / ".model.safetensors.tmp"
    save_file(sd, str(tmp))
    tmp.replace(out / "model.safetensors")
    atomic_write_json(out / "config.json", {"config": cfg, "tokenizer": tokenizer, **(extra or {})})
    return out


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def load_model(spec: str = EMBEDDED, device: str | torch.device = "cpu", fused_attention: bool = True,
               progress: bool = False):
    """Load a HookedTransformer (see the module docstring for what `spec` may be), in eval mode;
    with `fused_attention`, its attention runs through torch's fused kernel wherever that gives
    TransformerLens's result (fast_attention.py: 2.6× faster forwards of the embedded model).
    `progress`: a hub download shows its progress bars on stderr (nothing else third-party is shown)."""
    p = Path(spec)
    if spec == EMBEDDED:
        model = _load_dir(_asset("tiny-stdlib-lm.json"), _asset("tiny-stdlib-lm.safetensors"), device, EMBEDDED)
    elif p.is_dir() and _is_hf_checkpoint(p / "config.json"):
        model = _load_hf_dir(p, device)
    elif p.is_dir():
        model = _load_dir(p / "config.json", p / "model.safetensors", device, str(p))
    elif p.suffix in (".safetensors", ".json") or p.exists():
        raise UserError(f"--model {spec}: a local model is a directory holding config.json and model.safetensors")
    else:
        model = _load_hub(spec, device, progress)
    if fused_attention:
        from saeforge.sources import fast_attention

        fast_attention.enable(model)
    return model


def _load_dir(cfg_file: Path, weights: Path, device, name: str):
    for f in (cfg_file, weights):
        if not f.is_file():
            raise UserError(f"model {name}: {f.name} is missing (expected {f})")
    try:
        meta = json.loads(cfg_file.read_text())
        config = meta["config"]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"model {name}: {cfg_file.name} is not JSON ({e})") from None
    except (KeyError, TypeError) as e:
        raise UserError(f"model {name}: {cfg_file.name} is neither a saeforge model config nor a Hugging Face one "
                        f"(no model_type; {type(e).__name__}: {e})") from None
    shapes = _weight_shapes_of(weights, f"model {name} weights")
    n_layers = config.get("n_layers") if isinstance(config, dict) else None
    if isinstance(n_layers, int) and not isinstance(n_layers, bool) and n_layers > len(shapes):
        raise UserError(f"model {name}: {cfg_file.name} says {n_layers} layers, but the weights hold {len(shapes)} "
                        "tensors in all; the config does not describe these weights")
    _check_field_types(config, f"model {name}: {cfg_file.name}")
    try:  # the model the config describes, built on the meta device (no memory), against the weights' shapes
        skeleton = build_model(config, tokenizer=None, device="meta")
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise UserError(f"model {name}: bad config in {cfg_file.name}: {str(e)[:200]}") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    missing, unexpected = set(expected) - set(shapes), set(shapes) - set(expected)
    if missing or unexpected:
        raise UserError(f"model {name}: weights do not match its config "
                        f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    for k, shape in expected.items():
        if shapes[k] != shape:
            raise UserError(f"model {name}: {k} has shape {list(shapes[k])}, config says {list(shape)}")
    model = build_model(config, tokenizer=meta.get("tokenizer", "bytes"), device=device)
    from saeforge.runtime import read_tensors

    sd = read_tensors(weights, f"model {name} weights")
    model.load_state_dict(sd)
    model.cfg.model_name = meta.get("name", config.get("model_name", name))
    model.saeforge_name = name
    return model.eval()


_SIMPLE = {"int": int, "float": (int, float), "bool": bool, "str": str}


def _check_field_types(config: dict[str, Any], what: str) -> None:
    """The HookedTransformerConfig fields of simple types (int, float, bool, str, or None where
    Optional) hold values of that type: TransformerLens takes `n_layers: true` as one layer."""
    from dataclasses import fields

    from transformer_lens import HookedTransformerConfig

    for f in fields(HookedTransformerConfig):
        kind = str(f.type)
        optional = kind.startswith("Optional[")
        want = _SIMPLE.get(kind.removeprefix("Optional[").removesuffix("]") if optional else kind)
        if want is None or f.name not in config or (optional and config[f.name] is None):
            continue
        v = config[f.name]
        if not isinstance(v, want) or (isinstance(v, bool) and want is not bool):
            raise UserError(f"{what}: config field {f.name} must be {kind}, got {v!r} ({type(v).__name__})")


def _is_hf_checkpoint(cfg_file: Path) -> bool:
    """A Hugging Face config (save_pretrained, a hub snapshot) names its model_type; ours has "config"."""
    try:
        meta = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(meta, dict) and "model_type" in meta and "config" not in meta


def _load_hf_dir(path: Path, device):
    """A local Hugging Face checkpoint of an architecture TransformerLens converts (GPT-2, GPT-NeoX /
    Pythia, Llama, …): the HF model is read from the directory (safetensors only, offline) and
    converted as `HookedTransformer.from_pretrained` converts a hub model (same processing:
    LayerNorm folded, writing weights centered), with the directory's tokenizer.

    Every file is checked before the first expensive step: the tokenizer is read first and must fit
    the model's vocabulary; config.json is parsed and the model it describes is built on the meta
    device (no memory) and compared, tensor by tensor, with the shapes in the safetensors headers —
    so a config that disagrees with its weights (a layer count or a size of 10**9) is one line, not
    an allocation. What transformers, tokenizers or TransformerLens raise while reading the files is
    one line too (`_reading`), and their progress bars and prints stay off the terminal."""
    from saeforge.errors import quiet_third_party

    with quiet_third_party():
        return _convert_hf_dir(path, device)


@contextlib.contextmanager
def _reading(name: str, what: str):
    """Whatever a third-party reader raises on a user's file (tokenizers' parse errors are bare
    `Exception`s, transformers' range checks TypeErrors and IndexErrors) becomes one line naming the
    file; our own UserErrors pass through."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a reader of the user's file failed: say so in one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"--model {name}: {what} ({type(e).__name__}: {first})") from None


def _weight_shapes(path: Path, name: str) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape over the checkpoint's safetensors files (headers only, nothing loaded)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(path.glob("*.safetensors")):
        shapes.update(_weight_shapes_of(f, f"--model {name}: {f.name}"))
    return shapes


def _weight_shapes_of(file: Path, what: str) -> dict[str, tuple[int, ...]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), "pt") as h:
            return {k: tuple(h.get_slice(k).get_shape()) for k in h.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{file} is not a readable safetensors file ({e}); it is corrupt or truncated ({what})") \
            from None


def _check_config_against_weights(path: Path, name: str, hf_config) -> None:
    """Build the model config.json describes on the meta device and compare its tensors' shapes with
    the checkpoint's: what would otherwise be allocated at the config's sizes is refused first."""
    from transformers import AutoModelForCausalLM

    found = _weight_shapes(path, name)
    layers = getattr(hf_config, "num_hidden_layers", None)
    if isinstance(layers, int) and not 0 < layers <= len(found):  # each layer has tensors of its own
        raise UserError(f"--model {name}: config.json says {layers} layers, but the weights hold {len(found)} "
                        "tensors in all; the config does not describe these weights")
    with _reading(name, "config.json describes no model transformers can build"), torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(hf_config)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    prefix = f"{skeleton.base_model_prefix}." if skeleton.base_model_prefix else ""
    common = 0
    for k, shape in found.items():  # a hub snapshot of a base model names its tensors without the prefix
        want = expected.get(k, expected.get(prefix + k))
        if want is None:
            continue
        common += 1
        if want != shape:
            raise UserError(f"--model {name}: config.json gives {k} the shape {list(want)}, the weights hold "
                            f"{list(shape)}; the config does not describe these weights")
    if not common:
        raise UserError(f"--model {name}: none of the weights' tensors ({', '.join(sorted(found)[:3])}, …) is a "
                        f"tensor of the {type(skeleton).__name__} config.json describes")
    # parameters the weights lack would be initialized at random (tied ones appear once here)
    lacking = [k for k, _ in skeleton.named_parameters() if k not in found and k.removeprefix(prefix) not in found]
    if lacking:
        raise UserError(f"--model {name}: config.json describes {len(lacking)} parameters the weights lack "
                        f"({', '.join(lacking[:2])}, …); the config does not describe these weights")


def _convert_hf_dir(path: Path, device):
    import tempfile

    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    name = str(path)
    if not any(path.glob("*.safetensors")):
        raise UserError(f"--model {name}: no *.safetensors weights in the checkpoint (only safetensors are read; "
                        "re-save it with save_pretrained(..., safe_serialization=True))")
    has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))
    if not has_tokenizer:  # TransformerLens would go and look for one on the hub under the directory's name
        raise UserError(f"--model {name}: the checkpoint has no tokenizer (tokenizer.json, tokenizer_config.json or "
                        "vocab.json); save it beside the weights with tokenizer.save_pretrained(DIR)")
    with _reading(name, "config.json cannot be read"):
        hf_config = AutoConfig.from_pretrained(path, local_files_only=True)
    with _reading(name, "its tokenizer files cannot be read"):
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        tokenizer("def f(x):\n    return x\n")  # a tokenizer that loads but cannot encode fails here, not mid-run
    _check_config_against_weights(path, name, hf_config)
    V = hf_config.vocab_size
    special = {k: getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "pad")}
    outside = [f"{k} id {i}" for k, i in special.items() if isinstance(i, int) and not 0 <= i < V]
    if len(tokenizer) > V:
        outside.append(f"ids {V}..{len(tokenizer) - 1}")
    if outside:  # the model's embedding has no row for them: every context would fail inside the forward
        raise UserError(f"--model {name}: the tokenizer's {', '.join(outside)} lie outside the model's vocabulary "
                        f"(0..{V - 1}); save the tokenizer the model was trained with")
    with _reading(name, "transformers cannot read this checkpoint"):
        hf_model = AutoModelForCausalLM.from_pretrained(path, config=hf_config, use_safetensors=True,
                                                        dtype=torch.float32, local_files_only=True)
    arch = type(hf_model).__name__
    with tempfile.TemporaryDirectory() as tmp, _reading(name, f"TransformerLens cannot convert a {arch}"):
        # TransformerLens picks the architecture by name when a path mentions llama or gemma (and then
        # lacks the config), and reads GPT-2's n_ctx, which transformers no longer writes: hand it a
        # neutral name for the same files, with the config completed
        tl_path = Path(tmp) / "checkpoint"
        tl_path.mkdir()
        for f in path.iterdir():
            if f.name != "config.json":
                (tl_path / f.name).symlink_to(f.resolve())
        hf_cfg = hf_model.config.to_dict()
        if hf_cfg.get("model_type") == "gpt2" and "n_positions" in hf_cfg:
            hf_cfg.setdefault("n_ctx", hf_cfg["n_positions"])
        (tl_path / "config.json").write_text(json.dumps(hf_cfg))
        cfg = loading.get_pretrained_model_config(str(tl_path), hf_cfg=hf_cfg, fold_ln=True,
                                                  device=str(device), local_files_only=True)
        state_dict = loading.get_pretrained_state_dict(str(tl_path), cfg, hf_model)
        cfg.model_name = path.name
        if cfg.positional_embedding_type != "standard" and cfg.n_ctx > MAX_ROTARY_CTX:
            cfg.n_ctx = MAX_ROTARY_CTX  # as TransformerLens caps its official long-context models
        with warnings.catch_warnings():  # TransformerLens 3 deprecates HookedTransformer in favour of its bridge
            warnings.simplefilter("ignore", DeprecationWarning)
            model = HookedTransformer(cfg, tokenizer, move_to_device=False)
        model.load_and_process_state_dict(state_dict, fold_ln=True, center_writing_weights=True, center_unembed=True,
                                          fold_value_biases=True, refactor_factored_attn_matrices=False)
    model = model.to(device).eval()
    model.saeforge_name = name
    return model


def _load_hub(name: str, device, progress: bool):
    """`HookedTransformer.from_pretrained(name)`: downloads from the Hugging Face hub (or reads its
    local cache). Its prints and log lines are kept off the terminal; its download bars too, unless
    `progress` (they go to stderr: stdout is the commands' JSON)."""
    from transformer_lens import HookedTransformer

    from saeforge.errors import quiet_hub_logs, quiet_third_party

    quiet = quiet_third_party() if not progress else contextlib.redirect_stdout(sys.stderr)
    with _reading(name, "not the embedded model, not a local model directory, and the hub could not provide it "
                        "(or TransformerLens could not convert what it gave)"), \
            quiet_hub_logs(), quiet, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer.from_pretrained(name, device=str(device))
    model.saeforge_name = name
    return model.eval()


def default_hook(model) -> str:
    """`blocks.{L}.hook_resid_post` at the middle of the model (layer 2 of the 4-layer models)."""
    return f"blocks.{model.cfg.n_layers // 2}.hook_resid_post"


def resolve_hook(model, name: str) -> int | None:
    """Check a hook name and return the `stop_at_layer` that ends the forward right after it.

    Hooks inside block L stop at L + 1; embedding hooks at 0; anything after the last block
    (`ln_final.*`, `unembed.*`) runs the whole model (None).
    """
    valid = usable_hooks(model)
    if name in model.hook_dict and name not in valid:
        hook_width(model, name)  # raises: the hook exists but its activations do not fit a dictionary
    if name not in model.hook_dict:
        parts = name.split(".")
        if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() and int(parts[1]) >= model.cfg.n_layers:
            raise UserError(f"--hook {name}: layer {parts[1]} is past the model's depth "
                            f"({model.cfg.n_layers} layers, 0..{model.cfg.n_layers - 1})")
        per_block = sorted({n.split(".", 2)[2] for n in valid if n.startswith("blocks.0.")})
        others = [n for n in valid if not n.startswith("blocks.")]
        raise UserError(f"--hook {name!r} is not a hook of this model; valid: blocks.{{0..{model.cfg.n_layers - 1}}}."
                        f"{{{','.join(per_block)}}} or {', '.join(others)}")
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if name in ("hook_embed", "hook_pos_embed", "hook_tokens"):
        return 0
    return None


def hook_widths(model) -> dict[str, int]:
    """Every hook whose activation is one vector per token [batch, pos, width > 1] in a forward as
    training runs it (return_type None), with its width; probed once on two tokens and kept on the
    model. Per-head, attention-pattern and LayerNorm-scale hooks, and hooks this model's config does
    not fire (hook_attn_in, unembed.*), are not in it."""
    widths = getattr(model, "_saeforge_hook_widths", None)
    if widths is None:
        shapes: dict[str, tuple[int, ...]] = {}

        def record(act, hook):
            shapes[hook.name] = tuple(act.shape)
            return act

        tokens = torch.zeros(1, 2, dtype=torch.long, device=next(model.parameters()).device)
        with torch.no_grad():
            model.run_with_hooks(tokens, fwd_hooks=[(n, record) for n in model.hook_dict], return_type=None)
        widths = {n: s[-1] for n, s in shapes.items() if len(s) == 3 and s[:2] == (1, 2) and s[-1] > 1}
        model._saeforge_hook_widths = widths
    return widths


def usable_hooks(model) -> list[str]:
    return [n for n in model.hook_dict if n in hook_widths(model)]


def hook_order(model) -> dict[str, int]:
    """Every usable hook's place in the forward (0 first), as the probe of `hook_widths` saw them run."""
    return {name: i for i, name in enumerate(hook_widths(model))}


def hook_width(model, hook: str) -> int:
    """d_in of a hook point (d_model for resid/out hooks, d_mlp for mlp.hook_pre/post, ...)."""
    widths = hook_widths(model)
    if hook not in widths:
        raise UserError(f"--hook {hook}: its activations are not one vector per token (per-head, attention or "
                        "LayerNorm-scale hooks, or hooks this model does not run); use a residual, attn_out, mlp "
                        "or hook_normalized hook")
    return widths[hook]
