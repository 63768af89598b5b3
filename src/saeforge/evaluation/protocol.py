"""One experiment protocol for every comparison saeforge reports (docs/protocol.md).

Every reproduce / compare script follows the same rules, written here once:

1. **Same tuning budget.** Each method gets the same learning-rate grid (`LRS`) and its sparsity
   knob calibrated to each target L0 (`calibrate`): k for the k-architectures, λ / λ₀ otherwise.
2. **Chosen on validation, reported on test.** The lr (and anything else picked) is chosen on a
   validation split (`choose`) at the tuning seed; every reported figure is on a separate test split.
3. **Matched L0.** Methods are compared at the same target L0s (a grid such as 8 / 16 / 32), each
   run within `l0_tolerance` of its target (or marked unmatched).
4. **Seeds and intervals.** At least 5 seeds where a run costs minutes, 3 where it costs more;
   a 95% Student-t interval over seeds (`mean_interval`); a difference between two methods is
   paired by seed (`paired`) and called helps / hurts only when its interval excludes 0.
5. **Interleaved timing.** Timed alternatives run round by round in rotating order (`interleaved`),
   several repeats, and a speed claim is a ratio with its interval (`ratio_interval`).
6. **Raw rows kept.** Every run is one row of a small JSONL file under docs/ (`Results`); the
   document's tables and figures are rendered from that file by its script, never typed by hand,
   and a test re-renders them and checks the document matches.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

LRS = (3e-4, 1e-3, 3e-3, 1e-2)
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Protocol:
    lrs: tuple[float, ...] = LRS
    """the learning rates every method is tried at (each method gets the same grid)"""
    target_l0s: tuple[float, ...] = (8, 16, 32)
    """the L0s methods are compared at"""
    seeds: tuple[int, ...] = (0, 1, 2)
    """the seeds every reported figure is measured at"""
    tune_seed: int = 0
    """the seed the lr and the sparsity knob are chosen at (on the validation split)"""
    l0_tolerance: float = 0.1
    """a run is at its target when |L0 − target| ≤ l0_tolerance × target"""
    calibration_tries: int = 8
    """runs the sparsity calibration may spend per (method, lr, target)"""


# ---- results file --------------------------------------------------------------------------------

class Results:
    """Raw rows in a JSONL file, one per run and split. A row is found again by its key fields, so a
    script reruns only what is missing; `add` appends at once (an interrupted script loses nothing)."""

    def __init__(self, path: str | Path, key: tuple[str, ...]):
        self.path, self.key = Path(path), key
        self.rows: list[dict[str, Any]] = []
        if self.path.exists():
            self.rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def _k(self, row: dict[str, Any]) -> tuple:
        return tuple(json.dumps(row.get(k), sort_keys=True) for k in self.key)

    def get(self, **key: Any) -> dict[str, Any] | None:
        want = self._k(key)
        return next((r for r in self.rows if self._k(r) == want), None)

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        missing = [k for k in self.key if k not in row]
        if missing:
            raise ValueError(f"a result row needs its key fields {missing}")
        if self.get(**{k: row[k] for k in self.key}) is not None:
            raise ValueError(f"a row with key {self._k(row)} is already in {self.path}")
        self.rows.append(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        return row

    def cached(self, run: Callable[[], dict[str, Any]], **key: Any) -> dict[str, Any]:
        """The row with this key, running `run()` (which returns the other fields) only when missing."""
        row = self.get(**key)
        return row if row is not None else self.add({**key, **run()})

    def where(self, **match: Any) -> list[dict[str, Any]]:
        return [r for r in self.rows if all(r.get(k) == v for k, v in match.items())]


# ---- tuning --------------------------------------------------------------------------------------

def calibrate(run: Callable[[float], dict[str, Any]], start: float, target: float, *, tolerance: float = 0.1,
              tries: int = 8, exponent: float = 1.0) -> tuple[float, dict[str, Any]]:
    """The sparsity coefficient whose run lands within tolerance × target of the target L0.

    `run(coefficient)` trains and returns a dict with "l0" (on the validation split); L0 falls as the
    coefficient grows. Multiplicative steps (coefficient × (l0 / target) ** exponent) until the target
    is bracketed, then bisection in log space. Returns the closest run when the tries are spent."""
    tried: list[tuple[float, dict[str, Any]]] = []
    c = start
    for _ in range(tries):
        res = run(c)
        tried.append((c, res))
        if abs(res["l0"] - target) <= tolerance * target:
            return c, res
        below = [x for x, r in tried if r["l0"] > target]  # too dense: the coefficient must grow past these
        above = [x for x, r in tried if r["l0"] < target]
        if below and above:
            c = math.sqrt(max(below) * min(above))
        else:
            step = (max(res["l0"], 0.05) / target) ** exponent
            c *= min(max(step, 1 / 8), 8)
    return min(tried, key=lambda t: abs(t[1]["l0"] - target))


def choose(candidates: Iterable[dict[str, Any]], metric: str, higher_is_better: bool = True) -> dict[str, Any]:
    """The candidate (a validation row) with the best metric; ties go to the first."""
    rows = list(candidates)
    if not rows:
        raise ValueError("nothing to choose from")
    sign = 1 if higher_is_better else -1
    return max(rows, key=lambda r: sign * r[metric])


def matched(l0: float, target: float, tolerance: float) -> bool:
    return abs(l0 - target) <= tolerance * target


# ---- intervals -----------------------------------------------------------------------------------

def _t(df: int, confidence: float = CONFIDENCE) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, df))


def mean_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean and its Student-t interval over independent runs (seeds); one value has no interval (nan)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("no values")
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, math.nan, math.nan
    half = _t(len(xs) - 1, confidence) * statistics.stdev(xs) / math.sqrt(len(xs))
    return m, m - half, m + half


def paired(a_by_seed: dict[int, float], b_by_seed: dict[int, float], higher_is_better: bool = True,
           confidence: float = CONFIDENCE) -> dict[str, Any]:
    """B − A over the seeds both have: mean, interval, and a verdict for B — "helps" / "hurts" when the
    interval excludes 0, else "no difference"."""
    seeds = sorted(a_by_seed.keys() & b_by_seed.keys())
    if not seeds:
        raise ValueError("no seed in common")
    m, lo, hi = mean_interval([b_by_seed[s] - a_by_seed[s] for s in seeds], confidence)
    verdict = "no difference"
    if not math.isnan(lo) and (lo > 0 or hi < 0):
        verdict = "helps" if (lo > 0) == higher_is_better else "hurts"
    return {"difference": m, "interval": [lo, hi], "seeds": len(seeds), "verdict": verdict}


# ---- timing --------------------------------------------------------------------------------------

def interleaved(fns: dict[str, Callable[[], float]], repeats: int, seed: int = 0) -> dict[str, list[float]]:
    """Run every alternative once per round, in a fresh random order each round, `repeats` rounds;
    each fn returns its own measured time (it knows what to time). Returns the times per name."""
    rng, times = random.Random(seed), {name: [] for name in fns}
    for _ in range(repeats):
        order = list(fns)
        rng.shuffle(order)
        for name in order:
            times[name].append(float(fns[name]()))
    return times


def ratio_interval(base: list[float], other: list[float], confidence: float = CONFIDENCE, n: int = 2000,
                   seed: int = 0) -> tuple[float, float, float]:
    """median(base) / median(other) — how many times faster `other` is — with a bootstrap interval over
    rounds (the rounds are paired: round i of both ran back to back)."""
    if len(base) != len(other) or not base:
        raise ValueError("paired rounds of equal, non-zero count are needed")
    rng = random.Random(seed)
    r = statistics.median(base) / statistics.median(other)
    boots = []
    for _ in range(n):
        idx = [rng.randrange(len(base)) for _ in base]
        boots.append(statistics.median(base[i] for i in idx) / statistics.median(other[i] for i in idx))
    boots.sort()
    lo_i, hi_i = int((1 - confidence) / 2 * n), int((1 + confidence) / 2 * n) - 1
    return r, boots[lo_i], boots[hi_i]


# ---- rendering -----------------------------------------------------------------------------------

def fmt_interval(m: float, lo: float, hi: float, spec: str = ".3f") -> str:
    """`0.712 [0.701, 0.723]`, or the mean alone when there is no interval."""
    if math.isnan(lo):
        return format(m, spec)
    return f"{format(m, spec)} [{format(lo, spec)}, {format(hi, spec)}]"


def write_section(doc: Path, name: str, lines: list[str]) -> None:
    """Generated lines between `<!-- name:start -->` and `<!-- name:end -->` of a document whose other text
    is written by hand (appended at its end if the markers are not there yet)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    head, _, rest = doc.read_text().partition(start)
    tail = rest.partition(end)[2] if rest else "\n"
    doc.write_text(head + "\n".join([start, *lines, end]) + tail)


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A markdown table as lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]
