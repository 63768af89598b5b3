"""The architectures against each other under the protocol: renders the `protocol` section of
docs/architectures.md from the rows two protocol runs already keep, and trains nothing itself.

    python scripts/reproduce/architectures.py [--docs docs]

- **Synthetic ground truth** (docs/benchmark.jsonl, `scripts/reproduce/reproduce_benchmark.py`):
  saeforge's rows, every architecture at its toy defaults, lr chosen from the grid on validation,
  the sparsity knob calibrated to each target L0, test-split figures over seeds. Per L0, each
  architecture against the best one on MCC, paired by seed.
- **The real model** (docs/evals.jsonl, `scripts/reproduce/evals.py`): each architecture with the
  orthogonal init and its default dead-latent handling (AuxK for the k-architectures, none for the
  others) at L0 ≈ 32 (k 32; the L1 / L0 coefficient calibrated), 1M tokens, over seeds: held-out
  explained variance and CE-loss recovered, and the interpretability suite.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
from saeforge.evaluation.protocol import fmt_interval, mean_interval, paired, table, write_section  # noqa: E402

ARCHS = ("standard", "topk", "batchtopk", "jumprelu", "matryoshka")
K_ARCHS = ("topk", "batchtopk", "matryoshka")
SYNTHETIC = (("mcc", "MCC", True), ("f1", "F1", True), ("absorption", "absorption", False),
             ("explained_variance", "EV", True), ("dead_latents", "dead", False))
REAL = (("explained_variance", "EV", True), ("ce_loss_recovered", "CE-loss recovered", True),
        ("k1_probe", "k=1 probe", True), ("labelled_fraction", "labelled latents", True),
        ("absorption", "absorption", False))


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def synthetic(rows: list[dict]) -> list[str]:
    test = [r for r in rows if r["method"] == "saeforge" and r["split"] == "test"]
    cell: dict[tuple, dict[int, dict]] = {}
    for r in test:
        cell.setdefault((r["arch"], r["target_l0"]), {})[r["seed"]] = r
    targets = sorted({t for _, t in cell})
    archs = [a for a in ARCHS if any((a, t) in cell for t in targets)]
    L = ["### Synthetic ground truth", "",
         "From [benchmark.jsonl](benchmark.jsonl) (saeforge's rows: each architecture at its toy defaults, its lr "
         "chosen from the grid on validation, its sparsity knob calibrated to each target L0; "
         "[benchmark.md](benchmark.md) says how). Mean over seeds on the test split [95% t-interval]; L0 is the "
         "measured one.", ""]
    for t in targets:
        body = []
        best = max((a for a in archs if (a, t) in cell),
                   key=lambda a: sum(r["mcc"] for r in cell[a, t].values()) / len(cell[a, t]))
        for a in archs:
            if (a, t) not in cell:
                continue
            rs = list(cell[a, t].values())
            cells = [fmt_interval(*mean_interval([r[m] for r in rs]), spec=".1f" if m == "dead_latents" else ".3f")
                     for m, _, _ in SYNTHETIC]
            if a == best:
                against = "best on MCC"
            else:
                d = paired({s: r["mcc"] for s, r in cell[best, t].items()}, {s: r["mcc"] for s, r in cell[a, t].items()})
                against = (f"{fmt_interval(d['difference'], *d['interval'], spec='+.3f')} "
                           f"({'behind' if d['verdict'] == 'hurts' else 'ahead' if d['verdict'] == 'helps' else 'no difference'})")
            body.append([a, f"{sum(r['l0'] for r in rs) / len(rs):.1f}", *cells, against])
        L += [f"Target L0 {t:g} ({len(next(iter(cell.values())))} seeds):", ""]
        L += table(["architecture", "L0", *(n for _, n, _ in SYNTHETIC), f"MCC against {best}, paired by seed"], body)
        L += [""]
    return L


def real(rows: list[dict]) -> list[str]:
    grid = [r for r in rows if r["part"] == "grid" and r["init"] == "orthogonal"
            and r["dead"] == ("auxk" if r["architecture"] in K_ARCHS else "none")]
    if not grid:
        return []
    by = {a: [r for r in grid if r["architecture"] == a] for a in ARCHS}
    body = []
    for a in ARCHS:
        rs = by[a]
        if not rs:
            continue
        body.append([a, f"{sum(r['l0'] for r in rs) / len(rs):.1f}",
                     *(fmt_interval(*mean_interval([r[m] for r in rs])) for m, _, _ in REAL)])
    seeds = sorted({r["seed"] for r in grid})
    L = ["### The embedded model", "",
         f"From [evals.jsonl](evals.jsonl) ([evals.md](evals.md) says how): each architecture with the orthogonal init "
         f"and its default dead-latent handling, L0 ≈ 32, seeds {seeds}; held-out explained variance and CE-loss "
         "recovered, and the interpretability suite (k=1 probe accuracy, the fraction of latents with a label at "
         "F1 ≥ 0.5, absorption). Mean over seeds [95% t-interval].", ""]
    L += table(["architecture", "L0", *(n for _, n, _ in REAL)], body)
    # each metric's best architecture and which others it beats, paired by seed
    lines = []
    for m, name, higher in REAL:
        mean = {a: sum(r[m] for r in by[a]) / len(by[a]) for a in ARCHS if by[a]}
        best = (max if higher else min)(mean, key=mean.get)
        beats = [a for a in mean if a != best and paired({r["seed"]: r[m] for r in by[a]},
                                                           {r["seed"]: r[m] for r in by[best]},
                                                           higher_is_better=higher)["verdict"] == "helps"]
        lines.append(f"{name}: {best}, ahead of {', '.join(beats) if beats else 'none beyond noise'}")
    L += ["", "Best per metric (ahead: its paired interval over seeds excludes 0): " + "; ".join(lines) + ".", ""]
    return L


def render(docs: Path) -> list[str]:
    L = ["", "Generated by `python scripts/reproduce/architectures.py` from the rows of the benchmark and the evals grid "
         "(the script trains nothing itself).", ""]
    L += synthetic(read(docs / "benchmark.jsonl"))
    L += real(read(docs / "evals.jsonl"))
    return L


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", default=str(ROOT / "docs"))
    ap.add_argument("--render-only", action="store_true", help="the same as without it: the script only renders")
    a = ap.parse_args(argv)
    docs = Path(a.docs)
    write_section(docs / "architectures.md", "protocol", render(docs))
    print(f"wrote the protocol section into {docs / 'architectures.md'}")


if __name__ == "__main__":
    main()
