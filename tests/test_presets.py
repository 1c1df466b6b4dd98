"""Device presets (devices/presets/*.toml + a user file), device resolution (presets, URLs, --host),
the ssh argument lists vitedge builds, the transport registry, and `vitedge devices list|show`.
Nothing here connects anywhere."""
from __future__ import annotations

import shlex
import sys

import pytest
from click.testing import CliRunner

from vitedge.cli.main import main
from vitedge.devices import DeviceError, LocalDevice, get_device
from vitedge.devices.presets import (PRESET_DIR, PresetError, from_url, load_presets, measure_overrides,
                                     parse_setting, split_host)
from vitedge.devices.registry import resolve_device
from vitedge.devices.remote import RemoteDevice
from vitedge.devices.transports import (AdbTransport, SSHTransport, available_transports, make_transport,
                                        register_transport)

SHIPPED = {"rpi4", "rpi5", "jetson-orin", "pixel-7", "galaxy-s20", "zcu102", "local"}


def test_shipped_presets_load_and_are_complete():
    presets = load_presets()
    assert SHIPPED <= set(presets)
    assert {p.stem for p in PRESET_DIR.glob("*.toml")} == SHIPPED
    for name, p in presets.items():
        assert p["transport"] in ("local", "ssh", "adb") and p["runtime"] and p["description"], name
    assert presets["pixel-7"]["affinity"] == ["taskset", "f0"] and presets["pixel-7"]["python"] is False
    assert presets["galaxy-s20"]["runtime"] == "benchmark_model" and presets["rpi4"]["threads"] == 4
    assert measure_overrides("rpi4")["profile"] == {"warmup": 3, "min_runs": 10, "min_time_s": 0.05}


def test_rpi4_with_host_needs_no_other_flag():
    dev = resolve_device("rpi4", settings={"host": "pi@raspberrypi.local"})
    assert isinstance(dev, RemoteDevice) and dev.runtime == "onnxruntime" and dev.threads == 4
    t = dev.transport
    assert isinstance(t, SSHTransport) and (t.user, t.host, t.port) == ("pi", "raspberrypi.local", None)
    with pytest.raises(DeviceError, match="needs a host: pass --host"):
        resolve_device("rpi4")


def test_url_and_host_forms():
    dev = resolve_device("ssh://me@10.1.2.3:2222?python=/opt/py/bin/python3&threads=2")
    assert (dev.transport.user, dev.transport.host, dev.transport.port) == ("me", "10.1.2.3", 2222)
    assert dev.python == "/opt/py/bin/python3" and dev.threads == 2
    assert split_host("pi@[fe80::1]:2200") == {"user": "pi", "host": "fe80::1", "port": 2200}
    assert split_host("board") == {"host": "board"}
    assert from_url("adb://R5CN70XYZ") == {"transport": "adb", "serial": "R5CN70XYZ"}
    dev = resolve_device("pixel-7", settings={"serial": "R5CN70XYZ"})
    assert isinstance(dev.transport, AdbTransport) and dev.transport.serial == "R5CN70XYZ" and dev.python is None
    assert dev.runtime_options == {"binary": "/data/local/tmp/benchmark_model", "args": []}
    with pytest.raises(PresetError, match="unknown device URL scheme"):
        from_url("telnet://x")


def test_local_preset_is_the_in_process_device():
    dev = get_device("local", threads=1)
    assert type(dev) is LocalDevice and dev.name == "local" and dev.runtime == "onnxruntime"
    with pytest.raises(DeviceError, match="apply to ssh/adb devices only"):
        resolve_device("local", settings={"host": "x"})
    with pytest.raises(DeviceError, match="unknown device 'toaster'"):
        get_device("toaster")


def test_user_file_adds_and_overrides(tmp_path, monkeypatch):
    f = tmp_path / "devices.toml"
    f.write_text('[rpi4]\nthreads = 2\n[rpi4.profile]\nruns = 5\n\n'
                 '[lab-board]\ntransport = "ssh"\nhost = "10.0.0.7"\nruntime = "onnxruntime"\naffinity = ["taskset", "-c", "2-3"]\n')
    presets = load_presets(f)
    assert presets["rpi4"]["threads"] == 2 and presets["rpi4"]["profile"] == {"warmup": 3, "runs": 5, "min_time": 0.05}
    assert str(f) in presets["rpi4"]["_source"] and presets["lab-board"]["host"] == "10.0.0.7"
    dev = resolve_device("lab-board", settings={"devices_file": str(f)})
    assert dev.transport.host == "10.0.0.7" and dev._prefix() == ["taskset", "-c", "2-3"]
    monkeypatch.setenv("VITEDGE_DEVICES_FILE", str(f))
    assert "lab-board" in load_presets()
    bad = tmp_path / "bad.toml"
    bad.write_text('[x]\ntransport = "ssh"\nthreds = 4\n')
    with pytest.raises(PresetError, match="unknown key 'threds'"):
        load_presets(bad)
    bad.write_text('[y]\nruntime = "onnxruntime"\n')
    with pytest.raises(PresetError, match="needs a transport"):
        load_presets(bad)
    bad.write_text("not toml [")
    with pytest.raises(PresetError, match="not valid TOML"):
        load_presets(bad)


