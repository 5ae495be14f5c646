"""A run cut between a config file's write and the restart that applies it: the next run restarts.

Each case runs the tool's own step on gpu1 through a session whose connection drops just before the
restart command (what Ctrl-C or a lost link does at that moment), checks that the file is written and
not applied, then runs `fab` and checks the real state: Docker applies daemon.json, sshd serves its
new config, the container runs its new entrypoint; a second run changes nothing.
"""
import json
import re
import shlex

import pytest

from gpufleet import daemon_json, pending
from gpufleet.connect import Connector
from gpufleet.errors import ConnectError
from gpufleet.facts import RemoteFile
from gpufleet.files import FileChange, apply_file
from gpufleet.inventory import load
from gpufleet.paths import DAEMON_JSON, probe_request
from gpufleet.plan import HostContext
from gpufleet.remote import Script, SshSession
from tasks import containers, docker
from tests.integration.helpers import inventory_variant, sh, ssh

CONTAINER_DIR = "/var/lib/gpufleet/containers/dev"


@pytest.fixture(autouse=True)
def converged(bootstrapped, fab):
    assert bootstrapped.returncode == 0, bootstrapped.stdout[-2000:]
    fab("gen-ssh-config")


class DropsBefore:
    """gpu1's real session, whose connection drops just before the first command that contains `text`."""

    def __init__(self, session: SshSession, text: str):
        self.session, self.text, self.dropped = session, text, False

    def run(self, command, **kwargs):
        shown = str(command) if isinstance(command, Script) else shlex.join(str(a) for a in command)
        if self.text in shown and not self.dropped:
            self.dropped = True
            self.session.abort()
            raise ConnectError(f"gpu1: connection lost while running a command: cut before {self.text!r}")
        return self.session.run(command, **kwargs)

    def __getattr__(self, name):
        return getattr(self.session, name)


def cut_run(inventory_path, step, before: str):
    """Run `step` on gpu1 as the tool does, the connection dropping before the command with `before`."""
    inventory = load(inventory_path)
    connector = Connector(inventory)
    session = DropsBefore(SshSession("gpu1", connector.connection("gpu1")), before)
    try:
        ctx = HostContext(inventory.host("gpu1"), inventory, session, known_hosts=connector.known_hosts)
        ctx.probe_request = probe_request
        report = ctx.run_steps([step])
    finally:
        session.session.close()
        connector.close()
    assert session.dropped, f"{step.name} never reached {before!r}: {report}"
    assert report.failed and "connection lost" in report.error, report
    return report


def record_exists(lab, path):
    return sh(lab, "gpu1", f"test -e {path}")[0] == 0


def default_shm_size(lab):
    """The shm size Docker gives a new container without --shm-size (daemon.json's default-shm-size)."""
    code, out = sh(lab, "gpu1", "docker rm -f shmcheck >/dev/null 2>&1; "
                                "docker create --name shmcheck $(docker inspect -f '{{.Config.Image}}' dev) true "
                                ">/dev/null && docker inspect -f '{{.HostConfig.ShmSize}}' shmcheck; "
                                "r=$?; docker rm -f shmcheck >/dev/null; exit $r")
    assert code == 0, out
    return int(out)


def test_daemon_json_written_before_a_cut_is_applied_by_the_next_run(lab, fab, tmp_path):
    # default-shm-size is a key `docker info` does not show: only the pending record can tell
    shm = inventory_variant(lab, tmp_path, "shm.toml", append='\n[hosts.gpu1.daemon_json]\n"default-shm-size" = "77M"\n')
    before = default_shm_size(lab)
    assert before != 77 << 20
    cut_run(shm, docker.CONFIGURE, "restart docker")
    assert json.loads(sh(lab, "gpu1", f"cat {DAEMON_JSON}")[1])["default-shm-size"] == "77M"
    assert record_exists(lab, pending.DOCKER_RESTART)
    assert default_shm_size(lab) == before  # written, not applied
    first = fab("-H", "gpu1", "docker.configure", inventory=shm)
    assert first.returncode == 0 and first.hosts["gpu1"]["changed"] == 1, first.stdout[-2000:]
    assert "restart Docker to apply" in first.hosts["gpu1"]["steps"][0]["message"]
    assert default_shm_size(lab) == 77 << 20
    assert not record_exists(lab, pending.DOCKER_RESTART)
    again = fab("-H", "gpu1", "docker.configure", inventory=shm)
    assert again.returncode == 0 and again.hosts["gpu1"]["changed"] == 0, again.stdout[-2000:]
    back = fab("-H", "gpu1", "docker.configure")  # the inventory dropped the key: removed, Docker restarted
    assert back.returncode == 0 and default_shm_size(lab) == before, back.stdout[-2000:]


