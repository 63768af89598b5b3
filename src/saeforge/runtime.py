"""Small runtime helpers every stage uses: the device, the output directory, atomic writes.

An atomic write goes to a temporary file in the same directory, is fsynced and renamed into
place, so an interrupted run never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import distributed
from .errors import UserError

CHECKPOINT = "checkpoint"  # the run directory's resumable state (trainer.py writes it)

_UMASK = os.umask(0)
os.umask(_UMASK)


def pick_device(name: str) -> torch.device:
    name = distributed.device_for(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return dev


def prepare_out_dir(path: str | Path, resume: bool) -> Path:
    """Create --out, refusing to clobber a previous run unless it is being resumed."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if not resume and ((out / "summary.json").exists() or (out / CHECKPOINT).exists()):
        raise UserError(f"--out {out} already holds a run; pass --resume to continue it, or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out {out}: {e.strerror}") from None
    distributed.barrier()  # every rank has checked before any writes
    return out


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(file: Path, fix: str) -> Any:
    """A JSON file's content; unreadable or invalid JSON is a UserError that says `fix`."""
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{file} is not valid JSON ({e}); {fix}") from None


def read_tensors(file: Path, what: str) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a missing or unreadable file is a UserError naming `what`."""
    if not file.is_file():
        raise UserError(f"{file.parent} is missing {file.name} ({what})")
    try:
        with safe_open(str(file), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{file} is not a readable safetensors file ({e}); it is corrupt or truncated") from None
