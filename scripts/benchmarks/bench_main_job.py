"""The README's main job, this checkout against an earlier revision, interleaved in one run.

    python scripts/benchmarks/bench_main_job.py --rev bdba985 [--tokens 1000000] [--repeats 2]

Each repeat runs `saeforge train` (the main job's defaults, --tokens as given, evals on 16,384
held-out tokens) once with the earlier revision's source (a temporary git worktree) and once
with this checkout's, alternating, on the same machine in the same minutes; prints each run's
wall and training seconds, the held-out figures, and the median ratio new / old.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(src: Path, out: Path, tokens: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    cmd = [sys.executable, "-m", "saeforge", "train", "--out", str(out), "--tokens", str(tokens),
           "--eval-tokens", "16384", "--no-progress"]
    if (src / "saeforge" / "architectures").is_dir():  # since the TopK default: like with like (old has only L1)
        cmd += ["--architecture", "standard"]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", required=True, help="the earlier revision (git) to compare with")
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), a.rev], check=True,
                       capture_output=True)
        try:
            rows = {"old": [], "new": []}
            for i in range(a.repeats):
                for name, src in (("old", old / "src"), ("new", ROOT / "src")):
                    s = run(src, Path(tmp) / f"{name}{i}", a.tokens)
                    rows[name].append(s)
                    print(f"{name} ({a.rev if name == 'old' else 'this checkout'}) repeat {i}: wall {s['wall_s']:.1f} s, "
                          f"train {s['train_s']:.1f} s, L0 {s['l0']:.1f}, EV {s['explained_variance']:.4f}, "
                          f"CE recovered {s['ce_loss_recovered']:.4f}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], capture_output=True)
    for key in ("wall_s", "train_s"):
        ratios = [n[key] / o[key] for n, o in zip(rows["new"], rows["old"])]
        print(f"{key}: median new / old = {statistics.median(ratios):.3f} (per repeat: "
              f"{', '.join(f'{r:.3f}' for r in ratios)})")


if __name__ == "__main__":
    main()
