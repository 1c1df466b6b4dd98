"""Model footprint on the device, host side: load time, first inference, memory and file size.

The on-device runner measures, per model file, what TFLite's ``benchmark_model`` reports next to the
steady-state latency (:mod:`vitedge.devices.runner`, section "footprint"): ``file_bytes``, ``load_ms``
(session creation), ``first_inference_ms`` (one run before any warm-up), ``peak_rss_mib`` (the peak
resident memory of the process that ran it, reset before the model where Linux allows),
``rss_before_mib`` and ``model_rss_mib`` (peak - before: what this model added), ``memory_source``
(what was read: "VmHWM", "ru_maxrss", the tool's name, or None when unavailable).

This module summarises those dicts for latency tables, ``report.json`` and ``vitedge bench``, and
holds the bench's memory check.  No torch, no click.
"""
from __future__ import annotations

import statistics

KEYS = ("file_bytes", "load_ms", "first_inference_ms", "peak_rss_mib", "model_rss_mib", "rss_before_mib")
MEMORY_SLACK_MIB = 1.0   # memory checks ignore growth below this (page and allocator granularity)


def _values(fps: list, key: str) -> list:
    return [float(fp[key]) for fp in fps if isinstance(fp, dict) and isinstance(fp.get(key), (int, float))]


def combine(fps: list) -> dict | None:
    """One footprint from several measurements of the same model (e.g. bench rounds): the median
    load and first-inference times (ms), the largest peak and model memory (MiB), the file size
    (bytes); ``measurements`` counts them.  None when ``fps`` holds none."""
    fps = [fp for fp in fps if isinstance(fp, dict)]
    if not fps:
        return None
    out: dict = {"measurements": len(fps)}
    for key in KEYS:
        vals = _values(fps, key)
        if key in ("load_ms", "first_inference_ms"):
            out[key] = statistics.median(vals) if vals else None
        elif key == "rss_before_mib":
            out[key] = min(vals) if vals else None
        else:
            out[key] = max(vals) if vals else None
    out["memory_source"] = next((fp.get("memory_source") for fp in fps if fp.get("memory_source")), None)
    scope = next((fp.get("memory_scope") for fp in fps if fp.get("memory_scope")), None)
    if scope:
        out["memory_scope"] = scope
    if out["peak_rss_mib"] is None:
        out["memory_note"] = "peak memory not reported on this device (no /proc/self/status, no getrusage)"
    elif out["model_rss_mib"] is None:
        out["memory_note"] = "the peak could not be reset per model: it includes what the process held before"
    return out


def table_footprint(result: dict) -> dict:
    """Per part of a profile (the runner result's rows tagged with ``part``): the part files' footprint
    (:func:`combine` over its files), ``peak_rss_mib``, the largest peak of the run (MiB), and
    ``memory_scope``: whose memory that is (the runner process; the host process for ``local``)."""
    models = result.get("models") or {}
    by_part: dict = {}
    for row in result.get("points") or []:
        part = (row.get("tags") or {}).get("part")
        fp = models.get(row.get("model"))
        if part and fp is not None:
            by_part.setdefault(part, {})[row["model"]] = fp
    parts = {part: combine(list(files.values())) for part, files in by_part.items()}
    peaks = _values(list(models.values()), "peak_rss_mib")
    return {"parts": parts, "peak_rss_mib": max(peaks) if peaks else None,
            "memory_scope": result.get("memory_scope", "the runner process"),
            "memory_source": next((fp.get("memory_source") for fp in models.values() if fp.get("memory_source")), None)}


def describe(fp: dict | None) -> str:
    """One line for logs and reports, e.g. "load 12.3 ms, first inference 4.1 ms, peak RSS 88.0 MiB (model
    +21.5 MiB), file 1.2 MiB"; names what is missing."""
    if not fp:
        return "footprint not reported"
    parts = []
    if fp.get("load_ms") is not None:
        parts.append(f"load {fp['load_ms']:.1f} ms")
    if fp.get("first_inference_ms") is not None:
        parts.append(f"first inference {fp['first_inference_ms']:.2f} ms")
    if fp.get("peak_rss_mib") is not None:
        own = f" (model +{fp['model_rss_mib']:.1f} MiB)" if fp.get("model_rss_mib") is not None else ""
        parts.append(f"peak RSS {fp['peak_rss_mib']:.1f} MiB{own}")
    else:
        parts.append("peak RSS not reported")
    if fp.get("file_bytes") is not None:
        parts.append(f"file {fp['file_bytes'] / 2 ** 20:.2f} MiB")
    return ", ".join(parts)


def memory_check(new: dict | None, base: dict | None, max_regression: float, *, against: str) -> dict:
    """The bench's memory check: ``model_rss_mib`` (what loading and running the model added to its
    process, MiB) of ``new`` against ``base`` (the other model, or the baseline file's).

    FAIL when new > base x (1 + ``max_regression``) and by more than MEMORY_SLACK_MIB; PASS otherwise;
    "skipped" (not gating) when either side has no such number (a device without /proc, a baseline saved
    before footprints were recorded).  Memory is not sampled noise: no confidence interval.
    """
    key = "model_rss_mib"
    a = (new or {}).get(key)
    b = (base or {}).get(key)
    values = {"metric": key, "new_mib": a, "base_mib": b, "max_regression": max_regression,
              "slack_mib": MEMORY_SLACK_MIB, "against": against}
    if a is None or b is None:
        missing = "the new model" if a is None else against
        return {"name": "memory", "status": "skipped", "values": values,
                "message": f"memory not compared: {missing} has no per-model memory ({key}) on this device"}
    limit = b * (1.0 + max_regression)
    values.update(ratio=a / b if b > 0 else None, limit_mib=limit)
    if a > limit and a - b > MEMORY_SLACK_MIB:
        return {"name": "memory", "status": "fail", "values": values,
                "message": f"memory regression: the model adds {a:.1f} MiB against {b:.1f} MiB ({against}), more than "
                           f"{100 * max_regression:g} % (limit {limit:.1f} MiB)"}
    return {"name": "memory", "status": "pass", "values": values,
            "message": f"memory: the model adds {a:.1f} MiB against {b:.1f} MiB ({against}), within "
                       f"{100 * max_regression:g} %"}


def describe_table(tf: dict | None) -> str:
    """One line for a latency table's footprint (:func:`table_footprint`): the run's peak RSS and the
    attention part's load and first-inference times."""
    if not tf:
        return "footprint not recorded"
    att = (tf.get("parts") or {}).get("attention") or {}
    peak = tf.get("peak_rss_mib")
    mem = f"peak RSS {peak:.1f} MiB ({tf.get('memory_source')})" if peak is not None else "peak RSS not reported"
    load = f", attention part: {describe(att)}" if att else ""
    return mem + load


def export_footprint_lines(report: dict) -> str:
    """The export summary's lines on the budget's quantile and images and the model's footprint."""
    q = report.get("budget_quantile", 0.5)
    images = report.get("images") or {}
    what = "median" if q == 0.5 else f"p{100 * q:g}"
    lines = [f"budget at {what} of the per-image latency on {images.get('measured_on')} images of "
             f"{images.get('measure_data')}: {report.get('measured_at_quantile_ms', 0.0):.3f} ms"]
    fp = report.get("footprint") or {}
    lines.append(f"footprint {describe(fp.get('model'))}")
    return "\n".join(lines)
