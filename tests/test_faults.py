"""Bad inputs and faults, tried as a careless or unlucky user would, one class of fault per section:
each ends in one line `saeforge: error: …`, exit status 2, and nothing good lost (or a clean run)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import saeforge
from saeforge.cli import main
from saeforge.errors import UserError
from saeforge.sources.cache import CacheSource

TOY = ["toy", "--init", "orthogonal", "--d-model", "8", "--n-features", "16", "--batch-size", "32", "--no-progress",
       "--target-mmcs", "0", "--lr-decay-steps", "0", "--log-every", "5"]


def one_line_error(capsys, code, *fragments):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("saeforge: error: "), err
    for f in fragments:
        assert f in err[0], err
    return err[0]


def live(model_dir, text_dir, out, *extra):
    return ["train", "--model", str(model_dir), "--dataset", str(text_dir), "--out", str(out), "--batch-size", "64",
            "--dict-size", "64", "--buffer-mb", "1", "--contexts-per-pass", "4", "--eval-tokens", "0",
            "--no-progress", "--lr-warmup-steps", "5", "--l1-warmup-steps", "5", "--lr-decay-steps", "0",
            "--log-every", "10", *extra]


@pytest.fixture
def dictionary(tmp_path):
    sae = saeforge.SparseAutoencoder(8, 16)
    torch.nn.init.normal_(sae.W_enc)
    sae.metadata.update(model_name="embedded", hook_name="blocks.2.hook_resid_post")
    return saeforge.save(sae, tmp_path / "dict")


# ------------------------------------------------------------------ files with valid syntax, wrong content
@pytest.mark.parametrize("key, value, fragment", [
    ("dtype", 32, "'dtype' must be a string"),
    ("metadata", "blocks.0", "'metadata' must be an object"),
    ("d_sae", "16", "'d_sae' must be an integer"),
    ("apply_b_dec_to_input", "yes", "'apply_b_dec_to_input' must be true or false"),
])
def test_cfg_json_fields_of_the_wrong_type(dictionary, capsys, key, value, fragment):
    cfg = json.loads((dictionary / "cfg.json").read_text())
    cfg[key] = value
    (dictionary / "cfg.json").write_text(json.dumps(cfg))
    one_line_error(capsys, main(["info", str(dictionary)]), "cfg.json", fragment)


def test_a_hook_name_that_is_a_list(dictionary, capsys):
    cfg = json.loads((dictionary / "cfg.json").read_text())
    cfg["saeforge"]["hook_name"] = ["blocks.0.hook_resid_post"]
    (dictionary / "cfg.json").write_text(json.dumps(cfg))
    one_line_error(capsys, main(["eval", str(dictionary), "--no-progress"]), "'hook_name' must be a string")


def test_runs_jsonl_rows_that_are_not_sweep_results(tmp_path, capsys):
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "runs.jsonl").write_text('{"d_sae": 64, "steps": 10}\n[1, 2]\n')
    one_line_error(capsys, main(["sweep", "--out", str(tmp_path / "sw"), "--suggest", "1e12"]), "runs.jsonl line 1",
                   "is missing")


def test_dataset_rows_whose_text_is_not_a_string(model_dir, tmp_path, capsys):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": [1, 2, 3]}) + "\n" for _ in range(30)))
    code = main(live(model_dir, tmp_path / "d.jsonl", tmp_path / "o", "--tokens", "640"))
    one_line_error(capsys, code, "column 'text' must hold text")
    assert not (tmp_path / "o").exists()


def test_token_ids_outside_the_vocabulary(model_dir, tmp_path, capsys):
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"tokens": [5, 99999] * 40}) + "\n" for _ in range(30)))
    code = main(live(model_dir, tmp_path / "t.jsonl", tmp_path / "o", "--tokens", "640"))
    one_line_error(capsys, code, "outside the model's vocabulary")


def test_a_manifest_that_points_outside_the_cache(tmp_path):
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / "manifest.json").write_text(json.dumps({
        "format": "saeforge-activation-cache", "model": "embedded", "hook": "h", "dataset": "d", "d_in": 4,
        "n_ctx": 8, "shards": [{"file": "../../etc/passwd", "contexts": 1, "rows": 7, "bytes": 10, "sha256": "0"}]}))
    with pytest.raises(UserError, match="inside the cache directory"):
        CacheSource(cache)


# ------------------------------------------------------------------ every file we read, mutated field by field
WRONG = [None, "x", -1, 1.5, True, [1], {"a": 1}]


def mutations(obj: dict):
    """(description, mutated copy): each key missing or of every wrong type, and one extra key."""
    yield "extra key", {**obj, "zzz_extra": 1}
    for key in obj:
        yield f"{key} missing", {k: v for k, v in obj.items() if k != key}
        for w in WRONG:
            yield f"{key}={w!r}", {**obj, key: w}


def test_mutated_cfg_json_loads_cleanly_or_fails_in_one_line(dictionary):
    original = json.loads((dictionary / "cfg.json").read_text())
    nested = [(f"metadata.{d}", {**original, "metadata": m}) for d, m in mutations(original["metadata"])]
    nested += [(f"saeforge.{d}", {**original, "saeforge": m}) for d, m in mutations(original["saeforge"])]
    for desc, cfg in [*mutations(original), *nested]:
        (dictionary / "cfg.json").write_text(json.dumps(cfg))
        try:
            sae = saeforge.load(dictionary)
        except UserError as e:
            assert "\n" not in str(e), desc
        else:
            assert sae.encode(torch.ones(2, sae.d_in)).shape == (2, sae.d_sae), desc


def test_mutated_state_json_resumes_cleanly_or_fails_in_one_line(tmp_path, capsys):
    good = tmp_path / "good"
    assert main([*TOY, "--steps", "10", "--checkpoint-every", "10", "--out", str(good)]) == 0
    original = json.loads((good / "checkpoint" / "state.json").read_text())
    cases = list(mutations(original))
    cases += [(f"data_position.{d}", {**original, "data_position": m}) for d, m in mutations({"contexts_read": 3})]
    cases += [(f"resample_events.{d}", {**original, "resample_events": [m]})
              for d, m in mutations({"step": 5, "dead": 1, "seconds": 0.1})]
    for i, (desc, state) in enumerate(cases):
        run = tmp_path / f"r{i}"
        shutil.copytree(good, run)
        (run / "checkpoint" / "state.json").write_text(json.dumps(state))
        code = main([*TOY, "--steps", "12", "--checkpoint-every", "10", "--out", str(run), "--resume"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 0 or (code == 2 and len(err) == 1 and err[0].startswith("saeforge: error: ")), (desc, err)
        shutil.rmtree(run)


def test_mutated_manifest_reads_cleanly_or_fails_in_one_line(model_dir, text_dir, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["harvest", "--model", str(model_dir), "--dataset", str(text_dir), "--tokens", "300",
                 "--contexts-per-shard", "4", "--out", str(cache), "--no-progress"]) == 0
    original = json.loads((cache / "manifest.json").read_text())
    cases = list(mutations(original))
    cases += [(f"shards[0].{d}", {**original, "shards": [m, *original["shards"][1:]]})
              for d, m in mutations(original["shards"][0])]
    for desc, manifest in cases:
        (cache / "manifest.json").write_text(json.dumps(manifest))
        try:
            src = CacheSource(cache)
            storage = torch.empty(16, src.d_in)
            src.fill(storage, torch.arange(16))
        except UserError as e:
            assert "\n" not in str(e), desc
    capsys.readouterr()


# ------------------------------------------------------------------ late failures: checked before the work
def test_an_out_that_cannot_be_created_is_refused_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code = main(["train", "--out", str(tmp_path / "file" / "run"), "--tokens", "1000", "--no-progress"])
    one_line_error(capsys, code, "is a file")


def test_no_budget_is_refused_and_creates_nothing(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "run"), "--tokens", "0", "--no-progress"])
    one_line_error(capsys, code, "give --steps N or --tokens N")
    assert not (tmp_path / "run").exists()


def test_inspect_output_blocked_by_a_directory_is_refused_first(dictionary, tmp_path, capsys):
    (tmp_path / "rep" / "index.html").mkdir(parents=True)
    t0 = time.perf_counter()
    code = main(["inspect", str(dictionary), "--out", str(tmp_path / "rep"), "--no-progress"])
    one_line_error(capsys, code, "index.html is a directory")
    assert time.perf_counter() - t0 < 30  # refused before any model ran (no timing claim: a generous bound)


# ------------------------------------------------------------------ good results are never overwritten
def test_resume_with_another_hook_is_refused(model_dir, text_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(live(model_dir, text_dir, out, "--tokens", "1280", "--checkpoint-every", "10")) == 0
    capsys.readouterr()
    before = (out / "sae_weights.safetensors").read_bytes()
    code = main(live(model_dir, text_dir, out, "--tokens", "2560", "--resume", "--hook", "blocks.0.hook_resid_post"))
    one_line_error(capsys, code, "other settings", "hook")
    assert (out / "sae_weights.safetensors").read_bytes() == before


def test_an_out_holding_a_saved_dictionary_is_not_trained_over(dictionary, capsys):
    before = (dictionary / "sae_weights.safetensors").read_bytes()
    for extra in ([], ["--resume"]):
        code = main([*TOY, "--steps", "5", "--out", str(dictionary), *extra])
        one_line_error(capsys, code, "holds a saved dictionary")
    assert (dictionary / "sae_weights.safetensors").read_bytes() == before


def test_a_diverging_run_stops_and_keeps_the_last_good_results(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TOY, "--steps", "10", "--checkpoint-every", "5", "--out", str(out)]) == 0
    capsys.readouterr()
    weights = (out / "sae_weights.safetensors").read_bytes()
    code = main([*TOY, "--steps", "30", "--checkpoint-every", "5", "--lr", "1e30", "--out", str(out), "--resume"])
    one_line_error(capsys, code, "diverged at step", "--lr")
    assert (out / "sae_weights.safetensors").read_bytes() == weights
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 10
    assert torch.isfinite(saeforge.load(out).W_dec).all()


# ------------------------------------------------------------------ flag values, on every command
@pytest.mark.parametrize("args, fragment", [
    (["eval", "DICT", "--tokens", "0"], "--tokens must be >= 1"),
    (["eval", "DICT", "--contexts-per-pass", "-2"], "--contexts-per-pass must be >= 1"),
    (["inspect", "DICT", "--out", "OUT", "--features", "0"], "--features must be >= 1"),
    (["inspect", "DICT", "--out", "OUT", "--top-k", "-1"], "--top-k must be >= 1"),
    (["harvest", "--out", "OUT", "--tokens", "0"], "--tokens must be >= 1"),
    (["sweep", "--out", "OUT", "--cache", "C", "--eval-rows", "0"], "--eval-rows must be >= 1"),
])
def test_counts_are_checked_on_every_command(dictionary, tmp_path, capsys, args, fragment):
    args = [str(dictionary) if a == "DICT" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    one_line_error(capsys, main(args), fragment)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ one line, no noise from the libraries
@pytest.mark.parametrize("name, content", [("bad.jsonl", '{"text": "a"}\n{"text": \n'), ("bad.parquet", "not parquet")])
def test_malformed_dataset_files_give_exactly_one_line(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    p = subprocess.run([sys.executable, "-m", "saeforge", "train", "--dataset", str(tmp_path / name), "--out",
                        str(tmp_path / "o"), "--tokens", "1000", "--no-progress"], capture_output=True, text=True)
    lines = (p.stdout + p.stderr).strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("saeforge: error: --dataset"), lines
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ hooks: only those a dictionary can take
def test_hooks_that_are_not_one_vector_per_token_are_refused_and_not_listed(model, capsys):
    from saeforge.sources.language_model import hook_width, resolve_hook

    for hook in ("blocks.0.ln1.hook_scale", "blocks.0.attn.hook_z", "blocks.0.attn.hook_pattern"):
        with pytest.raises(UserError, match="not one vector per token"):
            resolve_hook(model, hook)
    with pytest.raises(UserError) as e:
        resolve_hook(model, "blocks.0.nope")
    assert "hook_scale" not in str(e.value) and "hook_resid_post" in str(e.value)
    assert hook_width(model, "blocks.1.mlp.hook_post") == model.cfg.d_mlp


# ------------------------------------------------------------------ exact resume of a live-model run
SEVERAL = ["--dictionaries", "dict_size=64; dict_size=96,architecture=standard", "--resample", "clustered",
           "--resample-every", "300", "--resample-sample", "4096"]


@pytest.mark.parametrize("several, torn", [([], False), (SEVERAL, False), (SEVERAL, True)],
                         ids=["one", "several", "several-torn"])
def test_a_killed_live_run_resumes_to_the_weights_of_an_uninterrupted_one(several, torn, model_dir, text_dir, tmp_path):
    """SIGKILL after a checkpoint; the resumed run rebuilds the buffer (row origins, permutation, RNG,
    the oldest rows stored, the rest recomputed by the model) and ends bit-identical: one dictionary,
    or several from one pass (each with its own sample generator, here drawing for resampling), even
    when the kill fell between two dictionaries' checkpoint writes (`torn`: the second is one
    checkpoint behind; the first goes back to the checkpoint it kept)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = live(model_dir, text_dir, "OUT", "--tokens", "64000", "--checkpoint-every", "50", *several)
    names = ["dict_size64", "dict_size96-architecturestandard"] if several else [""]
    cmd = lambda out, *extra: [sys.executable, "-m", "saeforge", *[str(out) if a == "OUT" else a for a in args], *extra]
    proc = subprocess.Popen(cmd(tmp_path / "k"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "k" / names[-1] / "checkpoint" / "state.json"
    deadline = time.time() + 300
    while not (state.exists() and json.loads(state.read_text())["step"] >= 400) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state.read_text())["step"]
    assert 400 <= killed_at < 1000, killed_at
    if torn:  # as if killed after the first dictionary's checkpoint swap and before the second's
        second = tmp_path / "k" / names[1]
        shutil.rmtree(second / "checkpoint")
        (second / ".checkpoint.prev").rename(second / "checkpoint")
        assert json.loads((second / "checkpoint" / "state.json").read_text())["step"] < killed_at
    assert subprocess.run(cmd(tmp_path / "k", "--resume"), env=env, capture_output=True).returncode == 0
    assert subprocess.run(cmd(tmp_path / "ref"), env=env, capture_output=True).returncode == 0
    for name in names:
        a, b = saeforge.load(tmp_path / "ref" / name), saeforge.load(tmp_path / "k" / name)
        for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
            assert torch.equal(p, q), (name, n)
    resumed = json.loads(state.read_text())
    assert resumed["step"] == 1000 and resumed["data_position"]["buffer"]["replay_from"] > 0


# ------------------------------------------------------------------ non-finite activations, named where they enter
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_activations_are_named_as_such(bad):
    x = torch.randn(512, 8)
    x[37, 2] = bad
    with pytest.raises(UserError, match=f"non-finite values \\({'NaN' if bad != bad else 'Inf'} in row 37"):
        saeforge.train(x, steps=5, batch_size=64)
    late = [torch.randn(256, 8) for _ in range(8)]
    late[5][3, 0] = bad  # a batch the buffer reads later: refused when it is read, not trained on
    with pytest.raises(UserError, match="non-finite values"):
        saeforge.train(late, steps=20, batch_size=64, progress=False)


@pytest.mark.parametrize("corrupt, says", [
    (lambda a: a.round().to(torch.int32), "holds int32 activations, but the manifest says float32"),
    (lambda a: a.index_fill(0, torch.tensor([40]), float("nan")), "non-finite values (NaN or Inf) where they enter"),
], ids=["integers", "nan"])
def test_a_cache_shard_of_bad_activations_is_refused(corrupt, says, model, text_dir, tmp_path, capsys):
    import safetensors.torch

    from saeforge.sources.cache import harvest, sha256
    from saeforge.sources import data

    settings = {"model": "tiny", "hook": "blocks.1.hook_resid_post", "dataset": str(text_dir), "split": "train",
                "seed": 0, "n_ctx": 32}
    harvest(model, "blocks.1.hook_resid_post", 2, data.contexts(model, str(text_dir), "train", seed=0, batch=4),
            tmp_path / "c", settings, 16, contexts_per_shard=8, progress=False)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    shard = manifest["shards"][0]
    f = tmp_path / "c" / shard["file"]
    t = safetensors.torch.load_file(f)
    t["activations"] = corrupt(t["activations"])
    safetensors.torch.save_file(t, f)
    shard.update(bytes=f.stat().st_size, sha256=sha256(f))  # a consistent manifest: only the dtype is wrong
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(manifest))
    code = main(["train", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o"), "--steps", "4",
                 "--batch-size", "32", "--buffer-mb", "1", "--eval-tokens", "0", "--no-progress"])
    one_line_error(capsys, code, says)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ one run per directory; results never overwritten
