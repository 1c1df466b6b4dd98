#!/usr/bin/env python3
"""An emulated Raspberry Pi (a Debian arm64 userland run by qemu-user) reachable over ssh on loopback.

    sudo python3 scripts/emulated_pi.py build    # debootstrap bookworm arm64 + aarch64 wheels, cached
    sudo python3 scripts/emulated_pi.py start    # prints JSON: host, ssh_config, python, port
    vitedge devices check rpi4 --host pi-emu --device-opt ssh_config=SSH_CONFIG --device-opt python=/opt/ve/bin/python
    sudo python3 scripts/emulated_pi.py stop

What it is (as tried by hand in issue 14 and docs in /work/shared/notes/device-field-notes.md):

* **root**: Debian bookworm arm64 (python3, python3-numpy, bash, dash, coreutils, tar) unpacked by
  ``mmdebstrap --variant=extract`` from the Debian mirror of this machine's apt sources: Debian's
  Python 3.11 and numpy 1.24, as a Pi's OS has them.  Extracting runs no maintainer scripts, so nothing
  runs under emulation while building (about 15 s; ``debootstrap``, as first tried in issue 14, took
  3-7 min here); the one thing those scripts do that matters, the BLAS/LAPACK alternatives numpy links
  against, is done by this script.  aarch64 binaries run through qemu-user-static registered in
  binfmt_misc (its F flag: the root needs no qemu binary inside).
* **wheels**: onnxruntime and ai-edge-litert for aarch64 (``pip download --platform manylinux2014_aarch64
  --platform manylinux_2_28_aarch64 --only-binary=:all:``), installed from this machine with pip's
  ``--target`` into ``/opt/ve``, a virtual environment over Debian's Python that uses Debian's numpy
  (``include-system-site-packages``).  ``/usr/bin/python3`` has numpy but no runtime (the
  missing-runtime errors are checked with it).
* **cache**: ``$VITEDGE_EMU_CACHE`` (default ``~/.cache/vitedge-emu``), one folder per key (suite,
  architecture, packages, wheel requirements, this script's BUILD_VERSION); a root is built into a
  temporary folder and renamed when complete, so an interrupted build is never used.
* **ssh**: this machine's OpenSSH server on a free 127.0.0.1 port with ``ChrootDirectory`` the root:
  the commands vitedge sends (sh, tar, python3) are the arm64 ones, ``uname -m`` says aarch64.  A
  throwaway host key, client key, known_hosts and an ssh config with a ``Host pi-emu`` entry are
  written to the run folder; host keys are checked as with a real board.  ``/proc`` and ``/dev`` are
  bind-mounted into the root, **never /sys**: ONNX Runtime's cpuinfo would read the host's x86
  topology under qemu and crash.
* ``stop`` ends that sshd (by its pid file) and unmounts.

Needs root, mmdebstrap, qemu-user-static and openssh-server (``apt-get install -y mmdebstrap
qemu-user-static openssh-server``), binfmt_misc, and the network for the first build (the Debian
mirror, PyPI).  ``check`` prints why the machine cannot (exit 1).  Emulated latencies mean nothing
(~4 s per inference of the shipped model in ONNX Runtime); correctness does.  Stdlib only.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUILD_VERSION = 1
ARCH = "arm64"
SUITES = {"bookworm": "3.11", "bullseye": "3.9"}  # Debian suite -> its Python (bullseye: Raspberry Pi OS 11's 3.9)
# Whether the runtimes use Debian's numpy: bookworm's 1.24 satisfies them; bullseye's 1.19.5 does not (onnxruntime
# needs >= 1.21.6 and aborts at import with it), so there `pip install onnxruntime` brings numpy 1.26 into the venv,
# as it does on Raspberry Pi OS 11, and so does this script.
DEBIAN_NUMPY = {"bookworm": True, "bullseye": False}
PACKAGES = ("python3", "python3-numpy", "libstdc++6", "bash", "dash", "coreutils", "tar")  # the runner and the runtimes
WHEELS = ("onnxruntime", "ai-edge-litert", "numpy<2")   # numpy<2: what a Pi with Debian's numpy 1.x gets
# per suite where it differs: onnxruntime for Python 3.9 (1.19.2 and 1.16.3 tried) aborts at import under
# qemu-user without /sys ("Attempt to use DefaultLogger but none has been registered"), where 1.32 only warns:
# bullseye's root gets the two /sys files cpuinfo reads first (a 4-core board, as a Pi 4; never the host's /sys)
SUITE_WHEELS = {"bullseye": ("onnxruntime==1.16.3", "ai-edge-litert", "numpy<2")}
FAKE_SYS_CPUS = {"bullseye": "0-3"}
VENV = "/opt/ve"


def pip_target(python: str) -> tuple:
    """pip options selecting aarch64 wheels for CPython ``python``."""
    return ("--only-binary=:all:", "--platform", "manylinux2014_aarch64", "--platform", "manylinux_2_17_aarch64",
            "--platform", "manylinux_2_28_aarch64", "--python-version", python, "--implementation", "cp")
HOST_ALIAS = "pi-emu"
QEMU_CONF = "/usr/lib/binfmt.d/qemu-aarch64.conf"
BINFMT = "/proc/sys/fs/binfmt_misc"


class Unavailable(RuntimeError):
    """This machine cannot run the emulated board (the message says why and what to install)."""


def cache_root() -> Path:
    return Path(os.environ.get("VITEDGE_EMU_CACHE") or Path.home() / ".cache" / "vitedge-emu")


def key(suite: str = "bookworm") -> str:
    spec = ",".join(PACKAGES) + "|" + ",".join(SUITE_WHEELS.get(suite, WHEELS))
    digest = __import__("hashlib").sha256(spec.encode()).hexdigest()[:8]
    return f"{suite}-{ARCH}-py{SUITES[suite]}-{digest}-v{BUILD_VERSION}"


def paths(suite: str = "bookworm") -> dict:
    if suite not in SUITES:
        raise Unavailable(f"unknown suite {suite!r}: use one of {', '.join(SUITES)}")
    base = cache_root() / key(suite)
    return {"base": base, "root": base / "root", "wheels": base / "wheels", "manifest": base / "manifest.json",
            "runs": base / "runs"}


def _pip_env() -> dict:
    """pip without this machine's configuration (its constraints and local indexes are for its own packages;
    these wheels are for another machine): PyPI, as on the board."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return dict(env, PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")


