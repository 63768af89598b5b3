import json
import os
import signal
import subprocess
import sys
import time

import torch

import saeforge
from saeforge.cli import main

SMALL = ["--init", "orthogonal", "--d-model", "16", "--n-features", "32", "--batch-size", "64", "--no-progress", "--log-every", "10"]


def _toy(out, *extra):
    assert main(["toy", *SMALL, "--out", str(out), *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def _weights(d):
    sae = saeforge.load(d)
    return {n: p.detach().clone() for n, p in sae.named_parameters()}


def test_resume_ends_with_same_weights(tmp_path):
    # the first part is run as its own 20-step budget, so the schedule must not depend on the
    # budget: no lr decay (the toy default decays over the budget's second half)
    same = ("--target-mmcs", "0", "--checkpoint-every", "20", "--lr-decay-steps", "0")
    full = _toy(tmp_path / "full", "--steps", "60", *same)
    _toy(tmp_path / "part", "--steps", "20", *same)
    resumed = _toy(tmp_path / "part", "--steps", "60", *same, "--resume")
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    for n in a:
        assert torch.equal(a[n], b[n]), n
    assert resumed["steps"] == full["steps"] == 60
    assert resumed["mmcs_final"] == full["mmcs_final"]
    rows_a = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    assert [r["mse"] for r in rows_a] == [r["mse"] for r in rows_b]


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    """A real interruption (SIGKILL mid-run): the checkpoint stays loadable and the resumed
    run ends where an uninterrupted one does."""
    args = [*SMALL, "--steps", "3000", "--target-mmcs", "0", "--checkpoint-every", "50"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "saeforge", "toy", *args, "--out", str(tmp_path / "k")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "k" / "checkpoint" / "state.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads((tmp_path / "k" / "checkpoint" / "state.json").read_text())["step"]
    assert 0 < killed_at <= 3000
    assert main(["toy", *args, "--out", str(tmp_path / "k"), "--resume"]) == 0
    assert main(["toy", *args, "--out", str(tmp_path / "ref")]) == 0
    a, b = _weights(tmp_path / "ref"), _weights(tmp_path / "k")
    for n in a:
        assert torch.equal(a[n], b[n]), n


def test_toy_run_recovers_the_features(tmp_path):
    s = _toy(tmp_path / "t", "--steps", "3000", "--batch-size", "256", "--d-model", "32", "--n-features", "64",
             "--n-active", "3", "--lr", "1e-2")
    assert s["mmcs_initial"] < 0.6
    assert s["mmcs_final"] >= 0.99, s
    st = s["steps_to_mmcs"]
    assert st["0.95"] is not None and st["0.95"] <= st["0.98"] <= st["0.99"] <= s["steps"]
    for key in ("d_model", "n_features", "init", "seed", "mmcs_initial", "mmcs_final", "steps_to_mmcs"):
        assert key in s
    rows = [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    # 3 true features active on average; 64 atoms. The toy λ (0.3) shrinks codes: EV ~0.85 at MMCS 0.99.
    assert rows[-1]["explained_variance"] > 0.8 and rows[-1]["l0"] < 8
    assert {"step", "mse", "l1", "l0", "explained_variance", "dead_fraction", "mmcs"} <= set(rows[-1])
    sae = saeforge.load(tmp_path / "t")
    assert sae.metadata["init"] == "orthogonal" and sae.metadata["steps"] == s["steps"]
    assert (tmp_path / "t" / "sparsity.safetensors").exists()


def test_same_seed_same_dictionary(tmp_path):
    _toy(tmp_path / "a", "--steps", "30", "--target-mmcs", "0", "--seed", "3")
    _toy(tmp_path / "b", "--steps", "30", "--target-mmcs", "0", "--seed", "3")
    _toy(tmp_path / "c", "--steps", "30", "--target-mmcs", "0", "--seed", "4")
    a, b, c = (_weights(tmp_path / x) for x in "abc")
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(a["W_dec"], c["W_dec"])