def test_a_run_directory_another_run_is_writing_is_refused(tmp_path, capsys):
    import fcntl

    out = tmp_path / "o"
    out.mkdir()
    with open(out / ".saeforge.lock", "w") as held:  # as the other process holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        one_line_error(capsys, main([*TOY, "--steps", "10", "--out", str(out)]), "being written by another saeforge run")
        assert not (out / "summary.json").exists() and not (out / "metrics.jsonl").exists()
    assert main([*TOY, "--steps", "10", "--out", str(out)]) == 0  # the lock went with its holder
    assert main([*TOY, "--steps", "20", "--out", str(out), "--resume"]) == 0  # and this process let go of it too


def test_several_dictionaries_never_overwrite_a_single_run(model_dir, text_dir, tmp_path, capsys):
    args = live(model_dir, text_dir, tmp_path / "run", "--tokens", "640")
    assert main(args) == 0
    before = (tmp_path / "run" / "summary.json").read_bytes()
    code = main([*args, "--dictionaries", "dict_size=32; dict_size=48"])
    one_line_error(capsys, code, "holds a single run", "would overwrite it")
    code = main([*args, "--dictionaries", "dict_size=32; dict_size=48", "--resume"])
    one_line_error(capsys, code, "holds a single run")
    assert (tmp_path / "run" / "summary.json").read_bytes() == before
    many = live(model_dir, text_dir, tmp_path / "many", "--tokens", "640", "--dictionaries", "dict_size=32; dict_size=48")
    assert main(many) == 0
    one_line_error(capsys, main(many), "already holds a run of several dictionaries")


