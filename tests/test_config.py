"""Settings have owners: each architecture declares its own (flags, files, specs and keywords are
generated from the declarations), every `auto` is resolved once into a frozen run config, and
summary.json / cfg.json record what the run used."""

import dataclasses
import json

import pytest
import torch

import saeforge
from saeforge.cli import build_parser, main
from saeforge.config import ActivationTrainConfig, ToyConfig, TrainConfig
from saeforge.dictionary.architectures import ARCHITECTURES, CONFIGS
from saeforge.errors import UserError
from saeforge.options import build_config
from saeforge.training.trainer import Trainer

TOY = ["toy", "--init", "orthogonal", "--d-model", "16", "--n-features", "32", "--batch-size", "64", "--no-progress",
       "--steps", "20", "--target-mmcs", "0", "--log-every", "10"]


def test_each_setting_is_declared_once_by_its_owner_and_the_help_names_it(capsys):
    own = {f.name for f in dataclasses.fields(ActivationTrainConfig)}
    for name, arch in CONFIGS.items():
        for f in dataclasses.fields(arch):
            assert f.name not in own, f"{f.name} of {name} is declared twice"
            owners = ActivationTrainConfig.options()[f.name].owners
            assert name in owners
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--k K topk, batchtopk, matryoshka: active latents per input" in text
    assert "--l1-coefficient L1_COEFFICIENT, --l1 L1_COEFFICIENT standard: sparsity coefficient" in text
    assert "--matryoshka-sizes MATRYOSHKA_SIZES matryoshka: nested prefix sizes" in text


def test_flags_files_and_specs_reach_the_architectures_config(tmp_path):
    args = build_parser().parse_args(["train", "--out", "o", "--architecture", "matryoshka", "--k", "8",
                                      "--matryoshka-sizes", "16,64"])
    cfg = build_config(ActivationTrainConfig, args)
    assert type(cfg.sae).__name__ == "MatryoshkaConfig" and (cfg.sae.k, cfg.sae.matryoshka_sizes) == (8, "16,64")
    (tmp_path / "c.toml").write_text('architecture = "jumprelu"\nl0-coefficient = 2\n')
    args = build_parser().parse_args(["train", "--out", "o", "--config", str(tmp_path / "c.toml")])
    assert build_config(ActivationTrainConfig, args).sae.l0_coefficient == 2.0
    # a spec switches the architecture: the earlier one's settings go, the new one's defaults come
    assert cfg.with_values(architecture="standard").sae == CONFIGS["standard"]()
    # toy gives λ its own default (SAE_DEFAULTS); train keeps the architecture's
    assert ToyConfig.from_values({}).sae.l1_coefficient == 0.3
    assert ActivationTrainConfig.from_values({"architecture": "standard"}).sae.l1_coefficient == 0.55


def test_the_run_config_is_resolved_once_frozen_and_complete():
    cfg = ActivationTrainConfig(out="o", tokens=5120, batch_size=64)
    run = cfg.resolved(cfg.total_steps(), 16)
    assert run.is_resolved() and not cfg.is_resolved()
    assert (run.steps, run.dict_size, run.lr, run.unit_norm_decoder, run.encoder_scale, run.dead_window,
            run.resample, run.sae.aux_k) == (80, 128, 3e-3, True, 0.1, 640, "none", 8)
    assert run.resolved(80, 16) == run  # nothing left to resolve
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.lr = 1.0
    with pytest.raises(ValueError, match="run config"):
        Trainer(saeforge.SAE.__subclasses__()[0](16, 32), cfg)
    m = ActivationTrainConfig.from_values({"out": "o", "architecture": "matryoshka", "dict_size": 256})
    assert m.resolved(10, 16).sae.matryoshka_sizes == "16,64,256"
    with pytest.raises(UserError, match="--k must be in \\[1, 32\\]"):
        ActivationTrainConfig(out="o", dict_size=32, sae=CONFIGS["topk"](k=33)).resolved(10, 16)


