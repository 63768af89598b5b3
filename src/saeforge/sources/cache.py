"""The on-disk activation cache: harvest once, train (and sweep) many times without the model.

    <dir>/manifest.json          model, hook, dataset, split, seed, dtype, d_in, n_ctx, shards, checksums
    <dir>/shard_00000.safetensors   "activations" [contexts × (n_ctx−1), d_in] (position 0, BOS, skipped)

A cache for transcoders (harvest --target-hook) also names its target_hook and d_out, and each row
holds the input and the target side by side: "activations" [rows, d_in + d_out].
                                    "tokens"      [contexts, n_ctx] int32: the contexts they came from;
                                    row r belongs to context r // (n_ctx−1), position 1 + r % (n_ctx−1)

Atomic and resumable: each shard is written under a temporary name and renamed, then the
manifest (rewritten atomically) records it with its size and sha256. An interrupted harvest
rerun with the same settings checks the recorded shards, skips the contexts they hold (no
model forward) and continues; the result is byte-identical to an uninterrupted harvest.

Reading (`CacheSource`) streams one shard at a time into the ActivationBuffer (shard order
shuffled per epoch from the seed; each rank of a distributed run reads shards i ≡ rank mod
world), checking every shard's size and sha256 before use: a truncated or tampered shard is
a one-line error, never silent garbage.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError
from tqdm import tqdm

from saeforge.errors import UserError
from saeforge.runtime import atomic_save_tensors, atomic_write_json, check_json, read_json
from saeforge.sources.buffer import DTYPES

MANIFEST = "manifest.json"
FORMAT = "saeforge-activation-cache"
MANIFEST_FIELDS = {"model": (str, True), "hook": (str, True), "dataset": (str, True), "split": (str, False),
                   "seed": (int, False), "dtype": (str, False), "n_ctx": (int, False), "d_in": (int, False),
                   "target_hook": (str, False), "d_out": (int, False),
                   "contexts_per_shard": (int, False), "shards": (list, True), "complete": (bool, False)}
SHARD_FIELDS = {"file": (str, True), "contexts": (int, True), "rows": (int, True), "bytes": (int, True),
                "sha256": (str, True), "sum_sq_norm": (float, False)}
# Settings that must match for a harvest to resume an existing cache.
IDENTITY = ("model", "hook", "target_hook", "dataset", "split", "seed", "dtype", "n_ctx", "contexts_per_shard")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(path: str | Path) -> dict[str, Any]:
    d = Path(path)
    f = d / MANIFEST
    if not d.is_dir():
        raise UserError(f"--cache {d}: no such directory (create it with `saeforge harvest --out {d}`)")
    if not f.is_file():
        raise UserError(f"--cache {d}: {MANIFEST} is missing; not an activation cache (or its harvest never wrote a shard)")
    m = read_json(f, "the cache's manifest is corrupt; harvest the cache again")
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise UserError(f"--cache {d}: {MANIFEST} is not a saeforge activation cache manifest")
    check_json(m, str(f), MANIFEST_FIELDS)
    for s in m["shards"]:
        check_json(s, f"{f} (shards)", SHARD_FIELDS)
        if Path(s["file"]).name != s["file"] or not s["file"].endswith(".safetensors"):
            raise UserError(f"{f}: shard file {s['file']!r} must be a .safetensors name inside the cache directory")
        if min(s["rows"], s["contexts"], s["bytes"]) < 0:
            raise UserError(f"{f}: shard {s['file']} has a negative count")
    if m["shards"] and (m.get("d_in") is None or m.get("n_ctx") is None or m["d_in"] < 1 or m["n_ctx"] < 2):
        raise UserError(f"{f}: d_in must be >= 1 and n_ctx >= 2 once the cache holds a shard")
    return m


def harvest(model, hook: str | list[str], stop_at_layer: int | None, contexts: Iterator[torch.Tensor], out: str | Path,
            settings: dict[str, Any], n_contexts: int, contexts_per_shard: int, dtype: str = "float32",
            progress: bool = True, skip_contexts=None) -> dict[str, Any]:
    """Write `n_contexts` contexts' activations into `out` (resuming what a previous run wrote).

    `settings` identifies the harvest (model, hook, dataset, split, seed, n_ctx); `contexts`
    must be the deterministic context stream for them; `skip_contexts(k)` returns that stream
    starting at context k (used when resuming). Two hooks (a transcoder's input and target): each
    row holds both, side by side.
    """
    hooks = [hook] if isinstance(hook, str) else list(hook)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    ident = {**settings, "dtype": dtype, "contexts_per_shard": contexts_per_shard}
    manifest = {"format": FORMAT, "version": 1, **ident, "d_in": None, "shards": [], "complete": False}
    if (out / MANIFEST).exists():
        old = read_manifest(out)
        diff = [k for k in IDENTITY if old.get(k) != ident.get(k)]
        if diff:
            raise UserError(f"--out {out} holds a cache harvested with other settings ({', '.join(diff)} differ); "
                            "choose another --out")
        manifest = old
        manifest["shards"] = _verified_prefix(out, old["shards"])
        manifest["complete"] = False
    done = sum(s["contexts"] for s in manifest["shards"])
    if done >= n_contexts:
        manifest["complete"] = True
        atomic_write_json(out / MANIFEST, manifest)
        return manifest
    if done and skip_contexts is not None:
        contexts = skip_contexts(done)
    st_dtype = DTYPES[dtype]
    bar = tqdm(total=n_contexts, initial=done, disable=not progress, file=sys.stderr, desc="harvest",
               unit="ctx", dynamic_ncols=True)
    device = next(model.parameters()).device
    try:
        while done < n_contexts:
            want = min(contexts_per_shard, n_contexts - done)
            toks, acts = [], []
            have = 0
            while have < want:
                t = next(contexts)[: want - have]
                grabbed: dict[str, torch.Tensor] = {}

                def keep(act, hook):
                    grabbed[hook.name] = act[:, 1:].reshape(-1, act.shape[-1]).to(st_dtype)
                    return act

                with torch.no_grad():
                    model.run_with_hooks(t.to(device), fwd_hooks=[(h, keep) for h in hooks], stop_at_layer=stop_at_layer,
                                         return_type=None)
                toks.append(t.to(torch.int32))
                acts.append(torch.cat([grabbed[h] for h in hooks], 1).cpu())
                have += t.shape[0]
                bar.update(t.shape[0])
            a = torch.cat(acts)
            name = f"shard_{len(manifest['shards']):05d}.safetensors"
            atomic_save_tensors(out / name, {"activations": a, "tokens": torch.cat(toks)})
            manifest["d_in"] = grabbed[hooks[0]].shape[1]
            if len(hooks) > 1:
                manifest["d_out"] = a.shape[1] - manifest["d_in"]
            manifest["shards"].append({"file": name, "contexts": want, "rows": a.shape[0],
                                       "bytes": (out / name).stat().st_size, "sha256": sha256(out / name),
                                       "sum_sq_norm": a.float().pow(2).sum().item()})
            done += want
            manifest["complete"] = done >= n_contexts
            manifest["rows"] = sum(s["rows"] for s in manifest["shards"])
            manifest["contexts"] = done
            atomic_write_json(out / MANIFEST, manifest)
    finally:
        bar.close()
    return manifest


def _verified_prefix(out: Path, shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The recorded shards that are intact, up to the first that is not (it is redone)."""
    good = []
    for s in shards:
        f = out / s["file"]
        if not f.is_file() or f.stat().st_size != s["bytes"] or sha256(f) != s["sha256"]:
            print(f"saeforge: {f.name} is missing or damaged; harvesting again from there", file=sys.stderr)
            break
        good.append(s)
    return good


class CacheSource:
    """Streams a cache's shards into an ActivationBuffer; holds one shard in memory at a time."""

    def __init__(self, path: str | Path, seed: int = 0, rank: int = 0, world: int = 1, device="cpu",
                 position: dict[str, Any] | None = None, shards: list[int] | None = None):
        self.dir = Path(path)
        self.manifest = m = read_manifest(self.dir)
        if not m.get("shards"):
            raise UserError(f"--cache {self.dir}: the cache holds no shard yet")
        if not m.get("complete"):
            print(f"saeforge: warning: --cache {self.dir} is incomplete (its harvest was interrupted); "
                  "using the shards it has", file=sys.stderr)
        for s in m["shards"]:
            f = self.dir / s["file"]
            if not f.is_file():
                raise UserError(f"--cache {self.dir}: shard {s['file']} is missing")
            if f.stat().st_size != s["bytes"]:
                raise UserError(f"--cache {self.dir}: shard {s['file']} is truncated or altered "
                                f"({f.stat().st_size} bytes, manifest says {s['bytes']}); harvest it again")
        # a row's width (a transcoder cache's rows: input and target side by side, `widths` the two)
        self.widths = [int(m["d_in"]), int(m["d_out"])] if m.get("target_hook") else None
        self.d_in = int(m["d_in"]) + int(m.get("d_out") or 0) if m.get("target_hook") else int(m["d_in"])
        pool = list(range(len(m["shards"]))) if shards is None else shards  # `shards`: a subset (e.g. held out)
        self.mine = [i for i in pool if i % world == rank] or pool
        self.seed, self.device = seed, torch.device(device)
        self.rows_per_chunk = max(s["rows"] for s in m["shards"])
        pos = position or {}
        self.epoch, self.cursor, self.offset = pos.get("epoch", 0), pos.get("cursor", 0), pos.get("offset", 0)
        self._order()
        if self.cursor >= len(self.order) or (self.cursor < len(self.order) and self.offset and
                                              self.offset >= self.manifest["shards"][self.order[self.cursor]]["rows"]):
            raise UserError(f"--cache {self.dir}: the checkpoint's position (shard {self.cursor}, row {self.offset}) is "
                            f"past this cache ({len(self.order)} shards here): it changed since the run began; "
                            "resume with the cache it was harvested as, or start a new --out")
        self.current: torch.Tensor | None = None

    def _order(self) -> None:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.order = [self.mine[i] for i in torch.randperm(len(self.mine), generator=g).tolist()]

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor, "offset": self.offset}

    def load_shard(self, i: int) -> dict[str, torch.Tensor]:
        """Read a shard once: its bytes are checked against the manifest's size and sha256, then parsed."""
        s = self.manifest["shards"][i]
        f = self.dir / s["file"]
        raw = f.read_bytes() if f.is_file() else b""
        if len(raw) != s["bytes"] or hashlib.sha256(raw).hexdigest() != s["sha256"]:
            raise UserError(f"--cache {self.dir}: shard {s['file']} is truncated or tampered with "
                            "(its checksum does not match the manifest); harvest it again")
        try:
            t = safetensors.torch.load(raw)
        except (SafetensorError, ValueError, RuntimeError) as e:
            raise UserError(f"--cache {self.dir}: shard {s['file']} is not a readable safetensors file ({e})") from None
        if "activations" not in t or t["activations"].shape != (s["rows"], self.d_in):
            raise UserError(f"--cache {self.dir}: shard {s['file']} does not hold [{s['rows']}, {self.d_in}] activations")
        want = self.manifest.get("dtype") or "float32"
        if str(t["activations"].dtype).removeprefix("torch.") != want:
            raise UserError(f"--cache {self.dir}: shard {s['file']} holds {str(t['activations'].dtype).removeprefix('torch.')} "
                            f"activations, but the manifest says {want}; harvest it again")
        return t

    def fill(self, storage: torch.Tensor, idx: torch.Tensor, origin_N: torch.Tensor | None = None) -> None:
        pos = 0
        while pos < len(idx):
            if self.current is None:
                self.current = self.load_shard(self.order[self.cursor])["activations"].to(self.device)
            take = min(len(self.current) - self.offset, len(idx) - pos)
            storage.index_copy_(0, idx[pos:pos + take], self.current[self.offset:self.offset + take].to(storage.dtype))
            pos += take
            self.offset += take
            if self.offset == len(self.current):
                self.current, self.offset = None, 0
                self.cursor += 1
                if self.cursor == len(self.order):
                    self.cursor, self.epoch = 0, self.epoch + 1
                    self._order()
