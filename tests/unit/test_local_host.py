"""A host with `address = "local"`: the inventory's rules, the local session (stdin payloads, timeouts that
stop the whole command, Ctrl-C, the log and counts), and the ssh config that reaches its containers on
127.0.0.1 without a jump.  Real processes on this machine; nothing outside tmp_path is written."""
import os
import pwd
import re
import threading
from pathlib import Path

import pytest

from gpufleet import inventory, ssh_config
from gpufleet.errors import CommandTimedOut, ConnectError
from gpufleet.connect import Connector
from gpufleet.executor import open_session
from gpufleet.remote import LocalSession, Script, SshSession
from tasks import sshconfig
from tests.goldens import check_golden
from tests.openssh import SSH, ssh_resolve

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "ssh_config"
ME = pwd.getpwuid(os.geteuid()).pw_name
INVENTORY = """
[local]
known_hosts = "/srv/gpufleet-test/known_hosts"
identity = "/srv/gpufleet-test/id_ed25519"
[hosts.bastion]
address = "bastion.example.com"
user = "ops"
[hosts.gpu1]
address = "10.0.0.11"
jump = "bastion"
[hosts.gpu1.containers.dev]
image = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"
ssh_port = 2222
[hosts.ws]
address = "local"
[hosts.ws.containers.dev]
image = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"
ssh_port = 2223
[hosts.ws.containers.exp]
image = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"
ssh_port = 2224
"""


def test_a_local_host_runs_as_whoever_runs_fab_unless_the_inventory_says_otherwise():
    inv = inventory.loads(INVENTORY)
    ws = inv.host("ws")
    assert ws.is_local and not inv.host("gpu1").is_local
    assert ws.user == ME and ws.sources["user"] == 'this machine (address = "local")'
    explicit = inventory.loads(INVENTORY.replace('address = "local"\n', 'address = "local"\nuser = "ada"\n'))
    assert explicit.host("ws").user == "ada" and explicit.host("ws").sources["user"] == "host ws"
    assert inv.jump_chain("ws") == []


def test_the_executor_gives_a_local_host_a_local_session(tmp_path):
    inv = inventory.loads(INVENTORY)
    connector = Connector(inv)
    local = open_session(connector, "ws", tmp_path / "ws.log", None)
    remote = open_session(connector, "gpu1", tmp_path / "gpu1.log", None)
    assert isinstance(local, LocalSession) and isinstance(remote, SshSession)
    local.open()
    assert local.run(["id", "-un"]).stdout.strip() == ME
    assert (local.commands, local.connections) == (1, 0)
    local.close()
    remote.close()
    assert connector.jumps_in_use(["ws"]) == []


def test_a_local_host_with_another_user_fails_to_open(tmp_path):
    session = LocalSession("ws", tmp_path / "log", user="someone-else")
    with pytest.raises(ConnectError, match=rf"^ws \(this machine\): the inventory says user = 'someone-else' but "
                                           rf"fab runs as '{ME}'; a local host runs as the user who runs fab"):
        session.open()


def test_stdin_payloads_arrive_whole(tmp_path):
    payload = "".join(f"line {i} {'x' * 100}\n" for i in range(20000))  # 2 MB: beyond any pipe buffer
    session = LocalSession("ws")
    result = session.run(Script(f"cat > {tmp_path / 'out'}; wc -c < {tmp_path / 'out'}"), stdin=payload)
    assert int(result.stdout) == len(payload.encode()) and (tmp_path / "out").read_text() == payload


def test_a_timeout_stops_the_whole_command_not_only_its_shell(tmp_path):
    pidfile = tmp_path / "child.pid"
    session = LocalSession("ws")
    # 5 s, not 1: on a loaded machine the shell may take a second to start
    with pytest.raises(CommandTimedOut, match=r"^`sh -c <script: sleep 300 .*` hung: still running after 5s, stopped"):
        session.run(Script(f"sleep 300 & echo $! > {pidfile}; echo started; wait"), timeout=5, check=False)
    child = int(pidfile.read_text())
    _wait_for(lambda: not _alive(child))


def test_abort_stops_running_commands_and_their_traps_clean_up(tmp_path):
    temp, ready = tmp_path / "x.gpufleet-tmp-1", tmp_path / "ready"
    session = LocalSession("ws")
    script = Script(f"t={temp}\ntrap 'rm -f \"$t\"' EXIT HUP INT TERM\ntouch \"$t\" {ready}\nsleep 300 & wait")
    results = []
    worker = threading.Thread(target=lambda: results.append(session.run(script, check=False)))
    worker.start()
    _wait_for(ready.exists)
    session.abort()
    worker.join(timeout=30)
    assert not worker.is_alive() and results[0].exit_code != 0
    assert not temp.exists()
    assert session.run(["true"], check=False).exit_code == 130  # nothing new starts after an abort


def test_the_command_log_names_the_session_and_masks_secrets(tmp_path):
    session = LocalSession("ws", tmp_path / "ws.log", sudo_password="hunter2-pw")
    session.open()
    session.run(["echo", "hunter2-pw"])
    session.run(Script("set -e\nfalse"), check=False)
    session.close()
    log = (tmp_path / "ws.log").read_text()
    assert re.search(rf"^# local session on \S+ as {ME}$", log, re.M)
    assert "$ echo *****" in log and "hunter2-pw" not in log
    assert "$ sh -c <script: false…>" in log and "# exit 1 in " in log


def test_ssh_config_block_for_a_local_host_golden():
    inv = inventory.loads(INVENTORY)
    entries = sshconfig.entries(inv)
    assert [e.alias for e in entries] == ["bastion", "gpu1", "gpu1-dev", "ws-dev", "ws-exp"]  # no entry for ws
    local = {e.alias: e for e in entries}
    assert (local["ws-dev"].hostname, local["ws-dev"].port, local["ws-dev"].proxy_jump) == ("127.0.0.1", 2223, None)
    assert local["gpu1-dev"].proxy_jump == "gpu1"
    check_golden(GOLDEN / "block-local-host-containers.txt", ssh_config.render_block(entries).encode())


@pytest.mark.skipif(SSH is None, reason="no ssh client")
def test_ssh_reaches_a_local_hosts_containers_directly(tmp_path):
    config = tmp_path / "config"
    config.write_text(ssh_config.render_block(sshconfig.entries(inventory.loads(INVENTORY))))
    rc, opts, err = ssh_resolve(config, "ws-exp")
    assert rc == 0, err
    assert (opts["hostname"], opts["port"], opts["user"]) == ("127.0.0.1", "2224", "root")
    assert "proxyjump" not in opts and opts.get("proxycommand", "none") == "none"
    assert opts["hostkeyalias"] == "ws-exp" and opts["stricthostkeychecking"] == "true"
    rc, opts, _ = ssh_resolve(config, "ws")
    assert opts["hostname"] == "ws"  # ssh knows nothing of it from our block


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _wait_for(condition, tries: int = 600) -> None:
    import time
    for _ in range(tries):
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition never became true")
