"""How a ``--device`` name becomes a device: the registry of device classes (``local`` and any
registered later), presets (``devices/presets/*.toml`` or the user's devices file) and ``ssh://`` /
``adb://`` URLs.

Data flows one way: :mod:`~vitedge.devices.base` (the interface, the local device) and
:mod:`~vitedge.devices.remote` (remote devices) know nothing of this module; it imports both.
"""
from __future__ import annotations

import os
import warnings

from vitedge.devices.base import Device, DeviceError, LocalDevice
from vitedge.devices.presets import SCHEMA, from_url, load_presets, split_host
from vitedge.devices.remote import RemoteDevice
from vitedge.devices.runner import MeasureConfig
from vitedge.devices.transports import make_transport

_DEVICES: dict[str, type[Device]] = {}


def register_device(name: str, cls: type[Device]) -> None:
    """Add a device class to the registry (warns when overwriting)."""
    if name in _DEVICES:
        warnings.warn(f"overwriting device {name!r} in the registry", stacklevel=2)
    _DEVICES[name] = cls


register_device("local", LocalDevice)


def available_devices() -> list[str]:
    return sorted(_DEVICES)


def get_device(name: str = "local", *, runtime: str | None = None, threads: int = 0,
               config: MeasureConfig | None = None, **settings) -> Device:
    """Instantiate a device: a preset (``devices/presets/*.toml`` or the user's devices file), a URL
    (``ssh://[USER@]HOST[:PORT]``, ``adb://[SERIAL]``) or a registered device class.

    ``runtime``/``threads`` None/0: the preset's (else onnxruntime / all cores).  ``settings``:
    ``host``, ``serial``, ``devices_file`` and preset keys, overriding the preset
    (see :mod:`vitedge.devices.presets`).

    Raises:
        DeviceError: unknown device or runtime, bad settings, unreachable device.
        RuntimeMissingError: the runtime is not installed (checked here, before any work).
    """
    config = config or MeasureConfig()
    dev = resolve_device(name, runtime=runtime, threads=threads, config=config, settings=settings)
    if dev is None:
        if name not in _DEVICES:
            raise DeviceError(f"unknown device {name!r}: use one of {', '.join(available_devices())}, a preset "
                              "(`vitedge devices list`), ssh://[USER@]HOST[:PORT] or adb://[SERIAL]")
        if any(v is not None for v in settings.values()):
            raise DeviceError(f"device {name} takes no settings, got {', '.join(sorted(settings))}")
        dev = _DEVICES[name](name=name, runtime=runtime or "onnxruntime", threads=threads, config=config)
    dev.runtime_version()
    return dev


_TRANSPORT_KEYS = {"host", "user", "port", "identity", "ssh_options", "ssh_config", "connect_timeout", "scp_options",
                   "serial", "adb", "tmp_dir", "python", "affinity", "env", "benchmark_model", "benchmark_args", "command"}


def resolve_device(name: str, *, runtime: str | None = None, threads: int = 0, config=None,
                   settings: dict | None = None) -> Device | None:
    """A device for a preset name or a URL, settings overriding the preset; None if ``name`` is
    neither (:func:`get_device` then looks in the device registry).

    ``settings``: ``host`` ("[USER@]HOST[:PORT]"), ``serial``, ``devices_file``, and any preset key
    (:data:`vitedge.devices.presets.SCHEMA`).
    """
    settings = {k: v for k, v in (settings or {}).items() if v is not None}
    devices_file = settings.pop("devices_file", None)
    host = settings.pop("host", None)
    for k in settings:
        if k not in SCHEMA or k in ("profile", "model", "transport"):
            raise DeviceError(f"unknown device setting {k!r}: use one of {', '.join(sorted(_TRANSPORT_KEYS))}")
    if "://" in name:
        spec = from_url(name)
    else:
        presets = load_presets(devices_file)
        if name not in presets:
            if host or settings:
                raise DeviceError(f"unknown device {name!r}: use a preset ({', '.join(sorted(presets))}) or "
                                  "ssh://[USER@]HOST[:PORT] / adb://[SERIAL]")
            return None
        spec = {k: v for k, v in presets[name].items() if not k.startswith("_")}
    if host:
        spec.update(split_host(host))
    spec.update(settings)
    runtime = runtime or spec.get("runtime") or "onnxruntime"
    threads = threads or int(spec.get("threads", 0))
    transport = spec.get("transport")
    if transport == "local":
        remote = sorted(k for k in _TRANSPORT_KEYS if k in (settings.keys() | ({"host"} if host else set())))
        if remote:
            raise DeviceError(f"device {name} is this machine: {', '.join(remote)} apply to ssh/adb devices only")
        return _DEVICES["local"](name=name, runtime=runtime, threads=threads, config=config)
    if transport == "ssh":
        if not spec.get("host"):
            raise DeviceError(f"device {name} needs a host: pass --host [USER@]HOST[:PORT]")
        tr = make_transport("ssh", host=spec["host"], user=spec.get("user"), port=spec.get("port"),
                            identity=spec.get("identity"), options=list(spec.get("ssh_options", [])),
                            config_file=spec.get("ssh_config"), connect_timeout=int(spec.get("connect_timeout", 10)),
                            scp_options=list(spec.get("scp_options", [])), tmp_root=spec.get("tmp_dir"))
    elif transport == "adb":
        tr = make_transport("adb", serial=spec.get("serial"), adb=spec.get("adb", "adb"),
                            tmp_root=spec.get("tmp_dir", "/data/local/tmp"))
    else:
        tr = make_transport(transport, **{k: spec[k] for k in ("tmp_dir",) if k in spec})
    python = spec.get("python", "python3")
    options: dict = {}
    if runtime == "benchmark_model":
        options = {"binary": os.path.expanduser(spec.get("benchmark_model", "benchmark_model")),
                   "args": list(spec.get("benchmark_args", []))}
    elif runtime == "command":
        if not spec.get("command"):
            raise DeviceError("the command runtime needs a template: --device-opt command='PROG --model {model} "
                              "--runs {runs}' (it must print the JSON line documented in vitedge.devices.runner)")
        options = {"template": list(spec["command"])}
    return RemoteDevice(name=name, runtime=runtime, threads=threads, config=config, transport=tr,
                        python=None if python is False else python, affinity=list(spec.get("affinity", [])),
                        env=dict(spec.get("env", {})), runtime_options=options)
