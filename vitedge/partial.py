"""Resumable profiles: every measured point is appended to a partial file as soon as the device
reports it, so an interrupted profile (link lost, Ctrl-C, the client killed) resumes where it
stopped and nothing measured is lost.

File ``OUT.partial.jsonl`` (next to the table being written): line 1 is a header
``{"vitedge_partial": 1, "fingerprint": ..., "points": N, "device": ..., "created": ...}``; then one
``{"row": ROW}`` line per measured point (ROW as in the runner's result), in measurement order.
Each line is written with one ``os.write`` on an ``O_APPEND`` descriptor and ``fsync``ed before the
next point is accepted; a torn last line (the process killed mid-write) is dropped on reading, so
that point is simply measured again.  Rows with an error are not kept (they are re-measured).
The fingerprint covers the model's shape, the device, runtime, threads, the protocol and the
points: a partial file of another profile is refused, never mixed in.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from .io import atomic_write_bytes, fsync_dir

FORMAT_KEY = "vitedge_partial"


class PartialProfileError(ValueError):
    """A partial profile file is in the way, or belongs to another profile (one line, names the fix)."""


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def partial_path(output) -> Path:
    """Where the partial file of ``output`` lives: ``OUT.partial.jsonl`` next to it."""
    output = Path(output)
    return output.with_name(output.name + ".partial.jsonl")


def refuse_existing(path) -> None:
    """Raise PartialProfileError if an interrupted profile left ``path`` (checked before any work)."""
    path = Path(path)
    if path.exists():
        count = max(0, len(path.read_bytes().splitlines()) - 1)
        raise PartialProfileError(f"{path} holds {count} points of an interrupted profile: pass --resume to "
                                  "continue it, or delete the file to start over")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class PartialProfile:
    """The rows of one profile saved so far (``rows``: name -> row) and the open file to append to."""

    def __init__(self, path: Path, header: dict, rows: dict, fd: int):
        self.path, self.header, self.rows, self._fd = path, header, rows, fd
        self.resumed = len(rows)

    @classmethod
    def open(cls, path, header: dict, *, resume: bool) -> "PartialProfile":
        """Open (resume) or create the partial file at ``path``.

        ``header`` must hold "fingerprint".  Raises PartialProfileError if a file exists and
        ``resume`` is False, or if it belongs to another profile.
        """
        path = Path(path)
        rows: dict = {}
        if path.exists():
            lines = path.read_bytes().split(b"\n")
            torn = lines[-1] != b""  # the last write did not complete
            try:
                old = json.loads(lines[0])
                assert isinstance(old, dict) and old.get(FORMAT_KEY) == 1
            except (ValueError, AssertionError):
                raise PartialProfileError(f"{path} is not a vitedge partial profile: move it away") from None
            count = sum(1 for ln in lines[1:] if ln.strip())
            if not resume:
                raise PartialProfileError(f"{path} holds {count} points of an interrupted profile: pass --resume to "
                                          "continue it, or delete the file to start over")
            if old.get("fingerprint") != header["fingerprint"]:
                raise PartialProfileError(f"{path} is from another profile (other model, device, runtime, threads or "
                                          "protocol): delete it, or resume with the same settings")
            good = [lines[0]]
            for ln in lines[1:-1] if torn else lines[1:]:
                try:
                    row = json.loads(ln)["row"] if ln.strip() else None
                except (ValueError, KeyError, TypeError):
                    row = None
                if row is not None and row.get("error_code") == 0:
                    rows.setdefault(row["name"], row)
                    good.append(ln)
            if torn or len(good) != len([ln for ln in lines if ln.strip()]):  # rewrite without the junk
                atomic_write_bytes(path, b"\n".join(good) + b"\n")
            header = old
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            header = {FORMAT_KEY: 1, **header, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
            _write_all(fd, (json.dumps(header) + "\n").encode())
            os.fsync(fd)
            fsync_dir(path.parent)
        return cls(path, header, rows, fd)

    def append(self, row: dict) -> bool:
        """Save one measured point (durably) unless it failed or is already saved; True if saved."""
        if row.get("error_code") != 0 or row["name"] in self.rows:
            return False
        _write_all(self._fd, (json.dumps({"row": row}, allow_nan=False) + "\n").encode())
        os.fsync(self._fd)
        self.rows[row["name"]] = row
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        """Delete the file (call once the finished table is saved)."""
        self.close()
        self.path.unlink(missing_ok=True)
