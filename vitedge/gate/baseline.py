"""Baselines of the latency gate: the file format, atomic writes, reading and checking that a
baseline was measured with the same settings.

Part of :mod:`vitedge.gate` (the public names are importable from there).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ..io import atomic_write_text
from .inputs import ImageFeeds
from .settings import BenchError

BASELINE_FORMAT = "vitedge-bench-baseline"
BASELINE_VERSION = 1


def _atomic_write(path: str | Path, text: str) -> None:
    path = Path(path)
    d = path.resolve().parent
    if not d.is_dir():
        raise BenchError(f"cannot write {path}: folder {d} does not exist")
    atomic_write_text(path, text)


def write_json(path: str | Path, obj) -> None:
    _atomic_write(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def make_baseline(result: dict) -> dict:
    """The baseline JSON of a bench result: identity of what was measured + raw samples."""
    new = result["new"]
    return {"format": BASELINE_FORMAT, "version": BASELINE_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": {k: new["model"][k] for k in ("path", "sha256", "input")},
            "device": result["device"], "images": result["images"], "protocol": result["protocol"],
            "summary": {k: v for k, v in new["stats"].items() if k != "round_medians_ms"},
            "samples_ms": new["samples_ms"], "environment": result["environment"],
            "footprint": new.get("footprint")}  # load time, first inference, memory (optional: older files lack it)


def load_baseline(path: str | Path) -> dict:
    """Read and validate a baseline file. Raises BenchError (missing, corrupt, wrong format/version)."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"baseline file {path} does not exist: create it with --save-baseline {path}")
    try:
        b = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BenchError(f"baseline {path} is corrupt (not valid JSON: {type(e).__name__}): re-create it with --save-baseline") from None
    if not isinstance(b, dict) or b.get("format") != BASELINE_FORMAT:
        raise BenchError(f"{path} is not a vitedge bench baseline (format tag {BASELINE_FORMAT!r} missing): "
                         "re-create it with --save-baseline")
    if b.get("version") != BASELINE_VERSION:
        raise BenchError(f"baseline {path} has version {b.get('version')!r}, this vitedge reads version "
                         f"{BASELINE_VERSION}: re-create it with --save-baseline")
    try:
        rounds = [[float(x) for x in r] for r in b["samples_ms"]]
        ok = len(rounds) >= 2 and all(r and all(math.isfinite(x) and x > 0 for x in r) for r in rounds)
        dev = b["device"]
        ok = ok and all(k in dev for k in ("name", "runtime", "threads")) and isinstance(b["model"]["input"]["shape"], list)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise BenchError(f"baseline {path} is corrupt (samples, device or model input missing or invalid): "
                         "re-create it with --save-baseline")
    b["samples_ms"] = rounds
    return b


def check_baseline(b: dict, *, device: dict, spec: dict, images: ImageFeeds, environment: dict, force: bool,
                   source: str) -> list[str]:
    """Refuse (BenchError) a baseline measured elsewhere; return notes for harmless differences.

    Input shape: always refused. Device name, runtime, threads, CPU model, images: refused unless
    ``force``. Runtime version, model file: notes (a new runtime or model is what a gate checks).
    """
    notes = []
    if list(b["model"]["input"]["shape"]) != list(spec["shape"]):
        raise BenchError(f"baseline {source} was measured with input shape {b['model']['input']['shape']}, "
                         f"this model takes {spec['shape']}: it measures another model; save a new baseline")
    bd = b["device"]
    diffs = [f"{k} {bd.get(k)!r} vs {device[k]!r}" for k in ("name", "runtime", "threads") if bd.get(k) != device[k]]
    cpu_b, cpu_n = (b.get("environment") or {}).get("cpu_model"), (environment or {}).get("cpu_model")
    if cpu_b and cpu_n and cpu_b != cpu_n:
        diffs.append(f"cpu {cpu_b!r} vs {cpu_n!r}")
    if (b.get("images") or {}).get("hash") != images.hash:
        diffs.append(f"images {(b.get('images') or {}).get('source')!r} vs {images.source!r}")
    if diffs:
        what = "; ".join(diffs)
        if not force:
            raise BenchError(f"baseline {source} was measured elsewhere ({what}): refusing to compare; "
                             "measure a baseline with the same settings, or pass --force")
        notes.append(f"--force: comparing across {what}")
    if bd.get("runtime_version") != device.get("runtime_version"):
        notes.append(f"runtime version changed: {bd.get('runtime_version')} (baseline) -> {device.get('runtime_version')}")
    return notes