def _run(argv: list, **kw) -> subprocess.CompletedProcess:
    """Run an argument list (never a shell); raise Unavailable with its last output line on failure."""
    p = subprocess.run([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       errors="replace", **kw)
    if p.returncode != 0:
        tail = " | ".join(p.stdout.strip().splitlines()[-3:])
        raise Unavailable(f"{argv[0]} failed (exit {p.returncode}): {tail[-600:]}")
    return p


def mirror() -> str:
    """The Debian mirror of this machine's apt sources (deb822 ``URIs:`` or a ``deb`` line), else deb.debian.org."""
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*")) + [Path("/etc/apt/sources.list")]:
        with contextlib.suppress(OSError):
            text = f.read_text()
            m = re.search(r"^URIs:\s*(\S+/debian)/?\s*$", text, re.M) or re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s", text, re.M)
            if m:
                return m.group(1)
    return "http://deb.debian.org/debian"


# ------------------------------------------------------------------------------------------- checks
def ensure_binfmt() -> None:
    """Register qemu-aarch64 in binfmt_misc (mounting it first) unless it is; raise Unavailable."""
    entry = Path(BINFMT) / "qemu-aarch64"
    if entry.exists() and entry.read_text().startswith("enabled"):
        return
    if not Path(QEMU_CONF).is_file():
        raise Unavailable(f"qemu-user-static is not installed ({QEMU_CONF} missing): apt-get install -y qemu-user-static")
    if not Path(BINFMT, "register").exists():
        p = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT], capture_output=True, text=True)
        if p.returncode != 0:
            raise Unavailable(f"binfmt_misc cannot be mounted here ({p.stderr.strip()[:200]}): run on a machine or "
                              "container that allows it (privileged)")
    try:
        with open(Path(BINFMT, "register"), "w") as f:
            f.write(Path(QEMU_CONF).read_text().strip())
    except OSError as e:
        if not entry.exists():  # EEXIST when another process registered it meanwhile
            raise Unavailable(f"cannot register qemu-aarch64 in binfmt_misc: {e}") from None


