"""Running commands on a host: over SSH (through the jump chain) or locally.

Every command is an argv list joined with `shlex.join`; secrets are wrapped in
`Secret` so that the log and errors show `*****` instead.  A session counts its
connections and commands so that the benchmark can read them from the log.
"""
from __future__ import annotations

import io
import re
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from gpufleet.errors import CommandFailed, ConnectError

MASK = "*****"


class Secret(str):
    """A command argument that is never shown in logs, output or errors."""


class Script(str):
    """A shell script, run as `sh -c SCRIPT`; shown in logs by its first line."""


Command = Sequence[str] | Script


def render(command: Command) -> tuple[str, str]:
    """(what runs, what is shown) for an argv list or a Script."""
    if isinstance(command, Script):
        real = shlex.join(["sh", "-c", str(command)])
        # name the script by its first line that does something (not set -e, umask, a variable)
        lines = [l.strip() for l in command.strip().splitlines()]
        telling = [l for l in lines if l and not re.match(r"^(set -e|umask |export |[a-z]+=|trap |sec\(\)|readfile\(\))", l)]
        first = (telling or lines or [""])[0]
        return real, f"sh -c <script: {first[:70]}{'…' if len(first) > 70 or len(lines) > 1 else ''}>"
    real = shlex.join([str(a) for a in command])
    return real, mask(real, [str(a) for a in command if isinstance(a, Secret)])


def mask(text: str, secrets: Sequence[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, MASK)
    return text


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Session:
    """A place commands run: `run()` is the only way stages touch a host."""

    name: str = "local"
    is_root: bool = True

    def __init__(self, log_path: Path | None = None):
        self.commands = 0
        self.connections = 0
        self.secrets: list[str] = []
        self._log_lock = threading.Lock()
        self._log = open(log_path, "a", encoding="utf-8") if log_path else None

    def log(self, text: str) -> None:
        if self._log:
            with self._log_lock:
                self._log.write(mask(text, self.secrets).rstrip("\n") + "\n")
                self._log.flush()

    def run(self, command: Command, *, sudo: bool = False, check: bool = True,
            timeout: float | None = None, stdin: str | None = None) -> Result:
        """Run a command (feeding `stdin` to it); raise CommandFailed on a non-zero exit when `check`."""
        real, shown = render(command)
        if not isinstance(command, Script):
            self.secrets.extend(a for a in command if isinstance(a, Secret))
        self.commands += 1
        started = time.monotonic()
        self.log(f"$ {shown}" + ("   [sudo]" if sudo and not self.is_root else ""))
        exit_code, out, err = self._exec(real, sudo=sudo and not self.is_root, timeout=timeout, stdin=stdin)
        self.log(f"# exit {exit_code} in {time.monotonic() - started:.2f}s\n{out}{err and '[stderr] ' + err}")
        result = Result(exit_code, mask(out, self.secrets), mask(err, self.secrets))
        if check and exit_code != 0:
            raise CommandFailed(shown, exit_code, result.stderr or result.stdout, host=self.name)
        return result

    def _exec(self, command: str, *, sudo: bool, timeout: float | None, stdin: str | None) -> tuple[int, str, str]:
        raise NotImplementedError

    def reconnect(self) -> None:
        """Start a new login session, so that group changes take effect."""

    def close(self) -> None:
        if self._log:
            self._log.close()
            self._log = None


class LocalSession(Session):
    """Runs on this machine (a GPU box without sshd, or the workstation)."""

    def __init__(self, name: str = "local", log_path: Path | None = None):
        super().__init__(log_path)
        self.name = name
        import os
        self.is_root = os.geteuid() == 0

    def _exec(self, command, *, sudo, timeout, stdin):
        argv = ["sudo", "-n", "sh", "-c", command] if sudo else ["sh", "-c", command]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, errors="replace",
                                  input=stdin if stdin is not None else "")
        except subprocess.TimeoutExpired:
            return 124, "", f"timed out after {timeout}s"
        return proc.returncode, proc.stdout, proc.stderr


class StdinChunks(io.StringIO):
    """stdin for Invoke, read in big chunks: Invoke reads a stream that is not a terminal one character
    at a time with a 10 ms nap after each (about 100 bytes/s: a 1 KB file took 14 s to write)."""

    CHUNK = 65536

    def read(self, size: int | None = -1) -> str:
        return super().read(-1 if size is None or size < 0 else max(size, self.CHUNK))


class SshSession(Session):
    """One SSH connection to one host, reused by every step of a run."""

    def __init__(self, name: str, connection, log_path: Path | None = None, sudo_password: str | None = None):
        super().__init__(log_path)
        self.name = name
        self.connection = connection
        self.is_root = connection.user == "root"
        if sudo_password:
            self.secrets.append(sudo_password)

    def open(self) -> None:
        if self.connection.is_connected:
            return
        try:
            self.connection.open()
        except Exception as e:  # paramiko and socket errors come in many types
            raise ConnectError(describe_connect_error(self.name, self.connection, e)) from None
        self.connections += 1
        self.log(f"# connected to {self.connection.user}@{self.connection.host}:{self.connection.port}")

    def _exec(self, command, *, sudo, timeout, stdin):
        self.open()
        kwargs = dict(hide=True, warn=True, timeout=timeout,
                      in_stream=StdinChunks(stdin) if stdin is not None else False)
        try:
            result = self.connection.sudo(command, **kwargs) if sudo else self.connection.run(command, **kwargs)
        except Exception as e:
            if type(e).__name__ == "CommandTimedOut":
                return 124, "", f"timed out after {timeout}s"
            raise ConnectError(f"{self.name}: connection lost while running a command: {e}") from None
        return result.exited, result.stdout, result.stderr

    def reconnect(self) -> None:
        self.connection.close()
        self.open()

    def close(self) -> None:
        self.connection.close()
        super().close()


def describe_connect_error(name: str, connection, error: Exception) -> str:
    where = f"{connection.user}@{connection.host}:{connection.port}"
    reason = str(error) or type(error).__name__
    if type(error).__name__ == "BadHostKeyException":
        reason = ("host key changed since it was pinned; if the host was really reinstalled, "
                  "remove its line from the known_hosts file named in [local]")
    elif type(error).__name__ == "AuthenticationException":
        reason = "authentication failed (is the key in [local] identity authorised there?)"
    return f"{name} ({where}): cannot connect: {reason}"
