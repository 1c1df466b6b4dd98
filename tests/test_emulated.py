"""The rpi4 path on an emulated Raspberry Pi: a Debian bookworm arm64 userland run by qemu-user, reached
over ssh on loopback (scripts/emulated_pi.py: built once and cached, started for the session).

Unchanged CLI commands run against it: `vitedge devices check rpi4`, `vitedge profile --device rpi4`
(ONNX Runtime and LiteRT, a coarse token grid: n = 1, 2, 17), `vitedge export --device rpi4` (threshold ONNX, capacity
TFLite), `vitedge bench --device rpi4`.  What emulation can show is checked: the runner on aarch64 with
Debian's Python and numpy, the ARM runtimes loading the exported files, outputs equal to the x86 export's,
resume after the link is killed mid-profile, and the missing-runtime errors naming the pip command.
Emulated latencies mean nothing (qemu): no timing is asserted.  A tiny timm ViT made here (17 tokens,
2 blocks) keeps each run short; one runtime thread (the emulator has two host cores).

Marked ``emulated``: they run with ``pytest -m emulated`` (.ci/run does) and skip, with the reason, where
the machine cannot (not root, no binfmt_misc, no mmdebstrap/qemu-user-static/sshd, offline first build).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import timm
from click.testing import CliRunner

from _sshd import children
from conftest import make_tiny_vit
from vitedge.cli.main import main

pytestmark = pytest.mark.emulated

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "emulated_pi.py"
QUICK = ["--threads", "1", "--warmup", "1", "--runs", "3", "--min-time", "0", "--quiet"]
GRID = ["--tokens-step", "16"]      # n = 1, 2, 17: a coarse grid (fewer LiteRT part conversions), the table's shape unchanged


def _script():
    spec = importlib.util.spec_from_file_location("emulated_pi", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def board():
    emu = _script()
    try:
        emu.check()
    except emu.Unavailable as e:
        pytest.skip(f"no emulated board on this machine: {e}")
    try:
        manifest = emu.build(log=print)
    except emu.Unavailable as e:
        pytest.skip(f"the emulated board could not be built (offline? it needs the Debian mirror and PyPI once): {e}")
    state = emu.start(log=print)
    yield dict(state, manifest=manifest)
    emu.stop(state["run"], log=print)


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    """A tiny ViT as a local-dir: model, and one cache shared by the tests (profiles reused by exports)."""
    root = tmp_path_factory.mktemp("emulated")
    timm.models.save_for_hf(make_tiny_vit(seed=3), str(root / "vit"), safe_serialization=True)
    return {"root": root, "model": ["--model", f"local-dir:{root / 'vit'}", "--calib-limit", "16",
                                    "--cache-dir", str(root / "cache")]}


def device(board, python=None) -> list:
    return ["--device", "rpi4", "--host", "pi-emu", "--device-opt", f"ssh_config={board['ssh_config']}",
            "--device-opt", f"python={python or board['python']}"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def ssh(board, *argv) -> str:
    return subprocess.run(["ssh", "-F", board["ssh_config"], "pi-emu", *argv], check=True, capture_output=True,
                          text=True, timeout=300).stdout


# ------------------------------------------------------------------------------------------ the board
def test_board_is_aarch64_with_debian_python_and_numpy(board):
    assert ssh(board, "uname", "-m").strip() == "aarch64"
    v = board["manifest"]["versions"]
    assert v["machine"] == "aarch64" and v["python"].startswith("3.11") and v["numpy"].startswith("1.24")
    r = invoke("devices", "check", "rpi4", *device(board)[2:])
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"rpi4: onnxruntime {v['onnxruntime']}") and "numpy 1.24" in r.output and "aarch64" in r.output


def test_missing_runtime_names_the_pip_command(board):
    """Debian's python3 has numpy but no runtime: exit 3, one line naming the install on the board."""
    for runtime, pkg in (("onnxruntime", "onnxruntime"), ("litert", "ai-edge-litert")):
        r = CliRunner().invoke(main, ["devices", "check", "rpi4", *device(board, board["system_python"])[2:],
                                      "--runtime", runtime])
        assert r.exit_code == 3, r.output
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and f"/usr/bin/python3 -m pip install {pkg}`" in last, last


