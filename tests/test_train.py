import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import saeforge
from saeforge.cli import main
from saeforge.training.checkpoint import read_checkpoint

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
    killed_at = read_checkpoint(tmp_path / "k").state.step  # read as --resume does (a kill may hit a swap)
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
    assert {"step", "mse", "sparsity", "l0", "explained_variance", "dead_fraction", "mmcs"} <= set(rows[-1])
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


V01 = Path(__file__).parent / "data" / "v0.1"  # run directories written by saeforge 0.1 (checkpoint format 1)
V01_TOY = [*SMALL, "--target-mmcs", "0", "--checkpoint-every", "20", "--lr-decay-steps", "0", "--resample", "clustered",
           "--resample-at", "10,30", "--dead-window", "64", "--resample-sample", "512",
           "--adam-eps", "1e-8", "--resample-pool", "fresh"]  # the toy defaults release 0.1 trained with


def test_a_toy_run_of_release_0_1_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    shutil.copytree(V01 / "toy", tmp_path / "old")
    assert main(["toy", *V01_TOY, "--steps", "60", "--out", str(tmp_path / "old"), "--resume"]) == 0
    assert main(["toy", *V01_TOY, "--steps", "60", "--out", str(tmp_path / "new")]) == 0
    _close(_weights(tmp_path / "old"), _weights(tmp_path / "new"))  # its checkpoint was made on another machine
    state = json.loads((tmp_path / "old" / "checkpoint" / "state.json").read_text())
    assert state["format"] == 2 and [e["step"] for e in state["resample_events"]] == [10, 30]
    assert len(state["mmcs_trace"]) == 61
    rows = [json.loads(x) for x in (tmp_path / "old" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60] and all("sparsity" in r and "l1" not in r for r in rows)


def test_a_live_run_of_release_0_1_loads_and_resumes_where_its_data_stopped(tmp_path):
    old = json.loads((V01 / "train" / "checkpoint" / "state.json").read_text())
    assert saeforge.load(V01 / "train").d_sae == 32
    shutil.copytree(V01 / "train", tmp_path / "run")
    flags = ["--architecture", "standard",  # release 0.1 trained ReLU + L1, then the default
             "--batch-size", "64", "--dict-size", "32", "--buffer-mb", "1", "--contexts-per-pass", "2",
             "--eval-tokens", "0", "--lr-warmup-steps", "5", "--l1-warmup-steps", "5", "--lr-decay-steps", "0",
             "--checkpoint-every", "20", "--no-progress"]
    assert main(["train", *flags, "--tokens", "3840", "--out", str(tmp_path / "run"), "--resume"]) == 0
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert (old["step"], state["step"]) == (40, 60)
    assert state["input_scale"] == old["extra"]["input_scale"]
    assert state["data_position"]["contexts_read"] > old["extra"]["data"]["contexts_read"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 60 and summary["l1_coefficient"] == 0.55
    assert saeforge.load(tmp_path / "run").metadata["steps"] == 60


# run directories written by the release before settings had owners (commit 69f2133: checkpoint format 2,
# TopK with k in cfg.json, the run config flat in state.json), made on another machine: compared within
# float rounding, never bit for bit
PRIOR = Path(__file__).parent / "data" / "69f2133"
PRIOR_TOY = [*SMALL, "--architecture", "topk", "--k", "4", "--target-mmcs", "0", "--checkpoint-every", "20",
             "--dead-window", "256", "--lr-decay-steps", "0"]
PRIOR_TRAIN = ["--batch-size", "64", "--dict-size", "32", "--buffer-mb", "1", "--contexts-per-pass", "2",
               "--eval-tokens", "0", "--lr-warmup-steps", "5", "--lr-decay-steps", "0", "--checkpoint-every", "20",
               "--no-progress", "--log-every", "10"]


def _close(a: dict, b: dict) -> None:
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-3, atol=1e-4, msg=n)


def test_a_topk_toy_run_of_the_prior_release_loads_and_resumes_to_an_uninterrupted_run(tmp_path):
    assert saeforge.load(PRIOR / "toy-topk").cfg.k == 4
    shutil.copytree(PRIOR / "toy-topk", tmp_path / "old")
    assert main(["toy", *PRIOR_TOY, "--steps", "60", "--out", str(tmp_path / "old"), "--resume"]) == 0
    assert main(["toy", *PRIOR_TOY, "--steps", "60", "--out", str(tmp_path / "new")]) == 0
    _close(_weights(tmp_path / "old"), _weights(tmp_path / "new"))
    s = json.loads((tmp_path / "old" / "summary.json").read_text())
    assert (s["steps"], s["k"], s["aux_k"]) == (60, 4, 8) and "l1_coefficient" not in s


def test_a_live_topk_run_of_the_prior_release_resumes_its_buffer_to_an_uninterrupted_run(tmp_path):
    """Its checkpoint holds the buffer's snapshot with the buffer's sample generator: the resumed
    run rebuilds both and ends where an uninterrupted 60-step run ends."""
    shutil.copytree(PRIOR / "train-topk", tmp_path / "old")
    assert main(["train", *PRIOR_TRAIN, "--tokens", "3840", "--out", str(tmp_path / "old"), "--resume"]) == 0
    assert main(["train", *PRIOR_TRAIN, "--tokens", "3840", "--out", str(tmp_path / "new")]) == 0
    _close(_weights(tmp_path / "old"), _weights(tmp_path / "new"))
    state = json.loads((tmp_path / "old" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 60 and state["config"]["sae"]["k"] == 32

