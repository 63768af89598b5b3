"""Two 1-thread runs side by side on the cores: numba's pool as wide as torch's (saeforge's
default) against as wide as the machine (numba's own default, whose idle worker spins).

    python scripts/benchmarks/bench_parallel_runs.py [--steps 300] [--features 256]

Each configuration starts two `saeforge toy` processes at once with OMP_NUM_THREADS=1 (as
torchrun sets for every rank) and times until both end; prints both wall times and their ratio.
Results: docs/performance.md ("numba's idle worker at one torch thread").
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def pair(numba_threads: str | None, a) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("NUMBA_NUM_THREADS", None)
    if numba_threads:
        env["NUMBA_NUM_THREADS"] = numba_threads
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "saeforge", "toy", "--d-model", "128", "--n-features", str(a.features), "--seed", "0",
               "--init", "orthogonal", "--steps", str(a.steps), "--target-mmcs", "0", "--no-progress"]
        t0 = time.perf_counter()
        procs = [subprocess.Popen([*cmd, "--out", f"{tmp}/run{j}"], env=env, stdout=subprocess.DEVNULL)
                 for j in range(2)]
        if any(p.wait() for p in procs):
            sys.exit("a run failed")
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--features", type=int, default=256)
    a = ap.parse_args()
    wide = pair(str(os.cpu_count()), a)
    ours = pair(None, a)
    print(f"two 1-thread runs, numba pool {os.cpu_count()} wide: {wide:.1f} s")
    print(f"two 1-thread runs, numba pool as wide as torch (1): {ours:.1f} s")
    print(f"ratio (machine-wide / torch-wide): {wide / ours:.1f}x")


if __name__ == "__main__":
    main()
