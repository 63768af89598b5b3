"""The thread count follows the machine's load (threads.py): measured on this machine with a real
busy process on one of two cores, and fixed by --threads."""

import os
import subprocess
import sys
import time

import pytest
import torch

from saeforge import threads
from saeforge.runtime import pick_device


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    threads.governor.fix(None)
    torch.set_num_threads(n)


def watch(gov: threads.Governor, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        gov.tick()
        time.sleep(0.05)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2 or
                    not os.path.exists("/proc/stat"), reason="needs Linux and two cores")
def test_a_busy_process_on_one_of_two_cores_leaves_one_thread(restore_threads):
    two = sorted(os.sched_getaffinity(0))[:2]
    torch.set_num_threads(2)
    gov = threads.Governor()
    gov.cores = two  # this process's view: two cores, one of which the other process takes
    watch(gov, 1.5)
    before = min(o for o, _ in gov.history)
    if before > 0.6:
        pytest.skip(f"the machine is busy already ({before:.2f} cores taken): a second load cannot be told apart")
    hog = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{two[0]}}})\nwhile True: pass"])
    try:
        time.sleep(0.5)
        watch(gov, 2.5)
        other, n = gov.history[-1]
        assert other > before + 0.6 and n == 1 and torch.get_num_threads() == 1
    finally:
        hog.kill()
        hog.wait()
    watch(gov, 2.5)
    assert gov.history[-1][0] < other - 0.5  # it saw the load go
    assert gov.summary()["min"] == 1 and gov.summary()["checks"] >= 4


def test_threads_fixes_the_count_and_the_governor_leaves_it(restore_threads):
    torch.set_num_threads(2)
    pick_device("cpu", 1)
    threads.tick()  # the training loop's, the activation fill's
    assert torch.get_num_threads() == 1 and threads.governor.summary() == {"fixed": 1}
    threads.governor.due = 0.0
    threads.tick()
    assert torch.get_num_threads() == 1
    pick_device("cpu", 0)
    assert threads.governor.fixed is None
