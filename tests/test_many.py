"""Several dictionaries from one model pass (--hooks, --dictionaries): each ends as its own separate run."""

import json

import pytest
import torch

from saeforge import load
from saeforge.cli import main


def common(model_dir, text_dir):
    return ["--model", str(model_dir), "--dataset", str(text_dir), "--tokens", "6144", "--batch-size", "128",
            "--contexts-per-pass", "4", "--buffer-mb", "1", "--eval-tokens", "512", "--no-progress",
            "--resample", "clustered", "--resample-every", "10", "--dead-window", "256", "--lr-decay-steps", "10"]


def test_two_hooks_two_sizes_from_one_pass_equal_separate_runs(model_dir, text_dir, tmp_path, capsys):
    args = common(model_dir, text_dir)
    assert main(["train", *args, "--hooks", "blocks.0.hook_resid_post,blocks.1.hook_resid_post",
                 "--dictionaries", "dict_size=64; dict_size=128,k=8,architecture=batchtopk",
                 "--out", str(tmp_path / "many")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["dictionary"] for d in lines[:-1]] == [
        "blocks.0.hook_resid_post-dict_size64", "blocks.0.hook_resid_post-dict_size128-k8-architecturebatchtopk",
        "blocks.1.hook_resid_post-dict_size64", "blocks.1.hook_resid_post-dict_size128-k8-architecturebatchtopk"]
    top = json.loads((tmp_path / "many" / "summary.json").read_text())
    assert len(top["dictionaries"]) == 4 and top["hooks"] == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    for hook, name, extra in [("blocks.1.hook_resid_post", "blocks.1.hook_resid_post-dict_size64", ["--dict-size", "64"]),
                              ("blocks.0.hook_resid_post", "blocks.0.hook_resid_post-dict_size128-k8-architecturebatchtopk",
                               ["--dict-size", "128", "--k", "8", "--architecture", "batchtopk"])]:
        assert main(["train", *args, "--hook", hook, *extra, "--out", str(tmp_path / "alone" / name)]) == 0
        together, alone = load(tmp_path / "many" / name), load(tmp_path / "alone" / name)
        for p in ("W_enc", "b_enc", "W_dec", "b_dec"):
            torch.testing.assert_close(getattr(together, p), getattr(alone, p), rtol=1e-4, atol=1e-5, msg=p)
        s_many = json.loads((tmp_path / "many" / name / "summary.json").read_text())
        s_alone = json.loads((tmp_path / "alone" / name / "summary.json").read_text())
        assert s_many["resample_events"] == s_alone["resample_events"] > 0
        assert s_many["explained_variance"] == pytest.approx(s_alone["explained_variance"], abs=1e-4)


def test_resume_continues_every_dictionary(model_dir, text_dir, tmp_path, capsys):
    args = [*common(model_dir, text_dir), "--dictionaries", "dict_size=64; dict_size=96", "--eval-tokens", "0",
            "--out", str(tmp_path / "m")]
    assert main(["train", *args, "--tokens", "2560"]) == 0
    assert main(["train", *args, "--resume"]) == 0
    for name in ("dict_size64", "dict_size96"):
        assert json.loads((tmp_path / "m" / name / "summary.json").read_text())["steps"] == 48
    capsys.readouterr()  # a dictionary added on resume has no checkpoint to continue from
    args[args.index("dict_size=64; dict_size=96")] = "dict_size=64; dict_size=96; dict_size=32"
    assert main(["train", *args, "--tokens", "8192", "--resume"]) == 2
    assert "not all at the same step" in capsys.readouterr().err
    assert not (tmp_path / "m" / "dict_size32").exists()


@pytest.mark.parametrize("spec, says", [
    ("dict_size=64; tokens=100", "'tokens' is shared by all dictionaries"),
    ("dict_size", "'dict_size' is not key=value"),
    ("dict_sise=64", "'dict_sise' is not a setting"),
    ("k=many", "k expects int"),
    ("k=4; k=4", "would share a run directory"),
])
def test_bad_specs_are_one_line(spec, says, model_dir, text_dir, tmp_path, capsys):
    assert main(["train", *common(model_dir, text_dir), "--dictionaries", spec, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "o").exists()


def test_a_cache_feeds_several_dictionaries(model_dir, text_dir, tmp_path, capsys):
    assert main(["harvest", "--model", str(model_dir), "--dataset", str(text_dir), "--hook", "blocks.1.hook_resid_post",
                 "--tokens", "4000", "--out", str(tmp_path / "cache"), "--no-progress"]) == 0
    args = ["train", "--cache", str(tmp_path / "cache"), "--tokens", "3072", "--batch-size", "128", "--buffer-mb", "1",
            "--eval-tokens", "256", "--no-progress"]
    assert main([*args, "--dictionaries", "dict_size=48; dict_size=80,architecture=standard",
                 "--out", str(tmp_path / "m")]) == 0
    top = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert sorted(top["dictionaries"]) == ["dict_size48", "dict_size80-architecturestandard"]
    assert top["dictionaries"]["dict_size80-architecturestandard"]["architecture"] == "standard"
    assert main([*args, "--dict-size", "48", "--out", str(tmp_path / "alone")]) == 0
    torch.testing.assert_close(load(tmp_path / "m" / "dict_size48").W_dec, load(tmp_path / "alone").W_dec)
    capsys.readouterr()
    assert main([*args, "--hooks", "blocks.0.hook_resid_post", "--out", str(tmp_path / "bad")]) == 2
    assert "holds blocks.1.hook_resid_post only" in capsys.readouterr().err
