"""Small runtime helpers every stage uses: the device, the output directory, atomic writes.

An atomic write goes to a temporary file in the same directory, is fsynced and renamed into
place, so an interrupted run never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from saeforge import distributed
from saeforge import threads as cpu_threads
from saeforge.errors import UserError

CHECKPOINT = "checkpoint"  # the run directory's resumable state (trainer.py writes it)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the process. By default it returns large freed blocks to
    the kernel (munmap, heap trimming) and page-faults fresh ones in at the next allocation; a
    training loop allocates the same large tensors every step, so that churn was system time:
    56% of user time on a 400k-token L1 run of saeforge 0.1's code, 11% of today's
    (docs/performance.md). Linux with glibc only; elsewhere (or if it fails) nothing changes."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-4, 0) and libc.mallopt(-1, 2**31 - 1))  # M_MMAP_MAX 0, M_TRIM_THRESHOLD max
    except (OSError, AttributeError):
        return False

_UMASK = os.umask(0)
os.umask(_UMASK)


class DeviceClock:
    """The GPU time of the training steps, by CUDA events: a pair is recorded around each step (no
    host sync) and the pairs are summed when the host waits anyway (`seconds`, called at logging),
    so the time breakdown is not the launch time of asynchronous kernels. On CPU the host clock
    already measures the work: `seconds` stays None."""

    def __init__(self, device: torch.device):
        self.on = device.type == "cuda"
        self.pending: list[tuple[Any, Any]] = []
        self.total = 0.0

    def start(self) -> Any:
        if self.on:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return None

    def stop(self, begun: Any) -> None:
        if self.on:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.pending.append((begun, event))

    def seconds(self) -> float | None:
        if not self.on:
            return None
        if self.pending:
            self.pending[-1][1].synchronize()
            self.total += sum(a.elapsed_time(b) for a, b in self.pending) / 1000.0
            self.pending.clear()
        return self.total


def pick_device(name: str, threads: int = 0) -> torch.device:
    """The device a command runs on; `threads` (its --threads) fixes the CPU thread count, 0 leaves it to
    threads.py, which follows the machine's load."""
    cpu_threads.governor.fix(threads or None)
    name = distributed.device_for(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return dev


def check_out_dir(path: str | Path, what: str = "--out", outputs: tuple[str, ...] = ()) -> Path:
    """Refuse, before any work, an output directory that could not be written; creates nothing."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"{what} {out} exists and is not a directory")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{what} {out}: {parent} is a file, so the directory cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {out}: cannot write into {parent} (permission denied)")
    for name in outputs:
        if (out / name).is_dir():
            raise UserError(f"{what} {out}: {name} is a directory where saeforge writes a file; move it away")
    return out


RUN_FILES = ("summary.json", "metrics.jsonl", "cfg.json", "sae_weights.safetensors", "sparsity.safetensors")


def check_run_dir(path: str | Path, resume: bool) -> Path:
    """A training run's --out: writable, and holding nothing that the run would overwrite unless
    it is the run being resumed."""
    out = check_out_dir(path, outputs=RUN_FILES)
    has_run = (out / "summary.json").exists() or (out / CHECKPOINT).exists()
    if not resume and has_run:
        raise UserError(f"--out {out} already holds a run; pass --resume to continue it, or choose another --out")
    if not (out / CHECKPOINT).exists() and ((out / "cfg.json").exists() or (out / "sae_weights.safetensors").exists()):
        raise UserError(f"--out {out} holds a saved dictionary and no checkpoint to resume; training would overwrite "
                        "it: choose another --out")
    return out


def make_out_dir(out: Path, what: str = "--out") -> Path:
    """Create the output directory (rank 0; every rank waits) and make sure a file can be written in it."""
    if distributed.is_main():
        try:
            out.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=out, prefix=".saeforge-probe.")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise UserError(f"cannot write into {what} {out}: {e.strerror}") from None
    distributed.barrier()
    return out


LOCK = ".saeforge.lock"
_held: dict[Path, int] = {}  # run directories this process writes: the open lock file of each


def lock_run_dir(out: Path) -> None:
    """Hold an exclusive lock on `out` (flock on out/.saeforge.lock, rank 0) while this process
    writes the run: a second saeforge run into the same directory is refused in one line. The
    lock goes with the process however it ends (a kill included), or with `release_run_dirs`."""
    out = out.resolve()
    if not distributed.is_main() or out in _held:
        return
    try:
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    except OSError as e:
        raise UserError(f"cannot write into --out {out}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"--out {out} is being written by another saeforge run right now; wait for it to end "
                        "(then --resume it), or choose another --out") from None
    _held[out] = fd


def release_run_dirs() -> None:
    """Let go of every run directory this process locked (the end of a command or API call)."""
    while _held:
        _, fd = _held.popitem()
        os.close(fd)


def _cannot_write(path: Path, e: BaseException) -> UserError:
    """A failed write (full disk, file-size limit, permissions, a vanished directory) as one line."""
    why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:160]
    return UserError(f"cannot write {path}: {why}; what was there before is intact (free space, or write elsewhere)")


@contextlib.contextmanager
def _replacing(path: Path):
    """Yield a temporary path beside `path`; once the block has written it, it replaces `path` by
    rename (never half-written). A failed write is one line, and `path` keeps what it held."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _cannot_write(path, e) from None
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except (OSError, SafetensorError) as e:  # safetensors reports a full disk as its own error
        Path(tmp).unlink(missing_ok=True)
        raise _cannot_write(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with _replacing(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """A safetensors file, written tensor by tensor from the tensors' own memory: safetensors' `save_file`
    first copies every tensor into Python bytes, which doubled the peak memory of a 1M-latent run's
    checkpoint (3.2 GB of weights and Adam state). The format: an 8-byte little-endian header length,
    the JSON header (padded with spaces to a multiple of 8), the tensors' bytes in header order."""
    if any(v.dtype not in _DTYPES for v in tensors.values()):
        with _replacing(path) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        return
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for k, v in tensors.items():
        n = v.numel() * v.element_size()
        header[k] = {"dtype": _DTYPES[v.dtype], "shape": list(v.shape), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with _replacing(path) as tmp, open(tmp, "wb") as fh:
        fh.write(len(head).to_bytes(8, "little"))
        fh.write(head)
        for v in tensors.values():
            t = v.detach().cpu().contiguous().reshape(-1)
            if t.numel():
                fh.write(memoryview(t.view(torch.uint8).numpy()))
        fh.flush()
        os.fsync(fh.fileno())


def read_json(file: Path, fix: str) -> Any:
    """A JSON file's content; unreadable or invalid JSON is a UserError that says `fix`."""
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{file} is not valid JSON ({e}); {fix}") from None
    except OSError as e:
        raise UserError(f"cannot read {file}: {e.strerror}") from None


_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object",
          list: "a list"}


def _is(v: Any, t: type) -> bool:
    if t is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return isinstance(v, t) and not (t is int and isinstance(v, bool))


def check_json(obj: Any, where: str, spec: dict[str, tuple[Any, bool]]) -> Any:
    """Check a JSON object read from a file against {field: (type or tuple of types, required)};
    a wrong or missing field is a UserError naming the file, the field and what was expected.
    Fields not in `spec` are left alone; None counts as missing."""
    if not isinstance(obj, dict):
        raise UserError(f"{where} must hold a JSON object, got {type(obj).__name__}")
    for key, (types, required) in spec.items():
        types = types if isinstance(types, tuple) else (types,)
        expected = " or ".join(_WORDS[t] for t in types)
        if obj.get(key) is None:
            if required:
                raise UserError(f"{where}: the field {key!r} is missing (expected {expected})")
            continue
        if not any(_is(obj[key], t) for t in types):
            raise UserError(f"{where}: the field {key!r} must be {expected}, got {json.dumps(obj[key])[:60]}")
    return obj


def read_tensor_metadata(file: Path) -> dict[str, str]:
    """The string metadata of a safetensors file's header ({} when it has none or cannot be read)."""
    try:
        with safe_open(str(file), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return {}


def read_tensors(file: Path, what: str) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a missing or unreadable file is a UserError naming `what`."""
    if not file.is_file():
        raise UserError(f"{file.parent} is missing {file.name} ({what})")
    try:
        with safe_open(str(file), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{file} is not a readable safetensors file ({e}); it is corrupt or truncated") from None