def check() -> None:
    """Raise Unavailable naming the first thing missing for build/start."""
    if sys.platform != "linux" or os.geteuid() != 0:
        raise Unavailable("the emulated board needs root on Linux (debootstrap, chroot, mounts, sshd)")
    for tool, pkg in (("mmdebstrap", "mmdebstrap"), ("ssh", "openssh-client"), ("ssh-keygen", "openssh-client")):
        if not shutil.which(tool):
            raise Unavailable(f"{tool} is not installed: apt-get install -y {pkg}")
    if not os.path.exists("/usr/sbin/sshd"):
        raise Unavailable("the OpenSSH server is not installed (/usr/sbin/sshd): apt-get install -y openssh-server")
    ensure_binfmt()


# ------------------------------------------------------------------------------------------- build
def _mounted_under(root: Path) -> list:
    prefix = str(root.resolve()) + "/"
    with open("/proc/mounts") as f:
        return [ln.split()[1] for ln in f if (ln.split()[1] + "/").startswith(prefix)]


@contextlib.contextmanager
def mounted(root: Path):
    """/proc and /dev of this machine inside ``root`` (never /sys), unmounted after."""
    done = []
    try:
        for what, args in (("proc", ["-t", "proc", "proc"]), ("dev", ["--bind", "/dev"])):
            target = root / what
            target.mkdir(exist_ok=True)
            if str(target.resolve()) not in _mounted_under(root):
                _run(["mount", *args, target])
                done.append(target)
        yield
    finally:
        for target in reversed(done):
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


def download_wheels(dest: Path, python: str, wheels: tuple, log) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="wheels.", dir=dest.parent))
    log(f"downloading aarch64 wheels ({', '.join(wheels)}) for CPython {python}")
    _run([sys.executable, "-m", "pip", "download", "-q", *pip_target(python), "-d", tmp, *wheels], env=_pip_env())
    os.replace(tmp, dest)


def install_wheels(root: Path, wheels: Path, python: str, debian_numpy: bool = True) -> None:
    """The runtimes into ``/opt/ve``, a virtual environment over Debian's Python that sees its numpy
    (``include-system-site-packages``), installed from this machine: pip's ``--target`` with the aarch64
    tags, every downloaded wheel but numpy (Debian's is the one used), then pyvenv.cfg and bin/python as
    ``python3 -m venv --system-site-packages`` writes them."""
    ve = root / VENV.lstrip("/")
    site = ve / "lib" / f"python{python}" / "site-packages"
    files = sorted(str(w) for w in wheels.glob("*.whl") if not (debian_numpy and w.name.startswith("numpy-")))
    # --ignore-requires-python: pip install checks this machine's Python, the download checked the board's
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-requires-python",
          *pip_target(python), "--target", site, *files],
         env=_pip_env())
    (ve / "bin").mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3", f"python{python}"):
        os.symlink(f"/usr/bin/python{python}", ve / "bin" / name)
    (ve / "pyvenv.cfg").write_text(f"home = /usr/bin\ninclude-system-site-packages = true\nversion = {python}\n")