# ------------------------------------------------------------------------------------------ profiles
@pytest.mark.parametrize("runtime", ["onnxruntime", "litert"])
def test_profile_on_the_board(board, work, runtime):
    if runtime == "litert":
        pytest.importorskip("litert_torch", reason="the tflite extra exports the parts: pip install -e '.[tflite]'")
    out = work["root"] / f"rpi4-{runtime}.json"
    r = invoke("profile", *work["model"], *device(board), "--runtime", runtime, *QUICK, *GRID, "-o", out)
    assert r.exit_code == 0, r.output
    t = json.loads(out.read_text())
    env = t["device"]["environment"]
    assert env["machine"] == "aarch64" and env["numpy"].startswith("1.24") and env["python"].startswith("3.11")
    assert t["device"]["runtime"] == runtime and all(v > 0 for p in t["parts"].values() for v in p["median_ms"])
    fp = t["meta"]["footprint"]
    assert fp["parts"]["attention"]["load_ms"] > 0 and fp["parts"]["attention"]["file_bytes"] > 0
    if fp["memory_source"] is not None:  # qemu-user: the emulator process's /proc/self/status
        assert fp["peak_rss_mib"] > 0


def test_profile_resumes_after_the_link_is_killed(board, work):
    out, partial = work["root"] / "resume.json", work["root"] / "resume.json.partial.jsonl"
    args = ["profile", *work["model"], *device(board), "--runtime", "onnxruntime", *QUICK, "--tokens-step", "4",
            "--no-cache", "-o", out]
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("r", CliRunner().invoke(main, [str(a) for a in args])))
    worker.start()
    killed, deadline = [], time.time() + 600
    while not killed and worker.is_alive() and time.time() < deadline:
        if partial.exists() and len(partial.read_text().splitlines()) > 4:
            for pid in children(os.getpid(), "ssh"):
                os.kill(pid, signal.SIGKILL)  # our own ssh client: the link drops mid-profile
                killed.append(pid)
        time.sleep(0.01)
    worker.join(600)
    assert killed, "the profile ended before the link could be killed"
    assert box["r"].exit_code == 4 and "--resume" in box["r"].stderr, box["r"].output
    saved = len(partial.read_text().splitlines()) - 1  # a header line, then one line per point
    r = invoke(*args, "--resume")
    assert r.exit_code == 0, r.output
    t = json.loads(out.read_text())
    assert t["meta"]["resumed_points"] >= saved - 1 > 0 and not partial.exists()


# ------------------------------------------------------------------------------------------ exports, parity, bench
def _parity_on_board(board, model: Path, runtime: str, images: np.ndarray) -> np.ndarray:
    """The board's outputs of ``model`` (its ARM runtime) on ``images``: files written into the root (what
    an scp would do), run over ssh with the board's Python."""
    d = Path(board["root"]) / "tmp" / f"parity-{os.getpid()}-{model.stem}"
    d.mkdir(parents=True, exist_ok=True)
    try:
        (d / model.name).write_bytes(model.read_bytes())
        np.save(d / "x.npy", images)
        code = PARITY_ORT if runtime == "onnxruntime" else PARITY_LITERT
        ssh(board, board["python"], "-c", f"'{code}'", f"/tmp/{d.name}/{model.name}", f"/tmp/{d.name}")
        return np.load(d / "y.npy")
    finally:
        shutil.rmtree(d, ignore_errors=True)


PARITY_ORT = ("import sys, numpy as np, onnxruntime as o; s = o.InferenceSession(sys.argv[1]); x = np.load(sys.argv[2] + "
              "\"/x.npy\"); n = s.get_inputs()[0].name; np.save(sys.argv[2] + \"/y.npy\", np.concatenate([s.run(None, {n: "
              "x[i:i+1]})[0] for i in range(len(x))]))")
PARITY_LITERT = ("import sys, numpy as np; from ai_edge_litert.interpreter import Interpreter; i = Interpreter(model_path="
                 "sys.argv[1]); r = i.get_signature_runner(); x = np.load(sys.argv[2] + \"/x.npy\"); k = list(r.get_input_details())[0]; "
                 "np.save(sys.argv[2] + \"/y.npy\", np.concatenate([sorted(r(**{k: x[j:j+1]}).items())[0][1] for j in range(len(x))]))")


