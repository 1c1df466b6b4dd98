"""Device presets: data in ``devices/presets/*.toml`` (one preset per file, named after it), plus a
user file that adds or overrides presets (``--devices-file``, else ``$VITEDGE_DEVICES_FILE``, else
``~/.config/vitedge/devices.toml``; one ``[name]`` table per preset, merged key by key over a
shipped preset of the same name).

Keys (all optional except ``transport``):

=================  ===========================================================================
description        one line shown by ``vitedge devices list``
transport          "local" | "ssh" | "adb"
runtime            runner runtime: "onnxruntime", "litert", "benchmark_model", "command"
threads            runtime threads (0: all cores the device gives the process)
python             Python on the device (default "python3"); ``false`` = none (phones: the host
                   drives a self-timed tool, benchmark_model or command, over the transport)
affinity           argument prefix pinning the run to cores, e.g. ["taskset", "-c", "4-7"]
                   (Linux) or ["taskset", "f0"] (Android toybox: hex mask of the big cores)
env                {"NAME": "value"} set on the device for the run (through ``env``)
host user port     ssh destination (``--host [USER@]HOST[:PORT]`` sets all three)
identity           ssh private key file; ssh_options: ["Key=Value", ...]; ssh_config: a file (-F)
connect_timeout    seconds (ssh ConnectTimeout); scp_options: extra scp arguments (e.g. ["-O"])
serial adb         adb device serial (``--serial``), adb client binary
tmp_dir            where the run directory is created on the device (default: $TMPDIR or /tmp;
                   /data/local/tmp on Android)
benchmark_model    path of TFLite's benchmark_model binary, on the device or (pushed) on the host
benchmark_args     extra benchmark_model flags, e.g. ["--use_xnnpack=true"]
command            command template for the "command" runtime (list, or one string split like a
                   shell would, never run through one); see ``vitedge.devices.runner``
litert_interpreter the TFLite interpreter package recommended on the device for runtime "litert":
                   "ai-edge-litert", "tflite-runtime" or "auto" (a recommendation shown by
                   ``vitedge devices show``; the runner picks one with its ``interpreter`` option)
[profile] [model]  measurement protocol for ``profile`` points and whole-model timing:
                   warmup, runs (at least), min_time (seconds, at least); CLI flags win
source notes       where the numbers/settings come from; free text
=================  ===========================================================================
"""
from __future__ import annotations

import os
import shlex
import tomllib
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from vitedge.devices.base import DeviceError
from vitedge.devices.runner import LITERT_INTERPRETERS

PRESET_DIR = Path(__file__).resolve().parent / "presets"
USER_FILE = Path("~/.config/vitedge/devices.toml")
TRANSPORTS = ("local", "ssh", "adb")

_STR, _INT, _LIST, _FLOAT = "string", "integer", "list of strings", "number"
SCHEMA = {
    "description": _STR, "transport": _STR, "runtime": _STR, "threads": _INT, "python": "string or false",
    "affinity": _LIST, "env": "table of strings", "host": _STR, "user": _STR, "port": _INT, "identity": _STR,
    "ssh_options": _LIST, "ssh_config": _STR, "connect_timeout": _INT, "scp_options": _LIST, "serial": _STR,
    "adb": _STR, "tmp_dir": _STR, "benchmark_model": _STR, "benchmark_args": _LIST, "command": _LIST,
    "litert_interpreter": _STR, "source": _STR, "notes": _STR, "profile": "table", "model": "table",
}
MEASURE_KEYS = {"warmup": ("warmup", _INT), "runs": ("min_runs", _INT), "min_time": ("min_time_s", _FLOAT)}


class PresetError(DeviceError):
    """A preset file or setting is malformed (one line naming the file and key)."""


def _check(key: str, value, where: str):
    kind = SCHEMA.get(key)
    if kind is None:
        raise PresetError(f"{where}: unknown key {key!r}: use one of {', '.join(sorted(SCHEMA))}")
    ok = {
        _STR: isinstance(value, str),
        _INT: isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        _LIST: isinstance(value, list) and all(isinstance(v, str) for v in value),
        "string or false": isinstance(value, str) or value is False,
        "table of strings": isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                            for k, v in value.items()),
        "table": isinstance(value, dict),
    }[kind]
    if key == "command" and isinstance(value, str):
        return shlex.split(value)
    if not ok:
        raise PresetError(f"{where}: {key!r} must be a {kind}, got {value!r}")
    if key == "transport" and value not in TRANSPORTS:
        raise PresetError(f"{where}: transport {value!r} is not one of {', '.join(TRANSPORTS)}")
    if key == "litert_interpreter" and value not in LITERT_INTERPRETERS:
        raise PresetError(f"{where}: litert_interpreter {value!r} is not one of {', '.join(LITERT_INTERPRETERS)}")
    if key in ("profile", "model"):
        for k, v in value.items():
            if k not in MEASURE_KEYS:
                raise PresetError(f"{where}: [{key}] has unknown key {k!r}: use warmup, runs, min_time")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (k != "min_time" and not isinstance(v, int)):
                raise PresetError(f"{where}: [{key}] {k} must be a number >= 0" + ("" if k == "min_time" else " (integer)"))
    if key == "env":
        for k in value:
            if not k.replace("_", "a").isalnum() or k[0].isdigit():
                raise PresetError(f"{where}: env name {k!r} is not a valid variable name")
    return value