def test_parse_setting_types():
    assert parse_setting("threads=3") == ("threads", 3)
    assert parse_setting("ssh_options=ProxyJump=gw 'User=me'") == ("ssh_options", ["ProxyJump=gw", "User=me"])
    assert parse_setting("python=none") == ("python", False)
    assert parse_setting("env=A=1 B=two") == ("env", {"A": "1", "B": "two"})
    assert parse_setting("command=vbench --model {model} --runs {runs}") == \
        ("command", ["vbench", "--model", "{model}", "--runs", "{runs}"])
    for bad, msg in (("nokey", "KEY=VALUE"), ("colour=red", "unknown device option"), ("port=x", "integer")):
        with pytest.raises(PresetError, match=msg):
            parse_setting(bad)


def test_ssh_argv_is_a_list_with_quoted_remote_words_and_checked_host_keys():
    t = SSHTransport(host="raspberrypi.local", user="pi", port=2222, identity="/k/id",
                     options=["ProxyJump=gw", "ConnectTimeout=3"])
    remote = ["sh", "-c", "echo $1; rm -rf x", "a b", "it's", "/tmp/vitedge.abc"]
    argv = t.argv(remote)
    assert argv[0] == "ssh" and argv[-3:-1] == ["--", "raspberrypi.local"]
    assert shlex.split(argv[-1]) == remote  # ssh joins the words for the remote shell: each is quoted
    opts = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    assert opts[:2] == ["ProxyJump=gw", "ConnectTimeout=3"]  # the user's come first: they win
    assert "BatchMode=yes" in opts and "StrictHostKeyChecking=yes" in opts
    assert not any(o.startswith("ConnectTimeout=10") for o in opts)
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "pi"
    scp = t._scp(["/a/b.onnx"], "pi@raspberrypi.local:/tmp/vitedge.abc/")
    assert scp[0] == "scp" and scp[scp.index("-P") + 1] == "2222" and scp[-3:] == ["--", "/a/b.onnx", "pi@raspberrypi.local:/tmp/vitedge.abc/"]
    with pytest.warns(UserWarning, match="host key checking relaxed"):
        SSHTransport(host="h", options=["StrictHostKeyChecking=no"])
    for bad in ("-oProxyCommand=x", "a b"):
        with pytest.raises(DeviceError):
            SSHTransport(host=bad)
    with pytest.raises(DeviceError, match="Key=Value"):
        SSHTransport(host="h", options=["-F /etc/passwd"])
    with pytest.raises(DeviceError, match="unsafe remote path"):
        t.push([__file__], "/tmp/x; rm -rf /")


def test_transport_registry_warns_on_overwrite():
    assert {"local", "ssh", "adb"} <= set(available_transports())
    with pytest.warns(UserWarning, match="overwriting transport 'ssh'"):
        register_transport("ssh", SSHTransport)
    with pytest.raises(DeviceError, match="unknown transport"):
        make_transport("carrier-pigeon")


def test_devices_cli_list_and_show(tmp_path):
    r = CliRunner().invoke(main, ["devices", "list"])
    assert r.exit_code == 0, r.output
    for name in SHIPPED:
        assert name in r.output
    r = CliRunner().invoke(main, ["devices", "show", "rpi4"])
    assert r.exit_code == 0 and "ssh" in r.output and "--host USER@HOST" in r.output and "rpi4.toml" in r.output
    r = CliRunner().invoke(main, ["devices", "show", "nokia-3310"])
    assert r.exit_code == 2 and r.stderr.strip().startswith("error: unknown preset 'nokia-3310'")
    f = tmp_path / "d.toml"
    f.write_text('[mine]\ntransport = "ssh"\nhost = "h"\n')
    r = CliRunner().invoke(main, ["devices", "list", "--devices-file", str(f)])
    assert "mine" in r.output


def test_cli_preset_protocol_then_flags():
    from vitedge.cli.main import _options

    kw = dict(model=None, checkpoint=None, pretrained=False, data=None, calib_limit=None, device="rpi4",
              runtime=None, threads=0, cache_dir=None, no_cache=False, quiet=True, warmup=None, runs=7,
              min_time=None, host="pi@raspberrypi.local", serial=None, device_opt=("identity=~/.ssh/id_pi",),
              devices_file=None)
    opts = _options(kw)
    assert opts.profile_config.warmup == 3 and opts.profile_config.min_runs == 7  # preset, then the flag
    assert opts.model_config.min_time_s == 1.0
    assert opts.device_settings == {"identity": "~/.ssh/id_pi", "host": "pi@raspberrypi.local"}
    assert opts.runtime is None and sys.executable
