"""Running commands on a host: over SSH (through the jump chain) or locally.

Every command is an argv list joined with `shlex.join`; secrets are wrapped in
`Secret` so that the log and errors show `*****` instead.  A session counts its
connections and commands so that the benchmark can read them from the log.
"""
from __future__ import annotations

import codecs
import io
import os
import pwd
import re
import select
import selectors
import shlex
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from gpufleet.errors import CommandFailed, CommandTimedOut, ConnectError

MASK = "*****"
# how long a command of each class may run (seconds), unless hosts.toml says otherwise (KIND_timeout)
DEFAULT_TIMEOUTS = {"probe": 120, "command": 600, "install": 1800, "copy": 43200}
# the server-side `timeout` sends SIGTERM at the limit, SIGKILL this much later
KILL_AFTER = 10


class Secret(str):
    """A command argument that is never shown in logs, output or errors."""


class Script(str):
    """A shell script, run as `sh -c SCRIPT`; shown in logs by its first line."""


Command = Sequence[str] | Script
OutputCallback = Callable[[str], None]


def render(command: Command) -> tuple[str, str]:
    """(what runs, what is shown) for an argv list or a Script."""
    if isinstance(command, Script):
        real = shlex.join(["sh", "-c", str(command)])
        # name the script by its first line that does something (not set -e, umask, a variable,
        # a one-line function)
        lines = [l.strip() for l in command.strip().splitlines()]
        telling = [l for l in lines if l and not re.match(r"^(set -e|umask |export |[a-z]+=|trap |[a-z_]+\(\) \{.*\}$)", l)]
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
        self.timeouts = dict(DEFAULT_TIMEOUTS)
        self.commands = 0
        self.connections = 0
        self.secrets: list[str] = []
        self._log_lock = threading.Lock()
        # a log holds every command's output: only its owner may read it
        self._log = open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a",
                         encoding="utf-8") if log_path else None

    def log(self, text: str) -> None:
        if self._log:
            with self._log_lock:
                self._log.write(mask(text, self.secrets).rstrip("\n") + "\n")
                self._log.flush()

    def run(self, command: Command, *, sudo: bool = False, check: bool = True,
            timeout: float | None = None, stdin: str | None = None,
            on_output: OutputCallback | None = None, kind: str = "command") -> Result:
        """Run a command (feeding `stdin` to it); raise CommandFailed on a non-zero exit when `check`.

        It may run `timeout` seconds, by default its class's (`kind`: probe, command, install, copy;
        `self.timeouts`); past that it is stopped and CommandTimedOut names it, `check` or not.
        `on_output` is called with each piece of the command's stdout as it arrives (for live
        progress); the whole output still goes to the log and the Result."""
        timeout = timeout or self.timeouts[kind]
        real, shown = render(command)
        if not isinstance(command, Script):
            self.secrets.extend(a for a in command if isinstance(a, Secret))
        self.commands += 1
        started = time.monotonic()
        self.log(f"$ {shown}" + ("   [sudo]" if sudo and not self.is_root else ""))
        exit_code, out, err = self._exec(real, sudo=sudo and not self.is_root, timeout=timeout, stdin=stdin,
                                         on_output=on_output)
        elapsed = time.monotonic() - started
        self.log(f"# exit {exit_code} in {elapsed:.2f}s\n{out}{err and '[stderr] ' + err}")
        # 124: stopped at the limit (the server's `timeout`, or ours); 137: killed KILL_AFTER later
        if exit_code in (124, 137) and elapsed >= timeout:
            raise CommandTimedOut(shown, timeout, f"{kind}_timeout", host=self.name)
        result = Result(exit_code, mask(out, self.secrets), mask(err, self.secrets))
        if check and exit_code != 0:
            raise CommandFailed(shown, exit_code, result.stderr or result.stdout, host=self.name)
        return result

    def _exec(self, command: str, *, sudo: bool, timeout: float | None, stdin: str | None,
              on_output: OutputCallback | None = None) -> tuple[int, str, str]:
        raise NotImplementedError

    def open(self) -> None:
        """Connect (or check that commands can run) before the first step."""

    def login_key(self) -> tuple[str, str] | None:
        """(type, base64) of the public key the server accepted for this session; None where no key logged in."""
        return None

    def abort(self) -> None:
        """Stop what runs now, from another thread (Ctrl-C)."""

    def reconnect(self) -> None:
        """Start a new login session, so that group changes take effect."""

    def close(self) -> None:
        if self._log:
            self._log.close()
            self._log = None


