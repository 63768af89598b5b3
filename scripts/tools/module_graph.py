"""Print which saeforge module imports which (function-level imports included), the import cycles,
the arrows that point up the layers, and the ten longest functions: the checks behind
docs/design.md's module map. The import reader is tests/test_layout.py's (the rule CI keeps).

    python scripts/tools/module_graph.py
"""

import ast
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("test_layout", ROOT / "tests" / "test_layout.py")
layout = importlib.util.module_from_spec(spec)
spec.loader.exec_module(layout)

files = {layout.module_name(p): p for p in layout.SRC.rglob("*.py") if layout.module_name(p) != "__init__"}
graph = {m: sorted(layout.imports(p)) for m, p in sorted(files.items())}
for m, deps in graph.items():
    print(f"{m:26s} -> {', '.join(deps)}")


def reaches(a: str, b: str, seen: tuple = ()) -> bool:
    return any(x == b or (x not in seen and reaches(x, b, seen + (x,))) for x in graph.get(a, []))


print("cycles:", sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if reaches(b, a)}))
print("upward arrows:", [(m, d) for m, deps in graph.items() for d in deps if layout.ORDER[d] >= layout.ORDER[m]])
lengths = []
for m, p in files.items():
    for node in ast.walk(ast.parse(p.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lengths.append((node.end_lineno - node.lineno + 1, f"{m}.{node.name}"))
print("ten longest functions:")
for n, f in sorted(lengths, reverse=True)[:10]:
    print(f"  {n:4d}  {f}")
