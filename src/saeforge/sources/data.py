"""Token streams through `datasets`, packed into contexts of the model's length.

`--dataset` may be:

- `embedded` (default): the `.py` files of the running Python's standard library (tests
  excluded), the corpus the embedded model was trained on; no download. Split by file: a file
  is held out when crc32(its path) % 20 == 0, the same split the model's training used, so
  evals run on text the model never saw.
- a local file, a glob, or a directory of `.txt` / `.jsonl` / `.json` / `.parquet` files, read
  with `datasets.load_dataset("text" | "json" | "parquet", data_files=...)`; a `.txt` file is one
  document (`sample_by="document"`).
- a hub dataset name, optionally `name:config`, streamed with `load_dataset(..., streaming=True)`.

Rows give either text (column `text`, or `--text-column`) tokenized with the model's tokenizer
(no special tokens), or token ids already (`tokens` or `input_ids` column).

Packing and BOS: documents are joined into one stream with the BOS token between them
(SAELens's `sequence_separator_token="bos"`), and every context is BOS followed by the next
n_ctx − 1 stream tokens, so position 0 always holds BOS, as in TransformerLens's
`prepend_bos=True`. Position 0 is never used as a training activation (its residual stream is an
attention-sink outlier with a norm far from every other position's); a mid-context BOS is kept.

Held-out split, fixed whatever the seed: the dataset's own `test` / `validation` split when it
has one (the embedded corpus: its file split); otherwise every 20th document (row index % 20
== 19, in the dataset's own order); and a dataset of fewer than 20 documents (a few big text
files) is packed in file order and every 20th packed context is held out. Shuffling is
deterministic from the seed: documents are shuffled after the split and before packing (an
approximate buffer of 10 000 rows when streaming), reshuffled each epoch.
"""

from __future__ import annotations

import glob
import sysconfig
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saeforge.errors import UserError, quiet_hub_logs, quiet_logs

EMBEDDED = "embedded"
HELDOUT_EVERY = 20
_FORMATS = {".txt": "text", ".text": "text", ".md": "text", ".py": "text", ".jsonl": "json", ".json": "json",
            ".parquet": "parquet"}


def embedded_corpus(split: str = "train"):
    """The stdlib corpus as a `datasets.Dataset` with columns `text` and `path`, sorted by path."""
    from datasets import Dataset

    if split not in ("train", "test"):
        raise ValueError(split)
    root = Path(sysconfig.get_paths()["stdlib"])
    texts, paths = [], []
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root).as_posix()
        parts = set(rel.split("/"))
        if parts & {"test", "tests", "idle_test", "site-packages"}:
            continue
        held = zlib.crc32(rel.encode()) % HELDOUT_EVERY == 0
        if held != (split == "test"):
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            texts.append(text)
            paths.append(rel)
    return Dataset.from_dict({"text": texts, "path": paths})


@dataclass
class DatasetSpec:
    """What `--dataset` resolved to (recorded in summaries and cache manifests)."""

    name: str
    kind: str  # embedded | local | hub
    split_by: str  # "dataset" (its own split), "document" (every 20th row) or "context" (every 20th context)


def _every_20th(ds, split: str, streaming: bool = False):
    test = split == "test"
    keep = lambda _row, i: (i % HELDOUT_EVERY == HELDOUT_EVERY - 1) == test  # noqa: E731
    if streaming:
        return ds.filter(keep, with_indices=True)
    return ds.select([i for i in range(len(ds)) if keep(None, i)])


def _local_files(spec: str) -> list[str] | None:
    p = Path(spec)
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _FORMATS)
        if not files:
            raise UserError(f"--dataset {spec}: the directory holds no .txt/.jsonl/.json/.parquet files")
        return files
    if p.is_file():
        return [str(p)]
    if any(c in spec for c in "*?["):
        files = sorted(glob.glob(spec, recursive=True))
        if not files:
            raise UserError(f"--dataset {spec}: the pattern matches no file")
        return files
    if spec.startswith((".", "/", "~")) or Path(spec).suffix.lower() in _FORMATS:
        raise UserError(f"--dataset {spec}: no such file or directory")
    return None


