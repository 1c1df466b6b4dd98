"""Remote devices: a transport (ssh, adb, local subprocess) x a runtime x settings (a ``--device``
name becomes one in :mod:`vitedge.devices.registry`).

Two ways to run a plan (the runner's plan/result JSON, :mod:`vitedge.devices.runner`):

* **runner** (the device has Python 3 + numpy: Raspberry Pi, Jetson, ZCU102's ARM cores): one
  connection per run.  The runner file, the model files and ``plan.json`` go as a tar stream on
  stdin into a fresh ``mktemp -d`` directory on the device; ``python3 runner.py --progress-jsonl
  plan.json result.json`` runs there (under ``env`` and the CPU-affinity prefix); every measured
  point comes back at once as a JSON line on stdout (``on_point``: the profile saves it); the
  result JSON is read back and the directory is removed by the same remote shell, also when the
  link drops (the runner stops at its next write).  Before the first run, a probe checks
  Python, numpy and the runtime on the device and fails with the command that installs it there
  (:class:`~vitedge.devices.RuntimeMissingError`).
* **host-driven** (``python = false``: Android phones): only self-timed tools run, TFLite's
  ``benchmark_model`` or a ``command``; the runner's protocol runs on this machine and each point
  is one ``adb shell`` (or ssh) call of the tool, its output parsed here.

No torch here; nothing ever goes through a local shell.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import threading
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vitedge.devices import runner
from vitedge.devices.base import Device, DeviceError, file_sha256
from vitedge.devices.runner import RuntimeMissingError
from vitedge.devices.runtimes import SELF_TIMED, device_modules, host_packages
from vitedge.devices.transports import ConnectionLostError, Transport, check_remote_path

RESULT_MARK = "@@vitedge-result@@"

# Runs on the device's /bin/sh as: sh -c RUN_SCRIPT vitedge-run TMPROOT CMD...  with a tar of the
# run's files on stdin (a constant script: the directory and the command arrive as positional
# arguments, never spliced into it).  Exit 96: no directory or the files did not unpack.
RUN_SCRIPT = ('d=$(mktemp -d "${1:-${TMPDIR:-/tmp}}/vitedge.XXXXXXXX") || exit 96; shift; '
              'cd "$d" && tar xf - || { cd / && rm -rf "$d"; exit 96; }; '
              '"$@"; rc=$?; '
              'if [ "$rc" -eq 0 ]; then echo "' + RESULT_MARK + '"; cat result.json; fi; '
              'cd / && rm -rf "$d"; exit "$rc"')

# python3 -c PROBE_CODE module|binary NAME...   (stdlib only; one JSON line on stdout)
PROBE_CODE = r"""
import hashlib, importlib, json, os, platform, shutil, sys
out = {"python": platform.python_version(), "machine": platform.machine()}
try:
    import numpy
    out["numpy"] = numpy.__version__
except Exception as e:
    out["numpy_error"] = "%s: %s" % (type(e).__name__, e)
kind, names = sys.argv[1], sys.argv[2:]
if kind == "module":
    errors = []
    for n in names:
        try:
            m = importlib.import_module(n)
        except Exception as e:
            errors.append("%s: %s" % (type(e).__name__, " ".join(str(e).split())))
            continue
        out["runtime_module"] = n
        out["runtime_version"] = str(getattr(m, "__version__", "unknown"))
        break
    else:
        out["runtime_error"] = "; ".join(errors)
elif kind == "binary":
    b = names[0]
    f = b if os.sep in b else shutil.which(b)
    if f and os.path.isfile(f) and os.access(f, os.X_OK):
        with open(f, "rb") as fh:
            out["runtime_version"] = hashlib.sha256(fh.read()).hexdigest()[:12]
    else:
        out["runtime_error"] = "%s not found or not executable" % b