def test_a_spec_boolean_must_be_a_boolean(model_dir, text_dir, tmp_path, capsys):
    code = main(live(model_dir, text_dir, tmp_path / "o", "--dictionaries", "unit_norm_decoder=ture"))
    one_line_error(capsys, code, "unit_norm_decoder expects bool, got 'ture'")


# ------------------------------------------------------------------ a dictionary is one whole save
def test_a_save_killed_after_any_of_its_renames_never_reads_as_a_mix(tmp_path, monkeypatch):
    """The process killed right after each rename of a save: load() then gives the earlier save or
    the new one whole, or refuses in one line; never one's weights under the other's cfg.json."""
    from saeforge import runtime
    from saeforge.dictionary.io import load_sparsity

    def sae(seed):
        torch.manual_seed(seed)
        s = saeforge.StandardSAE(8, 16)
        with torch.no_grad():
            for p in s.parameters():
                p.normal_()
        return s

    a, b = sae(0), sae(1)
    real = os.replace
    for kill_after in range(3):  # a save renames its weights, its sparsity, then its cfg.json
        d = tmp_path / f"d{kill_after}"
        saeforge.save(a, d, sparsity_F=torch.zeros(16))
        done = []

        def replace(src, dst):
            if len(done) == kill_after:
                raise KeyboardInterrupt  # killed right after the previous rename
            real(src, dst)
            done.append(dst)

        monkeypatch.setattr(runtime.os, "replace", replace)
        with pytest.raises(KeyboardInterrupt):
            saeforge.save(b, d, sparsity_F=torch.ones(16))
        monkeypatch.setattr(runtime.os, "replace", real)
        if kill_after == 0:  # nothing renamed yet: the earlier save, whole
            assert torch.equal(saeforge.load(d).W_dec, a.W_dec) and torch.equal(load_sparsity(d), torch.zeros(16))
            continue
        with pytest.raises(UserError, match="two different saves"):  # new weights under the old cfg.json
            saeforge.load(d)
        if kill_after == 1:  # the sparsity file is still the earlier save's, as cfg.json is
            assert torch.equal(load_sparsity(d), torch.zeros(16))
        else:
            with pytest.raises(UserError, match="two different saves"):
                load_sparsity(d)
    # the whole new save, uninterrupted
    saeforge.save(b, tmp_path / "whole")
    assert torch.equal(saeforge.load(tmp_path / "whole").W_dec, b.W_dec)


