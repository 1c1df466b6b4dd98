"""The runtimes table: what each runner runtime reads, what provides it, how it is timed (data, torch-free).

Everything that asks "which format does runtime R run", "which pip package provides it", "does it need
static shapes" reads it here. The on-device runner (``runner.py``) keeps its own copy by design: it
ships alone (stdlib + numpy). A runtime registered later with the runner and absent here is treated as
its own module/package name, reading any format, static-shaped, and not profilable.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Runtime:
    """One row of :data:`RUNTIMES`.

    formats: the model file formats it runs ("onnx", "tflite").
    packages: pip distributions that provide it on a host, first found wins (the first is the one to install).
    modules: Python modules that provide it on a device, tried in order.
    host_install: the install command for this host when it is missing (default ``python -m pip install
        <packages[0]>``).
    dynamic_shapes: one graph with a dynamic token axis serves every token count (else one graph per count).
    profiles: runs the runner's part plans (so it can measure a latency table).
    self_timed: a tool or command that times itself and makes its own inputs (no Python runtime on the device).
    """

    formats: tuple[str, ...]
    packages: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    host_install: str | None = None
    dynamic_shapes: bool = False
    profiles: bool = False
    self_timed: bool = False


RUNTIMES: dict[str, Runtime] = {
    "onnxruntime": Runtime(formats=("onnx",), packages=("onnxruntime",), modules=("onnxruntime",),
                           dynamic_shapes=True, profiles=True),
    # LiteRT: ai-edge-litert, else tflite-runtime
    "litert": Runtime(formats=("tflite",), packages=("ai-edge-litert", "tflite-runtime"),
                      modules=("ai_edge_litert", "tflite_runtime"), host_install="pip install 'vitedge[tflite]'",
                      profiles=True),
    # TFLite's benchmark tool (phones); "command": a user command template that runs anything (vendor stacks)
    "benchmark_model": Runtime(formats=("tflite",), self_timed=True),
    "command": Runtime(formats=("onnx", "tflite"), self_timed=True),
}
# the runtime an export format is measured with unless one is given, and its file suffix
FORMAT_RUNTIME = {"onnx": "onnxruntime", "tflite": "litert"}
FORMAT_SUFFIX = {"onnx": ".onnx", "tflite": ".tflite"}
SELF_TIMED = frozenset(name for name, rt in RUNTIMES.items() if rt.self_timed)


def runtime_format(runtime: str | None) -> str | None:
    """The one file format ``runtime`` runs; None when it runs several ("command") or is not in the table."""
    rt = RUNTIMES.get(runtime or "")
    return rt.formats[0] if rt is not None and len(rt.formats) == 1 else None


def profile_format(runtime: str) -> str | None:
    """The format of the part files ``runtime`` profiles; None when it cannot profile."""
    rt = RUNTIMES.get(runtime)
    return rt.formats[0] if rt is not None and rt.profiles else None


def has_dynamic_shapes(runtime: str) -> bool:
    """True when one dynamic-shape graph serves every token count on ``runtime``."""
    rt = RUNTIMES.get(runtime)
    return rt is not None and rt.dynamic_shapes


def host_packages(runtime: str) -> tuple[str, ...]:
    """The pip distributions that provide ``runtime`` on a host (its own name when not in the table)."""
    rt = RUNTIMES.get(runtime)
    return rt.packages if rt is not None and rt.packages else (runtime,)


def host_install(runtime: str) -> str:
    """The command that installs ``runtime`` on this host."""
    rt = RUNTIMES.get(runtime)
    return rt.host_install if rt is not None and rt.host_install else f"python -m pip install {host_packages(runtime)[0]}"


def device_modules(runtime: str) -> tuple[str, ...]:
    """The Python modules that provide ``runtime`` on a device (its own name when not in the table)."""
    rt = RUNTIMES.get(runtime)
    return rt.modules if rt is not None and rt.modules else (runtime,)


def runtimes_for_suffix(suffix: str) -> set[str]:
    """The runtimes that run a file with this suffix (".onnx", ".tflite")."""
    fmt = next((f for f, s in FORMAT_SUFFIX.items() if s == suffix), None)
    return {name for name, rt in RUNTIMES.items() if fmt in rt.formats}
