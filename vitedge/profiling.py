"""Profile a model's parts on a device into a :class:`~vitedge.tables.latency.LatencyTable` (SPViT §3.4).

The parts are exported once with a dynamic token axis; the device's runner times each part at every
token count n (shuffled order, reference point re-measured for drift, raw samples kept).
"""
from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path

from tqdm.auto import tqdm

from .devices import Device
from .exporters.graphs import FIXED_PARTS, PARTS, export_parts
from .models.adapter import PrunableViT
from .tables.latency import LatencyTable


class ProfileError(RuntimeError):
    """A part could not be measured on the device."""


def model_shape(model: PrunableViT) -> dict:
    """The shape facts a latency table is valid for, plus an architecture hash (weights excluded)."""
    arch = hashlib.sha256(repr(model.vit).encode()).hexdigest()[:16]
    return {"dim": model.dim, "num_heads": model.num_heads, "mlp_ratio": round(model.mlp_ratio, 4),
            "depth": model.depth, "num_tokens": model.num_tokens, "num_prefix": model.num_prefix,
            "input_size": list(model.input_size), "arch_hash": arch}


def build_plan(model: PrunableViT, parts: dict, *, tokens: list[int] | None = None) -> dict:
    """Runner plan: every part at every n (selector from n = p, it needs patch tokens), fixed parts once."""
    N, C, p = model.num_tokens, model.dim, model.num_prefix
    ns = tokens or list(range(1, N + 1))
    points = []
    for part in PARTS:
        for n in ns:
            if part == "selector" and n < p:
                continue
            inputs = {"tokens": {"shape": [1, n, C], "dtype": "float32"}}
            if part == "selector":
                inputs["scores"] = {"shape": [1, n - p], "dtype": "float32"}
            points.append({"name": f"{part}@{n}", "model": str(parts[part].path), "inputs": inputs,
                           "tags": {"part": part, "tokens": n}})
    c, h, w = model.input_size
    points.append({"name": "embed", "model": str(parts["embed"].path),
                   "inputs": {"image": {"shape": [1, c, h, w], "dtype": "float32"}}, "tags": {"part": "embed"}})
    for name in ("head", "run_overhead"):
        points.append({"name": name, "model": str(parts[name].path),
                       "inputs": {"tokens": {"shape": [1, N, C], "dtype": "float32"}}, "tags": {"part": name}})
    return {"points": points, "reference": f"attention@{N}"}


def profile(model: PrunableViT, device: Device, *, model_name: str = "", progress: bool = True,
            workdir: str | Path | None = None) -> LatencyTable:
    """Measure the latency table of ``model`` on ``device``.

    Returns:
        A table with, for n = 1..N, median/p90/raw samples (ms) of the attention, selector and MLP
        parts, and the fixed parts (embed, head, run overhead).

    Raises:
        ProfileError: a part failed on the device (the runner's error is named).
        DeviceError / RuntimeMissingError: from the device.
    """
    with tempfile.TemporaryDirectory(prefix="vitedge-parts-") as tmp:
        folder = Path(workdir) if workdir else Path(tmp)
        parts = export_parts(model, folder, selector_threshold=-1e30)
        plan = build_plan(model, parts)
        bar = tqdm(total=len(plan["points"]), desc=f"profile ({device.name}, {device.runtime})", unit="pt",
                   disable=not progress, leave=False)
        t0 = time.time()
        result = device.run_plan(plan, on_point=lambda row: bar.update(1))
        bar.close()
    failed = [r for r in result["points"] if r["error_code"] != 0]
    if failed:
        raise ProfileError(f"{len(failed)} of {len(result['points'])} parts failed on {device.name}, e.g. "
                           f"{failed[0]['name']}: {failed[0]['error']}")
    N, p = model.num_tokens, model.num_prefix
    rows = {(r["tags"]["part"], r["tags"].get("tokens")): r for r in result["points"]}
    parts_out = {}
    for part in PARTS:
        first = p if part == "selector" else 1
        seq = [rows[(part, max(n, first))] for n in range(1, N + 1)]  # selector below p: copy of n = p (unused)
        parts_out[part] = {"median_ms": [r["median_ms"] for r in seq], "p90_ms": [r["p90_ms"] for r in seq],
                           "samples_ms": [r["samples_ms"] for r in seq]}
    fixed = {name: {k: rows[(name, None)][k] for k in ("median_ms", "p90_ms", "samples_ms")} for name in FIXED_PARTS}
    env = result["environment"]
    return LatencyTable(
        model={"name": model_name, **model_shape(model)},
        device={"name": device.name, "runtime": device.runtime, "runtime_version": env.get("runtime_version"),
                "threads": device.threads, "environment": env},
        parts=parts_out, fixed=fixed, protocol=result["config"], drift=result["drift"],
        meta={"profile_seconds": round(time.time() - t0, 2), "points": len(plan["points"]),
              "reference": result["reference"], "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