def test_a_run_killed_in_its_final_save_resumes_to_a_whole_dictionary(tmp_path, monkeypatch, capsys):
    from saeforge.dictionary import io

    args = [*TOY, "--steps", "20", "--checkpoint-every", "10"]
    real = io.atomic_write_json

    def killed(*a, **k):
        raise KeyboardInterrupt  # between the weights and cfg.json of the final save

    monkeypatch.setattr(io, "atomic_write_json", killed)
    assert main([*args, "--out", str(tmp_path / "k")]) == 130
    monkeypatch.setattr(io, "atomic_write_json", real)
    with pytest.raises(UserError):
        saeforge.load(tmp_path / "k")  # no cfg.json yet: not a dictionary, and not mistaken for one
    assert main([*args, "--out", str(tmp_path / "k"), "--resume"]) == 0
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    got, ref = saeforge.load(tmp_path / "k"), saeforge.load(tmp_path / "ref")
    for (n, p), (_, q) in zip(got.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q), n


# ------------------------------------------------------------------ a write that fails: one line, the earlier state whole
def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
    """A real failed write: the resumed run is limited (RLIMIT_FSIZE, SIGXFSZ ignored) so that its
    checkpoint cannot be written, as on a full disk."""
    args = [sys.executable, "-m", "saeforge", "toy", "--init", "orthogonal", "--d-model", "64", "--n-features", "512",
            "--batch-size", "32", "--no-progress", "--target-mmcs", "0", "--lr-decay-steps", "0", "--log-every", "5",
            "--checkpoint-every", "10", "--out", str(tmp_path / "o")]
    assert subprocess.run([*args, "--steps", "10"], capture_output=True).returncode == 0
    before = saeforge.load(tmp_path / "o").W_dec.clone()

    def small_disk():
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    proc = subprocess.run([*args, "--steps", "20", "--resume"], capture_output=True, text=True, preexec_fn=small_disk)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and err[0].startswith("saeforge: error: cannot write"), proc.stderr
    from saeforge.training.checkpoint import read_checkpoint
    assert read_checkpoint(tmp_path / "o").state.step == 10  # the last checkpoint, whole
    assert torch.equal(saeforge.load(tmp_path / "o").W_dec, before)  # and the dictionary
    assert subprocess.run([*args, "--steps", "20", "--resume"], capture_output=True).returncode == 0  # space again


