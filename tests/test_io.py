"""vitedge.io: the one atomic-write helper (no partial file when the writer raises; replaced atomically)."""
import json
import os
from pathlib import Path

import pytest

from vitedge import io as vio


def test_atomic_write_text_bytes_json(tmp_path):
    vio.atomic_write_text(tmp_path / "a.txt", "héllo")
    vio.atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    vio.atomic_write_json(tmp_path / "c.json", {"x": [1, 2]}, indent=1)
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": [1, 2]}
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.bin", "c.json"]  # no temp file left


def test_writer_that_raises_leaves_nothing(tmp_path):
    target = tmp_path / "model.onnx"
    with pytest.raises(RuntimeError, match="disk on fire"):
        with vio.atomic_path(target) as tmp:
            tmp.write_bytes(b"half a model")
            raise RuntimeError("disk on fire")
    assert os.listdir(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):  # interrupted: cleaned up too
        with vio.atomic_path(target) as tmp:
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
    with pytest.raises(TypeError):  # not serialisable: nothing is written
        vio.atomic_write_json(target, {"x": object()})
    assert os.listdir(tmp_path) == []


def test_existing_file_survives_a_failed_write_and_is_replaced_whole(tmp_path, monkeypatch):
    target = tmp_path / "table.json"
    vio.atomic_write_text(target, "old")
    with pytest.raises(ValueError):
        with vio.atomic_path(target) as tmp:
            tmp.write_text("new, but not finished")
            raise ValueError("writer failed")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["table.json"]

    seen = []
    real_replace = os.replace

    def replace(src, dst):  # at the moment of the swap: the temp file is complete, fsynced, in the same folder
        seen.append((os.path.dirname(os.fspath(src)), Path(src).read_text(), Path(dst).read_text()))
        real_replace(src, dst)

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", replace)
    vio.atomic_write_text(target, "new")
    assert seen == [(str(tmp_path), "new", "old")]
    assert len(synced) >= 1
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["table.json"]


def test_atomic_path_keeps_the_suffix_and_needs_the_folder(tmp_path):
    with vio.atomic_path(tmp_path / "plot.png") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".plot.png.") and tmp.suffix == ".png"
        assert tmp.exists()  # created (empty) for writers that take a name
        tmp.write_bytes(b"png")
    assert (tmp_path / "plot.png").read_bytes() == b"png"
    with pytest.raises(FileNotFoundError):
        vio.atomic_write_text(tmp_path / "missing" / "x.json", "{}")
    assert os.listdir(tmp_path) == ["plot.png"]
