"""Data parallel under torchrun with gloo on CPU: 2 real processes against 1."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import saeforge
from saeforge.cli import main

FLAGS = ["--init", "orthogonal", "--d-model", "16", "--n-features", "32", "--batch-size", "64", "--no-progress", "--log-every", "10",
         "--target-mmcs", "0", "--dead-window", "128", "--lr", "3e-2", "--l1", "1", "--resample-sample", "2048",
         "--checkpoint-every", "10", "--lr-decay-steps", "0"]  # runs of --steps 30 and 50 share one schedule


def torchrun(nproc: int, *args: str, wait: bool = True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "saeforge", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def weights(d: Path):
    return {n: p.detach().clone() for n, p in saeforge.load(d).named_parameters()}


def assert_close(a, b):
    for n in a:
        torch.testing.assert_close(a[n], b[n], atol=2e-5, rtol=1e-4, msg=n)


def test_two_ranks_end_where_one_process_ends_across_resampling_and_resume(tmp_path):
    # the stream pool (the toy default): rank 0 renews from the global batch's worst rows, gathered
    resample = ["--resample", "clustered", "--resample-at", "20,40", "--l1", "3", "--resample-sample", "512"]
    assert main(["toy", *FLAGS, *resample, "--steps", "50", "--out", str(tmp_path / "one")]) == 0
    torchrun(2, "toy", *FLAGS, *resample, "--steps", "50", "--out", str(tmp_path / "two"))
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert_close(one, two)
    ev = [json.loads((tmp_path / d / "checkpoint" / "state.json").read_text())["resample_events"]
          for d in ("one", "two")]
    assert [e["dead"] for e in ev[0]] == [e["dead"] for e in ev[1]] and sum(e["dead"] for e in ev[0]) > 0, ev
    # only rank 0 wrote: one metrics line per logging step
    steps = [json.loads(x)["step"] for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40, 50]
    # a fresh pool: 2 ranks up to step 30 (one resampling), then resumed by 1 process to 50 (the
    # second); a stream pool would miss steps 21-30's rows (no event in a 30-step budget after 20)
    resample = ["--resample", "clustered", "--resample-at", "15,35", "--resample-pool", "fresh"]
    assert main(["toy", *FLAGS, *resample, "--steps", "50", "--out", str(tmp_path / "one-fresh")]) == 0
    one = weights(tmp_path / "one-fresh")
    torchrun(2, "toy", *FLAGS, *resample, "--steps", "30", "--out", str(tmp_path / "mixed"))
    assert main(["toy", *FLAGS, *resample, "--steps", "50", "--out", str(tmp_path / "mixed"), "--resume"]) == 0
    assert_close(one, weights(tmp_path / "mixed"))
    # and the other way round: 1 process up to 30, 2 ranks from there
    assert main(["toy", *FLAGS, *resample, "--steps", "30", "--out", str(tmp_path / "mixed2")]) == 0
    torchrun(2, "toy", *FLAGS, *resample, "--steps", "50", "--out", str(tmp_path / "mixed2"), "--resume")
    assert_close(one, weights(tmp_path / "mixed2"))


def _rank_pid(out: Path, local_rank: int) -> int | None:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            env = (proc / "environ").read_bytes()
        except OSError:
            continue
        if str(out).encode() in cmd and f"LOCAL_RANK={local_rank}".encode() in env.split(b"\0"):
            return int(proc.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find the rank's process")
def test_a_rank_that_dies_leaves_the_last_checkpoint_intact(tmp_path):
    out = tmp_path / "run"
    launcher = torchrun(2, "toy", *FLAGS, "--steps", "1000000", "--out", str(out), wait=False)
    state = out / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    pid = _rank_pid(out, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    launcher.wait(timeout=120)
    assert launcher.returncode != 0
    killed_at = json.loads(state.read_text())["step"]
    assert killed_at >= 10
    # the checkpoint loads and the run goes on (here in one process) to where a clean run ends
    total = str(killed_at + 20)
    assert main(["toy", *FLAGS, "--steps", total, "--out", str(out), "--resume"]) == 0
    assert main(["toy", *FLAGS, "--steps", total, "--out", str(tmp_path / "ref")]) == 0
    assert_close(weights(tmp_path / "ref"), weights(out))


def test_two_ranks_train_from_a_cache_and_from_the_live_model(model_dir, text_dir, tmp_path):
    cache = tmp_path / "cache"
    assert main(["harvest", "--model", str(model_dir), "--dataset", str(text_dir), "--tokens", "6000",
                 "--contexts-per-shard", "16", "--out", str(cache), "--no-progress"]) == 0
    common = ["--dict-size", "64", "--batch-size", "128", "--steps", "40", "--log-every", "10", "--eval-tokens", "1000",
              "--buffer-mb", "0.5", "--no-progress", "--dataset", str(text_dir), "--resample", "anthropic",
              "--resample-every", "15", "--dead-window", "256", "--lr-warmup-steps", "0", "--l1-warmup-steps", "0",
              "--lr-decay-steps", "0", "--checkpoint-every", "20", "--device", "cpu"]
    for name, src in (("cached", ["--cache", str(cache)]), ("live", ["--model", str(model_dir)])):
        torchrun(2, "train", *src, *common, "--out", str(tmp_path / name))
        s = json.loads((tmp_path / name / "summary.json").read_text())
        assert s["steps"] == 40 and s["tokens"] == 40 * 128 and s["resample_events"] == 1  # at 15; 30 falls in the last interval
        assert s["explained_variance"] > 0.2 and 0 <= s["dead_fraction"] <= 1
        state = json.loads((tmp_path / name / "checkpoint" / "state.json").read_text())
        assert state["data_position"]["world"] == 2
        saeforge.load(tmp_path / name)
    # resumed by a single process with more budget: goes on from the 2-rank checkpoint
    assert main(["train", "--cache", str(cache), *common[:4], "--steps", "60", *common[6:], "--out", str(tmp_path / "cached"),
                 "--resume"]) == 0
    assert json.loads((tmp_path / "cached" / "summary.json").read_text())["steps"] == 60


def test_two_ranks_train_a_transcoder_set_and_a_cross_layer_transcoder(model_dir, text_dir, tmp_path):
    """Transcoders go data parallel as any dictionary does: every rank reads its own contexts, the
    gradients of the global batch are averaged, rank 0 saves and evaluates."""
    common = ["--model", str(model_dir), "--dataset", str(text_dir), "--dict-size", "32", "--k", "8", "--batch-size", "128",
              "--steps", "30", "--eval-tokens", "512", "--buffer-mb", "0.5", "--no-progress", "--device", "cpu",
              "--hooks", "blocks.0.ln2.hook_normalized,blocks.1.ln2.hook_normalized",
              "--target-hooks", "blocks.0.hook_mlp_out,blocks.1.hook_mlp_out"]
    for name, extra in (("set", []), ("clt", ["--cross-layer"])):
        torchrun(2, "train", *common, *extra, "--out", str(tmp_path / name))
        top = json.loads((tmp_path / name / "summary.json").read_text())
        one = top if extra else next(iter(top["dictionaries"].values()))
        assert one["steps"] == 30 and one["tokens"] == 30 * 128 and one["ce_spliced"] > 0
        assert saeforge.load(tmp_path / name if extra else next((tmp_path / name).glob("blocks.1*"))).transcoder


RANKS_THRESHOLD = """
import torch
from saeforge import distributed
from saeforge.dictionary.architectures import create
distributed.setup("cpu")
r = distributed.rank()
sae = create("batchtopk", 8, 16, k=2)
sae.after_step(torch.tensor([0.0, 1.0 + r, 5.0]))  # smallest kept: 1 on rank 0, 2 on rank 1
sae.after_step(torch.zeros(3) if r else torch.tensor([4.0]))  # only rank 0 kept something: 4
expect = 0.99 * 0.01 * 1.5 + 0.01 * 4.0
assert abs(float(sae.topk_threshold) - expect) < 1e-6, (r, float(sae.topk_threshold), expect)
print("ok", r)
distributed.shutdown()  # as the CLI does: a process group left to interpreter exit may abort in gloo's teardown
"""


def test_batchtopk_threshold_is_the_same_on_every_rank(tmp_path):
    """Each rank's EMA moves by the mean of the ranks' smallest kept values (ranks with none left out)."""
    script = tmp_path / "threshold.py"
    script.write_text(RANKS_THRESHOLD)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    p = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.count("ok") == 2, p.stdout + p.stderr


SHARDED = ["--init", "orthogonal", "--d-model", "16", "--n-features", "32", "--batch-size", "64", "--no-progress",
           "--log-every", "10", "--target-mmcs", "0", "--dead-window", "128", "--lr", "3e-2", "--checkpoint-every", "10",
           "--lr-decay-steps", "0", "--resample", "none", "--eval-samples", "2000"]


@pytest.mark.parametrize("arch", [["--architecture", "standard", "--l1", "1"], ["--architecture", "topk", "--k", "4"]])
def test_two_feature_shards_end_at_the_unsharded_weights(arch, tmp_path):
    """Each rank owns half of the features; the all-reduced reconstruction (and TopK's global top k,
    AuxK's among the dead) make every rank's gradient its slice of the unsharded one."""
    assert main(["toy", *SHARDED, *arch, "--steps", "30", "--out", str(tmp_path / "one")]) == 0
    torchrun(2, "toy", *SHARDED, *arch, "--steps", "30", "--feature-shards", "2", "--out", str(tmp_path / "two"))
    assert_close(weights(tmp_path / "one"), weights(tmp_path / "two"))
    s1, s2 = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    assert s1["dead_features"] == s2["dead_features"] and s1["dead_features"] > 0  # AuxK had dead latents to use
    assert s2["dict_size"] == 32 and abs(s1["l0"] - s2["l0"]) < 1e-4
    assert abs(s1["ground_truth"]["mcc"] - s2["ground_truth"]["mcc"]) < 1e-4
    rows = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30]  # rank 0 alone logs


def test_a_transcoder_split_over_two_feature_shards_ends_at_the_unsharded_weights(model_dir, text_dir, tmp_path):
    """A skip transcoder's latents over two ranks (W_skip and b_dec replicated) train as on one process."""
    common = ["--model", str(model_dir), "--dataset", str(text_dir), "--dict-size", "32", "--k", "4", "--batch-size", "64",
              "--steps", "20", "--eval-tokens", "0", "--buffer-mb", "0.5", "--no-progress", "--device", "cpu",
              "--architecture", "topk", "--init", "orthogonal", "--lr-decay-steps", "0", "--skip-connection",
              "--hook", "blocks.1.ln2.hook_normalized", "--target-hook", "blocks.1.hook_mlp_out"]
    assert main(["train", *common, "--out", str(tmp_path / "one")]) == 0
    torchrun(2, "train", *common, "--feature-shards", "2", "--out", str(tmp_path / "two"))
    assert_close(weights(tmp_path / "one"), weights(tmp_path / "two"))
    assert saeforge.load(tmp_path / "two").W_skip is not None


def test_a_feature_sharded_checkpoint_resumes_on_another_layout(tmp_path):
    arch = ["--architecture", "topk", "--k", "4"]
    assert main(["toy", *SHARDED, *arch, "--steps", "30", "--out", str(tmp_path / "one")]) == 0
    torchrun(2, "toy", *SHARDED, *arch, "--steps", "20", "--feature-shards", "2", "--out", str(tmp_path / "a"))
    state = saeforge.runtime.read_tensors(tmp_path / "a" / "checkpoint" / "state.safetensors", "checkpoint")
    assert state["sae.W_dec"].shape == (32, 16) and state["adam.W_enc.exp_avg"].shape == (16, 32)  # whole
    assert main(["toy", *SHARDED, *arch, "--steps", "30", "--out", str(tmp_path / "a"), "--resume"]) == 0
    assert main(["toy", *SHARDED, *arch, "--steps", "20", "--out", str(tmp_path / "b")]) == 0
    torchrun(2, "toy", *SHARDED, *arch, "--steps", "30", "--feature-shards", "2", "--out", str(tmp_path / "b"), "--resume")
    one = weights(tmp_path / "one")
    assert_close(one, weights(tmp_path / "a"))
    assert_close(one, weights(tmp_path / "b"))


@pytest.mark.parametrize("flags, says", [
    (["--feature-shards", "2"], "must divide the number of ranks (1)"),
    (["--feature-shards", "2", "--architecture", "matryoshka"], "cannot split its features over ranks"),
    (["--feature-shards", "2", "--resample", "clustered"], "give --resample none"),
])
def test_feature_sharding_refuses_what_it_cannot_run(flags, says, tmp_path, capsys):
    assert main(["toy", "--steps", "10", *flags, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("saeforge: error:") and says in err and "\n" not in err
    assert not (tmp_path / "run").exists()
