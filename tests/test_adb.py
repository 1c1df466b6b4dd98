"""Android over adb and the self-timed tools: `adb devices` parsing, adb/benchmark_model argument
lists, the benchmark_model output parser (output text in the format TensorFlow's
tensorflow/lite/tools/benchmark README documents), the "command" runtime's JSON line, a
host-driven run (no Python on the device) with a stand-in benchmark_model, and -- with Debian's
real `adb` -- a clear "no device attached"."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap

import pytest

from _sshd import free_port
from vitedge.devices import DeviceError, MeasureConfig, NoDeviceError, get_device
from vitedge.devices import runner as R
from vitedge.devices.registry import resolve_device
from vitedge.devices.remote import RemoteDevice
from vitedge.devices.transports import AdbTransport, LocalTransport, parse_adb_devices

FAST = MeasureConfig(warmup=2, min_runs=5, min_time_s=0.0)

# TF README (tensorflow/lite/tools/benchmark), current format; the summary line is the README's.
NEW_FORMAT = """\
STARTING!
Log parameter values verbosely: [0]
Num threads: [4]
Graph: [/data/local/tmp/vitedge.x/f0_attention.tflite]
#threads used for CPU inference: [4]
Loaded model /data/local/tmp/vitedge.x/f0_attention.tflite
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
The input model file size (MB): 0.2101
Initialized session in 5.685ms.
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=35 first=18535 curr=14390 min=14117 max=18535 avg=14462.3 std=702

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=69 first=14611 curr=14520 min=14301 max=15402 avg=14575.2 std=187

Inference timings in us: Init: 5685, First inference: 18535, Warmup (avg): 14462.3, Inference (avg): 14575.2
Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
Memory footprint delta from the start of the tool (MB): init=3.27344 overall=9.75
"""

# TF README, older format (op profiling on): "Timings (microseconds)" + "Average inference timings".
OLD_FORMAT = """\
Number of nodes executed: 31
============================== Summary by node type ==============================
\t             [Node type]\t  [count]\t  [avg ms]\t    [avg %]\t    [cdf %]\t  [mem KB]\t[times called]
\t                 CONV_2D\t       15\t     1.406\t    89.270%\t    89.270%\t     0.000\t        0

Timings (microseconds): count=50 first=79449 curr=81350 min=77385 max=88213 avg=79732 std=1929
Memory (bytes): count=0
31 nodes observed


