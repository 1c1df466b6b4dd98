"""The one atomic-write helper: a file is either the old one or the complete new one, never a part.

Every write goes to a hidden temp file in the destination's folder (same filesystem, so the final
``os.replace`` is atomic), is flushed and ``fsync``-ed, then replaces the destination; the folder is
``fsync``-ed so the rename survives a power cut. On any error (exceptions, KeyboardInterrupt) the temp
file is removed and the destination is untouched. The destination's folder must exist (callers that
create it do so themselves). The temp file is created with mode 0666 minus the umask, like ``open``.

The on-device runner (``devices/runner.py``) keeps its own copy: it ships alone (stdlib + numpy).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Iterator


def fsync_dir(folder) -> None:
    """``fsync`` a folder so that a rename or a new entry in it is durable (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temp path next to ``path`` for writers that want a file name (``onnx.save``,
    ``savefig``, a converter); on a normal exit it is fsynced and ``os.replace``-d over ``path``.

    The temp name keeps ``path``'s suffix (``.<name>.<pid>.<random>.tmp<suffix>``: writers such as
    matplotlib choose the format by it). The temp file exists (empty) when the block starts.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path, text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see the module docstring)."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path, obj, **dumps) -> None:
    """``json.dumps(obj, **dumps)`` written to ``path`` atomically; nothing is written if ``obj`` does not
    serialise."""
    atomic_write_text(path, json.dumps(obj, **dumps))
