"""Does a synthetic batch cost less than a training step on it? Both timed interleaved, in one process.

    python scripts/benchmarks/bench_synthetic.py [--data synthetic|toy] [--features 1024] [--d-model 128]
        [--batch 1024] [--architecture standard]

The data: `--data synthetic`, `SyntheticData.generate` with the benchmark's shape (hierarchy of
64 trees, branching 3, depth 2, half the parents exclusive, rank-16 correlation, magnitudes
1 ± 0.2); `--data toy`, the first seed's `ToyData` (decay 0.99, correlated firing, 5 active on
average: `saeforge toy`'s data). The step: the architecture's training step plus Adam, as the
trainer runs it; the batch is `inputs(step, B)`, what training draws (no dense codes). Prints
the median times and their ratio (batch / step): below 1 means the generator is not the
bottleneck. `OMP_NUM_THREADS` sets torch's and numba's threads. Results: docs/toy-notes.md ("What a batch costs").
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from saeforge.dictionary.architectures import create
from saeforge.sources.synthetic import SyntheticData
from saeforge.sources.toy import ToyData


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", choices=("synthetic", "toy"), default="synthetic")
    ap.add_argument("--features", type=int, default=1024)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--architecture", default="standard")
    ap.add_argument("--repeats", type=int, default=30)
    a = ap.parse_args()
    if a.data == "toy":
        data, what = ToyData(a.d_model, a.features), "toy batch (decay 0.99, correlated firing)"
    else:
        data = SyntheticData.generate(a.d_model, a.features, roots=64, branching=3, depth=2, exclusive=0.5,
                                      correlation_rank=16, magnitude_std=0.2, zipf_exponent=0.5, max_prob=0.4,
                                      min_prob=0.005)
        what = "synthetic batch (hierarchy + correlation)"
    params = {"k": 17} if a.architecture in ("topk", "batchtopk") else {}
    sae = create(a.architecture, a.d_model, a.features, **params)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3, fused=True)
    coef = 1.0 if a.architecture != "jumprelu" else 0.1
    gen, step = [], []
    for i in range(a.repeats + 3):
        t0 = time.perf_counter()
        x = data.inputs(i, a.batch)
        t1 = time.perf_counter()
        sae.step(x, coef)
        opt.step()
        opt.zero_grad(set_to_none=False)
        t2 = time.perf_counter()
        if i >= 3:
            gen.append(t1 - t0)
            step.append(t2 - t1)
    g, s = statistics.median(gen), statistics.median(step)
    print(f"threads: {torch.get_num_threads()}")
    print(f"{what}, {a.batch} × {a.features} features: {g * 1e3:.1f} ms")
    print(f"{a.architecture} training step + Adam ({a.d_model} → {a.features}): {s * 1e3:.1f} ms")
    print(f"batch / step: {g / s:.2f}")


if __name__ == "__main__":
    main()