def test_daemon_json_written_without_a_record_is_applied_when_docker_lacks_its_mirror(lab, fab, tmp_path):
    text = lab.inventory_path.read_text()
    line = re.search(r"^registry_mirrors = \[(.*)\]$", text, re.M)
    extra = "http://10.77.43.250:5000"
    more = inventory_variant(lab, tmp_path, "mirrors.toml", {line.group(0): f'registry_mirrors = [{line.group(1)}, "{extra}"]'})
    current = sh(lab, "gpu1", f"cat {DAEMON_JSON}")[1]
    config = json.loads(current)
    config["registry-mirrors"] = [*config["registry-mirrors"], extra]
    inventory = load(more)
    connector = Connector(inventory)
    session = SshSession("gpu1", connector.connection("gpu1"))
    try:  # the write primitive alone, as an older gpufleet or a hand edit leaves it: no record
        apply_file(session, FileChange(DAEMON_JSON, RemoteFile(True, current.encode() + b"\n", "0644", "root", "root"),
                                       daemon_json.render(config).encode()))
    finally:
        session.close()
        connector.close()
    assert not record_exists(lab, pending.DOCKER_RESTART)
    mirrors = lambda: [m.rstrip("/") for m in json.loads(sh(lab, "gpu1", "docker info --format '{{json .}}'")[1])  # noqa: E731
                       ["RegistryConfig"]["Mirrors"]]
    assert extra not in mirrors()
    first = fab("-H", "gpu1", "docker.configure", inventory=more)
    assert first.returncode == 0 and first.hosts["gpu1"]["changed"] == 1, first.stdout[-2000:]
    assert f"registry mirror {extra} is not active" in first.hosts["gpu1"]["steps"][0]["message"]
    assert extra in mirrors()
    again = fab("-H", "gpu1", "docker.configure", inventory=more)
    assert again.returncode == 0 and again.hosts["gpu1"]["changed"] == 0, again.stdout[-2000:]
    back = fab("-H", "gpu1", "docker.configure")
    assert back.returncode == 0 and extra not in mirrors(), back.stdout[-2000:]


def test_sshd_config_written_before_a_cut_is_served_after_the_next_run(lab, fab):
    config = f"{CONTAINER_DIR}/sshd_config"
    wanted = sh(lab, "gpu1", f"cat {config}")[1]
    # sshd in dev serves a config that refuses root; the tool's file lets root in
    assert sh(lab, "gpu1", f"sed -i '1i DenyUsers root' {config} && "
                           "docker exec dev sh -c 'kill -HUP $(cat /run/sshd.pid)'")[0] == 0
    assert ssh(lab, "gpu1-dev").returncode != 0
    cut_run(lab.inventory_path, containers.SSHD, "kill -HUP")
    assert sh(lab, "gpu1", f"cat {config}")[1] == wanted
    assert record_exists(lab, pending.sshd_reload("dev"))
    assert ssh(lab, "gpu1-dev").returncode != 0  # written, still the old config served
    first = fab("-H", "gpu1", "containers.up")
    assert first.returncode == 0 and first.hosts["gpu1"]["changed"] == 1, first.stdout[-2000:]
    assert "cut off before the reload" in json.dumps(first.hosts["gpu1"]["steps"])
    assert ssh(lab, "gpu1-dev").stdout.strip() == "gpu1-dev"
    assert not record_exists(lab, pending.sshd_reload("dev"))
    again = fab("-H", "gpu1", "containers.up")
    assert again.returncode == 0 and again.hosts["gpu1"]["changed"] == 0, again.stdout[-2000:]


def test_entrypoint_written_before_a_cut_is_run_after_the_next_run(lab, fab):
    entrypoint = f"{CONTAINER_DIR}/entrypoint.sh"
    wanted = sh(lab, "gpu1", f"cat {entrypoint}")[1]
    started = lambda: sh(lab, "gpu1", "docker inspect -f '{{.State.StartedAt}}' dev")[1]  # noqa: E731
    # dev runs an entrypoint that is not the tool's
    assert sh(lab, "gpu1", f"printf '# an older entrypoint\\n' >> {entrypoint} && docker restart dev")[0] == 0
    old_start = started()
    cut_run(lab.inventory_path, containers.RUN, "docker restart")
    assert sh(lab, "gpu1", f"cat {entrypoint}")[1] == wanted
    assert record_exists(lab, pending.container_restart("dev"))
    assert started() == old_start  # written, still the old one running
    first = fab("-H", "gpu1", "containers.up")
    assert first.returncode == 0 and first.hosts["gpu1"]["changed"] == 1, first.stdout[-2000:]
    assert "cut off before the restart" in json.dumps(first.hosts["gpu1"]["steps"])
    assert started() > old_start
    assert not record_exists(lab, pending.container_restart("dev"))
    assert ssh(lab, "gpu1-dev").stdout.strip() == "gpu1-dev"
    again = fab("-H", "gpu1", "containers.up")
    assert again.returncode == 0 and again.hosts["gpu1"]["changed"] == 0, again.stdout[-2000:]
