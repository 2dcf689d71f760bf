"""Artifact I/O: every write goes to a temporary file in the same folder and is renamed into place,
so a killed run leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from fitm.errors import FitmError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds. A write the file
    system refuses (a full disk, a read-only or unwritable folder) is one FitmError naming the file, and the
    previous file, if any, is left as it was."""
    path = Path(path)
    tmp = None
    try:
        if path.is_dir():
            raise FitmError(f"{path}: is a folder (expected the path of a file to write)")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; artifacts are ordinary files
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise FitmError(write_failure(path, e)) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_failure(path: Path, e: OSError) -> str:
    """One line for a write the file system refused."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT) or (e.errno is None and _nearly_full(path.parent)):
        return f"{path}: no space left on the device to write it (the previous file, if any, is kept); free some " \
               "space and run the same command again"
    return f"{path}: cannot be written ({e.strerror or e})"


def _nearly_full(folder: Path) -> bool:
    """Whether a write that failed without an errno (numpy's tofile says only "N requested and M written",
    torch's writer "unexpected pos") failed for want of room: less than 16 MiB left."""
    try:
        return shutil.disk_usage(folder).free < 16 * 2**20
    except OSError:
        return False


def save_json(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def load_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def save_npy(array: np.ndarray, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError:  # torch's writer says only "unexpected pos ..." or "file write failed"
            if _nearly_full(tmp.parent):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
            raise


def save_csv(rows: list[dict], path: str | os.PathLike) -> None:
    """Every column any row has, in the order first seen; a row without one leaves its cell empty."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
            writer.writeheader()
            writer.writerows(rows)


def save_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts and numpy arrays: what a stage's outputs were made from."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(str((part.shape, part.dtype.str)).encode())
            h.update(np.ascontiguousarray(part).data)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]

