import json
import subprocess
import sys

import pytest

from saeforge.cli import main

TOY = ["toy", "--d-model", "8", "--n-features", "16", "--steps", "5", "--no-progress"]


@pytest.mark.parametrize("flags, msg", [
    (["--init", "bogus"], "--init 'bogus' is unknown"),
    (["--resample", "magic"], "--resample 'magic' is unknown"),
    (["--rare-ratio", "1.5"], "--rare-ratio must be in [0, 1]"),
    (["--encoder-scale", "0"], "--encoder-scale must be a finite number > 0"),
    (["--steps", "-3"], "--steps must be >= 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--l1", "nan"], "--l1-coefficient must be a finite number"),
    (["--lr", "-1"], "--lr must be a finite number > 0"),
    (["--n-active", "100"], "--n-active must be in"),
    (["--decay", "1.5"], "--decay must be in"),
    (["--steps", "ten"], "--steps expects int"),
    (["--device", "tpu"], "--device 'tpu' is unknown"),
    (["--bogus-flag", "1"], "unrecognized arguments"),
])
def test_bad_options_are_one_line_exit_2(tmp_path, capsys, flags, msg):
    with pytest.raises(SystemExit) as e:
        code = main([*TOY, "--out", str(tmp_path / "o"), *flags])
        raise SystemExit(code)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("saeforge: error: ") and msg in err[0], err
    assert not (tmp_path / "o" / "summary.json").exists()


def test_missing_out(capsys):
    assert main(TOY) == 2
    assert "--out is required" in capsys.readouterr().err


def test_config_file_and_flag_precedence(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('steps = 7\nbatch-size = 32\ntarget_mmcs = 0.0\n')
    assert main([*TOY[:-3], "--no-progress", "--config", str(cfg), "--out", str(tmp_path / "o"), "--steps", "9"]) == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["steps"] == 9 and s["batch_size"] == 32
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"steps": 4, "target_mmcs": 0}))
    assert main([*TOY[:-3], "--no-progress", "--config", str(js), "--out", str(tmp_path / "p")]) == 0
    assert json.loads((tmp_path / "p" / "summary.json").read_text())["steps"] == 4


@pytest.mark.parametrize("content, msg", [
    ("steps = ", "not valid TOML"),
    ("bogus = 3", "unknown key(s) bogus"),
    ('steps = "many"', "steps must be int"),
])
def test_bad_config_file(tmp_path, capsys, content, msg):
    cfg = tmp_path / "c.toml"
    cfg.write_text(content)
    assert main([*TOY, "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("saeforge: error: ") and msg in err and "\n" not in err


def test_missing_config_file(tmp_path, capsys):
    assert main([*TOY, "--config", str(tmp_path / "none.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_info_on_corrupt_directory_subprocess(tmp_path):
    """From the real console entry point: no traceback, one line, status 2."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "cfg.json").write_text("{not json")
    r = subprocess.run([sys.executable, "-m", "saeforge", "info", str(tmp_path / "d")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("saeforge: error: ") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_info_describes_a_dictionary(tmp_path, capsys):
    assert main([*TOY, "--out", str(tmp_path / "o")]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "o")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["d_in"] == 8 and info["d_sae"] == 16 and info["metadata"]["source"] == "toy"


def test_out_that_holds_a_run_is_not_clobbered(tmp_path, capsys):
    assert main([*TOY, "--out", str(tmp_path / "o")]) == 0
    before = (tmp_path / "o" / "summary.json").read_bytes()
    assert main([*TOY, "--out", str(tmp_path / "o")]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "o" / "summary.json").read_bytes() == before
    (tmp_path / "f").write_text("x")
    assert main([*TOY, "--out", str(tmp_path / "f")]) == 2


@pytest.mark.parametrize("command", ["toy", "train", "harvest", "sweep", "eval", "inspect", "info"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0 and "usage: saeforge " + command in capsys.readouterr().out


def test_defaults_come_from_the_config_classes_and_auto_resolves_from_the_budget(tmp_path, capsys):
    """One place per default: the parser shows the class's value; `auto` and old key names work in files."""
    from saeforge.config import ToyConfig
    from saeforge.dictionary.architectures import ARCHITECTURES

    assert ToyConfig.options()["architecture"].field.metadata["choices"] == tuple(ARCHITECTURES)
    with pytest.raises(SystemExit):
        main(["toy", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {ToyConfig.batch_size})" in help_text and "budget (auto: half the budget) (default: auto)" in help_text
    cfg = tmp_path / "c.toml"
    cfg.write_text('l1 = 0.7\nlr_decay_steps = "auto"\nsteps = 12\ntarget_mmcs = 0.0\n')
    assert main([*TOY[:-3], "--no-progress", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert (s["l1_coefficient"], s["lr_decay_steps"], s["resample"]) == (0.7, 6, "none")
    assert main([*TOY, "--lr-decay-steps", "3", "--l1-coefficient", "0.2", "--out", str(tmp_path / "p")]) == 0
    s = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert (s["l1_coefficient"], s["lr_decay_steps"]) == (0.2, 3)


def test_lr_auto_follows_the_architecture():
    """--lr auto: 1e-2 for L1 and JumpReLU, 3e-3 for the k-architectures (docs/architectures.md, section c)."""
    from saeforge.config import TrainConfig

    lrs = {a: TrainConfig(out="o", architecture=a).resolved(10, 16).lr for a in ("standard", "jumprelu", "topk", "matryoshka")}
    assert lrs == {"standard": 1e-2, "jumprelu": 1e-2, "topk": 3e-3, "matryoshka": 3e-3}
    assert TrainConfig(out="o", architecture="topk", lr=5e-4).resolved(10, 16).lr == 5e-4


def test_train_starts_topk_as_saelens_does():
    """`saeforge train`'s auto: a unit-norm decoder and encoder scale 0.1 for topk (docs/performance.md);
    the other architectures as before (docs/architectures.md, section b); toy's defaults untouched;
    an explicit flag wins."""
    from saeforge.config import ActivationTrainConfig, ToyConfig

    got = {a: (lambda c: (c.unit_norm_decoder, c.encoder_scale))(ActivationTrainConfig(out="o", architecture=a)
                                                                  .resolved(10, 16))
           for a in ("topk", "batchtopk", "matryoshka", "standard", "jumprelu")}
    assert got == {"topk": (True, 0.1), "batchtopk": (False, 1.0), "matryoshka": (False, 1.0),
                   "standard": (False, 1.0), "jumprelu": (False, 1.0)}
    toy = ToyConfig(out="o", architecture="topk").resolved(10, 16)
    assert (toy.unit_norm_decoder, toy.encoder_scale) == (True, 1.0)
    mine = ActivationTrainConfig(out="o", architecture="topk", unit_norm_decoder=False, encoder_scale=1.0).resolved(10, 16)
    assert (mine.unit_norm_decoder, mine.encoder_scale) == (False, 1.0)


def test_the_summary_records_the_start_a_run_took(tmp_path):
    assert main([*TOY, "--architecture", "topk", "--k", "3", "--out", str(tmp_path / "o")]) == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert (s["unit_norm_decoder"], s["encoder_scale"]) == (True, 1.0)  # toy's own defaults
