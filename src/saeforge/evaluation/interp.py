"""Is a dictionary interpretable? k-sparse probing, per-latent labels and seed stability, on a
real model's activations with exact labels from Python's `tokenize` and `ast` (labels.py).

The data (`collect_labelled`): documents of the dataset's held-out split that Python parses (up
to one per `MIN_WINDOW` tokens of the budget), each giving an equal share of the budget (or all
of itself, if shorter) as a window at a random place, so that many documents, not the heads of a
few long files, fill it (labels come from the whole document). They are packed into
contexts as training packs them (BOS between documents, BOS at position 0, never used). Each
token carries the labels of its last byte, its document's index, and the model's activation at
the hook. Documents alternate between the probes' training half and their test half.

- **k-sparse probing** (SAEBench's protocol, `probe`): per task, positives and as many sampled
  negatives from each half (at most `PROBE_CAP` of each); the k latents whose means differ most
  between the classes on the training half, then a logistic regression on them (scikit-learn,
  L2, C = 1, 1000 iterations, as SAEBench's `train_sklearn_probe`); test accuracy for
  k ∈ `KS`, and for a probe on every latent ("all", `fit_dense_probe`). The same probes on the
  raw activations are the model baseline, on an untrained dictionary of the same shape
  (orthogonal init) the control.
- **per-latent labels** (`latent_labels`): each latent's best task by F1 of "fires" vs "label
  holds" over every token; the labelled fraction is the share of latents with F1 ≥ 0.5.
- **stability** (`stability`): decoder rows of two dictionaries matched one to one (Hungarian,
  on cosine similarity); PW-MCC is the mean matched cosine (Song et al. 2025).
- **absorption** (absorption.py): SAEBench's absorption fraction for parents of the code hierarchy.
- intervals: 95% bootstrap over documents (`BOOT` resamples, fixed seed).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from saeforge.dictionary.sae import SAE
from saeforge.errors import UserError
from saeforge.evaluation.absorption import absorption
from saeforge.evaluation.labels import TASKS, NotPython, token_labels
from saeforge.evaluation.probing import document_resamples, fit_dense_probe, fit_probe, interval, top_k_mean_diff

MIN_WINDOW = 128  # documents are read until each could give this many tokens of the budget
MIN_POSITIVES = 20  # a task needs this many positive tokens in each half, else it is dropped
PROBE_CAP = 1000  # positives (and as many negatives) per half at most
KS = (1, 2, 5)
BOOT = 200
F1_LABELLED = 0.5
NOT_PYTHON_AFTER = 20  # documents read without one that parses: the dataset is not Python


@dataclass
class Labelled:
    """The held-out tokens with their activations, labels and documents (positions 1.. of each context)."""

    acts_ND: torch.Tensor
    labels_NT: np.ndarray  # bool, the kept tasks only
    doc_N: np.ndarray
    tasks: tuple[str, ...]
    dropped: dict[str, int] = field(default_factory=dict)  # task → positives it had (too few)
    skipped_documents: int = 0  # not Python (or with carriage returns)

    @property
    def train_N(self) -> np.ndarray:
        return self.doc_N % 2 == 0


def _offsets_encoder(model):
    """Text → (token ids, their character offsets or None for a byte-level model)."""
    from saeforge.sources.language_model import ByteTokenizer

    tok = model.tokenizer
    if tok is None or isinstance(tok, ByteTokenizer):
        return lambda text: (list(text.encode("utf-8")), None)
    if not getattr(tok, "is_fast", False):
        raise UserError("the interpretability suite labels tokens by their character offsets: the model's "
                        "tokenizer must be a fast (Rust) Hugging Face tokenizer")

    def encode(text: str):
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]

    return encode


def _documents(dataset: str, seed: int = 0):
    from saeforge.sources.data import load_documents

    rows, _ = load_documents(dataset, "test", seed)
    for row in rows:
        text = row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, str):
            raise UserError(f"--dataset {dataset}: the interpretability suite needs the documents' text (a 'text' "
                            "column of Python source), not token ids")
        yield text


@torch.no_grad()
def collect_labelled(model, hook: str, dataset: str, n_tokens: int, *, batch: int = 16, seed: int = 0,
                     progress: bool = False) -> Labelled:
    """`n_tokens` labelled held-out tokens of `dataset` with the model's activations at `hook`."""
    from saeforge.sources.data import bos_token_id
    from saeforge.sources.language_model import resolve_hook

    stop = resolve_hook(model, hook)
    encode = _offsets_encoder(model)
    bos, n_ctx = bos_token_id(model), model.cfg.n_ctx
    ids: list[int] = []
    labels: list[np.ndarray] = []
    docs: list[int] = []
    skipped = used = 0
    reason = ""
    rng = np.random.default_rng(seed)
    found: list[tuple[list[int], np.ndarray]] = []
    for text in _documents(dataset, seed):
        if len(found) >= max(1, n_tokens // MIN_WINDOW):
            break
        try:
            tok, offsets = encode(text)
            lab = token_labels(text, offsets)
        except NotPython as e:
            skipped += 1
            reason = reason or str(e)
            if skipped >= NOT_PYTHON_AFTER and not found:
                raise UserError(f"--dataset {dataset}: none of its first {skipped} held-out documents is Python source "
                                f"({reason[:120]}); the interpretability suite's labels come from Python's tokenize "
                                "and ast") from None
            continue
        if tok:
            found.append((tok, np.packbits(lab, axis=1)))  # (a whole document's labels: kept as bits)
    share = _window(sorted(len(t) for t, _ in found), n_tokens)
    for tok, lab in found:  # a window of each document, at a random place
        at = int(rng.integers(0, max(1, len(tok) - share + 1)))
        tok, lab = tok[at:at + share], np.unpackbits(lab[at:at + share], axis=1, count=len(TASKS)).astype(bool)
        ids += [bos, *tok]
        labels += [np.zeros((1, len(TASKS)), dtype=bool), lab]
        docs += [-1] + [used] * len(tok)
        used += 1
    if not used:
        raise UserError(f"--dataset {dataset}: no held-out document is Python source"
                        + (f" ({reason[:120]})" if reason else " (the split is empty)"))
    n_ctx_rows = n_ctx - 1
    stream_ids = torch.tensor(ids, dtype=torch.long)
    stream_lab = np.concatenate(labels)
    stream_doc = np.asarray(docs)
    n_contexts = max(1, min(-(-len(ids) // n_ctx_rows), -(-n_tokens // n_ctx_rows)))
    pad = n_contexts * n_ctx_rows - len(ids)  # the last context filled with BOS (no labels)
    if pad > 0:
        stream_ids = torch.cat([stream_ids, torch.full((pad,), bos)])
        stream_lab = np.concatenate([stream_lab, np.zeros((pad, len(TASKS)), dtype=bool)])
        stream_doc = np.concatenate([stream_doc, np.full(pad, -1)])
    acts, keep = [], []
    device = next(model.parameters()).device
    bar = tqdm(total=n_contexts, disable=not progress, file=sys.stderr, desc="labelled acts", unit="ctx",
               dynamic_ncols=True)
    for start in range(0, n_contexts, batch):
        rows = range(start, min(start + batch, n_contexts))
        body = torch.stack([stream_ids[r * n_ctx_rows:(r + 1) * n_ctx_rows] for r in rows])
        tokens = torch.cat([torch.full((len(body), 1), bos), body], 1).to(device)
        seen: dict[str, torch.Tensor] = {}

        def grab(act, hook=None):
            seen["x"] = act[:, 1:].float().cpu()
            return act

        model.run_with_hooks(tokens, fwd_hooks=[(hook, grab)], stop_at_layer=stop, return_type=None)
        acts.append(seen["x"].reshape(-1, seen["x"].shape[-1]))
        keep += range(rows[0] * n_ctx_rows, (rows[-1] + 1) * n_ctx_rows)
        bar.update(len(rows))
    bar.close()
    idx = np.asarray(keep)
    acts_ND = torch.cat(acts)
    doc_N = stream_doc[idx]
    real = doc_N >= 0  # the BOS between documents carries no label
    acts_ND, lab_NT, doc_N = acts_ND[torch.from_numpy(real)], stream_lab[idx][real], doc_N[real]
    if not torch.isfinite(acts_ND).all():
        raise UserError(f"the model's activations at {hook} hold non-finite values on the held-out text")
    kept, dropped = [], {}
    train = doc_N % 2 == 0
    for j, task in enumerate(TASKS):
        pos_train, pos_test = int(lab_NT[train, j].sum()), int(lab_NT[~train, j].sum())
        neg_train, neg_test = int((~lab_NT[train, j]).sum()), int((~lab_NT[~train, j]).sum())
        if min(pos_train, pos_test, neg_train, neg_test) >= MIN_POSITIVES:
            kept.append(j)
        else:
            dropped[task] = min(pos_train, pos_test)
    return Labelled(acts_ND, lab_NT[:, kept], doc_N, tuple(TASKS[j] for j in kept), dropped, skipped)


def _window(lengths: list[int], budget: int) -> int:
    """The largest window w with sum(min(length, w)) ≤ budget + one window (water-filling)."""
    w, rest, left = 0, budget, len(lengths)
    for n in lengths:  # ascending
        if n * left >= rest:
            return max(1, -(-rest // left))
        rest -= n
        left -= 1
        w = n
    return max(w, 1)


# ---------------------------------------------------------------------------------------------- probing
@dataclass
class ProbeSplit:
    """Per task, the balanced token indices of each half (fixed by the seed, shared by every probe)."""

    train: list[np.ndarray]
    test: list[np.ndarray]


def probe_split(data: Labelled, seed: int = 0) -> ProbeSplit:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for j in range(len(data.tasks)):
        for half, out in ((data.train_N, train), (~data.train_N, test)):
            pos = np.flatnonzero(half & data.labels_NT[:, j])
            neg = np.flatnonzero(half & ~data.labels_NT[:, j])
            n = min(len(pos), len(neg), PROBE_CAP)
            out.append(np.concatenate([rng.choice(pos, n, replace=False), rng.choice(neg, n, replace=False)]))
    return ProbeSplit(train, test)


def probe(x_NF: torch.Tensor, data: Labelled, split: ProbeSplit, ks: tuple[int | str, ...] = (*KS, "all"),
          bar: Any = None) -> dict[str, Any]:
    """Per k (and "all": every column): per task, the test tokens' correctness (bool arrays, for
    the bootstrap)."""
    out: dict[str, Any] = {}
    for k in ks:
        correct = []
        for j in range(len(data.tasks)):
            tr, te = split.train[j], split.test[j]
            y_tr, y_te = data.labels_NT[tr, j].astype(np.int64), data.labels_NT[te, j].astype(np.int64)
            if k == "all":
                correct.append(fit_dense_probe(x_NF[tr], torch.from_numpy(y_tr), x_NF[te]) == y_te)
                if bar is not None:
                    bar.update(1)
                continue
            cols = top_k_mean_diff(x_NF[tr], torch.from_numpy(y_tr), min(k, x_NF.shape[1]))
            xs = x_NF[:, cols].numpy()
            correct.append(fit_probe(xs[tr], y_tr, xs[te]) == y_te)
            if bar is not None:
                bar.update(1)
        out[str(k)] = correct
    return out


# ---------------------------------------------------------------------------------------------- latent labels
def latent_counts(f_NF: torch.Tensor, data: Labelled) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per document: fires-and-label counts [D, F, T], firing counts [D, F], label counts [D, T]."""
    n_docs = int(data.doc_N.max()) + 1
    fires = (f_NF > 0).float()
    lab = torch.from_numpy(data.labels_NT).float()
    doc = torch.from_numpy(data.doc_N)
    tp = torch.zeros(n_docs, fires.shape[1], lab.shape[1])
    fired = torch.zeros(n_docs, fires.shape[1])
    held = torch.zeros(n_docs, lab.shape[1])
    for d in torch.unique(doc).tolist():
        m = doc == d
        tp[d] = fires[m].T @ lab[m]
        fired[d] = fires[m].sum(0)
        held[d] = lab[m].sum(0)
    return tp, fired, held


def best_labels(tp_FT: torch.Tensor, fired_F: torch.Tensor, held_T: torch.Tensor):
    """Each latent's best task by F1, with its F1, precision and recall."""
    precision = tp_FT / fired_F[:, None].clamp_min(1)
    recall = tp_FT / held_T[None, :].clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    best_F1, task_F = f1.max(1)
    rows = torch.arange(len(task_F))
    return task_F, best_F1, precision[rows, task_F], recall[rows, task_F]


# ---------------------------------------------------------------------------------------------- stability
def pw_mcc(a: SAE, b: SAE) -> dict[str, float]:
    """Decoder rows of two dictionaries matched one to one by cosine (Hungarian): the mean matched
    cosine (PW-MCC) and the share of pairs above 0.7."""
    from scipy.optimize import linear_sum_assignment

    if a.W_dec.shape != b.W_dec.shape:
        raise UserError(f"stability compares dictionaries of one shape; got {list(a.W_dec.shape)} and "
                        f"{list(b.W_dec.shape)}")
    wa = torch.nn.functional.normalize(a.W_dec.detach().float().cpu(), dim=1)
    wb = torch.nn.functional.normalize(b.W_dec.detach().float().cpu(), dim=1)
    cos = (wa @ wb.T).numpy()
    r, c = linear_sum_assignment(cos, maximize=True)
    matched = cos[r, c]
    return {"pw_mcc": float(matched.mean()), "matched_above_0.7": float((matched > 0.7).mean())}


def stability(saes: list[SAE]) -> dict[str, Any]:
    """PW-MCC over every pair of dictionaries (trained alike with different seeds): mean, min, max."""
    if len(saes) < 2:
        raise UserError("stability compares dictionaries trained with different seeds: give at least two")
    pairs = [pw_mcc(saes[i], saes[j]) for i in range(len(saes)) for j in range(i + 1, len(saes))]
    vals = np.array([p["pw_mcc"] for p in pairs])
    return {"pairs": len(pairs), "pw_mcc": float(vals.mean()), "pw_mcc_min": float(vals.min()),
            "pw_mcc_max": float(vals.max()),
            "matched_above_0.7": float(np.mean([p["matched_above_0.7"] for p in pairs]))}


# ---------------------------------------------------------------------------------------------- the suite
@torch.no_grad()
def encode_all(sae: SAE, acts_ND: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """The dictionary's latents [N, F] of activations [N, D], in chunks, as float32 on the CPU."""
    dev = sae.W_enc.device
    return torch.cat([sae.encode(acts_ND[i:i + chunk].to(dev, sae.W_enc.dtype)).float().cpu()
                      for i in range(0, len(acts_ND), chunk)])


def untrained_like(sae: SAE, seed: int = 0) -> SAE:
    """The control: a dictionary of the same architecture, settings and shape, orthogonally
    initialized and never trained."""
    from saeforge.dictionary.init import initialize

    control = type(sae)(sae.d_in, sae.d_sae, sae.cfg)
    with torch.no_grad():
        initialize(control, "orthogonal", seed=seed)
    return control


@torch.no_grad()
def evaluate_dictionary(sae: SAE, data: Labelled, split: ProbeSplit, *, baseline: dict | None = None, bar: Any = None,
                        seed: int = 0) -> dict[str, Any]:
    """The suite's figures for one dictionary on labelled data: probing (with the untrained control
    and, if given, the model baseline's per-token correctness), per-latent labels; 95% bootstrap
    intervals over documents."""
    f_NF = encode_all(sae, data.acts_ND)
    runs = {"sae": probe(f_NF, data, split, bar=bar),  # the control's k-sparse probes only: its all-latent
            "control": probe(encode_all(untrained_like(sae, seed), data.acts_ND), data, split, ks=KS, bar=bar)}  # probe
    # is the slowest part
    if baseline is not None:
        runs["model"] = baseline
    tp, fired, held = latent_counts(f_NF, data)
    test_docs = [data.doc_N[split.test[j]] for j in range(len(data.tasks))]
    boots = document_resamples(tp.shape[0], seed, BOOT)

    def probing(correct: list[np.ndarray]) -> dict[str, Any]:
        acc = float(np.mean([c.mean() for c in correct]))
        samples = []
        for w in boots:  # resample documents: a task's accuracy over its test tokens, weighted
            per = [np.average(c, weights=w[d]) if w[d].sum() else c.mean() for c, d in zip(correct, test_docs)]
            samples.append(np.mean(per))
        return {"accuracy": acc, "interval": interval(np.array(samples)),
                "per_task": {t: float(c.mean()) for t, c in zip(data.tasks, correct)}}

    probing_out = {name: {f"k={k}": probing(c) for k, c in run.items()} for name, run in runs.items()}
    task_F, f1_F, prec_F, rec_F = best_labels(tp.sum(0), fired.sum(0), held.sum(0))
    labelled = float((f1_F >= F1_LABELLED).float().mean())
    samples = []
    for w in boots:
        wt = torch.from_numpy(w).float()
        _, f1_b, _, _ = best_labels(torch.einsum("d,dft->ft", wt, tp), wt @ fired, wt @ held)
        samples.append(float((f1_b >= F1_LABELLED).float().mean()))
    alive = fired.sum(0) > 0
    latents = [{"task": data.tasks[int(t)], "f1": float(f), "precision": float(p), "recall": float(r)}
               for t, f, p, r in zip(task_F, f1_F, prec_F, rec_F)]
    return {"probing": probing_out, "absorption": absorption(sae, f_NF, data, split, seed),
            "labelled_fraction": labelled, "labelled_interval": interval(np.array(samples)),
            "labelled_fraction_of_alive": float((f1_F[alive] >= F1_LABELLED).float().mean()) if alive.any() else 0.0,
            "latent_labels": latents}


def latent_labels(model, sae: SAE, hook: str, dataset: str, n_tokens: int, seed: int = 0) -> list[dict[str, Any]]:
    """Each latent's best label by F1 on `n_tokens` labelled held-out tokens (the feature browser's
    labels; no probing)."""
    data = collect_labelled(model, hook, dataset, n_tokens, seed=seed)
    tp, fired, held = latent_counts(encode_all(sae, data.acts_ND), data)
    task_F, f1_F, prec_F, rec_F = best_labels(tp.sum(0), fired.sum(0), held.sum(0))
    return [{"task": data.tasks[int(t)], "f1": float(f), "precision": float(p), "recall": float(r)}
            for t, f, p, r in zip(task_F, f1_F, prec_F, rec_F)]


def run_suite(model, saes: list[SAE], hook: str, dataset: str, n_tokens: int, *, seed: int = 0,
              progress: bool = False) -> dict[str, Any]:
    """The interpretability suite on one or more dictionaries of one hook (several: also stability)."""
    for s in saes[1:]:
        if s.d_in != saes[0].d_in:
            raise UserError(f"the dictionaries read different widths ({saes[0].d_in} and {s.d_in})")
    data = collect_labelled(model, hook, dataset, n_tokens, seed=seed, progress=progress)
    if data.acts_ND.shape[1] != saes[0].d_in:
        raise UserError(f"the dictionary reads {saes[0].d_in}-wide activations, but {hook} gives "
                        f"{data.acts_ND.shape[1]}")
    split = probe_split(data, seed)
    T = len(data.tasks)
    bar = tqdm(total=T * (len(KS) + 1) * (1 + len(saes)) + T * len(KS) * len(saes), disable=not progress,
               file=sys.stderr, desc="probes", unit="probe", dynamic_ncols=True)
    baseline = probe(data.acts_ND, data, split, bar=bar)
    results = [evaluate_dictionary(sae, data, split, baseline=baseline, bar=bar, seed=seed) for sae in saes]
    bar.close()
    out: dict[str, Any] = {
        "tokens": len(data.doc_N), "documents": int(data.doc_N.max()) + 1, "tasks": list(data.tasks),
        "dropped_tasks": data.dropped, "skipped_documents": data.skipped_documents, "dictionaries": results}
    if len(saes) > 1:
        out["stability"] = stability(saes)
    return out


def summary(suite: dict[str, Any]) -> dict[str, Any]:
    """The suite's headline figures (no per-task or per-latent detail): what `saeforge eval` prints."""
    def brief(res: dict[str, Any]) -> dict[str, Any]:
        probing = {name: {k: {"accuracy": v["accuracy"], "interval": v["interval"]} for k, v in run.items()}
                   for name, run in res["probing"].items()}
        ab = res["absorption"]
        return {**({"path": res["path"]} if "path" in res else {}), "probing": probing,
                "absorption": {"mean_absorption_fraction": ab["mean_absorption_fraction"], "interval": ab["interval"],
                               **{p: v["absorption_fraction"] for p, v in ab["parents"].items()}},
                "labelled_fraction": res["labelled_fraction"], "labelled_interval": res["labelled_interval"],
                "labelled_fraction_of_alive": res["labelled_fraction_of_alive"]}

    out = {"tokens": suite["tokens"], "documents": suite["documents"], "tasks": len(suite["tasks"]),
           "dropped_tasks": len(suite["dropped_tasks"]), "dictionaries": [brief(r) for r in suite["dictionaries"]]}
    if "stability" in suite:
        out["stability"] = suite["stability"]
    return out


def write(suite: dict[str, Any], out_dir: str, meta: dict[str, Any]) -> None:
    """interp.json (every figure, per task and per latent) and interp.png (probing accuracy by k for
    the dictionary, its untrained control and the model, with intervals; the labelled fraction)."""
    from pathlib import Path

    from matplotlib.figure import Figure

    from saeforge.runtime import atomic_write_bytes, atomic_write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "interp.json", {**meta, "interp": suite})
    fig = Figure(figsize=(7, 3.2))
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    res = suite["dictionaries"]
    names = [("sae", "dictionary"), ("control", "untrained control"), ("model", "model activations")]
    every = list(res[0]["probing"]["sae"])
    for i, (key, label) in enumerate(names):
        ks = [k for k in every if k in res[0]["probing"][key]]
        acc = np.array([[r["probing"][key][k]["accuracy"] for k in ks] for r in res]).mean(0)
        lo = np.array([[r["probing"][key][k]["interval"][0] for k in ks] for r in res]).mean(0)
        hi = np.array([[r["probing"][key][k]["interval"][1] for k in ks] for r in res]).mean(0)
        x = np.array([every.index(k) for k in ks]) + (i - 1) * 0.27
        ax.bar(x, acc, 0.27, yerr=[acc - lo, hi - acc], label=label, capsize=2)
    ax.set_xticks(np.arange(len(every)), every)
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel(f"probe test accuracy ({len(suite['tasks'])} tasks)")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("k-sparse probing", fontsize=9)
    frac = [r["labelled_fraction"] for r in res]
    bx.bar(np.arange(len(res)), frac, yerr=[[f - r["labelled_interval"][0] for f, r in zip(frac, res)],
                                            [r["labelled_interval"][1] - f for f, r in zip(frac, res)]], capsize=2)
    bx.set_xticks(np.arange(len(res)), [str(i + 1) for i in range(len(res))])
    bx.set_title(f"latents with F1 ≥ {F1_LABELLED}", fontsize=9)
    bx.set_xlabel("dictionary")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(out / "interp.png", buf.getvalue())
