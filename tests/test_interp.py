"""The interpretability suite: labels from Python's tokenize and ast, k-sparse probing (checked
against SAEBench's own code), per-latent labels, seed stability, and the `eval --interp` command."""

import io
import json
import tokenize

import numpy as np
import pytest
import torch

from saeforge.cli import main
from saeforge.dictionary.architectures import create
from saeforge.dictionary.init import initialize
from saeforge.errors import UserError
from saeforge.evaluation import interp
from saeforge.evaluation.labels import INDEX, TASKS, NotPython, byte_labels, token_labels

SNIPPETS = [
    'import os\n\n\n@decorator(1, key="v")\ndef f(x: int, *a, y=2) -> str:\n    """Doc."""\n    return x\n',
    's = "a\\"b\\n" + \'c\\\\\' + r"\\d" + b"\\x00"  # escapes\n',
    'name = "é"  # ü é\nvalue = f"{name!r:>10} {{x}}"\n',
    'x = f(g([1, {2: (3,)}]))[0]\n',
    'class A(B):\n    def m(self):\n        if self.x and not y:\n            return [i for i in z]\n',
    'def g():\n    yield from h(a=1)\n    lambda q: q * 2\n',
]


def spans(source: str, task: str) -> list[str]:
    """The runs of bytes where `task` holds, decoded."""
    b, m = source.encode(), byte_labels(source)[:, INDEX[task]]
    out, start = [], None
    for i in range(len(b) + 1):
        on = i < len(b) and m[i]
        if on and start is None:
            start = i
        if not on and start is not None:
            out.append(b[start:i].decode())
            start = None
    return out


@pytest.mark.parametrize("source", SNIPPETS)
def test_token_labels_agree_with_tokenize(source):
    labels = byte_labels(source)
    assert labels.shape == (len(source.encode()), len(TASKS))
    kinds = {tokenize.NAME: None, tokenize.NUMBER: "tok.number", tokenize.STRING: "tok.string", tokenize.OP: "tok.op",
             tokenize.COMMENT: "tok.comment"}
    lines = source.split("\n")
    starts = np.cumsum([0] + [len(line.encode()) + 1 for line in lines])
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in kinds or tok.start[0] != tok.end[0]:
            continue
        row, line = tok.start[0] - 1, lines[tok.start[0] - 1]
        a = starts[row] + len(line[:tok.start[1]].encode())
        b = starts[row] + len(line[:tok.end[1]].encode())
        task = kinds[tok.type] or ("tok.keyword" if tok.string in ("import", "def", "return", "class", "if", "and",
                                                                    "not", "for", "in", "yield", "from", "lambda")
                                   else "tok.name")
        assert labels[a:b, INDEX[task]].all(), (tok, task)
        others = [t for t in ("tok.name", "tok.keyword", "tok.number", "tok.string", "tok.op", "tok.comment")
                  if t != task]
        assert not labels[a:b, [INDEX[t] for t in others]].any(), tok


def test_labels_of_hand_written_snippets():
    dec, escapes, uni, nested, cls, gen = SNIPPETS
    assert spans(dec, "ast.decorator") == ['@decorator(1, key="v")']
    assert spans(dec, "ast.def_name") == ["f"]
    assert spans(dec, "ast.annotation") == ["int", "str"]
    assert spans(dec, "ast.arguments") == ["x: int, *a, y=2"]
    assert spans(dec, "str.docstring") == ['"""Doc."""']
    assert spans(dec, "ast.keyword_arg") == ["key"]
    assert spans(dec, "kw.def") == ["def"] and spans(dec, "kw.return") == ["return"]
    assert spans(escapes, "tok.string") == ['"a\\"b\\n"', "'c\\\\'", 'r"\\d"', 'b"\\x00"']
    assert spans(escapes, "str.raw") == ['r"\\d"'] and spans(escapes, "str.bytes") == ['b"\\x00"']
    assert spans(escapes, "tok.comment") == ["# escapes"]
    assert spans(uni, "tok.comment") == ["# ü é"]  # byte offsets past two-byte characters
    assert spans(uni, "str.fstring") == ['f"{name!r:>10} {{x}}"']
    assert spans(nested, "depth.0") == ["x = f(", ")[", "]\n"]  # a bracket is at the depth outside it
    assert spans(nested, "depth.1") == ["g(", ")", "0"] and spans(nested, "depth.2") == ["[", "]"]
    assert spans(nested, "depth.3+") == ["1, {2: (3,)}"]
    assert spans(nested, "bracket.curly") == ["2: (", ")"] and spans(nested, "bracket.paren") == ["g([", "3,", "])"]
    assert spans(cls, "ast.class_name") == ["A"] and spans(cls, "ast.def_name") == ["m"]
    assert spans(cls, "name.self") == ["self", "self"]
    assert spans(cls, "ast.condition") == ["self.x and not y"]
    assert spans(cls, "ast.attr_name") == ["x"]
    assert spans(cls, "ast.comprehension") == ["[i for i in z]"]
    assert spans(cls, "indent.2") == ["        if self.x and not y:"]
    assert spans(gen, "ast.yield") == ["yield from h(a=1)"] and spans(gen, "ast.lambda") == ["lambda q: q * 2"]