def test_the_toy_decoder_norm_is_free_for_the_penalty_architectures_on_synthetic_data_only():
    def unit(arch, data):
        return ToyConfig.from_values({"out": "o", "architecture": arch, "data": data}).resolved(10, 16).unit_norm_decoder

    assert [unit(a, "synthetic") for a in ("standard", "jumprelu", "topk", "batchtopk", "matryoshka")] == \
        [False, False, True, True, True]
    assert all(unit(a, "seed") for a in ("standard", "jumprelu", "topk", "batchtopk", "matryoshka"))
    assert ToyConfig.from_values({"out": "o", "architecture": "standard", "data": "synthetic",
                                  "unit_norm_decoder": True}).resolved(10, 16).unit_norm_decoder

    def clip(arch, data):
        return ToyConfig.from_values({"out": "o", "architecture": arch, "data": data}).resolved(10, 16).max_grad_norm

    assert [clip(a, "synthetic") for a in ("standard", "jumprelu", "topk")] == [1.0, 1.0, 0.0]
    assert clip("jumprelu", "seed") == clip("standard", "seed") == 0.0


def test_the_summary_and_cfg_json_record_the_settings_the_run_used(tmp_path):
    assert main([*TOY, "--architecture", "topk", "--k", "3", "--out", str(tmp_path / "k")]) == 0
    s = json.loads((tmp_path / "k" / "summary.json").read_text())
    assert (s["k"], s["aux_k"], s["aux_k_coefficient"], s["lr"]) == (3, 8, 1 / 32, 3e-3)
    assert "l1_coefficient" not in s
    assert json.loads((tmp_path / "k" / "cfg.json").read_text())["k"] == 3
    state = json.loads((tmp_path / "k" / "checkpoint" / "state.json").read_text())
    assert state["config"]["sae"]["k"] == 3 and None not in state["config"].values()
    assert saeforge.load(tmp_path / "k").cfg.k == 3
    assert main([*TOY, "--architecture", "standard", "--k", "3", "--out", str(tmp_path / "s")]) == 0
    s = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert s["l1_coefficient"] == 0.3 and "k" not in s


@pytest.mark.parametrize("keyword,value", [("dict_size", "64"), ("steps", "20"), ("k", 2.5), ("batch_size", None),
                                           ("out", 5), ("unit_norm_decoder", "true")])
def test_the_python_api_checks_each_keywords_type(keyword, value):
    x = torch.randn(256, 8)
    with pytest.raises(UserError, match=f"{keyword}= must be"):
        saeforge.train(x, **{keyword: value})


def test_every_architecture_builds_from_its_config_alone():
    for name, cls in ARCHITECTURES.items():
        sae = cls(8, 32, cls.Config())
        assert sae.cfg == cls.Config().resolved(8, 32) and sae.saved_config()["architecture"] in ("standard", "topk",
                                                                                                     "jumprelu")


def test_max_grad_norm_clips_what_adam_sees():
    from saeforge.sources.toy import ToyData

    data = ToyData(16, 32, n_active=3, seed=0)
    x = data.batch(0, 64)[0]
    norms = {}
    for clip in (0.0, 1e-3):
        sae = saeforge.SparseAutoencoder(16, 32)
        cfg = TrainConfig.from_values(dict(out="o", dict_size=32, batch_size=64, lr=1e-3, max_grad_norm=clip,
                                           lr_warmup_steps=0, l1_warmup_steps=0, lr_decay_steps=0)).resolved(10, 16)
        tr = Trainer(sae, cfg)
        tr.train_step(x)
        norms[clip] = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in sae.parameters()])))
    assert norms[0.0] > 1e-2 and norms[1e-3] == pytest.approx(1e-3, rel=1e-4)
    with pytest.raises(UserError, match="max.grad.norm"):
        saeforge.train(out="o", model="embedded", feature_shards=2, max_grad_norm=1.0)
