"""The facts probe on a real, bootstrapped lab server, through the real bastion: its docker calls side by
side and through the Engine API, read alike one by one through the docker CLI."""
import socket
from types import SimpleNamespace

import paramiko
import pytest

from gpufleet import facts
from gpufleet.connect import Connector
from gpufleet.inventory import load
from gpufleet.paths import probe_request
from gpufleet.remote import Script, SshSession
from tests.integration.helpers import sh


@pytest.fixture
def gpu1(lab, bootstrapped):
    connector = Connector(load(lab.inventory_path))
    session = SshSession("gpu1", connector.connection("gpu1"))
    session.open()
    yield connector, session, probe_request(SimpleNamespace(host=connector.inventory.hosts["gpu1"]))
    session.close()
    connector.close()


def test_connections_send_at_once(gpu1):
    """Nagle's algorithm made every command wait for a delayed ACK (about 40 ms each)."""
    connector, session, _ = gpu1
    bastion = connector.jump_connection("bastion").client.get_transport().sock
    assert bastion.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    assert isinstance(session.connection.client.get_transport().sock, paramiko.Channel)  # rides the bastion's


def test_the_probe_runs_its_docker_calls_side_by_side_and_leaves_no_temp_dir(lab, gpu1):
    _, session, request = gpu1
    temp_dirs = "ls -d /tmp/tmp.* 2>/dev/null"  # what mktemp -d makes
    before = sh(lab, "gpu1", temp_dirs)
    side_by_side = session.run(facts.probe_script(request), sudo=True, check=False).stdout
    assert sh(lab, "gpu1", temp_dirs) == before
    # where no temp dir can be made, the same sections come one after the other; without curl
    # (or where the daemon's socket is elsewhere), from the docker CLI
    assert sh(lab, "gpu1", "command -v curl")[0] == 0
    cli = facts.probe_script(request).replace(facts.ENGINE_API, "false")
    one_by_one = session.run(Script("TMPDIR=/no-such-dir; export TMPDIR\n" + cli), sudo=True, check=False).stdout
    assert facts.missing_sections(side_by_side, request) == [] == facts.missing_sections(one_by_one, request)
    a, b = facts.parse_probe(side_by_side, request), facts.parse_probe(one_by_one, request)
    assert a.docker_running and a.containers["dev"]["State"]["Running"] and a.inside["dev"].sshd_running
    assert "openssh-server" in a.inside["dev"].packages and a.images
    for field in ("packages", "containers", "inside", "images", "files", "users", "snapshots"):
        one, other = getattr(a, field), getattr(b, field)
        assert one == other, (field, {k: (one.get(k), other.get(k)) for k in set(one) | set(other)
                                      if one.get(k) != other.get(k)} if isinstance(one, dict) else other)
    for key in ("ServerVersion", "DockerRootDir", "Runtimes", "ContainersRunning", "Images"):
        assert a.docker_info[key] == b.docker_info[key], key


def test_a_container_of_someone_elses_with_a_managed_name_is_not_read(lab, gpu1):
    """The exec runs beside the listing: a container named as in the inventory but not made by the tool
    gets no `docker exec`, so none of its files reach the command log; through the Engine API and
    through the CLI. Theirs is run from a commit of dev, as from a snapshot: it inherits dev's label."""
    _, session, request = gpu1
    assert sh(lab, "gpu1", "docker commit dev theirs-image:probe-test")[0] == 0
    assert sh(lab, "gpu1", "docker run -d --name theirs --entrypoint sleep theirs-image:probe-test 300")[0] == 0
    try:
        label = sh(lab, "gpu1", "docker inspect --format '{{index .Config.Labels \"gpufleet.container\"}}' theirs")
        assert label == (0, "dev")
        request.containers["theirs"] = ["/etc/os-release"]
        index = list(request.containers).index("theirs")
        for script in (facts.probe_script(request), facts.probe_script(request).replace(facts.ENGINE_API, "false")):
            out = session.run(Script(script), sudo=True, check=False).stdout
            assert facts.missing_sections(out, request) == []
            assert "sshd_bin" not in facts.split_sections(facts.split_sections(out)[f"inside:{index}"][1])
            assert "sshd_bin" in facts.split_sections(facts.split_sections(out)["inside:0"][1])  # dev is read
            read = facts.parse_probe(out, request)
            assert "theirs" not in read.containers and "theirs" not in read.inside and "dev" in read.inside
    finally:
        sh(lab, "gpu1", "docker rm -f theirs; docker rmi theirs-image:probe-test")
