"""The main job on a busy machine: saeforge and SAELens's runner, quiet and beside other busy
processes this script starts itself, interleaved; rows in docs/busy.jsonl, the table rendered into
docs/performance.md (section 4, between its `busy` markers).

    python scripts/benchmarks/bench_busy.py [--tokens 200000] [--loads 0 1 2] [--rounds 3] [--render-only]

A load is N processes each spinning one core (`while True: pass`), started before a round's runs at
that load and stopped after them. Methods, each a fresh process as a user runs it, in a fresh random
order each round (`protocol.interleaved`):
- **saeforge**: `saeforge train` with the main job's settings (TopK k 32, 1,024 latents) at --tokens,
  its thread count left to the package (threads.py: it follows the cores other processes leave free);
- **saeforge --threads 2** / **--threads 1**: the count fixed (2 is what every earlier version ran on
  this 2-core machine);
- **SAELens**: SAELens's LanguageModelSAETrainingRunner on the same model, corpus, hook, dictionary
  and budget (bench_end_to_end.py's settings), torch's default thread count.
Walls are the whole process's (imports, model load, training; no evals). Each row records the
machine's load average and, for saeforge, its time breakdown and the thread counts it chose.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from saeforge.evaluation.protocol import (Results, fmt_interval, interleaved, ratio_interval, table,  # noqa: E402
                                          write_section)

METHODS = ("saeforge", "saeforge --threads 2", "saeforge --threads 1", "SAELens")
KEY = ("tokens", "load", "method", "round")


def run_saeforge(method: str, tokens: int, out: Path) -> dict:
    flags = method.split()[1:]
    cmd = [sys.executable, "-m", "saeforge", "train", "--out", str(out), "--tokens", str(tokens), "--eval-tokens", "0",
           "--no-progress", "--checkpoint-every", "0", *flags]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    s = json.loads((out / "summary.json").read_text())
    return {"wall_s": wall, "time_breakdown": s["time_breakdown"], "threads": s.get("threads")}


def run_saelens(tokens: int, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--saelens-child", str(out), "--tokens", str(tokens)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # its progress bars
    wall = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"SAELens's run failed:\n{done.stderr[-3000:]}")
    return {"wall_s": wall, "runner_s": json.loads((out / "wall.json").read_text())["runner_s"]}


def run_pair(method: str, tokens: int, out: Path) -> dict:
    """Two runs of `method` started together (a sweep's runs side by side): the wall until both ended."""
    cmds = []
    for i in range(2):
        o = out / f"run{i}"
        if method == "SAELens":
            cmds.append([sys.executable, __file__, "--saelens-child", str(o), "--tokens", str(tokens)])
        else:
            cmds.append([sys.executable, "-m", "saeforge", "train", "--out", str(o), "--tokens", str(tokens),
                         "--eval-tokens", "0", "--no-progress", "--checkpoint-every", "0", *method.split()[1:]])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in cmds]
    if any(p.wait() for p in procs):
        sys.exit(f"a side-by-side run of {method} failed")
    return {"wall_s": time.perf_counter() - t0}


def saelens_child(out: Path, tokens: int) -> None:
    """SAELens's runner as bench_end_to_end.py runs it (TopK k 32, 1,024 latents), in this process."""
    from bench_end_to_end import saelens_run

    from saeforge.sources.language_model import default_hook, load_model

    model = load_model("embedded", fused_attention=False)  # TransformerLens's stock model, as its users get it
    a = argparse.Namespace(tokens=tokens, seed=0, architecture="topk", saelens_rescale="true", saelens_l1=5.0)
    _, wall = saelens_run(a, model, default_hook(model), out, model.cfg.n_ctx)
    (out / "wall.json").write_text(json.dumps({"runner_s": wall}))


def measure(a, results: Results, tmp: Path) -> None:
    for rnd in range(a.rounds):
        for load in a.loads:
            if all(results.get(tokens=a.tokens, load=load, method=m, round=rnd) for m in METHODS):
                continue
            hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
            try:
                time.sleep(1.0 if load else 0.0)

                def one(method: str, load=load, rnd=rnd):
                    def run() -> float:
                        key = dict(tokens=a.tokens, load=load, method=method, round=rnd)
                        row = results.get(**key)
                        if row is None:
                            out = tmp / f"{method.replace(' ', '_')}-{load}-{rnd}"
                            load_avg = os.getloadavg()[0]
                            got = run_saelens(a.tokens, out) if method == "SAELens" else run_saeforge(method, a.tokens, out)
                            row = results.add({**key, **got, "load_avg_1min": load_avg})
                            print(json.dumps({k: row[k] for k in ("load", "method", "round", "wall_s")}), flush=True)
                        return row["wall_s"]
                    return run

                interleaved({m: one(m) for m in METHODS}, repeats=1, seed=random.Random(rnd * 10 + load).randrange(10**6))
            finally:
                for h in hogs:
                    h.kill()
                    h.wait()
        if a.pairs:  # two runs side by side on the quiet machine, each method's pair in a fresh order
            order = list(METHODS[:2]) + ["SAELens"]
            random.Random(rnd).shuffle(order)
            for m in order:
                key = dict(tokens=a.tokens, load=0, method=f"2 × {m}", round=rnd)
                if results.get(**key) is None:
                    row = results.add({**key, **run_pair(m, a.tokens, tmp / f"pair-{m.replace(' ', '_')}-{rnd}"),
                                       "load_avg_1min": os.getloadavg()[0]})
                    print(json.dumps({k: row[k] for k in ("load", "method", "round", "wall_s")}), flush=True)


