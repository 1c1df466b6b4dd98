"""Transports: how vitedge reaches a device -- ``local`` (a subprocess here), ``ssh`` (the system
``ssh``/``scp``), ``adb`` (Android Debug Bridge).  Small classes behind a registry (warns on
overwrite).  No torch, no home-made server.

Every remote command is an **argument list**.  ``ssh`` and ``adb shell`` join their command
arguments with spaces into one string that the device's shell parses, so each argument is quoted
with :func:`shlex.quote` (``shlex.join``); nothing is ever interpolated into a shell line on this
machine (``subprocess`` is always called with a list, never ``shell=True``).

ssh: the system client, so ``~/.ssh/config``, keys, agents and ProxyJump work.  vitedge adds
``BatchMode=yes`` (never a password prompt), ``ConnectTimeout``, ``ServerAliveInterval`` and
``StrictHostKeyChecking=yes``: an unknown or changed host key is refused with a one-line error
naming how to verify and record it; a key is never accepted silently.  Options the user passes
(``ssh_options``, ``Key=Value``) come first, so they win (ssh keeps the first value it reads);
relaxing host-key checking that way is reported with a warning.

Errors are :class:`TransportError` subclasses (all :class:`~vitedge.devices.DeviceError`), one
line each: :class:`HostKeyError`, :class:`AuthError`, :class:`UnreachableError`,
:class:`ConnectionLostError`, :class:`NoDeviceError`.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

from vitedge.devices.base import DeviceError
from vitedge.errors import DeviceFailure


class TransportError(DeviceFailure, DeviceError):
    """The device could not be reached, or the link to it failed (one-line message naming the host; exit 4)."""


class HostKeyError(TransportError):
    """The device's host key is unknown or changed: refused, never accepted silently."""


class AuthError(TransportError):
    """The device refused our credentials (or an Android device is unauthorized)."""


class UnreachableError(TransportError):
    """Connection refused, timed out, no route, or the host name does not resolve."""


class ConnectionLostError(TransportError):
    """The link broke while a command was running (killed client, dropped network)."""


class NoDeviceError(TransportError):
    """adb: no (or not this) Android device attached."""


# A remote path vitedge created (mktemp) or ships: no quoting needed anywhere, even by legacy scp.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_.,+@%/-]+$")
_OPTION = re.compile(r"^[A-Za-z][A-Za-z0-9]*\s*=\s*\S.*$")


def check_remote_path(path: str) -> str:
    if not _SAFE_PATH.match(path or "") or "/../" in f"{path}/":
        raise DeviceError(f"unsafe remote path {path!r}: use an absolute path of letters, digits and ._-/")
    return path