def load_documents(spec: str, split: str, seed: int):
    """Rows of the dataset's `split` ("train" or "test"), shuffled from the seed. Returns (rows, DatasetSpec).

    For a dataset split by context (fewer than 20 documents), all rows in file order;
    `contexts()` then keeps every 20th packed context for "test" and the others for "train".
    """
    import datasets

    datasets.disable_progress_bars()  # saeforge shows its own progress
    if spec == EMBEDDED:
        ds = embedded_corpus(split)
        return ds.shuffle(seed=seed), DatasetSpec(EMBEDDED, "embedded", "dataset")
    files = _local_files(spec)
    if files is not None:
        fmts = {_FORMATS.get(Path(f).suffix.lower()) for f in files}
        if None in fmts or len(fmts) != 1:
            raise UserError(f"--dataset {spec}: use files of one kind, .txt, .jsonl/.json or .parquet")
        fmt = fmts.pop()
        kw = {"sample_by": "document"} if fmt == "text" else {}
        try:
            with quiet_logs("datasets"):
                ds = datasets.load_dataset(fmt, data_files=files, split="train", **kw)
        except Exception as e:  # datasets raises many types for unreadable files
            raise UserError(f"--dataset {spec}: cannot read it as {fmt}: {_first_line(e)}") from None
        if len(ds) == 0:
            raise UserError(f"--dataset {spec}: the dataset is empty")
        if len(ds) < HELDOUT_EVERY:
            return ds, DatasetSpec(spec, "local", "context")
        return _every_20th(ds, split).shuffle(seed=seed), DatasetSpec(spec, "local", "document")
    name, _, config = spec.partition(":")
    try:
        with quiet_hub_logs():
            splits = datasets.get_dataset_split_names(name, config or None)
    except Exception as e:
        raise UserError(f"--dataset {spec}: not a local path, and the hub could not provide it "
                        f"({_first_line(e)})") from None
    test = next((s for s in ("test", "validation") if s in splits), None)
    train = "train" if "train" in splits else splits[0]
    ds = datasets.load_dataset(name, config or None, split=test if split == "test" and test else train,
                               streaming=True)
    if test is None:
        ds = _every_20th(ds, split, streaming=True)
    return ds.shuffle(seed=seed, buffer_size=10_000), DatasetSpec(spec, "hub", "dataset" if test else "document")


def _first_line(e: BaseException) -> str:
    """The first line of the innermost cause (datasets wraps the parser's message)."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    return ((str(e).strip().splitlines() or [type(e).__name__])[0])[:200]


def _encoder(tokenizer):
    """Text -> list of token ids, without special tokens."""
    from saeforge.sources.language_model import ByteTokenizer

    if isinstance(tokenizer, ByteTokenizer):
        return lambda text: list(text.encode("utf-8"))
    return lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]


def _row_tokens(row: dict[str, Any], encode, text_column: str) -> list[int]:
    for key in ("tokens", "input_ids"):
        if key in row and row[key] is not None:
            ids = row[key]
            if not isinstance(ids, (list, tuple)) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                raise UserError(f"dataset column {key!r} must hold lists of token ids, got {str(ids)[:40]!r}")
            return list(ids)
    if text_column in row:
        text = row[text_column]
        if text is not None and not isinstance(text, str):
            raise UserError(f"dataset column {text_column!r} must hold text, got {type(text).__name__} "
                            f"{str(text)[:40]!r}; pass --text-column")
        return encode(text or "")
    raise UserError(f"dataset rows have no {text_column!r}, 'tokens' or 'input_ids' column "
                    f"(columns: {', '.join(sorted(row))}); pass --text-column")


def bos_token_id(model) -> int:
    tok = model.tokenizer
    if tok is None:
        return 0
    for tid in (tok.bos_token_id, tok.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def contexts(model, spec: str = EMBEDDED, split: str = "train", seed: int = 0, batch: int = 32,
             n_ctx: int | None = None, text_column: str = "text", skip: int = 0,
             loop: bool = True) -> Iterator[torch.Tensor]:
    """Yield LongTensor [batch, n_ctx] contexts (BOS + n_ctx−1 stream tokens), on the CPU.

    `skip` drops that many contexts first (resuming without rerunning the model). With
    `loop`, the data repeats with a new shuffle each epoch; otherwise it ends with a last,
    possibly smaller, batch.
    """
    n_ctx = n_ctx or model.cfg.n_ctx
    bos = bos_token_id(model)
    encode = _encoder(model.tokenizer) if model.tokenizer is not None else None
    body = n_ctx - 1
    epoch, index, produced_any = 0, 0, False
    pending: list[torch.Tensor] = []
    while True:
        rows, ds_spec = load_documents(spec, split, seed + epoch)
        stream: list[int] = []
        for row in rows:
            if encode is None and "tokens" not in row and "input_ids" not in row:
                raise UserError("the model has no tokenizer; use a dataset with a 'tokens' or 'input_ids' column")
            toks = _row_tokens(row, encode, text_column)
            if toks and not 0 <= min(toks) <= max(toks) < model.cfg.d_vocab:
                raise UserError(f"--dataset {spec}: token id {max(toks) if max(toks) >= 0 else min(toks)} is outside "
                                f"the model's vocabulary (0..{model.cfg.d_vocab - 1})")
            if toks and toks[0] == bos:
                toks = toks[1:]
            stream.append(bos)
            stream.extend(toks)
            while len(stream) >= body:
                ctx, stream = stream[:body], stream[body:]
                keep = ds_spec.split_by != "context" or (index % HELDOUT_EVERY == HELDOUT_EVERY - 1) == (split == "test")
                index += 1
                if not keep:
                    continue
                produced_any = True
                if skip:
                    skip -= 1
                    continue
                pending.append(torch.tensor([bos] + ctx, dtype=torch.long))
                if len(pending) == batch:
                    yield torch.stack(pending)
                    pending = []
        if not produced_any:
            raise UserError(f"--dataset {spec}: the {split} split has no text to fill a context of {n_ctx} tokens "
                            "(empty dataset?)")
        if not loop:
            if pending:
                yield torch.stack(pending)
            return
        epoch += 1
        index = 0
