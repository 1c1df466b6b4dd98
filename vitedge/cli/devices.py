"""``vitedge devices list|show|check``: the device presets (data in devices/presets/*.toml, plus the
user's devices file) and a reachability check.  Errors: one line on stderr, exit 2 (3: runtime
missing on the device)."""
from __future__ import annotations

import functools
import json
import sys

import click


def _errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..devices import DeviceError, RuntimeMissingError

        try:
            return fn(*args, **kwargs)
        except RuntimeMissingError as e:
            click.echo(f"error: {' '.join(str(e).split())}", err=True)
            sys.exit(3)
        except DeviceError as e:
            click.echo(f"error: {' '.join(str(e).split())}", err=True)
            sys.exit(2)
    return wrapper


_file_option = click.option("--devices-file", default=None,
                            help="TOML file adding or overriding presets (default ~/.config/vitedge/devices.toml).")


@click.group()
def devices():
    """Device presets: where vitedge measures (transport x runtime x settings)."""


@devices.command("list")
@_file_option
@click.option("--json", "as_json", is_flag=True, help="print JSON.")
@_errors
def list_cmd(devices_file, as_json):
    """The presets: name, transport, runtime, threads, description."""
    from ..devices.presets import load_presets

    presets = load_presets(devices_file)
    if as_json:
        click.echo(json.dumps(presets, indent=1, sort_keys=True))
        return
    rows = [(n, p.get("transport", "?"), p.get("runtime", "onnxruntime"), str(p.get("threads", 0) or "all"),
             p.get("description", "")) for n, p in sorted(presets.items())]
    widths = [max(len(r[i]) for r in rows + [("name", "transport", "runtime", "threads", "")]) for i in range(4)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(("name", "transport", "runtime", "threads"), widths)) + "  description")
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])


@devices.command("show")
@click.argument("name")
@_file_option
@click.option("--json", "as_json", is_flag=True, help="print JSON.")
@_errors
def show_cmd(name, devices_file, as_json):
    """One preset's settings, where they come from, and how to use it."""
    from ..devices import DeviceError
    from ..devices.presets import load_presets

    presets = load_presets(devices_file)
    if name not in presets:
        raise DeviceError(f"unknown preset {name!r}: use one of {', '.join(sorted(presets))}")
    p = presets[name]
    if as_json:
        click.echo(json.dumps(p, indent=1, sort_keys=True))
        return
    click.echo(f"{name}: {p.get('description', '')}")
    for key in sorted(k for k in p if not k.startswith("_") and k not in ("description", "profile", "model")):
        click.echo(f"  {key:<16} {json.dumps(p[key])}")
    for part in ("profile", "model"):
        if part in p:
            click.echo(f"  [{part}]".ljust(19) + " ".join(f"{k}={v}" for k, v in p[part].items()))
    click.echo(f"  source           {p['_source']}")
    usage = {"ssh": f"vitedge profile --device {name} --host USER@HOST -o {name}.json",
             "adb": f"vitedge profile --device {name} [--serial SERIAL] -o {name}.json",
             "local": f"vitedge profile --device {name} -o {name}.json"}
    click.echo(f"  usage            {usage.get(p.get('transport'), '')}")


@devices.command("check")
@click.argument("name")
@click.option("--host", default=None, help="ssh: [USER@]HOST[:PORT].")
@click.option("--serial", default=None, help="adb: the phone's serial.")
@click.option("--device-opt", multiple=True, metavar="KEY=VALUE", help="setting overriding the preset.")
@click.option("--runtime", default=None, help="runtime (default: the preset's).")
@_file_option
@_errors
def check_cmd(name, host, serial, device_opt, runtime, devices_file):
    """Connect to a device and check its runtime (Python, numpy, the runtime package or tool)."""
    from ..devices import get_device
    from ..devices.presets import parse_setting

    settings = dict(parse_setting(o) for o in device_opt)
    settings.update({k: v for k, v in (("host", host), ("serial", serial), ("devices_file", devices_file)) if v})
    dev = get_device(name, runtime=runtime, **settings)
    info = getattr(dev, "probe_info", None) or {}
    click.echo(f"{dev.name}: {dev.runtime} {dev.runtime_version()}, {dev.threads} threads"
               + (f", python {info['python']}, numpy {info.get('numpy')}" if "python" in info else "")
            + (f", {info['machine']}" if info.get("machine") else "")
               + (f" ({info['model']}, Android {info.get('android')})" if info.get("model") else ""))