def build(suite: str = "bookworm", log=print) -> dict:
    """Build the root and the wheels unless cached; returns the manifest (versions, seconds).

    The root is Debian's packages unpacked by ``mmdebstrap --variant=extract`` (no maintainer scripts run,
    so nothing runs under emulation while building: about 15 s instead of debootstrap's 3-7 min); the one
    thing their scripts would have done that the runner needs, the BLAS/LAPACK alternatives numpy links
    against, is done here."""
    check()
    p, python = paths(suite), SUITES[suite]
    if p["manifest"].is_file() and p["root"].is_dir():
        return json.loads(p["manifest"].read_text())
    p["base"].mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if not p["wheels"].is_dir():
        download_wheels(p["wheels"], python, SUITE_WHEELS.get(suite, WHEELS), log)
    t_wheels = time.time() - t0
    for old in (p["root"], p["base"] / "root.partial"):
        if old.exists():  # an interrupted build: start again (never through a mount)
            if _mounted_under(old):
                raise Unavailable(f"{old} has mounts ({', '.join(_mounted_under(old))}): run `stop` first")
            shutil.rmtree(old)
    tmp = p["base"] / "root.partial"
    log(f"mmdebstrap --variant=extract {suite} {ARCH} ({', '.join(PACKAGES)}) from {mirror()}")
    _run(["mmdebstrap", "--quiet", "--variant=extract", f"--architectures={ARCH}", f"--include={','.join(PACKAGES)}",
          suite, tmp, mirror()])
    os.chmod(tmp, 0o755)  # sshd's ChrootDirectory: owned by root, writable by nobody else
    libs = tmp / "usr" / "lib" / "aarch64-linux-gnu"
    for sub in ("blas/libblas.so.3", "lapack/liblapack.so.3"):  # update-alternatives' links (libblas3's postinst)
        if (libs / sub).exists() and not (libs / Path(sub).name).exists():
            os.symlink(sub, libs / Path(sub).name)
    if suite in FAKE_SYS_CPUS:
        cpu = tmp / "sys" / "devices" / "system" / "cpu"
        cpu.mkdir(parents=True, exist_ok=True)
        for name in ("possible", "present"):
            (cpu / name).write_text(FAKE_SYS_CPUS[suite] + "\n")
    t_root = time.time() - t0 - t_wheels
    install_wheels(tmp, p["wheels"], python, DEBIAN_NUMPY[suite])
    with mounted(tmp):
        out = _run(["chroot", tmp, f"{VENV}/bin/python", "-c", VERSIONS_CODE]).stdout
    versions = json.loads(out.strip().splitlines()[-1])
    if versions.get("machine") != "aarch64":
        raise Unavailable(f"the root does not run as aarch64 here: {versions}")
    os.replace(tmp, p["root"])
    manifest = {"key": key(suite), "suite": suite, "arch": ARCH, "mirror": mirror(), "packages": list(PACKAGES),
                "wheels": sorted(w.name for w in p["wheels"].iterdir()), "versions": versions,
                "seconds": {"wheels": round(t_wheels, 1), "root": round(t_root, 1), "total": round(time.time() - t0, 1)},
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    p["manifest"].write_text(json.dumps(manifest, indent=1) + "\n")
    log(f"built in {manifest['seconds']['total']:.0f} s: {versions}")
    return manifest


VERSIONS_CODE = """
import json, platform, numpy, onnxruntime
from importlib.metadata import version
print(json.dumps({"machine": platform.machine(), "python": platform.python_version(), "numpy": numpy.__version__,
                  "onnxruntime": onnxruntime.__version__, "ai-edge-litert": version("ai-edge-litert")}))
"""


# ------------------------------------------------------------------------------------------- start / stop
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vitedge-emu", "-f", path])
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def start(suite: str = "bookworm", log=print) -> dict:
    """Start sshd for the built root on a free loopback port; returns the connection facts (also in
    RUN/state.json): host alias, ssh_config, python, port, known_hosts, identity, run folder."""
    check()
    p = paths(suite)
    if not p["manifest"].is_file():
        raise Unavailable(f"no emulated root at {p['root']}: run `{Path(__file__).name} build` first")
    root = p["root"]
    for what, args in (("proc", ["-t", "proc", "proc"]), ("dev", ["--bind", "/dev"])):
        if str((root / what).resolve()) not in _mounted_under(root):
            _run(["mount", *args, root / what])
    p["runs"].mkdir(exist_ok=True)
    run = Path(tempfile.mkdtemp(prefix="run.", dir=p["runs"]))
    os.chmod(run, 0o700)
    host_key = _keygen(run / "host_key")
    _keygen(run / "client_key")
    (run / "authorized_keys").write_text((run / "client_key.pub").read_text())
    port = _free_port()
    (run / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {run / 'host_key'}",
        f"AuthorizedKeysFile {run / 'authorized_keys'}", f"PidFile {run / 'sshd.pid'}", f"ChrootDirectory {root}",
        "UsePAM no", "StrictModes no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", "AllowUsers root", "LogLevel ERROR",
        "Subsystem sftp internal-sftp", ""]))
    (run / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key}\n")
    (run / "ssh_config").write_text("\n".join([
        f"Host {HOST_ALIAS}", "  HostName 127.0.0.1", f"  Port {port}", "  User root", f"  IdentityFile {run / 'client_key'}",
        "  IdentitiesOnly yes", f"  UserKnownHostsFile {run / 'known_hosts'}", "  GlobalKnownHostsFile /dev/null",
        "  StrictHostKeyChecking yes", "  BatchMode yes", ""]))
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation folder
    with open(run / "sshd.log", "w") as logf:
        proc = subprocess.Popen(["/usr/sbin/sshd", "-f", str(run / "sshd_config"), "-D", "-e"], stdout=logf,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 15
    while True:
        if proc.poll() is not None:
            raise Unavailable(f"sshd did not start: {(run / 'sshd.log').read_text()[-400:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            break
        if time.time() > deadline:
            proc.kill()
            raise Unavailable("sshd did not open its port within 15 s")
        time.sleep(0.05)
    state = {"host": HOST_ALIAS, "ssh_config": str(run / "ssh_config"), "python": f"{VENV}/bin/python",
             "system_python": "/usr/bin/python3", "port": port, "pid": proc.pid, "run": str(run), "root": str(root),
             "known_hosts": str(run / "known_hosts"), "identity": str(run / "client_key"),
             "versions": json.loads(p["manifest"].read_text()).get("versions")}
    (run / "state.json").write_text(json.dumps(state, indent=1) + "\n")
    log(f"emulated board on 127.0.0.1:{port} (ssh -F {run / 'ssh_config'} {HOST_ALIAS})")
    return state


def stop(run: str | None = None, suite: str = "bookworm", log=print) -> None:
    """Stop the sshd of one run folder (default: every run of the cached root) and unmount /proc, /dev."""
    p = paths(suite)
    runs = [Path(run)] if run else sorted(p["runs"].glob("run.*")) if p["runs"].is_dir() else []
    for r in runs:
        with contextlib.suppress(OSError, ValueError):
            state = json.loads((r / "state.json").read_text())
            os.kill(int(state["pid"]), 15)  # our own sshd, by the pid we started
        shutil.rmtree(r, ignore_errors=True)
    left = sorted(p["runs"].glob("run.*")) if p["runs"].is_dir() else []
    if not left and p["root"].is_dir():
        for target in sorted(_mounted_under(p["root"]), reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True)
    log(f"stopped {len(runs)} emulated board run(s)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["check", "build", "start", "stop", "path"])
    ap.add_argument("--run", help="stop: the run folder printed by start (default: all)")
    ap.add_argument("--suite", choices=sorted(SUITES), default="bookworm",
                    help="Debian suite: bookworm (Python 3.11, default) or bullseye (Python 3.9)")
    a = ap.parse_args(argv)
    err = lambda m: print(m, file=sys.stderr)  # noqa: E731
    try:
        if a.command == "check":
            check()
            print("ok")
        elif a.command == "build":
            print(json.dumps(build(a.suite, log=err), indent=1))
        elif a.command == "start":
            print(json.dumps(start(a.suite, log=err), indent=1))
        elif a.command == "stop":
            stop(a.run, a.suite, log=err)
        else:
            print(paths(a.suite)["base"])
    except Unavailable as e:
        err(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
