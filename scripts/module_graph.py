"""Print which saeforge module imports which (function-level imports included), the import cycles,
and the three longest functions: the checks behind docs/design.md's module map.

    python scripts/module_graph.py [src/saeforge]
"""
import ast, sys
from pathlib import Path
SRC = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "src" / "saeforge")
def name(p):
    parts = p.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"
mods = {name(p): p for p in SRC.rglob("*.py")}
g = {}
for m, p in sorted(mods.items()):
    here = m.split("."); pkg = here if p.name == "__init__.py" else here[:-1]
    if m == "__init__": pkg = []
    found = set()
    for node in ast.walk(ast.parse(p.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
            t = ".".join([*base, *(node.module.split(".") if node.module else [])])
            for a in node.names:
                n = f"{t}.{a.name}".lstrip(".")
                found.add(n if n in mods else t)
    g[m] = sorted(x for x in found if x in mods and x != m)
    print(f"{m:18s} -> {', '.join(g[m])}")
# cycles
def reach(a, b, seen=()):
    return any(x == b or (x not in seen and reach(x, b, seen + (x,))) for x in g.get(a, []))
cyc = sorted({tuple(sorted((a, b))) for a in g for b in g[a] if reach(b, a)})
print("cycles:", cyc)
# longest function
best = []
for m, p in mods.items():
    for node in ast.walk(ast.parse(p.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            best.append((node.end_lineno - node.lineno + 1, f"{m}.{node.name}"))
print("longest functions:", sorted(best)[-3:])
