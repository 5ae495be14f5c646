"""Faults on the lab: a dead bastion, a server lost mid-run, Ctrl-C, an sshd_config that fails
`sshd -t`. The tool must finish the other hosts, never install a bad file, and leave no temp files."""
import signal
import subprocess
import sys
import time

import pytest

from gpufleet.connect import Connector
from gpufleet.errors import ValidationFailed
from gpufleet.facts import RemoteFile
from gpufleet.files import FileChange, apply_file
from gpufleet.inventory import load
from gpufleet.remote import SshSession
from tasks.containers import sshd_validator
from tests.integration.helpers import inventory_variant, sh, ssh

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def converged(bootstrapped, fab):
    assert bootstrapped.returncode == 0, bootstrapped.stdout[-2000:]
    fab("gen-ssh-config")


def no_temp_files(lab, host):
    return sh(lab, host, "find /etc /var/lib/gpufleet /root /home -name '*gpufleet-tmp-*' 2>/dev/null")[1] == ""


def test_bastion_down_fails_every_host_fast_with_one_message(lab, fab, tmp_path):
    import tomllib
    from tests.loopback import free_port
    port = tomllib.loads(lab.inventory_path.read_text())["hosts"]["bastion"]["port"]
    down = inventory_variant(lab, tmp_path, "down.toml", {f"port = {port}\n": f"port = {free_port()}\n"})
    started = time.monotonic()
    result = fab("-H", "gpu1,gpu2", "bootstrap", inventory=down)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    for host in ("gpu1", "gpu2"):
        assert result.hosts[host]["failed_step"] == "connect"
        assert result.hosts[host]["error"].startswith("jump host bastion (root@127.0.0.1:"), result.hosts[host]
    assert elapsed < 20, f"took {elapsed:.0f}s: not fast"


def test_sshd_config_failing_sshd_t_is_never_installed_and_sshd_keeps_serving(lab):
    inventory = load(lab.inventory_path)
    connector = Connector(inventory)
    session = SshSession("gpu1", connector.connection("gpu1"))
    path = "/var/lib/gpufleet/containers/dev/sshd_config"
    before = sh(lab, "gpu1", f"md5sum {path}")[1]
    change = FileChange(path, RemoteFile(True, b"x", "0644", "root", "root"),
                        b"Port 22\nPasswordAuthentication maybe\n", validate=sshd_validator("dev"))
    try:
        with pytest.raises(ValidationFailed) as err:
            apply_file(session, change)
    finally:
        session.close()
        connector.close()
    assert "unsupported option \"maybe\"" in str(err.value) or "maybe" in str(err.value), str(err.value)
    assert sh(lab, "gpu1", f"md5sum {path}")[1] == before
    assert no_temp_files(lab, "gpu1")
    assert ssh(lab, "gpu1-dev", "hostname").stdout.strip() == "gpu1-dev"


def fab_ignoring_sigint(inventory, cwd, *args):
    """The real fab CLI started the way a shell starts a background job: SIGINT ignored.
    Python keeps an ignored SIGINT ignored, so this is the case a plain `kill -INT` never ended."""
    env = dict(__import__("os").environ, FABRIC_INVENTORY=str(inventory), PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "fabric", "-r", str(REPO), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))


def interrupt(proc):
    """SIGINT; fab must be gone within 5 s with exit 130, one line saying so, a recap and no traceback."""
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"fab still running 5 s after SIGINT: {out[-1000:]} {err[-1000:]}")
    assert time.monotonic() - started < 5
    assert proc.returncode == 130, out + err
    assert "Traceback" not in out + err, out + err
    assert err.strip().splitlines()[-1].startswith("interrupted (Ctrl-C)"), err
    return out, err


