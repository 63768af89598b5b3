"""Wall time of the interpretability suite (`saeforge eval DIR --interp`) on a dictionary, part by part.

    python scripts/benchmarks/bench_interp_suite.py [DIR] [--tokens 32768] [--repeats 3] [--record]

DIR defaults to runs/main (the README's main job). Prints the seconds of each part and the total
for each repeat, and the machine's load average beside them: the promise is under 2 minutes on
2 CPU cores for the main job's dictionary, busy machine included. Not a speed comparison: no baseline.
--record appends each repeat to docs/evals-timing.jsonl (docs/evals.md shows them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", nargs="?", default="runs/main")
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--record", action="store_true")
    a = ap.parse_args()
    from saeforge.evaluation import interp
    from saeforge.evaluation.absorption import absorption
    from saeforge.evaluation.analysis import load_with_model

    sae, model, hook = load_with_model(a.path)
    print(f"{a.path}: {sae.d_in}→{sae.d_sae} at {hook}; torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs")
    for r in range(a.repeats):
        t, parts = time.perf_counter(), {}

        def lap(name: str) -> None:
            nonlocal t
            now = time.perf_counter()
            parts[name], t = now - t, now

        data = interp.collect_labelled(model, hook, "embedded", a.tokens)
        lap("labelled activations")
        split = interp.probe_split(data)
        base = interp.probe(data.acts_ND, data, split)
        lap("model probes")
        f = interp.encode_all(sae, data.acts_ND)
        interp.probe(f, data, split)
        lap("dictionary probes")
        interp.probe(interp.encode_all(interp.untrained_like(sae), data.acts_ND), data, split, ks=interp.KS)
        lap("control probes")
        absorption(sae, f, data, split)
        lap("absorption")
        interp.latent_counts(f, data)
        lap("latent labels")
        del base
        total = sum(parts.values())
        load = os.getloadavg()[0]
        print(f"repeat {r}: " + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items())
              + f" — total {total:.1f} s (load average {load:.1f}; {len(data.tasks)} tasks, {len(data.doc_N)} tokens)",
              flush=True)
        if a.record:
            row = {"path": a.path, "repeat": r, "parts_s": parts, "total_s": total, "load_average": load,
                   "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or
                   platform.machine(), "tasks": len(data.tasks), "tokens": len(data.doc_N)}
            with open(Path(__file__).resolve().parents[2] / "docs" / "evals-timing.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