@dataclass
class Transport:
    """Runs argument lists on a device and copies files to and from it."""

    kind: ClassVar[str] = ""
    tmp_root: str | None = None  # where mktemp -d creates run directories (None: the device's $TMPDIR or /tmp)

    # -- to implement ------------------------------------------------------------------------------
    def argv(self, remote_argv: list) -> list:
        """The local argument list that runs ``remote_argv`` on the device."""
        raise NotImplementedError

    def push(self, local_paths: list, remote_dir: str) -> None:
        raise NotImplementedError

    def pull(self, remote_path: str, local_path: str) -> None:
        raise NotImplementedError

    def failure(self, returncode: int, stderr: str, doing: str) -> TransportError | None:
        """The typed error when ``returncode``/``stderr`` mean the link failed, else None."""
        return None

    @property
    def label(self) -> str:
        return self.kind

    def hint(self, remote_argv: list) -> str:
        """How a user runs ``remote_argv`` on the device by hand (shown in error messages)."""
        return shlex.join([str(a) for a in remote_argv])

    def describe(self) -> dict:
        return {"kind": self.kind, "label": self.label}

    # -- shared ------------------------------------------------------------------------------------
    def run(self, remote_argv: list, *, timeout: float | None = 120, check: bool = True,
            doing: str = "running a command") -> subprocess.CompletedProcess:
        """Run ``remote_argv`` on the device, wait, return the completed process (text).

        Raises a :class:`TransportError` when the link failed (always) or, with ``check``, when the
        command exited non-zero.
        """
        cmd = self.argv([str(a) for a in remote_argv])
        try:
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               errors="replace", timeout=timeout)
        except FileNotFoundError:
            raise DeviceError(f"{cmd[0]} is not installed on this machine: {self.install_client_hint()}") from None
        except subprocess.TimeoutExpired:
            raise UnreachableError(f"{self.label} did not answer within {timeout:g} s while {doing}") from None
        err = self.failure(p.returncode, p.stderr, doing)
        if err is not None:
            raise err
        if check and p.returncode != 0:
            raise DeviceError(f"{doing} on {self.label} failed (exit {p.returncode}): {_last_line(p.stderr or p.stdout)}")
        return p

    def popen(self, remote_argv: list, *, stdin: bool = False) -> subprocess.Popen:
        """Start ``remote_argv`` on the device with stdout/stderr pipes (binary; ``stdin``: a pipe
        too, e.g. to send files as a tar stream, else /dev/null)."""
        cmd = self.argv([str(a) for a in remote_argv])
        try:
            return subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise DeviceError(f"{cmd[0]} is not installed on this machine: {self.install_client_hint()}") from None

    def mkdtemp(self) -> str:
        """A fresh private directory on the device (``mktemp -d``)."""
        argv = ["mktemp", "-d"] + (["-p", self.tmp_root, "vitedge.XXXXXXXX"] if self.tmp_root
                                   else ["-t", "vitedge.XXXXXXXX"])
        out = self.run(argv, doing="creating a temporary directory").stdout.strip().splitlines()
        return check_remote_path(out[-1].strip() if out else "")

    def remove(self, remote_dir: str, timeout: float = 30) -> None:
        """Best effort ``rm -rf`` of a directory vitedge created (errors ignored)."""
        try:
            self.run(["rm", "-rf", check_remote_path(remote_dir)], timeout=timeout, check=False,
                     doing="removing the temporary directory")
        except DeviceError:
            pass

    def install_client_hint(self) -> str:
        return "install it"


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else "no output"


# ------------------------------------------------------------------------------------------- local
@dataclass
class LocalTransport(Transport):
    """This machine, through a subprocess (the device protocol without a network)."""

    kind: ClassVar[str] = "local"

    def argv(self, remote_argv):
        # through env(1), like a remote shell: a missing program exits 127 instead of raising here
        return ["env", "--", *remote_argv]

    def push(self, local_paths, remote_dir):
        for p in local_paths:
            shutil.copy(p, os.path.join(remote_dir, os.path.basename(p)))

    def pull(self, remote_path, local_path):
        shutil.copy(remote_path, local_path)

    @property
    def label(self) -> str:
        return "this machine"


# --------------------------------------------------------------------------------------------- ssh
_SSH_DEFAULTS = (("BatchMode", "yes"), ("StrictHostKeyChecking", "yes"), ("ServerAliveInterval", "15"),
                 ("ServerAliveCountMax", "3"))


