"""Files that survive a kill at any instant, and checkpoints that are safe to open.

Every file a run writes (checkpoints, config, metrics, results) goes through :func:`atomic_write`:
the bytes go to a temporary file in the same directory, are flushed and fsynced, and the temporary
file is renamed over the old one. A rename within a directory is atomic on POSIX and Windows, so a
reader sees either the old complete file or the new complete file, never a torn one.

Checkpoints hold tensors and plain Python data only, and are read back with
``torch.load(weights_only=True)``, which refuses any pickle that would construct arbitrary objects
(and so never runs a payload hidden in one). Every checkpoint carries a format number; a file from
another format, a truncated file, or one that is not a checkpoint at all is refused with a message
that names it.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
from pathlib import Path

import torch

from .errors import SsvaeError

# Bump when the layout of the checkpoint dictionary changes incompatibly.
CHECKPOINT_FORMAT = 1


def _file_mode() -> int:
    """The mode open() would give a new file: mkstemp's private 0600 is not what users expect."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` so that a kill at any moment leaves the old or the new file whole."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened, as on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


def atomic_write_json(path: Path, payload) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` (tensors, numbers, strings, lists and dicts of them) atomically, with its format."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    atomic_write(path, buffer.getvalue())


def load_checkpoint(path: Path, map_location=None) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; anything else is refused with a reason."""
    path = Path(path)
    if not path.is_file():
        raise SsvaeError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only refuses any global it does not know: a crafted or foreign pickle.
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SsvaeError(
            f"{path}: refused, it is not a plain-tensor checkpoint and would need arbitrary code to "
            f"unpickle ({first_line}); only open checkpoints written by ssvae"
        ) from None
    except Exception as error:  # truncated zip, not a torch file at all, unreadable
        raise SsvaeError(f"{path}: cannot be read as a checkpoint, it is truncated or not one ({error})") from None
    if not isinstance(state, dict) or "format" not in state:
        raise SsvaeError(f"{path}: not an ssvae checkpoint (no format number)")
    if state["format"] != CHECKPOINT_FORMAT:
        raise SsvaeError(
            f"{path}: checkpoint format {state['format']}, but this ssvae reads format {CHECKPOINT_FORMAT}; "
            f"open it with the ssvae version that wrote it"
        )
    return state