out["nproc"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
print(json.dumps(out))
"""


def _sha12(path: str) -> str:
    return file_sha256(path)[:12]


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Tar members without owner or date (no clock-skew warnings, no chown on the device)."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def _safe_name(i: int, path: str) -> str:
    return f"f{i}_" + re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(path))[-80:]


@dataclass
class RemoteDevice(Device):
    """A device reached through a :class:`~vitedge.devices.transports.Transport`.

    Attributes:
        transport: how to reach it; python: Python on the device (None: host-driven tools only);
        affinity: argument prefix pinning the run to cores (e.g. ``["taskset", "-c", "4-7"]``);
        env: environment variables for the run; runtime_options: the runner's ``runtime_options``
        (benchmark_model: ``binary``, ``args``; command: ``template``).
    """

    transport: Transport | None = None
    python: str | None = "python3"
    affinity: list = field(default_factory=list)
    env: dict = field(default_factory=dict)
    runtime_options: dict = field(default_factory=dict)
    probe_info: dict | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):  # threads 0 = what the device gives the process, found by the probe
        if self.runtime not in runner.available_runtimes():
            raise DeviceError(f"unknown runtime {self.runtime!r}: use one of {', '.join(runner.available_runtimes())}")
        if self.transport is None:
            raise DeviceError(f"device {self.name} has no transport")
        if self.threads < 0:
            raise DeviceError(f"threads must be >= 0, got {self.threads}")
        if self.python is None and self.runtime not in SELF_TIMED:
            raise DeviceError(f"{self.name} has no Python, so it runs self-timed tools only: use --runtime "
                              f"benchmark_model or command, not {self.runtime}")
        for k in self.env:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
                raise DeviceError(f"bad environment variable name {k!r}")

    # -- helpers -----------------------------------------------------------------------------------
    @property
    def label(self) -> str:
        return self.name if self.transport.label in self.name else f"{self.name} ({self.transport.label})"

    def _prefix(self) -> list:
        env = ["env", *[f"{k}={v}" for k, v in self.env.items()]] if self.env else []
        return [*env, *[str(a) for a in self.affinity]]

    def _host_binary(self) -> str | None:
        """benchmark_model given as a file on this machine (pushed for each run), else None."""
        b = self.runtime_options.get("binary")
        return os.path.abspath(b) if self.runtime == "benchmark_model" and b and os.path.isfile(b) else None

    def _install_hint(self, pkg: str) -> str:
        return self.transport.hint([self.python or "python3", "-m", "pip", "install", pkg])

    # -- probe -------------------------------------------------------------------------------------
    def probe(self) -> dict:
        """Check the device can run this runtime (once; cached): Python, numpy, runtime, cores."""
        if self.probe_info is not None:
            return self.probe_info
        info = self._probe_python() if self.python is not None else self._probe_tool()
        if self.threads == 0 and info.get("nproc"):
            self.threads = int(info["nproc"])
        self.probe_info = info
        return info

    def _probe_python(self) -> dict:
        if self.runtime == "benchmark_model":
            kind, names = "binary", [self.runtime_options.get("binary", "benchmark_model")]
        elif self.runtime == "command":
            kind, names = "binary", [str(self.runtime_options["template"][0])]
        else:  # the runtimes table's modules (a runtime registered later: its name)
            kind, names = "module", list(device_modules(self.runtime))
        if kind == "binary" and self._host_binary():
            kind, names = "none", []
        p = self.transport.run([*self._prefix(), self.python, "-c", PROBE_CODE, kind, *names], check=False,
                               timeout=120, doing="checking Python and the runtime")
        line = next((ln for ln in reversed(p.stdout.splitlines()) if ln.startswith("{")), None)
        last = next((ln.strip() for ln in reversed((p.stderr or p.stdout or "").splitlines()) if ln.strip()), "no output")
        if p.returncode in (126, 127):
            raise RuntimeMissingError(
                f"cannot run {self.python} on {self.label} ({last[:200]}): install Python 3 with numpy there (e.g. "
                "`sudo apt install python3 python3-numpy`) or point --device-opt python=PATH at it")
        if p.returncode != 0 or line is None:
            raise DeviceError(f"checking {self.label} failed (exit {p.returncode}): {last}"[:600])
        info = json.loads(line)
        if "numpy_error" in info:
            raise RuntimeMissingError(f"numpy is not importable on {self.label} ({info['numpy_error']}): install it "
                                      f"there: `{self._install_hint('numpy')}`")
        if "runtime_error" in info:
            if self.runtime in SELF_TIMED:
                raise RuntimeMissingError(
                    f"{self.runtime}: {info['runtime_error']} on {self.label}: copy the binary there (TFLite's prebuilt "
                    "benchmark_model for the device's CPU) and give its path with --device-opt benchmark_model=PATH"
                    if self.runtime == "benchmark_model" else
                    f"the command {names[0]!r} is not on {self.label}: install it or fix --device-opt command=...")
            pkg = host_packages(self.runtime)[0]
            raise RuntimeMissingError(f"{self.runtime} is not importable on {self.label} ({info['runtime_error'][:200]}): "
                                      f"install it there: `{self._install_hint(pkg)}`")
        if self._host_binary():
            info["runtime_version"] = f"benchmark_model-{_sha12(self._host_binary())}"
        elif self.runtime in SELF_TIMED:
            info["runtime_version"] = f"{self.runtime}-{info.get('runtime_version', 'unknown')}"
        return info

    def _probe_tool(self) -> dict:
        info: dict = {}
        if self.transport.kind == "adb":  # resolves the serial: "no device attached" is reported here
            self.transport.resolve_serial()
            p = self.transport.run(["getprop"], check=False, timeout=60, doing="reading the phone's properties")
            props = dict(re.findall(r"^\[([^\]]+)\]: \[([^\]]*)\]", p.stdout, re.M))
            info.update({k: props.get(v) for k, v in (("model", "ro.product.model"), ("android", "ro.build.version.release"),
                                                      ("soc", "ro.soc.model"), ("abi", "ro.product.cpu.abi"))})
        if self.runtime == "benchmark_model":
            local = self._host_binary()
            if local:
                info["runtime_version"] = f"benchmark_model-{_sha12(local)}"
            else:
                binary = self.runtime_options.get("binary", "benchmark_model")
                p = self.transport.run(["test", "-x", binary], check=False, timeout=60, doing="looking for benchmark_model")
                if p.returncode != 0:
                    raise RuntimeMissingError(
                        f"benchmark_model is not on {self.label} at {binary}: push TFLite's prebuilt binary "
                        f"(android_aarch64_benchmark_model) there and make it executable "
                        f"(`{self.transport.hint(['chmod', '755', binary])}`), or give a file on this machine with "
                        "--device-opt benchmark_model=PATH (pushed for each run)")
                p = self.transport.run(["sha256sum", binary], check=False, timeout=60, doing="hashing benchmark_model")
                digest = p.stdout.split()[0][:12] if p.returncode == 0 and p.stdout.split() else "unknown"
                info["runtime_version"] = f"benchmark_model-{digest}"
        else:
            template = self.runtime_options["template"]
            p = self.transport.run(["sh", "-c", 'command -v "$1"', "sh", str(template[0])], check=False, timeout=60,
                                   doing="looking for the command")
            if p.returncode != 0:
                raise RuntimeMissingError(f"the command {template[0]!r} is not on {self.label}: install it there or "
                                          "fix --device-opt command=...")
            info["runtime_version"] = f"command-{os.path.basename(str(template[0]))}"
        return info

    def runtime_version(self) -> str:
        return str(self.probe().get("runtime_version") or "unknown")

    # -- running -----------------------------------------------------------------------------------
    def _full_plan(self, plan: dict) -> dict:
        self.probe()
        opts = {k: v for k, v in self.runtime_options.items()}
        return dict(plan, runtime=self.runtime, threads=self.threads, config=asdict(self.config),
                    runtime_options=opts)

    def run_plan(self, plan: dict, *, on_point=None) -> dict:
        plan = self._full_plan(plan)
        if self.python is None:
            return self._run_host_driven(plan, on_point)
        with tempfile.TemporaryDirectory(prefix="vitedge-stage-") as stage:
            staged, files = self._stage(plan, Path(stage))
            bundle = Path(stage) / "bundle.tar"
            with tarfile.open(bundle, "w", format=tarfile.USTAR_FORMAT) as tar:
                for f in files:
                    tar.add(f, arcname=os.path.basename(f), filter=_plain)
            return self._stream(bundle, staged, on_point)

    def _stage(self, plan: dict, stage: Path) -> tuple:
        """Copy the runner, the model and input files into ``stage`` under unique flat names;
        return the plan rewritten to those names and the list of files."""
        names: dict = {}

        def put(path) -> str:
            path = os.path.abspath(str(path))
            if path not in names:
                names[path] = _safe_name(len(names), path)
                try:
                    os.link(path, stage / names[path])
                except OSError:
                    shutil.copy2(path, stage / names[path])
            return names[path]
        points = []
        for p in plan["points"]:
            q = dict(p, model=put(p["model"]))
            if "inputs_npz" in p:
                q["inputs_npz"] = [put(x) for x in p["inputs_npz"]] if isinstance(p["inputs_npz"], list) else put(p["inputs_npz"])
            points.append(q)
        opts = dict(plan.get("runtime_options") or {})
        if self._host_binary():
            opts["binary"] = put(self._host_binary())
        staged = dict(plan, points=points, runtime_options=opts)
        shutil.copy2(runner.__file__, stage / "runner.py")
        (stage / "plan.json").write_text(json.dumps(staged))
        return staged, [str(stage / "runner.py"), str(stage / "plan.json"), *[str(stage / n) for n in names.values()]]

    def _stream(self, bundle: Path, plan: dict, on_point) -> dict:
        total = len(plan["points"])
        tmp_root = self.transport.tmp_root or ""
        if tmp_root:
            check_remote_path(tmp_root)
        argv = ["sh", "-c", RUN_SCRIPT, "vitedge-run", tmp_root, *self._prefix(), self.python, "runner.py",
                "--progress-jsonl", "plan.json", "result.json"]
        proc = self.transport.popen(argv, stdin=True)
        errors: deque = deque(maxlen=50)

        def feed():  # the files, as a tar stream; a closed pipe means the run failed early (seen below)
            try:
                with open(bundle, "rb") as f:
                    shutil.copyfileobj(f, proc.stdin, 1 << 16)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        sender = threading.Thread(target=feed, daemon=True)
        sender.start()
        drain = threading.Thread(target=lambda: errors.extend(io.TextIOWrapper(proc.stderr, errors="replace")),
                                 daemon=True)
        drain.start()
        received, result_lines = 0, None
        try:
            for line in io.TextIOWrapper(proc.stdout, encoding="utf-8", errors="replace"):
                if result_lines is not None:
                    result_lines.append(line)
                elif line.startswith(RESULT_MARK):
                    result_lines = []
                elif line.startswith('{"point"'):
                    try:
                        row = json.loads(line)["point"]
                    except (ValueError, KeyError, TypeError):
                        continue  # a torn line: that point is measured again on resume
                    received += 1
                    if on_point:
                        on_point(row)
            rc = proc.wait()
        except BaseException:
            proc.kill()  # our own child (ssh/adb/python), by handle
            proc.wait()
            raise
        drain.join(timeout=5)
        sender.join(timeout=5)
        err_text = "".join(errors)
        doing = f"profiling ({received} of {total} points received)"
        failure = self.transport.failure(rc, err_text, doing)
        if failure is not None:
            if isinstance(failure, ConnectionLostError):
                raise ConnectionLostError(f"lost the connection to {self.label} after {received} of {total} points "
                                          f"({str(failure).split(' while ')[0]})")
            raise failure
        last = next((ln.strip() for ln in reversed(err_text.splitlines()) if ln.strip()), "no output")
        last = last.removeprefix("runner: ")
        if rc == 3:
            pkg = host_packages(self.runtime)[0]
            raise RuntimeMissingError(f"{last} (on {self.label}; install: `{self._install_hint(pkg)}`)")
        if rc == 2:
            raise DeviceError(f"{self.label} rejected the plan: {last.removeprefix('bad plan: ')}")
        if rc in (126, 127):
            raise RuntimeMissingError(f"cannot start {self.python} on {self.label}: {last}")
        if rc == 96:
            raise DeviceError(f"could not create or fill a temporary directory on {self.label} (needs mktemp, tar "
                              f"and space in {tmp_root or '$TMPDIR or /tmp'}): {last}")
        if rc != 0 or result_lines is None:
            raise DeviceError(f"the runner failed on {self.label} (exit {rc}) after {received} of {total} points: {last}"[:900])
        try:
            result = json.loads("".join(result_lines))
        except ValueError:
            raise ConnectionLostError(f"the result from {self.label} is incomplete (link dropped at the end?)") from None
        if not isinstance(result, dict) or result.get("format") != runner.FORMAT:
            raise DeviceError(f"{self.label} returned a result of another format: is its runner.py current?")
        return result

    def _run_host_driven(self, plan: dict, on_point) -> dict:
        remote_dir = self.transport.mkdtemp()
        try:
            with tempfile.TemporaryDirectory(prefix="vitedge-stage-") as stage:
                names: dict = {}
                for p in plan["points"]:
                    path = os.path.abspath(p["model"])
                    if path not in names:
                        names[path] = _safe_name(len(names), path)
                        shutil.copy2(path, Path(stage) / names[path])
                binary = self.runtime_options.get("binary", "benchmark_model")
                if self._host_binary():
                    shutil.copy2(self._host_binary(), Path(stage) / "benchmark_model")
                    binary = f"{remote_dir}/benchmark_model"
                files = [str(Path(stage) / n) for n in names.values()]
                if self._host_binary():
                    files.append(str(Path(stage) / "benchmark_model"))
                self.transport.push(files, remote_dir)
                if self._host_binary():
                    self.transport.run(["chmod", "755", binary], doing="making benchmark_model executable")
            remote_of = {path: f"{remote_dir}/{n}" for path, n in names.items()}
            opts = {k: v for k, v in plan.get("runtime_options", {}).items()}
            if self.runtime == "benchmark_model":
                opts["binary"] = binary
            version = self.runtime_version()

            def factory(rt, path, threads):
                return runner.open_session(rt, remote_of[os.path.abspath(path)], threads,
                                           dict(opts, execute=self._execute, version=version))
            result = runner.run_plan(dict(plan, runtime_options={}), on_point=on_point, session_factory=factory)
        finally:
            self.transport.remove(remote_dir)
        info = {k: v for k, v in (self.probe_info or {}).items() if k != "nproc"}
        result["environment"] = {"runtime": self.runtime, "runtime_version": version, "threads": self.threads,
                                 "transport": self.transport.describe(), "affinity": list(self.affinity), **info}
        return result

    def _execute(self, argv: list, timeout_s: float | None) -> tuple:
        p = self.transport.run([*self._prefix(), *argv], check=False, timeout=(timeout_s or 3600) + 120,
                               doing=f"running {self.runtime}")
        return p.returncode, (p.stdout or "") + (p.stderr or "")

    def measure_model(self, model_path, feeds_list, *, name="model") -> dict:
        with tempfile.TemporaryDirectory(prefix="vitedge-feeds-") as tmp:
            point = {"name": name, "model": str(model_path)}
            if self.runtime not in SELF_TIMED:  # the tools make their own inputs
                if not feeds_list:
                    raise DeviceError("measure_model needs at least one input dict")
                paths = []
                for i, feeds in enumerate(feeds_list):
                    paths.append(os.path.join(tmp, f"feeds{i}.npz"))
                    np.savez(paths[-1], **{k: np.asarray(v) for k, v in feeds.items()})
                point["inputs_npz"] = paths
            result = self.run_plan({"points": [point]})
        m = result["points"][0]
        if m["error_code"] != 0:
            raise DeviceError(f"measuring {model_path} on {self.label} failed: {m['error']}")
        m["environment"] = result["environment"]
        fp = next(iter((result.get("models") or {}).values()), None)  # one model in this plan
        if fp is not None:
            m["footprint"] = dict(fp, memory_scope="the runner process on the device" if self.python is not None
                                  else f"{self.runtime} on the device")
        return m

    def describe(self) -> dict:
        return {"name": self.name, "runtime": self.runtime, "threads": self.threads, "config": asdict(self.config),
                "transport": self.transport.describe(), "python": self.python, "affinity": list(self.affinity),
                "env": dict(self.env), "runtime_options": dict(self.runtime_options)}
