"""Data-parallel throughput on CPU: 1 process against 2 processes under torchrun (gloo).

    python scripts/benchmarks/bench_distributed.py [--cache runs/cache-embedded] [--dict-size 4096]
        [--batch-size 4096] [--steps 60] [--repeats 2]

Every configuration is `saeforge train --cache ...` (the real code path: cache shards split
by rank, one all-reduce per step) with the same global batch; tokens/s are taken from the
training time the run itself reports (model loading, init and evals excluded). The three
configurations are interleaved `--repeats` times and the best of each is kept, since these
machines are shared and noisy:

- 1 process, 1 thread  (the unit of work a rank has here)
- 1 process, 2 threads (all the machine's cores in one process)
- 2 processes, 1 thread each (torchrun --nproc_per_node 2)

Scaling efficiency = tokens/s(2 processes) / (2 × tokens/s(1 process, 1 thread)).

With `--feature-shards` it compares 1 process × 1 thread with 2 processes that split the
dictionary's features (`--feature-shards 2`, same global batch, each process 1 thread) and
prints each one's dictionary state per rank (weights + Adam moments) and peak RSS per rank.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run(nproc: int, threads: int, cache: str, a, shards: int = 1) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        args = ["-m", "saeforge", "train", "--cache", cache, "--dict-size", str(a.dict_size), "--batch-size",
                str(a.batch_size), "--steps", str(a.steps), "--eval-tokens", "0", "--checkpoint-every", "0",
                "--log-every", str(a.steps), "--no-progress", "--lr-warmup-steps", "0", "--l1-warmup-steps", "0",
                "--lr-decay-steps", "0", "--device", "cpu", "--out", str(Path(tmp) / "run"),
                "--feature-shards", str(shards), "--architecture", a.architecture]
        cmd = [sys.executable, *args] if nproc == 1 else \
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode:
            sys.exit(p.stdout + p.stderr)
        s = json.loads((Path(tmp) / "run" / "summary.json").read_text())
        return {"tps": s["tokens"] / s["train_s"], "state_mb": s["rank_state_bytes"] / 2**20,
                "rss_mb": s["rank_peak_rss_mb"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default="runs/cache-embedded")
    ap.add_argument("--dict-size", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--architecture", default="standard")
    ap.add_argument("--feature-shards", action="store_true", help="1 process against 2 feature shards")
    a = ap.parse_args()
    if not (Path(a.cache) / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "saeforge", "harvest", "--out", a.cache, "--tokens", "1000000",
                        "--no-progress"], check=True)
    if a.feature_shards:
        configs = {"1 process × 1 thread": (1, 1, 1), "2 feature shards × 1 thread": (2, 1, 2)}
    else:
        configs = {"1 process × 1 thread": (1, 1, 1), "1 process × 2 threads": (1, 2, 1),
                   "2 processes × 1 thread": (2, 1, 1)}
    best = {k: {"tps": 0.0} for k in configs}
    for r in range(a.repeats):
        for name, (n, t, shards) in configs.items():
            res = run(n, t, a.cache, a, shards)
            if res["tps"] > best[name]["tps"]:
                best[name] = res
            print(f"round {r}: {name}: {res['tps']:,.0f} tokens/s", flush=True)
    base = best["1 process × 1 thread"]["tps"]
    print(f"\n{a.architecture}, d_in 128, {a.dict_size} features, global batch {a.batch_size}, {a.steps} steps, "
          f"best of {a.repeats}:")
    for name, res in best.items():
        print(f"  {name:28s} {res['tps']:10,.0f} tokens/s   ratio to 1×1: {res['tps'] / base:.2f}   "
              f"dictionary state per rank {res['state_mb']:.1f} MB   peak RSS per rank {res['rss_mb']:.0f} MB")
    if not a.feature_shards:
        two = best["2 processes × 1 thread"]["tps"]
        print(f"scaling efficiency (2 processes vs 2 × one): {two / (2 * base):.2f}; "
              f"2 processes vs 1 process × 2 threads: {two / best['1 process × 2 threads']['tps']:.2f}")


if __name__ == "__main__":
    main()