class LocalSession(Session):
    """Runs on this machine: a host with `address = "local"` (a GPU workstation, a box without sshd).

    Each command runs in its own process group, so that a timeout or an interrupt stops
    all of it (a script's trap then removes its temp files).  A non-root user gets `sudo`:
    without a password when sudoers allows it, else with the `--prompt-for-sudo-password`
    password fed on stdin ahead of the payload.
    """

    def __init__(self, name: str = "local", log_path: Path | None = None, sudo_password: str | None = None,
                 user: str | None = None):
        super().__init__(log_path)
        self.name = name
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.expected_user = user
        self.is_root = os.geteuid() == 0
        self.sudo_password = sudo_password
        if sudo_password:
            self.secrets.append(sudo_password)
        self._sudo_asks_password: bool | None = None
        self._running: dict[subprocess.Popen, bool] = {}  # running command -> run through sudo
        self._lock = threading.Lock()
        self._aborted = False
        self._opened = False

    def open(self) -> None:
        """Check that this machine's user is the inventory's (a local host runs as whoever runs fab)."""
        if self._opened:
            return
        if self.expected_user and self.expected_user != self.user:
            raise ConnectError(f"{self.name} (this machine): the inventory says user = {self.expected_user!r} but fab "
                               f"runs as {self.user!r}; a local host runs as the user who runs fab (leave user out, "
                               f"or run fab as {self.expected_user})")
        self._opened = True
        self.log(f"# local session on {socket.gethostname()} as {self.user}")

    def _sudo(self, command: str) -> tuple[list[str], str]:
        """(argv, what goes on stdin before the payload) to run `command` as root."""
        if self.sudo_password and self._sudo_asks_password is None:
            try:
                check = subprocess.run(["sudo", "-n", "true"], capture_output=True, stdin=subprocess.DEVNULL)
                self._sudo_asks_password = check.returncode != 0
            except OSError:  # no sudo: the command itself then fails and says so
                self._sudo_asks_password = False
        if self._sudo_asks_password:
            # -k: always ask, so that the password line is always read by sudo, never by the command
            return ["sudo", "-S", "-k", "-p", "", "--", "sh", "-c", command], self.sudo_password + "\n"
        return ["sudo", "-n", "--", "sh", "-c", command], ""

    def _exec(self, command, *, sudo, timeout, stdin, on_output=None):
        argv, prefix = self._sudo(command) if sudo else (["sh", "-c", command], "")
        with self._lock:
            if self._aborted:
                return 130, "", "interrupted"
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        start_new_session=True)
            except OSError as e:  # no sudo on this machine
                return 127, "", f"{argv[0]}: {e.strerror}"
            self._running[proc] = sudo
        pipes = _Pipes(proc, on_output)
        threading.Thread(target=_write_stdin, args=(proc.stdin, (prefix + (stdin or "")).encode()),
                         daemon=True).start()
        deadline = time.monotonic() + timeout if timeout else None
        try:
            if pipes.read_until(deadline):
                try:
                    proc.wait(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
                    return proc.returncode, *pipes.text()
                except subprocess.TimeoutExpired:
                    pass
            self._stop(proc, sudo)
            pipes.read_until(time.monotonic() + 5)  # something that left the group may still hold them
            out, err = pipes.text()
            return 124, out, f"{err}timed out after {timeout}s"
        finally:
            pipes.close()
            with self._lock:
                self._running.pop(proc, None)

    def _stop(self, proc: subprocess.Popen, sudo: bool) -> None:
        """SIGTERM to the command's process group (traps run), SIGKILL if it is still there after 5 s."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            except PermissionError:
                pass
            if sudo and not self.is_root:  # the root part of the group is beyond this user's signals
                argv, prefix = self._sudo(shlex.join(["kill", "-s", sig.name[3:], "--", f"-{proc.pid}"]))
                subprocess.run(argv, input=prefix, capture_output=True, text=True, timeout=60)
            try:
                proc.wait(timeout=5)
                return
            except subprocess.TimeoutExpired:
                continue

    def abort(self) -> None:
        """Stop the running commands (Ctrl-C); later ones are not started."""
        with self._lock:
            self._aborted = True
            running = list(self._running.items())
        for proc, sudo in running:
            self._stop(proc, sudo)


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
        self.sudo_password = sudo_password
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

    def login_key(self) -> tuple[str, str] | None:
        # paramiko keeps the key of the last public-key attempt; authentication stops at the one accepted
        self.open()
        auth = getattr(self.connection.transport, "auth_handler", None)
        key = auth.private_key if auth is not None and auth.auth_method == "publickey" else None
        return (key.get_name(), key.get_base64()) if key is not None else None

    def _exec(self, command, *, sudo, timeout, stdin, on_output=None):
        self.open()
        # without a tty, sshd does not stop a command when its channel closes: the server's own
        # `timeout` stops it (and its process group); our deadline comes later, for a server that hangs
        command = shlex.join(["timeout", "-k", str(KILL_AFTER), f"{timeout:g}", "sh", "-c", command])
        timeout += KILL_AFTER + 20
        if sudo and self.sudo_password:
            return self._exec_invoke(command, sudo=sudo, timeout=timeout, stdin=stdin)
        if sudo:
            command = shlex.join(["sudo", "-n", "--", "sh", "-c", command])
        try:
            return self._exec_channel(command, timeout=timeout, stdin=stdin, on_output=on_output)
        except (OSError, EOFError) as e:
            raise ConnectError(f"{self.name}: connection lost while running a command: {e}") from None
        except Exception as e:  # paramiko's SSHException and friends
            raise ConnectError(f"{self.name}: connection lost while running a command: {e}") from None

    def _exec_channel(self, command: str, *, timeout: float | None, stdin: str | None,
                      on_output: OutputCallback | None = None) -> tuple[int, str, str]:
        """One exec channel on the open connection.  Invoke's runner feeds stdin one byte per 10 ms
        (a 1 KB file took 11 s to write), so stdin and output go through the channel directly."""
        channel = self.connection.client.get_transport().open_session(timeout=30)
        try:
            channel.exec_command(command)
            if stdin:
                feeder = threading.Thread(target=_feed, args=(channel, stdin.encode()), daemon=True)
                feeder.start()
            else:
                channel.shutdown_write()
            out, err = bytearray(), bytearray()
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            deadline = time.monotonic() + timeout if timeout else None
            while not channel.exit_status_ready():
                select.select([channel], [], [], 0.2)
                while channel.recv_ready():
                    chunk = channel.recv(65536)
                    out += chunk
                    if on_output:
                        on_output(decoder.decode(chunk))
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                if deadline and time.monotonic() > deadline:
                    return 124, out.decode(errors="replace"), f"timed out after {timeout}s"
            channel.settimeout(10)  # the end of the output follows the exit status at once
            for chunk in iter(lambda: channel.recv(65536), b""):
                out += chunk
            for chunk in iter(lambda: channel.recv_stderr(65536), b""):
                err += chunk
            status = channel.recv_exit_status()
            if status == -1:  # paramiko's value when the channel closed without an exit status
                raise EOFError("the connection closed before the command ended")
            return status, out.decode(errors="replace"), err.decode(errors="replace")
        finally:
            channel.close()

    def _exec_invoke(self, command, *, sudo, timeout, stdin):
        """Fabric's sudo, which answers the password prompt (slow stdin: see _exec_channel)."""
        kwargs = dict(hide=True, warn=True, timeout=timeout,
                      in_stream=StdinChunks(stdin) if stdin is not None else False)
        try:
            result = self.connection.sudo(command, **kwargs) if sudo else self.connection.run(command, **kwargs)
        except Exception as e:
            if type(e).__name__ == "CommandTimedOut":
                return 124, "", f"timed out after {timeout}s"
            raise ConnectError(f"{self.name}: connection lost while running a command: {e}") from None
        return result.exited, result.stdout, result.stderr

    def abort(self) -> None:
        self.connection.close()  # the remote shells get SIGHUP and remove their temp files

    def reconnect(self) -> None:
        self.connection.close()
        self.open()

    def close(self) -> None:
        self.connection.close()
        super().close()


class _Pipes:
    """A local command's stdout and stderr, read as they come (stdout also to `on_output`)."""

    def __init__(self, proc: subprocess.Popen, on_output: OutputCallback | None):
        self.selector = selectors.DefaultSelector()
        self.data = {proc.stdout: bytearray(), proc.stderr: bytearray()}
        for pipe in self.data:
            self.selector.register(pipe, selectors.EVENT_READ)
        self.stdout = proc.stdout
        self.on_output = on_output
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def read_until(self, deadline: float | None) -> bool:
        """Read until both pipes end (True) or the deadline passes (False)."""
        while self.selector.get_map():
            wait = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if wait <= 0:
                return False
            for key, _ in self.selector.select(wait):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    self.selector.unregister(key.fileobj)
                    continue
                self.data[key.fileobj] += chunk
                if self.on_output and key.fileobj is self.stdout:
                    self.on_output(self.decoder.decode(chunk))
        return True

    def text(self) -> tuple[str, str]:
        """(stdout, stderr) as text, newlines as universal-newlines mode gives them."""
        def decode(data: bytearray) -> str:
            return data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
        return decode(self.data[self.stdout]), decode(next(d for p, d in self.data.items() if p is not self.stdout))

    def close(self) -> None:
        self.selector.close()
        for pipe in self.data:
            pipe.close()


def _write_stdin(pipe, data: bytes) -> None:
    try:
        if data:
            pipe.write(data)
        pipe.close()
    except (OSError, ValueError):
        pass  # the command ended before it read everything: its exit code says so


def _feed(channel, data: bytes) -> None:
    try:
        channel.sendall(data)
        channel.shutdown_write()
    except (OSError, EOFError, Exception):
        pass  # the command ended (or the connection went) before it read everything: its exit code says so


def describe_connect_error(name: str, connection, error: Exception) -> str:
    where = f"{connection.user}@{connection.host}:{connection.port}"
    reason = str(error) or type(error).__name__
    if type(error).__name__ == "BadHostKeyException":
        reason = ("host key changed since it was pinned; if the host was really reinstalled, "
                  "remove its line from the known_hosts file named in [local]")
    elif type(error).__name__ == "AuthenticationException":
        reason = "authentication failed (is the key in [local] identity authorised there?)"
    return f"{name} ({where}): cannot connect: {reason}"
