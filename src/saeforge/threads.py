"""How many CPU threads to run: as many as the cores other processes leave free.

A parallel region (torch's OpenMP, MKL, numba's kernels) ends when its slowest thread ends. With
as many threads as cores and another process busy on one of them, nearly every region waits for a
thread the kernel has descheduled — a time slice, milliseconds — and a sparse step runs hundreds
of short regions: on a 2-core machine with one other busy process, 2 threads ran the main job 3.3×
slower than 1 (docs/performance.md, "On a busy machine"). Dense products (SAELens's step) have few,
long regions and suffer less.

So the count follows the load: `tick()`, called from the training loop and the activation fill,
measures every second how much CPU time the rest of the machine took on this process's cores
(/proc/stat, less this process's own time) and sets torch's thread count (and with it MKL's and the
numba kernels') to the cores left, rounded, between 1 and the count the process started with
(OMP_NUM_THREADS, torch.set_num_threads: an explicit lower count is kept). `--threads N` fixes the
count instead. Linux only; elsewhere, or if /proc cannot be read, nothing changes.
"""

from __future__ import annotations

import os
import time

import torch

PERIOD_S = 1.0  # how often the load is measured
FIRST_S = 0.25  # the first look, so that a run started on a busy machine narrows early


class Governor:
    def __init__(self) -> None:
        self.fixed: int | None = None
        self.ceiling: int | None = None  # the count the process started with (or the user set since)
        self.set_to: int | None = None  # what this governor last set
        self.cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.last: tuple[float, float, float] | None = None  # (wall, machine busy s, own cpu s)
        self.due = 0.0
        self.history: list[tuple[float, int]] = []  # (other processes' cores, threads chosen): for the summary

    def fix(self, n: int | None) -> None:
        """A fixed count (`--threads`; applied at the next `tick`), or None to follow the load again."""
        self.fixed = n

    def tick(self) -> None:
        now = time.monotonic()
        if self.fixed is not None:
            # set at the first tick, not at `fix`: set before the model was loaded, one thread ran the main
            # job's step 3.5x slower under load than set here (5.4-6.1 s against 1.5-1.6 s); torch's call again
            # here restores it where OpenMP's, MKL's or numba's count alone does not (docs/performance.md, 4)
            if torch.get_num_threads() != self.fixed:
                torch.set_num_threads(self.fixed)
            return
        if now < self.due:
            return
        sample = self._sample(now)
        if sample is None:
            self.due = float("inf")  # no /proc: leave the count alone
            return
        if self.last is None:
            self.last, self.due = sample, now + FIRST_S
            return
        wall, busy, own = (a - b for a, b in zip(sample, self.last))
        self.last, self.due = sample, now + PERIOD_S
        current = torch.get_num_threads()
        if self.ceiling is None or current != self.set_to:  # first look, or the user changed the count
            self.ceiling = current
        other = max(0.0, (busy - own) / wall) if wall > 0 else 0.0
        n = max(1, min(self.ceiling, round(len(self.cores) - other)))
        self.history.append((round(other, 2), n))
        if n != current:
            torch.set_num_threads(n)
        self.set_to = n

    def summary(self) -> dict:
        """For summary.json: the fixed count, or the counts chosen and the other processes' load seen."""
        if self.fixed is not None:
            return {"fixed": self.fixed}
        counts = [n for _, n in self.history] or [torch.get_num_threads()]
        loads = [o for o, _ in self.history]
        return {"min": min(counts), "max": max(counts), "checks": len(self.history),
                "other_load_max": max(loads) if loads else None}

    def _sample(self, now: float) -> tuple[float, float, float] | None:
        """(now, busy CPU seconds of this process's cores since boot, this process's CPU seconds)."""
        if not self.cores:
            return None
        try:
            with open("/proc/stat") as f:
                lines = f.read().splitlines()
        except OSError:
            return None
        mine = {f"cpu{c}" for c in self.cores}
        busy = 0
        for ln in lines:
            parts = ln.split()
            if parts and parts[0] in mine:
                ticks = [int(v) for v in parts[1:]]
                busy += sum(ticks[:8]) - ticks[3] - ticks[4]  # all but idle and iowait (guest is in user)
        t = os.times()
        return now, busy / os.sysconf("SC_CLK_TCK"), t.user + t.system


governor = Governor()


def tick() -> None:
    governor.tick()