Average inference timings in us: Warmup: 83235, Init: 38467, Inference: 79760.9
"""

# logcat-style prefixes, scientific notation, and the percentile fields newer builds print.
PERCENTILES = """\
I tflite  : count=10 first=211669 curr=199300 min=198210 max=235158 avg=2.11669e+05 std=11613
I tflite  : count=25 first=187533 curr=140990 min=140071 max=195121 avg=145528 std=13583 p5=140545 median=141253 p95=187533
I tflite  : Inference timings in us: Init: 92318, First inference: 187533, Warmup (avg): 2.11669e+05, Inference (avg): 145528
"""


def test_parse_benchmark_model_current_format():
    s = R.parse_benchmark_model(NEW_FORMAT)
    assert s["avg_us"] == 14575.2 and s["init_us"] == 5685 and s["first_us"] == 18535
    assert s["warmup_avg_us"] == 14462.3
    assert s["count"] == 69 and s["min_us"] == 14301 and s["max_us"] == 15402 and s["std_us"] == 187  # timed run, not warm-up
    m, extra = R._tool_measurement("attention@65", 0.0, s, "benchmark_model")
    assert m.median_ms == pytest.approx(14.5752) and m.p90_ms == pytest.approx(15.402) and m.runs == 69
    assert extra["statistic"] == "mean" and m.samples_ms == []


def test_parse_benchmark_model_old_format_and_percentiles():
    s = R.parse_benchmark_model(OLD_FORMAT)
    assert s["avg_us"] == 79760.9 and s["init_us"] == 38467 and s["count"] == 50 and "first_us" not in s
    s = R.parse_benchmark_model(PERCENTILES)
    assert s["median_us"] == 141253 and s["p95_us"] == 187533 and s["warmup_avg_us"] == 211669.0
    m, extra = R._tool_measurement("x", 0.0, s, "benchmark_model")
    assert m.median_ms == pytest.approx(141.253) and m.p90_ms == pytest.approx(187.533)
    assert extra["statistic"] == "median"


def test_parse_benchmark_model_failure_names_the_last_line():
    with pytest.raises(ValueError, match="no 'Inference timings in us' line.*Failed to allocate tensors"):
        R.parse_benchmark_model("STARTING!\nERROR: Failed to allocate tensors!\n")


def test_benchmark_model_argv():
    cfg = MeasureConfig(warmup=5, min_runs=20, min_time_s=0.05, timeout_s=60)
    argv = R.benchmark_model_argv("/data/local/tmp/benchmark_model", "/d/attn.tflite", 4, cfg,
                                  {"tokens": {"shape": [1, 65, 64]}, "scores": {"shape": [1, 64]}}, ["--use_xnnpack=true"])
    assert argv == ["/data/local/tmp/benchmark_model", "--graph=/d/attn.tflite", "--num_threads=4", "--warmup_runs=5",
                    "--warmup_min_secs=0", "--num_runs=20", "--min_secs=0.05", "--max_secs=60",
                    "--input_layer=tokens,scores", "--input_layer_shape=1,65,64:1,64", "--use_xnnpack=true"]
    assert R.benchmark_model_argv("bm", "m.tflite", 0, cfg)[2] == "--num_threads=-1"  # 0: the tool's default


def test_adb_devices_parsing():
    out = ("* daemon not running; starting now at tcp:5037\n* daemon started successfully\n"
           "List of devices attached\n"
           "R5CN70XYZ\tdevice usb:1-1 product:x1sxx model:SM_G981B device:x1s transport_id:1\n"
           "emulator-5554\toffline\n0123456789ABCDEF\tunauthorized\n\n")
    assert parse_adb_devices(out) == [("R5CN70XYZ", "device"), ("emulator-5554", "offline"),
                                      ("0123456789ABCDEF", "unauthorized")]
    assert parse_adb_devices("List of devices attached\n\n") == []


def test_adb_argument_lists_quote_each_remote_word():
    t = AdbTransport(serial="R5CN70XYZ")
    remote = ["taskset", "f0", "/data/local/tmp/benchmark_model", "--graph=/data/local/tmp/my model.tflite", "$(reboot)"]
    argv = t.argv(remote)
    assert argv[:4] == ["adb", "-s", "R5CN70XYZ", "shell"] and len(argv) == 5
    assert shlex.split(argv[4]) == remote  # the device shell sees exactly these words, nothing expanded
    with pytest.raises(DeviceError, match="bad adb serial"):
        AdbTransport(serial="-s x")


def test_adb_serial_resolution(monkeypatch):
    t = AdbTransport()
    monkeypatch.setattr(t, "devices", lambda: [])
    with pytest.raises(NoDeviceError, match="no Android device attached"):
        t.resolve_serial()
    monkeypatch.setattr(t, "devices", lambda: [("A", "device"), ("B", "device")])
    with pytest.raises(DeviceError, match="several Android devices attached .*--serial"):
        t.resolve_serial()
    monkeypatch.setattr(t, "devices", lambda: [("A", "unauthorized")])
    with pytest.raises(DeviceError, match="unauthorized"):
        t.resolve_serial()
    monkeypatch.setattr(t, "devices", lambda: [("A", "offline"), ("B", "device")])
    assert t.resolve_serial() == "B"


@pytest.fixture
def adb_server_port(monkeypatch):
    """A private adb server port, so the test never touches a running adb; killed afterwards."""
    if not shutil.which("adb"):
        pytest.skip("adb is not installed (Debian: apt-get install adb)")
    port = str(free_port())
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", port)
    yield port
    subprocess.run(["adb", "kill-server"], capture_output=True, timeout=30,
                   env=dict(os.environ, ANDROID_ADB_SERVER_PORT=port))


def test_real_adb_reports_no_device_attached(adb_server_port):
    with pytest.raises(NoDeviceError) as e:
        get_device("pixel-7")
    assert str(e.value).startswith("no Android device attached") and "\n" not in str(e.value)
    with pytest.raises(NoDeviceError, match="'NOPE' is not attached"):
        get_device("galaxy-s20", serial="NOPE")
    from click.testing import CliRunner

    from vitedge.cli.main import main

    r = CliRunner().invoke(main, ["devices", "check", "pixel-7"])
    assert r.exit_code == 2 and r.stderr.strip() == ("error: no Android device attached (`adb devices` lists none): "
                                                      "connect the phone by USB with USB debugging on (or `adb connect "
                                                      "HOST:PORT`), then retry")


# ---------------------------------------------------------------- stand-in tools, no phone needed
FAKE_BENCHMARK_MODEL = textwrap.dedent('''\
    #!{python}
    import json, os, sys
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    with open(os.environ.get("FAKE_LOG", os.devnull), "a") as f:
        f.write(json.dumps({{"argv": sys.argv[1:], "mark": os.environ.get("VITEDGE_MARK")}}) + "\\n")
    if not os.path.isfile(args["graph"]):
        print("ERROR: Could not open '%s'." % args["graph"]); sys.exit(1)
    runs, avg = int(args["num_runs"]), 1000.0 * (1 + len(os.path.basename(args["graph"])) % 5)
    print("STARTING!")
    print("count=%d first=%d curr=%d min=%d max=%d avg=%g std=3" % (int(args["warmup_runs"]), avg + 9, avg, avg - 1, avg + 9, avg + 1))
    print()
    print("count=%d first=%d curr=%d min=%d max=%d avg=%g std=2" % (runs, avg + 5, avg, avg - 2, avg + 5, avg))
    print()
    print("Inference timings in us: Init: 5685, First inference: %d, Warmup (avg): %g, Inference (avg): %g" % (avg + 9, avg + 1, avg))
''')


def _tool(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text.format(python=sys.executable))
    path.chmod(0o755)
    return str(path)


def _tflite_plan(tmp_path, n=3):
    points = []
    for i in range(n):
        (tmp_path / f"part{i}.tflite").write_bytes(b"TFL3 stand-in")
        points.append({"name": f"p{i}", "model": str(tmp_path / f"part{i}.tflite"),
                       "inputs": {"tokens": {"shape": [1, i + 2, 8], "dtype": "float32"}}, "tags": {"tokens": i + 2}})
    return {"points": points}


def test_host_driven_benchmark_model_without_python_on_the_device(tmp_path, monkeypatch):
    """The phone path (python = false): the host runs the protocol, the tool runs on the 'device'
    (here: a local transport), pinned by the affinity prefix; files pushed, then removed."""
    fake = _tool(tmp_path, "benchmark_model", FAKE_BENCHMARK_MODEL)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    dev_tmp = tmp_path / "device"
    dev_tmp.mkdir()
    dev = RemoteDevice(name="phone", runtime="benchmark_model", threads=4, config=FAST,
                       transport=LocalTransport(tmp_root=str(dev_tmp)), python=None,
                       affinity=["env", "VITEDGE_MARK=pinned"],
                       runtime_options={"binary": fake, "args": ["--use_xnnpack=true"]})
    assert dev.runtime_version().startswith("benchmark_model-")
    seen = []
    res = dev.run_plan(_tflite_plan(tmp_path), on_point=seen.append)
    assert [r["name"] for r in res["points"]] == ["p0", "p1", "p2"] and len(seen) == 3
    assert all(r["error_code"] == 0 and r["statistic"] == "mean" and r["runs"] == 5 for r in res["points"])
    assert all(r["median_ms"] == r["tool"]["avg_us"] / 1000 for r in res["points"])
    calls = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert all(c["mark"] == "pinned" for c in calls)  # the affinity prefix wrapped every run
    first = calls[0]["argv"]
    assert "--num_threads=4" in first and "--use_xnnpack=true" in first and "--warmup_runs=2" in first
    assert any(a.startswith("--input_layer_shape=1,") for a in first)
    assert res["environment"]["runtime"] == "benchmark_model" and res["environment"]["threads"] == 4
    assert os.listdir(dev_tmp) == []  # pushed files removed


def test_host_driven_missing_tool_on_device(tmp_path):
    dev = RemoteDevice(name="phone", runtime="benchmark_model", threads=4, config=FAST,
                       transport=LocalTransport(tmp_root=str(tmp_path)), python=None,
                       runtime_options={"binary": "/data/local/tmp/no-such-benchmark_model"})
    from vitedge.devices import RuntimeMissingError

    with pytest.raises(RuntimeMissingError, match=r"benchmark_model is not on phone \(this machine\) at /data/local/tmp/no-such.*chmod 755"):
        dev.runtime_version()
    with pytest.raises(DeviceError, match="runs self-timed tools only"):
        RemoteDevice(name="phone", runtime="onnxruntime", transport=LocalTransport(), python=None)


FAKE_COMMAND = textwrap.dedent('''\
    #!{python}
    import json, sys
    model, runs = sys.argv[1], int(sys.argv[2])
    print("Vitis AI runtime 3.5 (stand-in): model", model)
    print(json.dumps({{"vitedge": 1, "samples_ms": [1.0 + 0.1 * i for i in range(runs)], "version": "vart-3.5"}}))
''')


def test_command_runtime_on_device_through_the_runner(tmp_path):
    """The vendor-stack path (python on the device, e.g. a ZCU102): the runner fills the template,
    runs it without a shell and reads the documented JSON line."""
    cmd = _tool(tmp_path, "vbench", FAKE_COMMAND)
    dev = resolve_device("ssh://x@y", runtime="command", config=FAST,
                         settings={"python": sys.executable, "command": [cmd, "{model}", "{runs}"]})
    dev.transport = LocalTransport(tmp_root=str(tmp_path))  # the same protocol, without a network
    plan = _tflite_plan(tmp_path, 2)
    res = dev.run_plan(plan)
    row = res["points"][0]
    assert row["error_code"] == 0 and row["runs"] == 5 and row["median_ms"] == pytest.approx(1.2)
    assert row["tool"] == {"name": "command", "version": "vart-3.5"}
    assert dev.runtime_version() == "command-" + dev.probe_info["runtime_version"].split("-", 1)[1]


def test_command_output_contract():
    good = 'noise\n{"vitedge": 1, "median_ms": 2.5}\n'
    assert R.parse_command_output(good)["median_ms"] == 2.5
    for bad, msg in (("nothing here", "printed no"), ('{"vitedge": 1, "samples_ms": []}', "non-empty list"),
                     ('{"vitedge": 1}', "needs 'samples_ms' or a number 'median_ms'"),
                     ('{"vitedge": 2, "median_ms": 1}', "printed no")):
        with pytest.raises(ValueError, match=msg):
            R.parse_command_output(bad)
    assert R.fill_template(["vb", "--xmodel={model}", "{threads}"], {"model": "a b.xmodel", "threads": 4}) == \
        ["vb", "--xmodel=a b.xmodel", "4"]
    with pytest.raises(R.PlanError, match="unknown placeholder"):
        R.fill_template(["vb", "{modle}"], {"model": "m"})
