"""Artifact cache: calibrations keyed by weights + images + M + importance; latency tables keyed by
architecture + device + runtime + runtime version + threads. Directory: ``$VITEDGE_CACHE`` or
``~/.cache/vitedge``."""
from __future__ import annotations

import os
import re
from pathlib import Path

from .token_score import LEGACY


def cache_dir(override: str | Path | None = None) -> Path:
    d = Path(override or os.environ.get("VITEDGE_CACHE") or Path.home() / ".cache" / "vitedge")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _safe(s) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s))


def calibration_path(root: Path, *, model_hash: str, image_set_hash: str, num_candidates: int, importance: str,
                     token_score: str = LEGACY) -> Path:
    """``token_score`` other than the legacy one adds a tag (files cached before it scored by CLS attention)."""
    tag = "" if token_score == LEGACY else f"-{_safe(token_score)}"
    return root / f"calib-{model_hash}-{image_set_hash}-M{num_candidates}-{_safe(importance)}{tag}.npz"


def table_path(root: Path, *, arch_hash: str, device: str, runtime: str, runtime_version: str, threads: int,
               protocol: str = "") -> Path:
    """``protocol``: a short tag of the measurement settings (a quick table never stands in for a full one)."""
    tag = f"-{_safe(protocol)}" if protocol else ""
    return root / f"table-{arch_hash}-{_safe(device)}-{_safe(runtime)}-{_safe(runtime_version)}-t{threads}{tag}.json"