def render(rows: list[dict], tokens: int, cmd: str) -> list[str]:
    rows = [r for r in rows if r["tokens"] == tokens]
    loads = sorted({r["load"] for r in rows})
    walls = {(r["load"], r["method"]): {} for r in rows}
    for r in rows:
        walls[r["load"], r["method"]][r["round"]] = r["wall_s"]

    def series(load, method):
        return [walls[load, method][k] for k in sorted(walls[load, method])]

    def ratio(base, other):  # median(base) / median(other) over the rounds both have
        rounds = sorted(walls[base].keys() & walls[other].keys())
        if not rounds:
            return "—"
        return fmt_interval(*ratio_interval([walls[base][k] for k in rounds], [walls[other][k] for k in rounds]),
                            spec=".2f") + "×"

    body = []
    for load in loads:
        for m in METHODS:
            if (load, m) not in walls:
                continue
            xs = series(load, m)
            extra = ""
            if m == "saeforge":
                picked = sorted({n for r in rows if r["load"] == load and r["method"] == m and r.get("threads")
                                 for n in (r["threads"]["min"], r["threads"]["max"])})
                extra = "–".join(map(str, picked))
            steps = [r["time_breakdown"]["step_s"] for r in rows if r["load"] == load and r["method"] == m
                     and "time_breakdown" in r]
            body.append([load, m, len(xs), f"{statistics.median(xs):.1f}", f"{min(xs):.1f}–{max(xs):.1f}",
                         f"{statistics.median(steps):.1f}" if steps else "—", extra,
                         ratio((load, m), (0, m)) if (0, m) in walls else "—"])
    L = ["", f"Generated by `{cmd}` from [busy.jsonl](busy.jsonl) (one row per run); the method and load "
         "definitions are the script's docstring. Wall: the whole process (imports, model load, training; no evals); "
         "medians over rounds, each round's methods in a fresh random order.", ""]
    L += table(["other busy processes", "method", "rounds", "wall s (median)", "range", "step s", "threads chosen",
                "slowdown vs quiet"], body)
    L += ["", "Ratios at each load (median of one / median of the other, bootstrap 95% interval over rounds):", ""]
    cmp_rows = []
    for load in loads:
        for base, other, what in (("saeforge", "SAELens", "saeforge / SAELens"),
                                  ("saeforge", "saeforge --threads 1", "saeforge / saeforge at 1 thread"),
                                  ("saeforge", "saeforge --threads 2", "saeforge / saeforge at 2 fixed threads")):
            if (load, base) in walls and (load, other) in walls:
                cmp_rows.append([load, what, ratio((load, base), (load, other))])
    L += table(["other busy processes", "wall ratio", "value"], cmp_rows)
    pairs = [m for m in ("saeforge", "saeforge --threads 2", "SAELens") if (0, f"2 × {m}") in walls]
    if pairs:
        L += ["", "Two runs of the same command started together on the quiet machine (a sweep's runs side by side): "
              "the wall until both ended, against one run alone.", ""]
        L += table(["method", "rounds", "two runs: wall s (median)", "against one run alone"],
                   [[m, len(series(0, f"2 × {m}")), f"{statistics.median(series(0, f'2 × {m}')):.1f}",
                     ratio((0, f"2 × {m}"), (0, m))] for m in pairs])
    if all((load, m) in walls for load in (0, 1) for m in ("saeforge", "SAELens")):
        quiet = statistics.median(series(1, "saeforge")) / statistics.median(series(0, "saeforge"))
        versus = statistics.median(series(1, "saeforge")) / statistics.median(series(1, "SAELens"))
        L += ["", f"Against the aims, beside one busy process: saeforge's default took {quiet:.2f}× its quiet time "
              f"(aim ≤ 1.6: {'met' if quiet <= 1.6 else 'not met'}) and {versus:.2f}× SAELens's wall on the same load "
              f"(aim ≤ 0.6: {'met' if versus <= 0.6 else 'not met'})."]
    return L + [""]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--loads", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pairs", action="store_true", help="also two runs of each method side by side (quiet)")
    ap.add_argument("--docs", default=str(ROOT / "docs"))
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--saelens-child", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.saelens_child:
        return saelens_child(Path(a.saelens_child), a.tokens)
    docs = Path(a.docs)
    results = Results(docs / "busy.jsonl", KEY)
    if not a.render_only:
        with tempfile.TemporaryDirectory() as tmp:
            measure(a, results, Path(tmp))
    cmd = (f"python scripts/benchmarks/bench_busy.py --tokens {a.tokens} --loads {' '.join(map(str, a.loads))} "
           f"--rounds {a.rounds}" + (" --pairs" if a.pairs else ""))
    block = render(results.rows, a.tokens, cmd)
    perf = docs / "performance.md"
    write_section(perf, "busy", block)
    print(f"wrote the busy-machine table into {perf}")


if __name__ == "__main__":
    main()
