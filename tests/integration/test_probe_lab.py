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
    yield connector, session, probe_request(SimpleNamespace(host=connector.inventory.hosts["gpu1"], run_state={}))
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
    reader = session.run(facts.reader_argv(request), sudo=True, check=False)
    assert reader.exit_code == 0 and "inside:0" in facts.split_sections(reader.stdout)  # the reader runs here
    outputs = {path: session.run(Script(script), sudo=True, check=False).stdout for path, script in variants(request)}
    outputs["one by one"] = session.run(Script("TMPDIR=/no-such-dir; export TMPDIR\n" + variants(request)[-1][1]),
                                        sudo=True, check=False).stdout
    read = {}
    for path, out in outputs.items():
        assert facts.missing_sections(out, request) == [], path
        read[path] = facts.parse_probe(out, request)
    a = read["reader"]
    assert a.docker_running and a.containers["dev"]["State"]["Running"] and a.inside["dev"].sshd_running
    assert "openssh-server" in a.inside["dev"].packages and a.images
    # the reader reads the container from the host; what it prints there is what docker exec prints
    inside = lambda out: facts.split_sections(out)["inside:0"]  # noqa: E731
    assert inside(outputs["reader"]) == inside(outputs["Engine API"]) == inside(outputs["CLI"])
    for path, b in read.items():
        for field in ("packages", "containers", "inside", "images", "files", "users", "snapshots"):
            one, other = getattr(a, field), getattr(b, field)
            assert one == other, (path, field, {k: (one.get(k), other.get(k)) for k in set(one) | set(other)
                                                if one.get(k) != other.get(k)} if isinstance(one, dict) else other)
        for key in ("ServerVersion", "DockerRootDir", "Runtimes", "ContainersRunning", "Images"):
            assert a.docker_info[key] == b.docker_info[key], (path, key)


def variants(request):
    """The probe's three ways to read Docker: the reader (python3 on the server), the Engine API
    through curl, the docker CLI."""
    script = facts.probe_script(request)
    no_reader = script.replace(facts.READER_GUARD, "false")
    return [("reader", script), ("Engine API", no_reader), ("CLI", no_reader.replace(facts.ENGINE_API, "false"))]


def test_a_container_of_someone_elses_with_a_managed_name_is_not_read(lab, gpu1):
    """The exec runs beside the listing: a container named as in the inventory but not made by the tool
    gets no `docker exec` and no read, so none of its files reach the command log; through the reader,
    the Engine API and the CLI. Theirs is run from a commit of dev, as from a snapshot: it inherits dev's label."""
    _, session, request = gpu1
    assert sh(lab, "gpu1", "docker commit dev theirs-image:probe-test")[0] == 0
    assert sh(lab, "gpu1", "docker run -d --name theirs --entrypoint sleep theirs-image:probe-test 300")[0] == 0
    try:
        label = sh(lab, "gpu1", "docker inspect --format '{{index .Config.Labels \"gpufleet.container\"}}' theirs")
        assert label == (0, "dev")
        request.containers["theirs"] = ["/etc/os-release"]
        index = list(request.containers).index("theirs")
        for _, script in variants(request):
            out = session.run(Script(script), sudo=True, check=False).stdout
            assert facts.missing_sections(out, request) == []
            assert facts.inside_sections("theirs", facts.split_sections(out)[f"inside:{index}"]) is None
            assert "sshd_bin" in facts.inside_sections("dev", facts.split_sections(out)["inside:0"])  # dev is read
            read = facts.parse_probe(out, request)
            assert "theirs" not in read.containers and "theirs" not in read.inside and "dev" in read.inside
    finally:
        sh(lab, "gpu1", "docker rm -f theirs; docker rmi theirs-image:probe-test")


def test_a_link_in_a_container_never_reaches_the_servers_own_files(lab, gpu1):
    """The reader reads a container's files as root on the server: a link in the container to a file
    that only the server has is absent, as `docker exec` sees it; the file the link names inside the
    container is what it reads."""
    _, session, request = gpu1
    files = request.containers["dev"]
    target = files.index("/etc/apt/apt.conf.d/90gpufleet-proxy")
    assert sh(lab, "gpu1", "echo server-only > /etc/gpufleet-server-only")[0] == 0
    moved = "/etc/apt/apt.conf.d/90gpufleet-proxy.probe-test"
    assert sh(lab, "gpu1", f"docker exec dev sh -c '[ ! -e {files[target]} ] || mv {files[target]} {moved}'")[0] == 0
    try:
        for link in ("/etc/gpufleet-server-only", "../../../../../../etc/gpufleet-server-only"):
            sh(lab, "gpu1", f"docker exec dev ln -sfn {link} {files[target]}")
            outs = {path: session.run(Script(script), sudo=True, check=False).stdout for path, script in variants(request)}
            seen = {path: facts.parse_probe(out, request).inside["dev"].file(files[target]) for path, out in outs.items()}
            assert not seen["reader"].exists and seen["reader"] == seen["CLI"], (link, seen)
            assert "server-only" not in outs["reader"] and "c2VydmVyLW9ubHkK" not in outs["reader"]  # nor its base64
        sh(lab, "gpu1", "docker exec dev sh -c 'echo the-containers > /etc/gpufleet-server-only'")
        out = session.run(facts.probe_script(request), sudo=True, check=False).stdout
        assert facts.parse_probe(out, request).inside["dev"].file(files[target]).content == b"the-containers\n"
    finally:
        sh(lab, "gpu1", f"docker exec dev sh -c 'rm -f {files[target]} /etc/gpufleet-server-only; "
                        f"[ ! -e {moved} ] || mv {moved} {files[target]}'; rm -f /etc/gpufleet-server-only")


def test_sshd_counts_as_running_only_in_the_containers_own_pid_namespace(lab, gpu1):
    """`kill -0 PID` in the container: a pid file naming a process that only the server has (its own
    sshd) is a dead sshd; the container's own process is a live one. The reader reads /proc inside
    the container, so it answers alike."""
    _, session, request = gpu1
    image = sh(lab, "gpu1", "docker inspect --format '{{.Config.Image}}' dev")[1]
    server_pid = sh(lab, "gpu1", "pgrep -o -x sshd")[1]
    assert sh(lab, "gpu1", f"docker run -d --name probe2 --label {facts.MANAGED_LABEL}=probe2 --entrypoint sleep "
                           f"{image} 300")[0] == 0
    try:
        request.containers["probe2"] = request.containers["dev"]
        assert sh(lab, "gpu1", f"docker exec probe2 sh -c '! kill -0 {server_pid} 2>/dev/null'")[0] == 0
        for pid, alive in ((server_pid, False), ("1", True)):
            sh(lab, "gpu1", f"docker exec probe2 sh -c 'echo {pid} > /run/sshd.pid'")
            for path, script in variants(request):
                out = session.run(Script(script), sudo=True, check=False).stdout
                assert facts.parse_probe(out, request).inside["probe2"].sshd_running is alive, (path, pid)
    finally:
        sh(lab, "gpu1", "docker rm -f probe2")
