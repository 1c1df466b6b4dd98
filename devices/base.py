"""Devices: where models are timed. A device = transport x runtime x settings.

This module has the host-side interface and the ``local`` transport (this machine, in process).
Every transport runs the same protocol through :mod:`vitedge.devices.runner`: the plan/result JSON
documented there. No torch here.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from typing import Callable

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

        Returns the runner's Measurement dict (samples_ms, median_ms, p90_ms, mad_ms, runs, ...).
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


@dataclass
class LocalDevice(Device):
    """This machine, in process (no copy, no subprocess)."""

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
            return runner.run_plan(plan, on_point=on_point)
        except PlanError as e:
            raise DeviceError(f"local device rejected the plan: {e}") from None

    def measure_model(self, model_path, feeds_list, *, name="model") -> dict:
        session = runner.open_session(self.runtime, str(model_path), self.threads)
        m = runner.measure_feeds(session, feeds_list, self.config, name).to_dict()
        if m["error_code"] != 0:
            raise DeviceError(f"measuring {model_path} on {self.name} failed: {m['error']}")
        m["environment"] = runner.environment(self.runtime, self.threads, session.version)
        return m