# ------------------------------------------------------------------ caches that changed, caches that do not fit
def _cache(model, text_dir, out, hook="blocks.1.hook_resid_post", contexts=24):
    from saeforge.sources import data
    from saeforge.sources.cache import harvest
    from saeforge.sources.language_model import resolve_hook

    settings = {"model": "tiny", "hook": hook, "dataset": str(text_dir), "split": "train", "seed": 0, "n_ctx": 32}
    harvest(model, hook, resolve_hook(model, hook), data.contexts(model, str(text_dir), "train", seed=0, batch=4),
            out, settings, contexts, contexts_per_shard=8, progress=False)
    return out


def test_a_cache_that_shrank_under_a_checkpoint_is_one_line(model, text_dir, tmp_path, capsys):
    cache = _cache(model, text_dir, tmp_path / "c")
    args = ["train", "--cache", str(cache), "--batch-size", "32", "--buffer-mb", "1", "--eval-tokens", "0",
            "--no-progress", "--checkpoint-every", "10", "--out", str(tmp_path / "o")]
    assert main([*args, "--steps", "10"]) == 0  # its buffer (10 batches) reads into the second shard
    state = json.loads((tmp_path / "o" / "checkpoint" / "state.json").read_text())
    assert state["data_position"]["cursor"] >= 1
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["shards"] = manifest["shards"][:1]  # the cache, harvested again, shorter
    (cache / "manifest.json").write_text(json.dumps(manifest))
    one_line_error(capsys, main([*args, "--steps", "20", "--resume"]), "past this cache")


