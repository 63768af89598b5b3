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