@dataclass
class SSHTransport(Transport):
    """The system ``ssh``/``scp``.

    Args:
        host: host name or address (or an alias from ~/.ssh/config).
        user, port, identity: as ``ssh -l``/``-p``/``-i``; None leaves them to ~/.ssh/config.
        options: ``Key=Value`` ssh options (``-o``), applied before vitedge's defaults.
        config_file: an ssh config file (``-F``) instead of ~/.ssh/config.
        connect_timeout: seconds (``ConnectTimeout``, also bounds the banner exchange).
        scp_options: extra scp arguments (e.g. ``["-O"]``: legacy protocol for servers without sftp).
    """

    kind: ClassVar[str] = "ssh"
    host: str = ""
    user: str | None = None
    port: int | None = None
    identity: str | None = None
    options: list = field(default_factory=list)
    config_file: str | None = None
    connect_timeout: int = 10
    scp_options: list = field(default_factory=list)
    ssh: str = "ssh"
    scp: str = "scp"

    def __post_init__(self):
        if not self.host or self.host.startswith("-") or any(c.isspace() for c in self.host):
            raise DeviceError(f"bad ssh host {self.host!r}: give --host [USER@]HOST[:PORT]")
        if self.user is not None and (not self.user or self.user.startswith("-") or any(c in self.user for c in "@: \t")):
            raise DeviceError(f"bad ssh user {self.user!r}")
        if self.port is not None and not (0 < int(self.port) < 65536):
            raise DeviceError(f"bad ssh port {self.port!r}: use 1..65535")
        for o in self.options:
            if not isinstance(o, str) or not _OPTION.match(o):
                raise DeviceError(f"bad ssh option {o!r}: write it as Key=Value, e.g. ProxyJump=gateway")
        keys = {o.split("=", 1)[0].strip().lower(): o.split("=", 1)[1].strip().lower() for o in self.options}
        relaxed = keys.get("stricthostkeychecking")
        if relaxed is not None and relaxed not in ("yes", "ask"):
            warnings.warn(f"ssh host key checking relaxed for {self.label} by your option "
                          f"StrictHostKeyChecking={relaxed}: the device's identity is not verified", stacklevel=2)

    # -- argument lists ----------------------------------------------------------------------------
    def _common(self) -> list:
        out = ["-F", self.config_file] if self.config_file else []
        for o in self.options:
            out += ["-o", o]
        mine = {o.split("=", 1)[0].strip().lower() for o in self.options}
        for key, value in (*_SSH_DEFAULTS, ("ConnectTimeout", str(int(self.connect_timeout)))):
            if key.lower() not in mine:
                out += ["-o", f"{key}={value}"]
        if self.identity:
            out += ["-i", os.path.expanduser(self.identity)]
        return out

    def _destination(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" if self.user else host

    def argv(self, remote_argv):
        port = ["-p", str(self.port)] if self.port else []
        login = ["-l", self.user] if self.user else []
        # ssh joins the words after the host with spaces for the remote shell: quote each one
        return [self.ssh, *self._common(), *port, *login, "--", self.host, shlex.join([str(a) for a in remote_argv])]

    def _scp(self, sources: list, target: str) -> list:
        port = ["-P", str(self.port)] if self.port else []
        return [self.scp, "-q", *self._common(), *port, *[str(o) for o in self.scp_options], "--", *sources, target]

    def push(self, local_paths, remote_dir):
        remote_dir = check_remote_path(remote_dir)
        sources = [os.path.abspath(p) for p in local_paths]  # absolute: a ':' is never read as host:path
        self._copy(self._scp(sources, f"{self._destination()}:{remote_dir}/"), "copying files to the device")

    def pull(self, remote_path, local_path):
        remote_path = check_remote_path(remote_path)
        self._copy(self._scp([f"{self._destination()}:{remote_path}"], os.path.abspath(local_path)),
                   "copying a file from the device")

    def _copy(self, cmd: list, doing: str) -> None:
        try:
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                               timeout=3600)
        except FileNotFoundError:
            raise DeviceError(f"{cmd[0]} is not installed on this machine: {self.install_client_hint()}") from None
        if p.returncode != 0:
            raise self.failure(255, p.stderr, doing) or DeviceError(
                f"{doing} ({self.label}) failed: {_last_line(p.stderr)}")

    # -- errors ------------------------------------------------------------------------------------
    @property
    def label(self) -> str:
        where = f"{self.host}:{self.port}" if self.port else self.host
        return f"{self.user}@{where}" if self.user else where

    def _known_hosts_name(self) -> str:
        return f"[{self.host}]:{self.port}" if self.port and int(self.port) != 22 else self.host

    def hint(self, remote_argv):
        return shlex.join(["ssh", *(["-p", str(self.port)] if self.port else []), self._destination(),
                           *[str(a) for a in remote_argv]])

    def failure(self, returncode, stderr, doing):
        if returncode == 0:
            return None
        text = stderr or ""
        low = text.lower()
        connect = self.hint([])
        if returncode < 0:
            return ConnectionLostError(f"ssh to {self.label} was killed (signal {-returncode}) while {doing}")
        if returncode != 255:
            return None  # the remote command's own exit status
        if "remote host identification has changed" in low:
            return HostKeyError(
                f"host key of {self.label} has CHANGED since it was recorded (a re-installed device, or a "
                f"man-in-the-middle): refused; verify the new key's fingerprint on the device, then remove the old "
                f"entry with `ssh-keygen -R '{self._known_hosts_name()}'` and connect once with `{connect}`")
        if "host key verification failed" in low or "host key is known" in low:
            return HostKeyError(
                f"host key of {self.label} is not known (vitedge never accepts host keys silently): check the "
                f"device's key fingerprint and record it by connecting once with `{connect}`")
        if "permission denied" in low or "too many authentication failures" in low:
            return AuthError(
                f"authentication failed for {self.label} (keys and agents only, no passwords): install your key "
                f"with `ssh-copy-id {'-p ' + str(self.port) + ' ' if self.port else ''}{self._destination()}` or "
                "pass --device-opt identity=KEYFILE")
        if "could not resolve hostname" in low or "name or service not known" in low:
            return UnreachableError(f"cannot resolve the host name {self.host!r}: check it (or use the IP address)")
        if "connection refused" in low:
            return UnreachableError(f"cannot reach {self.label}: connection refused (is sshd running on that port?)")
        if "timed out" in low and ("connect" in low or "banner" in low):
            return UnreachableError(f"cannot reach {self.label}: connection timed out after {self.connect_timeout} s "
                                    "(is the device on, and on this network?)")
        if "no route to host" in low or "network is unreachable" in low or "host is down" in low:
            return UnreachableError(f"cannot reach {self.label}: {_last_line(text)}")
        return ConnectionLostError(f"ssh to {self.label} failed while {doing}: {_last_line(text)}")

    def install_client_hint(self) -> str:
        return "install OpenSSH's client (Debian: apt-get install openssh-client)"

    def describe(self) -> dict:
        return {"kind": self.kind, "label": self.label, "host": self.host, "user": self.user, "port": self.port,
                "identity": self.identity, "options": list(self.options), "config_file": self.config_file}


