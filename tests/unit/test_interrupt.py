"""Ctrl-C from a terminal at any early moment of the real `gpufleet` command: exit 130 and one line.

Fabric's `fab` got the handler only once the fabfile loaded; until then Python printed a
KeyboardInterrupt traceback, and Invoke exited 1 saying nothing (measured before the fix: Ctrl-C at
0.05-0.2 s gave a traceback, at 0.3-0.6 s exit 1 and no output)."""
import os
import pty
import select
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests import loopback
from tests.conftest import REPO

GPUFLEET = Path(sys.executable).parent / "gpufleet"
# after Python's own start-up; then Fabric's import alone takes about 0.2 s (0.33 s on a loaded machine)
DELAYS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6)


def python_start_up() -> float:
    """Seconds from exec to the first line of gpufleet.cli on this machine now (the slowest of three):
    before it, Python's own start-up handles SIGINT, which no code of this project can change."""
    def once():
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", "import gpufleet.cli"], check=True, cwd=REPO)
        return time.monotonic() - started
    return max(once() for _ in range(3))


@pytest.fixture(scope="module")
def silent_host(tmp_path_factory):
    """An inventory whose one host accepts TCP connections and never says a word (a run hangs there),
    and a HOME of its own."""
    root = tmp_path_factory.mktemp("interrupt")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    key = loopback.keygen(root / "id_ed25519")
    (root / "hosts.toml").write_text(textwrap.dedent(f"""
        [local]
        identity = "{key}"
        known_hosts = "{root}/known_hosts"
        ssh_config = "{root}/ssh_config"
        [run]
        log_dir = "{root}/logs"
        [hosts.h]
        address = "127.0.0.1"
        port = {listener.getsockname()[1]}
        """))
    yield root
    listener.close()


def ctrl_c_after(argv, delay, env) -> tuple[int | None, int, str]:
    """Start `argv` on a new terminal, type Ctrl-C after `delay` seconds: (exit code, or None where it had
    ended before; the exit code after Ctrl-C; what the terminal showed)."""
    pid, terminal = pty.fork()
    if pid == 0:
        try:
            os.chdir(REPO)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    time.sleep(delay)
    ended, status = os.waitpid(pid, os.WNOHANG)
    os.write(terminal, b"\x03")
    shown = b""
    while select.select([terminal], [], [], 20)[0]:
        try:
            chunk = os.read(terminal, 65536)
        except OSError:  # the other side closed
            break
        if not chunk:
            break
        shown += chunk
    if not ended:
        _, status = os.waitpid(pid, 0)
    os.close(terminal)
    return (os.waitstatus_to_exitcode(status) if ended else None), os.waitstatus_to_exitcode(status), \
        shown.decode(errors="replace").replace("\r", "").replace("^C", "")


@pytest.mark.parametrize("args", [["--list"], ["-H", "h", "bootstrap", "--dry-run"]], ids=["list", "dry-run"])
def test_ctrl_c_at_any_early_moment_exits_130_with_one_line(silent_host, args):
    assert GPUFLEET.exists(), f"{GPUFLEET} is not installed: run `make setup`"
    env = {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SSH_AUTH_SOCK")},
           "HOME": str(silent_host), "FABRIC_INVENTORY": str(silent_host / "hosts.toml")}
    interrupted, start_up = [], python_start_up() * 1.5
    for delay in DELAYS:
        ended_before, code, shown = ctrl_c_after([str(GPUFLEET), *args], start_up + delay, env)
        if ended_before is not None:  # `--list` may be done before the last delays on a fast machine
            assert ended_before == 0 and delay >= 0.2, (delay, ended_before, shown[-2000:])
            continue
        if args == ["--list"] and code == 0 and delay >= 0.2 and "ops.stop" in shown and "interrupted" not in shown:
            continue  # it had printed the whole list and was exiting as Ctrl-C came
        lines = [line for line in shown.splitlines() if line.strip()]
        said = [line for line in lines if line.startswith("interrupted")]
        assert code == 130 and len(said) == 1 and "Traceback" not in shown, (delay, code, shown[-2000:])
        if args == ["--list"]:
            assert lines == said, (delay, shown)  # nothing but that line
        interrupted.append(delay)
    assert interrupted[:4] == list(DELAYS[:4]), interrupted
