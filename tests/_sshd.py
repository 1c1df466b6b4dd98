"""A real OpenSSH server on 127.0.0.1 for the remote-device tests (Debian's openssh-server).

Started on a free port as the current user, with a throwaway host key and authorized key in a
temporary directory (``sshd -f CONFIG -D -e``, ``UsePAM no``, ``StrictModes no``, PidFile there),
stopped afterwards.  Skips cleanly when ``/usr/sbin/sshd`` or the ``ssh`` client is missing.
Only loopback addresses are ever used.
"""
from __future__ import annotations

import getpass
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"


class SSHDUnavailable(RuntimeError):
    """No OpenSSH server can be started here (the reason is the message)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> list:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vitedge-test", "-f", str(path)],
                   check=True, capture_output=True)
    return path.with_suffix(".pub").read_text().split()[:2]


@dataclass
class SSHServer:
    root: Path
    port: int
    user: str
    host_key: list          # [type, base64] of the server's host key
    other_host_key: list    # a key the server does NOT have (for the wrong-key test)
    client_key: Path        # authorized
    stranger_key: Path      # not authorized
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    def known_hosts(self, path: Path, key: list | None = None) -> Path:
        """Write a known_hosts file for this server (its real key unless ``key``)."""
        k = key or self.host_key
        path.write_text(f"[127.0.0.1]:{self.port} {k[0]} {k[1]}\n")
        return path

    def settings(self, known_hosts: Path, *, identity: Path | None = None, **extra) -> dict:
        """Device settings (get_device keyword arguments) for this server."""
        return {"python": sys.executable, "identity": str(identity or self.client_key), "ssh_config": "/dev/null",
                "ssh_options": [f"UserKnownHostsFile={known_hosts}", "GlobalKnownHostsFile=/dev/null",
                                "IdentitiesOnly=yes"], "connect_timeout": 5, **extra}

    def cli_options(self, known_hosts: Path, *, identity: Path | None = None) -> list:
        """The same settings as ``vitedge ... --device URL --device-opt ...`` arguments."""
        s = self.settings(known_hosts, identity=identity)
        return ["--device", self.url, "--device-opt", f"python={s['python']}", "--device-opt", f"identity={s['identity']}",
                "--device-opt", "ssh_config=/dev/null", "--device-opt", "connect_timeout=5",
                "--device-opt", "ssh_options=" + " ".join(shlex.quote(o) for o in s["ssh_options"])]

    def log(self) -> str:
        return (self.root / "sshd.log").read_text(errors="replace")


def start_sshd(root: Path) -> SSHServer:
    if not os.path.exists(SSHD):
        raise SSHDUnavailable(f"OpenSSH server not installed ({SSHD} missing): apt-get install openssh-server")
    if not shutil.which("ssh") or not shutil.which("ssh-keygen") or not shutil.which("scp"):
        raise SSHDUnavailable("OpenSSH client (ssh, scp, ssh-keygen) not installed")
    if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation dir (root only)
    host_key = keygen(root / "host_key")
    other = keygen(root / "other_host_key")
    keygen(root / "client_key")
    keygen(root / "stranger_key")
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    sftp = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                             "/usr/libexec/sftp-server") if os.path.exists(p)), None)
    port = free_port()
    config = root / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {root / 'host_key'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}", f"PidFile {root / 'sshd.pid'}",
        "UsePAM no", "StrictModes no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", f"AllowUsers {getpass.getuser()}",
        "LogLevel ERROR", *([f"Subsystem sftp {sftp}"] if sftp else []), ""]))
    log = open(root / "sshd.log", "w")
    proc = subprocess.Popen([SSHD, "-f", str(config), "-D", "-e"], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    log.close()
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SSHDUnavailable(f"sshd did not start: {(root / 'sshd.log').read_text()[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        raise SSHDUnavailable("sshd did not open its port within 10 s")
    return SSHServer(root, port, getpass.getuser(), host_key, other, root / "client_key", root / "stranger_key", proc)


def stop_sshd(server: SSHServer) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


def children(pid: int, name: str) -> list:
    """Pids of the direct children of ``pid`` whose command name is ``name`` (from /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == pid and comm == name:
            out.append(int(d))
    return out