def test_ctrl_c_while_a_remote_command_runs_closes_connections_and_prints_a_recap(lab, fab):
    proc = fab_ignoring_sigint(lab.inventory_path, fab.cwd, "-H", "gpu1,gpu2", "ops.exec",
                               "--container", "dev", "--command", "sleep 40")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(sh(lab, h, "pgrep -f '^sleep 40'")[0] for h in ("gpu1", "gpu2")):
        time.sleep(0.2)
    out, err = interrupt(proc)
    assert "Recap" in out, out
    for host in ("gpu1", "gpu2"):
        assert f"{host} failed at ops.exec: interrupted (Ctrl-C)" in out, out
    for host in ("gpu1", "gpu2"):
        assert no_temp_files(lab, host)
        # no SSH session of the tool is left on the host
        deadline = time.monotonic() + 10
        while sh(lab, host, "pgrep -f 'sshd: (root|dev)@notty'")[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sh(lab, host, "pgrep -f 'sshd: (root|dev)@notty'")[0] != 0


def test_ctrl_c_while_connecting_to_a_silent_bastion(lab, fab, tmp_path):
    """A bastion that accepts TCP and never sends its banner: fab waits in the SSH handshake."""
    import socket
    import tomllib
    listener = socket.create_server(("127.0.0.1", 0))
    port = tomllib.loads(lab.inventory_path.read_text())["hosts"]["bastion"]["port"]
    silent = inventory_variant(lab, tmp_path, "silent.toml",
                               {f"port = {port}\n": f"port = {listener.getsockname()[1]}\n"})
    try:
        proc = fab_ignoring_sigint(silent, fab.cwd, "-H", "gpu1,gpu2", "bootstrap")
        listener.settimeout(20)
        accepted, _ = listener.accept()  # fab is now in the handshake
        out, err = interrupt(proc)
        accepted.close()
    finally:
        listener.close()
    assert "Recap" in out, out
    for host in ("gpu1", "gpu2"):
        assert f"{host} failed at not started: interrupted (Ctrl-C) before it started" in out, out


def test_a_server_lost_mid_run_fails_alone_and_a_rerun_of_failed_hosts_completes(lab, fab):
    lab.up(hosts=4)   # gpu4: Debian 13 with systemd (docker-ce 29), bare; gpu3 is left out
    try:
        env = dict(__import__("os").environ, FABRIC_INVENTORY=str(lab.inventory_path), PYTHONPATH=str(REPO))
        proc = subprocess.Popen([sys.executable, "-m", "fabric", "-r", str(REPO), "-H", "gpu1,gpu2,gpu4", "bootstrap",
                                 "--json", str(fab.cwd / "lost.json")],
                                cwd=fab.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sh(lab, "gpu4", "pgrep -x apt-get")[0] != 0:
            time.sleep(0.3)
        lab.stop_server("gpu4")
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 1, out[-3000:] + err[-2000:]
        import json
        hosts = {h["host"]: h for h in json.loads((fab.cwd / "lost.json").read_text())["hosts"]}
        assert hosts["gpu1"]["error"] == "" and hosts["gpu2"]["error"] == ""
        assert hosts["gpu4"]["failed_step"] == "docker.install", hosts["gpu4"]
        assert "gpu4 failed at docker.install" in out
        lab.start_server("gpu4")
        again = fab("-H", "@failed", "bootstrap", inventory=lab.inventory_path)
        assert again.returncode == 0, again.stdout[-3000:]
        assert set(again.hosts) == {"gpu4"} and again.hosts["gpu4"]["error"] == ""
        assert sh(lab, "gpu4", "docker inspect -f '{{.State.Running}}' dev")[1] == "true"
    finally:
        lab.up(hosts=3)


SLOW_PACKAGE = r"""set -e
d=$(mktemp -d); mkdir -p "$d/DEBIAN"
printf 'Package: gpufleet-slow-postinst\nVersion: 1.0\nArchitecture: all\nMaintainer: tests <t@localhost>\nDescription: configured in 15 s\n' > "$d/DEBIAN/control"
printf '#!/bin/sh\nsleep 15\n' > "$d/DEBIAN/postinst"; chmod 755 "$d/DEBIAN/postinst"
dpkg-deb --build "$d" /tmp/gpufleet-slow.deb >/dev/null
setsid sh -c 'dpkg -i /tmp/gpufleet-slow.deb > /tmp/gpufleet-slow.log 2>&1' < /dev/null > /dev/null 2>&1 &
for i in $(seq 50); do [ -z "$(dpkg --audit 2>/dev/null)" ] || exit 0; sleep 0.2; done; exit 1"""


def test_an_install_waits_for_a_dpkg_still_running_from_an_interrupted_run(lab):
    """After a Ctrl-C the remote apt runs on (sshd does not hang up a command without a tty): the next
    run's install waits for dpkg's lock instead of failing on it."""
    from gpufleet.apt_repo import apt_install
    assert sh(lab, "gpu1", SLOW_PACKAGE)[0] == 0  # another dpkg holds the lock, a package half-configured
    connector = Connector(load(lab.inventory_path))
    session = SshSession("gpu1", connector.connection("gpu1"))
    try:
        result = session.run(apt_install(["dpkg"], update=False), sudo=True, check=False)
        assert result.exit_code == 0, result.stderr
        assert sh(lab, "gpu1", "dpkg-query -W -f '${Status}' gpufleet-slow-postinst") == (0, "install ok installed")
    finally:
        session.close()
        connector.close()
        sh(lab, "gpu1", "dpkg -r gpufleet-slow-postinst >/dev/null 2>&1; rm -f /tmp/gpufleet-slow.*")