def _validate(name: str, d: dict, where: str) -> dict:
    return {k: _check(k, v, f"{where} [{name}]") for k, v in d.items()}


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise PresetError(f"cannot read devices file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise PresetError(f"devices file {path} is not valid TOML ({e})") from None


def user_file(devices_file: str | os.PathLike | None = None) -> Path | None:
    """The user devices file in effect (given > $VITEDGE_DEVICES_FILE > ~/.config/...), or None."""
    if devices_file:
        p = Path(devices_file).expanduser()
        if not p.is_file():
            raise PresetError(f"devices file {p} does not exist")
        return p
    env = os.environ.get("VITEDGE_DEVICES_FILE")
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise PresetError(f"$VITEDGE_DEVICES_FILE={env} does not exist")
        return p
    p = USER_FILE.expanduser()
    return p if p.is_file() else None


def load_presets(devices_file: str | os.PathLike | None = None) -> dict:
    """{name: preset dict (validated, with "_source": file)}; shipped presets, then the user's."""
    presets = {}
    for path in sorted(PRESET_DIR.glob("*.toml")):
        presets[path.stem] = dict(_validate(path.stem, _read_toml(path), str(path)), _source=str(path))
    uf = user_file(devices_file)
    if uf is not None:
        for name, table in _read_toml(uf).items():
            if not isinstance(table, dict):
                raise PresetError(f"{uf}: {name!r} must be a table: write [{name}] followed by its keys")
            table = _validate(name, table, str(uf))
            base = presets.get(name, {})
            merged = {**base, **table, "_source": f"{uf}" + (f" (over {base['_source']})" if base else "")}
            for sub in ("profile", "model"):
                if sub in base and sub in table:
                    merged[sub] = {**base[sub], **table[sub]}
            if "transport" not in merged:
                raise PresetError(f"{uf} [{name}]: a new device needs a transport ({', '.join(TRANSPORTS)})")
            presets[name] = merged
    return presets


def measure_overrides(name: str, devices_file=None) -> dict:
    """{"profile": {MeasureConfig field: value}, "model": {...}} from a preset ({} parts if none)."""
    if "://" in name:
        return {"profile": {}, "model": {}}
    preset = load_presets(devices_file).get(name, {})
    return {part: {MEASURE_KEYS[k][0]: (float(v) if k == "min_time" else int(v))
                   for k, v in preset.get(part, {}).items()} for part in ("profile", "model")}


def parse_setting(text: str) -> tuple:
    """``KEY=VALUE`` from the command line (``--device-opt``) -> (key, typed value)."""
    if "=" not in text:
        raise PresetError(f"bad device option {text!r}: write KEY=VALUE, e.g. identity=~/.ssh/id_pi")
    key, value = text.split("=", 1)
    key = key.strip().replace("-", "_")
    kind = SCHEMA.get(key)
    if kind is None or key in ("profile", "model", "transport"):
        allowed = sorted(k for k in SCHEMA if k not in ("profile", "model", "transport"))
        raise PresetError(f"unknown device option {key!r}: use one of {', '.join(allowed)}")
    if kind == _INT:
        try:
            return key, int(value)
        except ValueError:
            raise PresetError(f"device option {key} must be an integer, got {value!r}") from None
    if kind == _LIST:
        return key, shlex.split(value)
    if kind == "string or false":
        return key, False if value.strip().lower() in ("", "none", "false", "no") else value
    if key == "litert_interpreter":
        return key, _check(key, value, "device option")
    if kind == "table of strings":
        pairs = [p.split("=", 1) for p in shlex.split(value)]
        if any(len(p) != 2 for p in pairs):
            raise PresetError(f"device option env must be NAME=VALUE pairs, got {value!r}")
        return key, dict(pairs)
    return key, value


def split_host(text: str) -> dict:
    """``[USER@]HOST[:PORT]`` (IPv6 as ``[::1]:22``) -> {"host", "user"?, "port"?}."""
    out = {}
    user, sep, rest = text.rpartition("@")
    if sep:
        out["user"] = user
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port = tail[1:] if tail.startswith(":") else ""
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    else:
        host, port = rest, ""
    out["host"] = host
    if port:
        if not port.isdigit():
            raise PresetError(f"bad port in {text!r}: use [USER@]HOST[:PORT]")
        out["port"] = int(port)
    return out


def from_url(url: str) -> dict:
    """``ssh://[user@]host[:port][?key=value&...]`` or ``adb://[SERIAL]`` -> preset-like settings."""
    u = urlsplit(url)
    if u.scheme == "ssh":
        if not u.hostname:
            raise PresetError(f"bad device URL {url!r}: use ssh://[USER@]HOST[:PORT]")
        d = {"transport": "ssh", "host": u.hostname}
        if u.username:
            d["user"] = unquote(u.username)
        try:
            if u.port:
                d["port"] = u.port
        except ValueError:
            raise PresetError(f"bad port in device URL {url!r}") from None
    elif u.scheme == "adb":
        d = {"transport": "adb"}
        if u.netloc:
            d["serial"] = unquote(u.netloc)
    else:
        raise PresetError(f"unknown device URL scheme {u.scheme!r} in {url!r}: use ssh://... or adb://SERIAL")
    for k, v in parse_qsl(u.query):
        key, value = parse_setting(f"{k}={v}")
        d[key] = value
    return d
