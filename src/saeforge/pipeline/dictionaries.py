"""The dictionaries of one `saeforge train` pass: `--hooks H1,H2 --dictionaries 'SPEC; SPEC'`.

Every spec of --dictionaries at every hook is one dictionary, with its own run directory
(`--out/<name>/`). A spec sets any per-dictionary setting (dict_size, architecture, k,
l1_coefficient, lr, init, seed …; not the budget, batch, data or buffer, which all share).
Without --hooks / --dictionaries a pass has one dictionary, written into --out itself.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

from saeforge.config import ActivationTrainConfig
from saeforge.errors import UserError
from saeforge.runtime import CHECKPOINT, RUN_FILES

# what every dictionary of a pass shares (the data, the budget, the buffer, the output root)
SHARED = {"out", "steps", "tokens", "batch_size", "device", "progress", "resume", "model", "dataset", "text_column",
          "contexts_per_pass", "cache", "buffer_mb", "buffer_dtype", "eval_tokens", "hooks", "dictionaries",
          "target_hooks", "log_every", "checkpoint_every", "wandb"}


def specs(cfg: ActivationTrainConfig, default_hook_name: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, hook, settings) of every dictionary: each spec of --dictionaries at each hook (with
    --target-hooks, at each pair of hooks: a transcoder each)."""
    hooks = [h.strip() for h in cfg.hooks.split(",") if h.strip()] or [cfg.hook or default_hook_name]
    targets = [h.strip() for h in cfg.target_hooks.split(",") if h.strip()]
    if targets and len(targets) != len(hooks):
        raise UserError(f"--target-hooks names {len(targets)} hook(s) and --hooks {len(hooks)}: give one target per hook")
    parsed = [parse_spec(s) for s in cfg.dictionaries.split(";") if s.strip()] or [{}]
    out = []
    for (hook, target), spec in itertools.product(zip(hooks, targets or [None] * len(hooks)), parsed):
        spec = dict(spec)
        if target and "target_hook" not in spec:
            spec["target_hook"] = target
        h = spec.pop("hook", hook)
        parts = ([h] if len(hooks) > 1 or h != hook else []) + [f"{k}{v}" for k, v in spec.items()
                                                                 if not (k == "target_hook" and v == target)]
        name = re.sub(r"[^A-Za-z0-9_.=-]", "_", "-".join(parts) or h)
        out.append((name, h, spec))
    names = [n for n, _, _ in out]
    if len(set(names)) < len(names):
        raise UserError(f"--dictionaries: two dictionaries would share a run directory ({', '.join(names)}); "
                        "give them different settings")
    return out


BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def parse_spec(text: str) -> dict[str, Any]:
    opts = ActivationTrainConfig.options()
    spec: dict[str, Any] = {}
    for item in (i.strip() for i in text.split(",") if i.strip()):
        key, eq, value = (x.strip() for x in item.partition("="))
        key = key.replace("-", "_").removeprefix("__")
        if not eq or not value:
            raise UserError(f"--dictionaries: {item!r} is not key=value")
        if key == "hook":
            spec[key] = value
            continue
        if key not in opts or key in SHARED:
            why = "shared by all dictionaries of a pass" if key in SHARED else "not a setting of saeforge train"
            raise UserError(f"--dictionaries: {key!r} is {why}")
        o = opts[key]
        try:
            if o.nullable and value == "auto":
                spec[key] = None
            elif o.type is bool:
                spec[key] = BOOLEANS[value.lower()]
            else:
                spec[key] = o.type(value)
        except (ValueError, KeyError):
            raise UserError(f"--dictionaries: {key} expects {o.type.__name__}, got {value!r}") from None
    return spec


def check_root(cfg: ActivationTrainConfig) -> None:
    """The --out of several dictionaries: never a directory holding a single run's results (they would
    be overwritten), and one holding a pass only with --resume."""
    out = Path(cfg.out)
    if not out.is_dir():
        return
    held = [n for n in (*RUN_FILES, CHECKPOINT) if n != "summary.json" and (out / n).exists()]
    if (out / "summary.json").is_file():
        try:
            a_pass = "dictionaries" in json.loads((out / "summary.json").read_text())
        except (OSError, ValueError, TypeError):
            a_pass = False
        if not a_pass:
            held.append("summary.json")
        elif not cfg.resume:
            raise UserError(f"--out {out} already holds a run of several dictionaries; pass --resume to continue it, "
                            "or choose another --out")
    if held:
        raise UserError(f"--out {out} holds a single run ({', '.join(held)}); several dictionaries would overwrite it: "
                        "choose another --out")


def several(cfg: ActivationTrainConfig) -> bool:
    """Whether the pass trains several dictionaries (a cross-layer transcoder over --hooks is one)."""
    return bool(cfg.hooks or cfg.dictionaries) and not cfg.cross_layer


def configs(cfg: ActivationTrainConfig, default_hook_name: str) -> list[tuple[str, str, ActivationTrainConfig]]:
    """(name, hook, config) of every dictionary of the pass; one, into --out, without specs."""
    if not several(cfg):
        return [("", cfg.hook or default_hook_name, cfg)]
    out = []
    for name, hook, spec in specs(cfg, default_hook_name):
        sub = cfg.with_values(out=str(Path(cfg.out) / name), hooks="", dictionaries="", target_hooks="", hook=hook,
                              **spec)
        sub.validate()
        out.append((name, hook, sub))
    return out

