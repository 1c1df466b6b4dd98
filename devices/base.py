"""Devices: where models are timed. A device = transport x runtime x settings.

This module has the host-side interface and the ``local`` transport (this machine, in process).
Every transport runs the same protocol through :mod:`vitedge.devices.runner`: the plan/result JSON
documented there. No torch here.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from typing import Callable

import numpy as np

from vitedge.devices import runner
from vitedge.devices.runner import MeasureConfig, PlanError, RuntimeMissingError
from vitedge.devices.runtimes import host_install, host_packages


def file_sha256(path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB chunks (model files, artifacts)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class DeviceError(ValueError):
    """Unknown device, unusable settings, or the device failed (one-line message)."""


@dataclass
class Device:
    """A target: ``name`` (registry key), ``runtime`` (runner runtime), ``threads`` and protocol knobs.

    Subclasses implement :meth:`run_plan` and :meth:`measure_model`.
    """

    name: str = "local"
    runtime: str = "onnxruntime"
    threads: int = 0
    config: MeasureConfig = field(default_factory=MeasureConfig)

    def __post_init__(self):
        if self.threads <= 0:  # all cores this process may run on (taskset/cgroup affinity), as the remote probe counts
            self.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if self.runtime not in runner.available_runtimes():
            raise DeviceError(f"unknown runtime {self.runtime!r}: use one of {', '.join(runner.available_runtimes())}")

    def runtime_version(self) -> str:
        """Version of the runtime package on the device. Raises RuntimeMissingError if absent."""
        raise NotImplementedError

    def run_plan(self, plan: dict, *, on_point: Callable[[dict], None] | None = None) -> dict:
        """Run a runner plan (see :mod:`vitedge.devices.runner`) and return its result dict."""
        raise NotImplementedError

    def measure_model(self, model_path, feeds_list: list, *, name: str = "model") -> dict:
        """Time a whole model cycling through ``feeds_list`` (one dict of arrays per image).

        Returns the runner's Measurement dict (samples_ms, median_ms, p90_ms, mad_ms, runs, ...) with
        ``footprint``: file size (bytes), session creation and first inference (ms), peak RSS (MiB) of
        the process that ran it (:func:`vitedge.devices.runner.load_model`; None where not reported).
        Raises DeviceError when the measurement failed.
        """
        raise NotImplementedError

    def describe(self) -> dict:
        d = asdict(self)
        d["config"] = asdict(self.config)
        return d

    def with_config(self, config: MeasureConfig) -> "Device":
        """The same device (and connection settings) with another measurement protocol."""
        return replace(self, config=config)


_FOOTPRINTS: dict = {}  # (model file, size, mtime, runtime, threads) -> LocalDevice.process_footprint's result


@dataclass
class LocalDevice(Device):
    """This machine, in process (no copy); the footprint of each model file is measured once in a fresh
    runner process (:meth:`process_footprint`), as on a device."""

    def process_footprint(self, model_path, feeds: dict, *, cached: bool = True) -> dict | None:
        """Load time, first inference and memory of ``model_path`` in a fresh ``python runner.py`` process
        (the in-process numbers would be this process's, vitedge included, and memory freed by a model
        loaded before stays resident); cached per file.  None when that process fails (e.g. a runtime
        registered only in this process): the caller keeps its in-process numbers.  ``cached=False``
        measures again (a new process)."""
        st = os.stat(model_path)
        key = (os.path.abspath(model_path), st.st_size, st.st_mtime_ns, self.runtime, self.threads)
        if cached and key in _FOOTPRINTS:
            return _FOOTPRINTS[key]
        fp = None
        with tempfile.TemporaryDirectory(prefix="vitedge-footprint-") as tmp:
            np_feeds = os.path.join(tmp, "feeds.npz")
            np.savez(np_feeds, **{k: np.asarray(v) for k, v in feeds.items()})
            plan = {"runtime": self.runtime, "threads": self.threads,
                    "config": {"warmup": 0, "min_runs": 1, "min_time_s": 0.0, "reference_every": 0},
                    "points": [{"name": "footprint", "model": os.path.abspath(model_path), "inputs_npz": np_feeds}]}
            with open(os.path.join(tmp, "plan.json"), "w") as f:
                json.dump(plan, f)
            p = subprocess.run([sys.executable, runner.__file__, os.path.join(tmp, "plan.json"), os.path.join(tmp, "r.json")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600, check=False)
            if p.returncode == 0:
                with open(os.path.join(tmp, "r.json")) as f:
                    fp = next(iter((json.load(f).get("models") or {}).values()), None)
        if fp is not None:
            fp = dict(fp, memory_scope="a fresh runner process on this machine")
        _FOOTPRINTS[key] = fp
        return fp

    def runtime_version(self) -> str:
        pkgs = host_packages(self.runtime)
        for pkg in pkgs:
            try:
                return metadata.version(pkg)
            except metadata.PackageNotFoundError:
                continue
        raise RuntimeMissingError(f"{pkgs[0]} is not installed: run `{host_install(self.runtime)}`") from None

    def run_plan(self, plan: dict, *, on_point=None) -> dict:
        plan = dict(plan, runtime=self.runtime, threads=self.threads, config=asdict(self.config))
        try:
            result = runner.run_plan(plan, on_point=on_point)
            result["memory_scope"] = "host process (in-process local device: vitedge and torch included)"
            return result
        except PlanError as e:
            raise DeviceError(f"local device rejected the plan: {e}") from None

    def measure_model(self, model_path, feeds_list, *, name="model") -> dict:
        m = runner.measure_file(lambda: runner.open_session(self.runtime, str(model_path), self.threads),
                                str(model_path), feeds_list, self.config, name)
        if m["error_code"] != 0:
            raise DeviceError(f"measuring {model_path} on {self.name} failed: {m['error']}")
        fresh = self.process_footprint(model_path, feeds_list[0]) if feeds_list else None
        m["footprint"] = fresh or dict(m["footprint"], memory_scope="host process (in-process local device)")
        m["environment"] = runner.environment(self.runtime, self.threads, m.pop("runtime_version"))
        return m