def test_a_sweep_eval_cache_of_another_width_is_refused_before_training(model, text_dir, tmp_path, capsys):
    train = _cache(model, text_dir, tmp_path / "c")
    other = _cache(model, text_dir, tmp_path / "e", hook="blocks.0.mlp.hook_post", contexts=8)
    capsys.readouterr()
    code = main(["sweep", "--cache", str(train), "--eval-cache", str(other), "--sizes", "32", "--steps", "10",
                 "--out", str(tmp_path / "s"), "--no-progress"])
    one_line_error(capsys, code, "holds activations of width")
    assert not (tmp_path / "s" / "runs.jsonl").exists()


# ------------------------------------------------------------------ every keyword, every spec key, every hierarchy node
def test_every_api_keyword_refuses_a_value_of_the_wrong_type_in_one_line():
    """Property: each keyword of saeforge.train, given a value of another type, is refused by name
    before anything runs (no TypeError from deep inside)."""
    from saeforge.config import ActivationTrainConfig

    x = torch.randn(256, 8)
    for name, o in ActivationTrainConfig.options().items():
        none_means_auto = o.nullable or name == "out"  # out=None: no run directory (the API's documented default)
        wrong = [[], {"a": 1}] + ([] if none_means_auto else [None]) + (["12"] if o.type in (int, float, bool) else [3])
        if o.type is float:
            wrong.append(True)
        for value in wrong:
            with pytest.raises(UserError) as e:
                saeforge.train(x, **{name: value})
            assert name in str(e.value), (name, value, str(e.value))  # the keyword is named


def test_every_spec_key_refuses_a_value_it_cannot_parse(model_dir, text_dir, tmp_path, capsys):
    from saeforge.config import ActivationTrainConfig
    from saeforge.pipeline.dictionaries import SHARED

    for name, o in ActivationTrainConfig.options().items():
        if name in SHARED or o.type is str:
            continue
        code = main(live(model_dir, text_dir, tmp_path / "o", "--dictionaries", f"{name}=not-a-{o.type.__name__}"))
        one_line_error(capsys, code, f"{name} expects {o.type.__name__}")
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("roots", [
    [5], [{"feature_index": "0"}], [{"feature_index": True}], [{"feature_index": 0, "children": 3}],
    [{"feature_index": None, "children": [7]}], [{"feature_index": 0, "children": [{"feature_index": 99}]}],
    [{"feature_index": 0}, {"feature_index": 0}],
])
def test_a_malformed_synthetic_hierarchy_is_one_line(roots):
    from saeforge.sources.synthetic import Hierarchy

    with pytest.raises(UserError, match="hierarchy"):
        Hierarchy(16, roots)