@pytest.mark.parametrize("text", ["def f(:\n", "x = 'unterminated\n", "a\r\nb = 1\n", "if x:\nreturn 1\n"])
def test_text_python_cannot_read_is_not_python(text):
    with pytest.raises(NotPython):
        byte_labels(text)


def test_bpe_tokens_take_the_labels_of_their_last_byte():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(SNIPPETS * 5, trainers.BpeTrainer(vocab_size=300,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    for source in SNIPPETS:
        enc = fast(source, add_special_tokens=False, return_offsets_mapping=True)
        got = token_labels(source, enc["offset_mapping"])
        bytes_ = byte_labels(source)
        for (s, e), row in zip(enc["offset_mapping"], got):
            last = len(source[:e].encode()) - 1
            assert (row == bytes_[last]).all()


# ------------------------------------------------------------------------------------------- probing
def planted(seed=0, n=3000, d=256):
    """Labelled data whose activations carry task 0's label along one direction u, among noise."""
    g = torch.Generator().manual_seed(seed)
    source = "\n".join(SNIPPETS)
    lab = byte_labels(source)
    cols = [INDEX[t] for t in ("tok.name", "tok.op", "tok.string")]
    reps = -(-n // len(lab))
    labels = np.tile(lab[:, cols], (reps, 1))[:n]
    u = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    acts = torch.randn(n, d, generator=g) + 6.0 * torch.from_numpy(labels[:, 0]).float()[:, None] * u
    data = interp.Labelled(acts, labels, np.arange(n) // 50, ("tok.name", "tok.op", "tok.string"))
    return data, u


def test_probing_finds_a_planted_latent_and_the_control_does_not():
    data, u = planted()
    sae = create("standard", 256, 512)
    with torch.no_grad():
        initialize(sae, "orthogonal", seed=3)
        sae.W_enc[:, 0] = u
        sae.b_enc[0] = -3.0  # fires past half the planted shift
    split = interp.probe_split(data)
    res = interp.evaluate_dictionary(sae, data, split, seed=1)
    ours = res["probing"]["sae"]["k=1"]["per_task"]["tok.name"]
    control = res["probing"]["control"]["k=1"]["per_task"]["tok.name"]
    assert ours > 0.97 and control < 0.85, (ours, control)
    assert res["latent_labels"][0]["task"] == "tok.name" and res["latent_labels"][0]["f1"] > 0.9
    lo, hi = res["probing"]["sae"]["k=1"]["interval"]
    assert lo <= res["probing"]["sae"]["k=1"]["accuracy"] <= hi


def test_selection_and_accuracy_match_saebench():
    """SAEBench's own sparse-probing code (sae_bench.evals.sparse_probing.probe_training), on the same
    activations and labels: the same k latents selected and the same test accuracy."""
    from sae_bench.evals.sparse_probing import probe_training as pt  # README's test command installs it
    data, _ = planted(seed=1)
    sae = create("topk", 256, 512, k=8)
    with torch.no_grad():
        initialize(sae, "orthogonal", seed=0)
    f = interp.encode_all(sae, data.acts_ND)
    split = interp.probe_split(data, seed=2)
    for j, task in enumerate(data.tasks):
        tr, te = split.train[j], split.test[j]
        y_tr = torch.from_numpy(data.labels_NT[tr, j].astype(np.int64))
        y_te = torch.from_numpy(data.labels_NT[te, j].astype(np.int64))
        for k in (1, 2, 5):
            ours = set(interp.top_k_mean_diff(f[tr], y_tr, k).tolist())
            mask = pt.get_top_k_mean_diff_mask(f[tr], y_tr, k)
            assert ours == set(torch.nonzero(~mask).flatten().tolist()), (task, k)
            x_tr = pt.apply_topk_mask_reduce_dim(f[tr], mask)
            x_te = pt.apply_topk_mask_reduce_dim(f[te], mask)
            _, theirs = pt.train_sklearn_probe(x_tr, y_tr, x_te, y_te)
            correct = interp.probe(f, data, split, ks=(k,))[str(k)][j]
            assert abs(correct.mean() - theirs) < 1e-9, (task, k, correct.mean(), theirs)


def test_stability_matches_a_permuted_copy_and_not_a_random_dictionary():
    a = create("topk", 16, 64, k=4)
    with torch.no_grad():
        initialize(a, "xavier", seed=0)
    b = create("topk", 16, 64, k=4)
    with torch.no_grad():
        b.W_dec.copy_(a.W_dec[torch.randperm(64, generator=torch.Generator().manual_seed(0))])
    c = create("topk", 16, 64, k=4)
    with torch.no_grad():
        initialize(c, "xavier", seed=1)
    assert interp.pw_mcc(a, b)["pw_mcc"] == pytest.approx(1.0, abs=1e-6)
    assert interp.pw_mcc(a, c)["pw_mcc"] < 0.6
    s = interp.stability([a, b, c])
    assert s["pairs"] == 3 and s["pw_mcc_max"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(UserError, match="at least two"):
        interp.stability([a])


# ------------------------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def trained(model_dir, python_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    paths = []
    for seed in (0, 1):
        p = out / f"s{seed}"
        assert main(["train", "--model", str(model_dir), "--dataset", str(python_dir), "--tokens", "8192",
                     "--out", str(p), "--no-progress", "--eval-tokens", "0", "--batch-size", "64", "--buffer-mb", "1",
                     "--dict-size", "128", "--seed", str(seed)]) == 0
        paths.append(p)
    return paths


def test_eval_interp_on_two_seeds(trained, python_dir, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "report"
    assert main(["eval", *map(str, trained), "--interp", "--interp-tokens", "2048", "--tokens", "512",
                 "--out", str(out), "--no-progress"]) == 0
    said = json.loads(capsys.readouterr().out)
    suite = said["interp"]
    assert len(said["dictionaries"]) == 2 and suite["tasks"] >= 20
    for res in suite["dictionaries"]:
        assert set(res["probing"]["control"]) == {"k=1", "k=2", "k=5"}
        for run in ("sae", "control", "model"):
            assert {"k=1", "k=2", "k=5"} <= set(res["probing"][run]) and "k=all" in res["probing"]["sae"]
            for v in res["probing"][run].values():
                assert 0.4 <= v["interval"][0] <= v["accuracy"] <= v["interval"][1] <= 1
        assert 0 <= res["labelled_fraction"] <= 1
    assert 0 < suite["stability"]["pw_mcc"] <= 1
    full = json.loads((out / "interp.json").read_text())
    assert len(full["interp"]["dictionaries"][0]["latent_labels"]) == 128
    assert (out / "interp.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("case, says", [
    ("not python", "is Python source"), ("other d_in", "one shape"), ("one seed", "two or more"),
    ("out without interp", "give --interp")])
def test_bad_input_to_the_suite_is_one_line(case, says, trained, model_dir, text_dir, tmp_path, capsys):
    first = str(trained[0])
    out = tmp_path / "report"
    if case == "not python":
        args = [first, "--interp", "--dataset", str(text_dir), "--out", str(out)]
    elif case == "other d_in":
        other = tmp_path / "wide"
        assert main(["train", "--model", str(model_dir), "--dataset", str(text_dir), "--tokens", "4096", "--out",
                     str(other), "--no-progress", "--eval-tokens", "0", "--batch-size", "64", "--buffer-mb", "1",
                     "--dict-size", "128", "--hook", "blocks.0.mlp.hook_post"]) == 0  # d_in 64, not 32
        args = [first, str(other), "--interp", "--out", str(out)]
    elif case == "one seed":
        args = [first, "--stability"]
    else:
        args = [first, "--out", str(out)]
    capsys.readouterr()
    assert main(["eval", *args, "--tokens", "512", "--interp-tokens", "1024", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("saeforge: error:") and says in err[0], err
    assert not out.exists()


def test_the_python_api_runs_the_suite(trained):
    import saeforge

    res = saeforge.interpretability([saeforge.load(trained[0]), str(trained[1])], tokens=1024)
    assert len(res["dictionaries"]) == 2 and "stability" in res
    with pytest.raises(UserError, match="tokens="):
        saeforge.interpretability(str(trained[0]), tokens="many")


def test_absorption_recovers_a_planted_absorption():
    """A parent with 40 children (each too rare for k-sparse probing to count it a split): a parent latent silent whenever a child is present, and one latent
    per child whose decoder row carries the parent's direction (it has absorbed it). The children's
    tokens are absorbed (fraction ≈ 1), the parent-only tokens are not (≈ 0); a dictionary without
    absorption (each child latent orthogonal to the parent, the parent latent always firing) scores ≈ 0."""
    from saeforge.evaluation.absorption import HIERARCHY, absorption

    g = torch.Generator().manual_seed(0)
    n, d, F = 12000, 64, 96
    C = 40
    children = HIERARCHY["tok.keyword"][:12] + tuple(f"child{i}" for i in range(C - 12))
    basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0].T  # orthonormal rows
    u_p, u_c = basis[0], basis[1:C + 1]
    parent = torch.rand(n, generator=g) < 0.4
    child = torch.where(parent & (torch.rand(n, generator=g) < 0.6), torch.randint(0, C, (n,), generator=g), -1)
    x = 0.05 * torch.randn(n, d, generator=g) + 3 * parent.float()[:, None] * u_p
    x[child >= 0] += 3 * u_c[child[child >= 0]]
    labels = np.zeros((n, C + 1), dtype=bool)
    labels[:, 0] = parent.numpy()
    labels[np.flatnonzero(child >= 0), 1 + child[child >= 0].numpy()] = True
    data = interp.Labelled(x, labels, np.arange(n) // 40, ("tok.keyword", *children))

    def dictionary(absorbing: bool) -> torch.nn.Module:
        sae = create("standard", d, F)
        with torch.no_grad():
            initialize(sae, "orthogonal", seed=1)
            sae.b_enc.fill_(-50.0)  # the filler latents stay silent
            sae.W_enc[:, 0] = u_p - (10 * u_c.sum(0) if absorbing else 0)
            sae.b_enc[0] = -1.0
            sae.W_dec[0] = u_p
            for c in range(C):
                row = torch.nn.functional.normalize(u_p + u_c[c], dim=0) if absorbing else u_c[c]
                sae.W_enc[:, 1 + c] = u_c[c] * (2 ** 0.5 if absorbing else 1.0)  # fires on its child only
                sae.W_dec[1 + c] = row
                sae.b_enc[1 + c] = -1.0
        return sae

    split = interp.probe_split(data)
    for absorbing in (True, False):
        sae = dictionary(absorbing)
        res = absorption(sae, interp.encode_all(sae, x), data, split)["parents"]["tok.keyword"]
        if absorbing:
            assert res["main_latents"] == [0]
            assert all(v > 0.9 for v in res["by_child"].values()), res["by_child"]
            assert 0.5 < res["absorption_fraction"] < 0.7 and res["full_absorption_rate"] > 0.4, res
        else:
            assert res["absorption_fraction"] < 0.05, res