# --------------------------------------------------------------------------------------------- adb
def parse_adb_devices(text: str) -> list:
    """``adb devices [-l]`` output -> [(serial, state)]; header, daemon notices and blanks skipped."""
    out = []
    for ln in (text or "").replace("\r", "").splitlines():
        ln = ln.strip()
        if not ln or ln.startswith("*") or ln.lower().startswith("list of devices"):
            continue
        parts = ln.split()
        if len(parts) >= 2:
            out.append((parts[0], parts[1]))
    return out


@dataclass
class AdbTransport(Transport):
    """Android Debug Bridge: ``adb -s SERIAL shell|push|pull``.  Without a serial, the one attached
    device is used (zero or several attached: a one-line error)."""

    kind: ClassVar[str] = "adb"
    serial: str | None = None
    adb: str = "adb"
    tmp_root: str | None = "/data/local/tmp"

    def __post_init__(self):
        if self.serial is not None and (not self.serial or self.serial.startswith("-") or any(c.isspace() for c in self.serial)):
            raise DeviceError(f"bad adb serial {self.serial!r}")

    def devices(self) -> list:
        """[(serial, state)] from ``adb devices`` (starts the adb server if it is not running)."""
        try:
            p = subprocess.run([self.adb, "devices"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               errors="replace", timeout=60)
        except FileNotFoundError:
            raise DeviceError(f"adb is not installed on this machine: {self.install_client_hint()}") from None
        except subprocess.TimeoutExpired:
            raise UnreachableError("`adb devices` did not answer within 60 s: restart the server with `adb kill-server`") from None
        if p.returncode != 0:
            raise DeviceError(f"`adb devices` failed: {_last_line(p.stderr or p.stdout)}")
        return parse_adb_devices(p.stdout)

    def resolve_serial(self) -> str:
        """The serial to use: the given one, else the single attached device (checked)."""
        devs = self.devices()
        serial = self.serial
        if serial is None:
            ready = [s for s, state in devs if state == "device"]
            if not devs:
                raise NoDeviceError("no Android device attached (`adb devices` lists none): connect the phone by USB "
                                    "with USB debugging on (or `adb connect HOST:PORT`), then retry")
            if len(ready) > 1:
                raise DeviceError(f"several Android devices attached ({', '.join(ready)}): pass --serial SERIAL")
            serial = ready[0] if ready else devs[0][0]
        states = dict(devs)
        if serial not in states:
            raise NoDeviceError(f"Android device {serial!r} is not attached (`adb devices` lists "
                                f"{', '.join(states) or 'none'}): check the cable or the serial")
        state = states[serial]
        if state == "unauthorized":
            raise AuthError(f"Android device {serial} is unauthorized: unlock it and accept the "
                            "'Allow USB debugging' prompt, then retry")
        if state != "device":
            raise NoDeviceError(f"Android device {serial} is {state}: reconnect it (or `adb reconnect`)")
        self.serial = serial
        return serial

    def _base(self) -> list:
        if self.serial is None:
            self.resolve_serial()
        return [self.adb, "-s", self.serial]

    def argv(self, remote_argv):
        # adb shell joins its arguments with spaces for the device's shell: quote each one
        return [*self._base(), "shell", shlex.join([str(a) for a in remote_argv])]

    def push(self, local_paths, remote_dir):
        remote_dir = check_remote_path(remote_dir)
        self._adb([*self._base(), "push", *[os.path.abspath(p) for p in local_paths], remote_dir + "/"],
                  "copying files to the phone")

    def pull(self, remote_path, local_path):
        self._adb([*self._base(), "pull", check_remote_path(remote_path), os.path.abspath(local_path)],
                  "copying a file from the phone")

    def _adb(self, cmd, doing):
        try:
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                               timeout=3600)
        except FileNotFoundError:
            raise DeviceError(f"adb is not installed on this machine: {self.install_client_hint()}") from None
        if p.returncode != 0:
            raise self.failure(p.returncode, p.stderr, doing) or DeviceError(
                f"{doing} ({self.label}) failed: {_last_line(p.stderr or p.stdout)}")

    def failure(self, returncode, stderr, doing):
        if returncode == 0:
            return None
        low = (stderr or "").lower()
        if returncode < 0:
            return ConnectionLostError(f"adb for {self.label} was killed (signal {-returncode}) while {doing}")
        if "no devices/emulators found" in low or re.search(r"(adb|error): device '[^']*' not found", low):
            return NoDeviceError(f"Android device {self.label} is not attached any more (while {doing}): reconnect it")
        if re.search(r"(adb|error): device unauthorized", low):
            return AuthError(f"Android device {self.label} is unauthorized: accept the USB debugging prompt")
        if re.search(r"(adb|error): device offline", low) or re.search(r"^(adb: )?error: closed$", low.strip(), re.M):
            return ConnectionLostError(f"lost the link to {self.label} while {doing}: {_last_line(stderr)}")
        return None  # the remote command's own exit status

    @property
    def label(self) -> str:
        return f"adb:{self.serial}" if self.serial else "adb"

    def hint(self, remote_argv):
        return shlex.join(["adb", *(["-s", self.serial] if self.serial else []), "shell", *[str(a) for a in remote_argv]])

    def install_client_hint(self) -> str:
        return "install Android platform-tools (Debian: apt-get install adb)"

    def describe(self) -> dict:
        return {"kind": self.kind, "label": self.label, "serial": self.serial}


# ---------------------------------------------------------------------------------------- registry
_TRANSPORTS: dict[str, type] = {}


def register_transport(name: str, cls: type) -> None:
    """Add a transport class to the registry (warns when overwriting)."""
    if name in _TRANSPORTS:
        warnings.warn(f"overwriting transport {name!r} in the registry", stacklevel=2)
    _TRANSPORTS[name] = cls


def available_transports() -> list:
    return sorted(_TRANSPORTS)


def make_transport(name: str, **settings) -> Transport:
    """Instantiate a registered transport with its settings (unknown name: DeviceError)."""
    if name not in _TRANSPORTS:
        raise DeviceError(f"unknown transport {name!r}: use one of {', '.join(available_transports())}")
    return _TRANSPORTS[name](**settings)


register_transport("local", LocalTransport)
register_transport("ssh", SSHTransport)
register_transport("adb", AdbTransport)
