"""The house rules that keep the layout readable: an import graph with no cycle and no upward
arrow (docs/design.md, "Module map"), and Python 3.10's TOML fallback."""

import ast
import subprocess
import sys
from pathlib import Path

import saeforge

SRC = Path(saeforge.__file__).parent
# Lowest first: a module may import only modules of a lower layer or of its own layer listed before it.
LAYERS = [
    ["errors", "distributed", "feature_shards", "runtime", "metrics", "options", "fast_attention", "kernels", "sparse"],
    ["sae"],
    ["architectures.topk", "architectures.standard", "architectures.batchtopk", "architectures.matryoshka",
     "architectures.jumprelu", "architectures"],
    ["dictionary", "init", "resample", "config", "checkpoint", "models", "toy", "sampler", "synthetic", "data", "buffer",
     "cache", "scaling"],
    ["wandb_log", "trainer", "evals", "analysis", "report"],
    ["pipeline.common", "pipeline.dictionaries", "pipeline.train", "pipeline.toy", "pipeline.sweep", "pipeline.harvest", "pipeline"],
    ["api", "cli", "__main__"],
]
ORDER = {m: (i, j) for i, layer in enumerate(LAYERS) for j, m in enumerate(layer)}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def imports(path: Path) -> set[str]:
    """saeforge modules `path` imports, anywhere in the file (function-level imports included)."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names = [f"{target}.{a.name}".lstrip(".") for a in node.names]
            for name in names:  # `from . import data` names a module; `from .x import y` names x
                found.add(name if name in ORDER else target)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("saeforge.") for a in node.names if a.name.startswith("saeforge.")}
    return {m for m in found if m and m != module_name(path) and m in ORDER}


def test_every_module_has_a_layer_and_imports_only_below_it():
    files = [p for p in SRC.rglob("*.py") if module_name(p) != "__init__"]
    assert {module_name(p) for p in files} == set(ORDER), "a module is missing from LAYERS (or LAYERS is stale)"
    upward = [(module_name(p), m) for p in files for m in imports(p) if ORDER[m] >= ORDER[module_name(p)]]
    assert not upward, f"imports that point up or sideways-forward (a cycle risk): {upward}"


def test_the_toml_fallback_of_python_3_10_imports():
    """Python 3.10 has no tomllib: options.py must take tomli (same API) instead."""
    code = ("import sys; sys.modules['tomllib'] = None; import saeforge.options as c; "
            "assert c.tomllib.__name__ == 'tomli'; print(c.tomllib.loads('a = 1'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "{'a': 1}" in out.stdout, out.stderr
