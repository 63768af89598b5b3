"""Local Hugging Face checkpoints (save_pretrained directories) as --model: GPT-2 and Llama, offline."""

import json

import pytest
import torch

from saeforge.cli import main
from saeforge.sources.language_model import load_model


@pytest.fixture(scope="module")
def tokenizer(text_dir):
    """A small byte-level BPE trained on the test corpus (GPT-2's kind of tokenizer, no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    lines = [line for f in sorted(text_dir.glob("*.txt")) for line in f.read_text().splitlines()]
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def checkpoint(kind, tokenizer, root):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    V = len(tokenizer)
    if kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                           bos_token_id=0, eos_token_id=0))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                                             bos_token_id=0, eos_token_id=0))
    d = root / f"tiny-{kind}"  # a path naming "llama": TransformerLens must still read the directory's config
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_local_checkpoint_loads_harvests_trains_and_evaluates(kind, tokenizer, text_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    d = checkpoint(kind, tokenizer, tmp_path)
    m = load_model(str(d))
    hf = AutoModelForCausalLM.from_pretrained(d)
    toks = m.to_tokens("def parse_args(self, args=None):")
    assert toks[0, 0] == tokenizer.bos_token_id and m.cfg.d_vocab == len(tokenizer) and m.cfg.n_layers == 2
    torch.testing.assert_close(m(toks).log_softmax(-1), hf(toks).logits.log_softmax(-1), atol=1e-4, rtol=0)

    common = ["--model", str(d), "--dataset", str(text_dir), "--hook", "blocks.1.hook_resid_post", "--no-progress"]
    capsys.readouterr()
    assert main(["harvest", *common, "--tokens", "3000", "--out", str(tmp_path / "cache")]) == 0
    assert capsys.readouterr().err == ""  # --no-progress: no third-party bar or log line either
    assert main(["train", "--cache", str(tmp_path / "cache"), "--dict-size", "64", "--tokens", "4096",
                 "--batch-size", "128", "--eval-tokens", "0", "--no-progress", "--out", str(tmp_path / "fromcache")]) == 0
    assert main(["train", *common, "--dict-size", "64", "--tokens", "4096", "--batch-size", "128", "--k", "8",
                 "--contexts-per-pass", "4", "--buffer-mb", "1", "--eval-tokens", "1024",
                 "--out", str(tmp_path / "live")]) == 0
    live = json.loads((tmp_path / "live" / "summary.json").read_text())
    assert live["model"] == str(d) and live["l0"] <= 8 and live["explained_variance"] > 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "fromcache"), "--tokens", "1024", "--no-progress"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["model"] == str(d) and 0 < ev["explained_variance"] <= 1


def _wrong_typed(d):
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "n_layer": "two"}))


def _missing_field(d):
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "model_type"} | {"architectures": 3}))


def _truncated(d):
    raw = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(raw[: len(raw) // 2])


def _no_tokenizer(d):
    for f in d.iterdir():
        if "token" in f.name or f.name in ("vocab.json", "merges.txt"):
            f.unlink()


def _bos_outside(d):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(d)
    tok.add_special_tokens({"bos_token": "<|a-new-bos|>"})  # id len(vocab): no row of the embedding has it
    tok.save_pretrained(d)


@pytest.mark.parametrize("damage", [_wrong_typed, _missing_field, _truncated, _no_tokenizer, _bos_outside])
def test_a_checkpoint_transformers_cannot_read_is_one_line(damage, tokenizer, text_dir, tmp_path, capsys):
    d = checkpoint("gpt2", tokenizer, tmp_path)
    damage(d)
    capsys.readouterr()
    code = main(["train", "--model", str(d), "--dataset", str(text_dir), "--tokens", "512", "--out", str(tmp_path / "o"),
                 "--no-progress", "--eval-tokens", "0", "--batch-size", "64", "--buffer-mb", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("saeforge: error:"), err
    assert not (tmp_path / "o").exists()


def test_pickled_only_checkpoint_is_refused(tokenizer, tmp_path, capsys):
    d = checkpoint("gpt2", tokenizer, tmp_path)
    (d / "model.safetensors").rename(d / "pytorch_model.bin")  # what an old save_pretrained wrote: never unpickled
    capsys.readouterr()
    assert main(["train", "--model", str(d), "--tokens", "512", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only safetensors" in err[0]
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------ every file of a checkpoint, mutated field by field
WRONG = [None, "x", -1, 0, 2.5, True, [1], {"a": 1}, 10**9]


def _mutations(obj, rng, depth=0):
    """(description, mutated copy) of a JSON document: each top-level key missing and given two of
    the wrong values (in turn, so every value is tried across keys), plus nested keys at random."""
    keys = list(obj)
    for i, key in enumerate(keys):
        yield f"{key} missing", {k: v for k, v in obj.items() if k != key}
        for w in (WRONG[i % len(WRONG)], WRONG[(i + 4) % len(WRONG)]):
            yield f"{key}={w!r}", {**obj, key: w}
    nested = [k for k in keys if isinstance(obj[k], dict) and obj[k]]
    for _ in range(8 if nested and depth == 0 else 0):
        key = rng.choice(nested)
        desc, inner = rng.choice(list(_mutations(obj[key], rng, depth + 1)))
        yield f"{key}.{desc}", {**obj, key: inner}


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_mutated_checkpoint_files_load_cleanly_or_fail_in_one_line(kind, tokenizer, tmp_path, capsys):
    """Hugging Face config.json, tokenizer.json and tokenizer_config.json, each field missing or of a
    wrong type or size (10**9 layers, positions, vocabulary …), and each file cut short: the model loads
    and runs, or the load is one UserError line, before anything of the config's size is allocated,
    and nothing third-party is printed either way."""
    import random

    from saeforge.errors import UserError

    good = checkpoint(kind, tokenizer, tmp_path)
    capsys.readouterr()  # (save_pretrained's own bar)
    rng = random.Random(0)
    loaded = refused = 0
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        raw = (good / name).read_text()
        cases = [(f"{name} {d}", json.dumps(m)) for d, m in _mutations(json.loads(raw), rng)]
        cases += [(f"{name} cut at {n}", raw[:n]) for n in (0, len(raw) // 3, len(raw) - 2)]
        for desc, text in cases:
            (good / name).write_text(text)
            try:
                model = load_model(str(good), fused_attention=False)
                assert model(model.to_tokens("def f(x):\n    return x\n")).isfinite().all(), desc
                loaded += 1
            except UserError as e:
                assert "\n" not in str(e) and str(e).startswith("--model") or str(e).startswith("model"), (desc, e)
                refused += 1
            said = capsys.readouterr()
            assert said.out == "" and said.err == "", (desc, said)
        (good / name).write_text(raw)
    assert loaded and refused  # both outcomes occur: the mutations reach past the first check


def test_a_hub_name_loads_from_the_hub_cache_and_is_quiet_with_no_progress(tokenizer, text_dir, tmp_path):
    """A hub name goes through HookedTransformer.from_pretrained (the real hub code, here reading the
    Hugging Face cache offline: a tiny GPT-2 stands in for `gpt2`). With --no-progress nothing
    third-party reaches the terminal; a name the hub cannot give is one line."""
    import os
    import shutil
    import subprocess
    import sys

    d = checkpoint("gpt2", tokenizer, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "n_ctx": cfg["n_positions"]}))  # as the hub's gpt2 has it
    cache = tmp_path / "hub"
    for repo in ("models--gpt2", "models--openai-community--gpt2"):  # the alias TransformerLens resolves
        (cache / repo / "refs").mkdir(parents=True)
        (cache / repo / "refs" / "main").write_text("0" * 40)
        shutil.copytree(d, cache / repo / "snapshots" / ("0" * 40))
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}

    def train(model, out):
        return subprocess.run([sys.executable, "-m", "saeforge", "train", "--model", model, "--dataset", str(text_dir),
                               "--tokens", "1024", "--out", str(tmp_path / out), "--eval-tokens", "0",
                               "--batch-size", "64", "--buffer-mb", "1", "--no-progress"],
                              env=env, capture_output=True, text=True)

    r = train("gpt2", "o")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert json.loads(r.stdout)["tokens"] == 1024
    r = train("EleutherAI/no-such-model", "o2")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "the hub could not" in r.stderr, r.stderr
    assert not (tmp_path / "o2").exists()