def _x86(model: Path, runtime: str, images: np.ndarray) -> np.ndarray:
    from vitedge.devices.runner import open_session

    s = open_session(runtime, str(model), 1)
    return np.concatenate([s.run({s.input_specs[0]["name"]: images[i:i + 1]})[0] for i in range(len(images))])


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_export_on_the_board_and_parity_with_x86(board, work, fmt):
    """threshold ONNX in ONNX Runtime, capacity TFLite in LiteRT: the whole job with the board as the device
    (calibration here, the board's latency table, search, export, measured on the board); the ARM runtime
    then runs the exported file on 8 images and must agree with the x86 runtime on the same file."""
    runtime = "onnxruntime" if fmt == "onnx" else "litert"
    if fmt == "tflite":
        pytest.importorskip("litert_torch", reason="the tflite extra exports TFLite: pip install -e '.[tflite]'")
    out = work["root"] / f"export-{fmt}"
    mode = "threshold" if fmt == "onnx" else "capacity"
    r = invoke("export", *work["model"], *device(board), "--runtime", runtime, "--format", fmt, "--mode", mode, *QUICK, *GRID,
               "--max-accuracy-drop", "100", "--search-grid", "4", "-o", out)
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["mode"] == mode and rep["device"]["name"] == "rpi4"
    assert rep["measured_ms"]["median"] > 0 and rep["footprint"]["model"]["memory_scope"] == "the runner process on the device"
    model = out / f"model.{fmt}"
    images = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    arm, x86 = _parity_on_board(board, model, runtime, images), _x86(model, runtime, images)
    err = float(np.abs(arm - x86).max())
    print(f"parity {fmt}: max |ARM - x86| {err:.2e}, top-1 agreement {(arm.argmax(1) == x86.argmax(1)).mean():.3f}")
    assert err < 1e-4 and (arm.argmax(1) == x86.argmax(1)).all()
    work[f"export-{fmt}"] = model


def test_bench_on_the_board(board, work):
    model = work.get("export-onnx")
    if model is None:
        pytest.skip("needs the ONNX export of test_export_on_the_board_and_parity_with_x86")
    r = invoke("bench", model, *device(board), "--threads", "1", "--warmup", "1", "--runs", "3", "--min-time", "0",
               "--rounds", "2", "--images", "2", "--max-cv", "100", "--drift-tolerance", "100", "--quiet", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["device"]["name"] == "rpi4" and res["environment"]["machine"] == "aarch64"
    fp = res["new"]["footprint"]
    assert fp["memory_scope"] == "the runner process on the device" and fp["load_ms"] > 0 and fp["file_bytes"] > 0


# ------------------------------------------------------------------------------------------ Python 3.9 (bullseye)
@pytest.fixture(scope="module")
def bullseye(request):
    """Raspberry Pi OS 11's Debian: Python 3.9 (the runner's oldest target in practice).  Outside CI's 5 minutes:
    runs with `pytest -m "emulated and bullseye"`."""
    if "bullseye" not in (request.config.getoption("markexpr") or ""):
        pytest.skip('the bullseye board (Python 3.9) runs with -m "emulated and bullseye" (about 2 min more)')
    emu = _script()
    try:
        emu.check()
        manifest = emu.build("bullseye", log=print)
    except emu.Unavailable as e:
        pytest.skip(f"no bullseye board here: {e}")
    state = emu.start("bullseye", log=print)
    yield dict(state, manifest=manifest)
    emu.stop(state["run"], "bullseye", log=print)


@pytest.mark.bullseye
def test_runner_on_python39(bullseye, tmp_path):
    from test_bench import matmul_model

    assert bullseye["manifest"]["versions"]["python"].startswith("3.9")
    r = invoke("devices", "check", "rpi4", *device(bullseye)[2:])
    assert r.exit_code == 0 and "python 3.9" in r.output and "aarch64" in r.output, r.output
    model = matmul_model(tmp_path / "m.onnx", 1, size=16, hw=16)
    r = invoke("bench", model, *device(bullseye), "--threads", "1", "--warmup", "1", "--runs", "3", "--min-time", "0",
               "--rounds", "2", "--images", "2", "--max-cv", "100", "--drift-tolerance", "100", "--quiet", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["environment"]["python"].startswith("3.9") and res["new"]["footprint"]["load_ms"] > 0
