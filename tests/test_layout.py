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
    ["errors", "distributed", "threads", "runtime", "options", "evaluation.metrics", "evaluation.labels", "evaluation.probing",
     "evaluation.protocol", "dictionary.kernels", "dictionary.sparse", "dictionary.blocks",
     "sources.fast_attention", "training.feature_shards"],
    ["dictionary.sae"],
    ["dictionary.architectures.topk", "dictionary.architectures.standard", "dictionary.architectures.batchtopk",
     "dictionary.architectures.matryoshka", "dictionary.architectures.jumprelu", "dictionary.architectures"],
    ["dictionary.init", "dictionary.crosslayer", "dictionary.io", "dictionary.formats", "training.resample", "config", "training.checkpoint", "sources.language_model",
     "sources.toy", "sources.sampler", "sources.synthetic", "sources.data", "sources.buffer", "sources.cache",
     "evaluation.scaling"],
    ["training.wandb_log", "training.trainer", "evaluation.evals", "evaluation.analysis", "evaluation.report",
     "evaluation.absorption", "evaluation.interp"],
    ["pipeline.common", "pipeline.dictionaries", "pipeline.train", "pipeline.toy", "pipeline.sweep", "pipeline.harvest"],
    ["api", "cli", "__main__"],
]
# the stage packages: their __init__ holds a docstring only (the file list of the stage)
PACKAGES = ["sources", "dictionary", "training", "evaluation", "pipeline"]
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
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "saeforge"):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            else:
                target = node.module.removeprefix("saeforge").lstrip(".")
            names = [f"{target}.{a.name}".lstrip(".") for a in node.names]
            for name in names:  # `from . import data` names a module; `from .x import y` names x
                found.add(name if name in ORDER else target)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("saeforge.") for a in node.names if a.name.startswith("saeforge.")}
    return {m for m in found if m and m != module_name(path) and m in ORDER}


def test_every_module_has_a_layer_and_imports_only_below_it():
    files = [p for p in SRC.rglob("*.py") if module_name(p) not in ("__init__", *PACKAGES)]
    assert {module_name(p) for p in files} == set(ORDER), "a module is missing from LAYERS (or LAYERS is stale)"
    upward = [(module_name(p), m) for p in files for m in imports(p) if ORDER[m] >= ORDER[module_name(p)]]
    assert not upward, f"imports that point up or sideways-forward (a cycle risk): {upward}"


def test_the_toml_fallback_of_python_3_10_imports():
    """Python 3.10 has no tomllib: options.py must take tomli (same API) instead."""
    code = ("import sys; sys.modules['tomllib'] = None; import saeforge.options as c; "
            "assert c.tomllib.__name__ == 'tomli'; print(c.tomllib.loads('a = 1'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "{'a': 1}" in out.stdout, out.stderr


def test_the_stage_packages_import_nothing():
    """A stage package's __init__ lists its modules in its docstring and imports none of them (so
    importing one stage never drags in another)."""
    for name in PACKAGES:
        tree = ast.parse((SRC / name / "__init__.py").read_text())
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))], name
        assert ast.get_docstring(tree), name

