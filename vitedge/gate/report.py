"""Reports of the latency gate: text, JSON and JUnit XML.

Part of :mod:`vitedge.gate` (the public names are importable from there).
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from xml.etree import ElementTree as ET

from ..footprint import describe
from .baseline import _atomic_write
from .settings import BenchError


def format_text(r: dict) -> str:
    """Human-readable report (what the CLI prints without --json)."""
    d = r["device"]
    th = f"{d['threads']} thread{'s' if d['threads'] != 1 else ''}"
    lines = [f"device   {d['name']} ({d['runtime']} {d['runtime_version']}, {th}); images {r['images']['source']} "
             f"x{r['images']['count']}"]

    def side(label, st, path):
        return (f"{label:<8} {st['median_ms']:.4f} ms median  p90 {st['p90_ms']:.4f}  MAD {st['mad_ms']:.4f}  "
                f"CV {100 * st['cv']:.1f} % (round medians {100 * st['round_cv']:.1f} %)  {st['runs']} runs in "
                f"{st['rounds']} rounds  {path}")

    lines.append(side("new", r["new"]["stats"], r["new"]["model"]["path"]))
    lines.append(f"{'':<8} {describe(r['new'].get('footprint'))}")
    if r["base"]:
        lines.append(side("base", r["base"]["stats"], r["base"]["model"]["path"]))
        lines.append(f"{'':<8} {describe(r['base'].get('footprint'))}")
    if r["baseline"]:
        lines.append(side("baseline", r["baseline"]["stats"], f"{r['baseline']['path']} ({r['baseline']['created']})"))
        if r["baseline"].get("footprint"):
            lines.append(f"{'':<8} {describe(r['baseline']['footprint'])}")
    for c in r["checks"]:
        lines.append(f"check    {c['name']:<10} {c['status'].upper():<12} {c['message']}")
    for n in r["notes"]:
        lines.append(f"note     {n}")
    e = r["environment"] or {}
    lines.append(f"env      {e.get('cpu_model')} ({e.get('cpu_count')} cpus, affinity {e.get('cpu_affinity')}, "
                 f"governor {e.get('governor')}), {e.get('system')} {e.get('release')}, python {e.get('python')}, "
                 f"host {e.get('hostname')}")
    lines.append(f"verdict  {r['verdict'].upper()} (exit {r['exit_code']}) in {r['seconds']:.1f} s")
    return "\n".join(lines)


def junit_xml(r: dict, *, suite: str = "vitedge-bench") -> str:
    """A JUnit XML report: one testsuite, one testcase per check; failing checks carry a
    ``<failure message=... type=...>`` (type: fail, unstable or inconclusive), skipped ones ``<skipped>``."""
    checks = r["checks"]
    failed = [c for c in checks if c["status"] in ("fail", "unstable", "inconclusive")]
    skipped = [c for c in checks if c["status"] == "skipped"]
    ts = ET.Element("testsuite", name=suite, tests=str(len(checks)), failures=str(len(failed)), errors="0",
                    skipped=str(len(skipped)), time=f"{r['seconds']:.3f}",
                    timestamp=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
                    hostname=(r.get("environment") or {}).get("hostname") or platform.node())
    props = ET.SubElement(ts, "properties")
    d = r["device"]
    for k, v in (("model", r["new"]["model"]["path"]), ("model_sha256", r["new"]["model"]["sha256"]),
                 ("against", r["base"]["model"]["path"] if r["base"] else ""),
                 ("baseline", r["baseline"]["path"] if r["baseline"] else ""),
                 ("device", d["name"]), ("runtime", f"{d['runtime']} {d['runtime_version']}"), ("threads", d["threads"]),
                 ("verdict", r["verdict"]), ("exit_code", r["exit_code"])):
        ET.SubElement(props, "property", name=k, value=str(v))
    classname = f"vitedge.bench.{Path(r['new']['model']['path']).stem}"
    for c in checks:
        tc = ET.SubElement(ts, "testcase", classname=classname, name=c["name"], time=f"{r['seconds']:.3f}")
        if c["status"] in ("fail", "unstable", "inconclusive"):
            f = ET.SubElement(tc, "failure", message=c["message"], type=c["status"])
            f.text = json.dumps(c.get("values", {}), default=float)
        elif c["status"] == "skipped":
            ET.SubElement(tc, "skipped", message=c["message"])
        out = ET.SubElement(tc, "system-out")
        out.text = c["message"]
    ET.SubElement(ts, "system-out").text = format_text(r)
    ET.indent(ts)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(ts, encoding="unicode") + "\n"


def write_junit(path: str | Path, r: dict) -> None:
    _atomic_write(path, junit_xml(r))


def result_json(r: dict, *, samples: bool = False) -> dict:
    """The result for --json / -o: everything, raw samples only when ``samples``."""
    out = json.loads(json.dumps(r, default=float))
    if not samples:
        for k in ("new", "base"):
            if out.get(k):
                out[k].pop("samples_ms", None)
    return out


def check_output_paths(*paths) -> None:
    """Refuse, before measuring, output paths whose folder does not exist (no work wasted)."""
    for p in paths:
        if p is not None and not Path(p).resolve().parent.is_dir():
            raise BenchError(f"cannot write {p}: folder {Path(p).resolve().parent} does not exist")
