"""The Docker reader (runs on the server in the probe): paths resolved inside a container's root,
the shell `readfile` and `dpkg-query` it stands in for compared on this machine's real files."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpufleet import docker_reader as reader
from gpufleet import facts
from gpufleet.facts import PROBE_FUNCTIONS


@pytest.fixture
def container(tmp_path):
    """A container's root folder beside a host secret that its links try to reach."""
    (tmp_path / "host-secret").write_text("the host's\n")
    root = tmp_path / "root"
    (root / "etc" / "ssh").mkdir(parents=True)
    (root / "etc" / "ssh" / "sshd_config").write_text("inside\n")
    (root / "host-secret").write_text("the container's\n")
    links = {
        "etc/absolute": "/host-secret",                      # absolute: from the container's /
        "etc/climbing": "../../../../../../host-secret",     # .. stops at the container's /
        "etc/through-dir": "/etc/ssh/../ssh/sshd_config",
        "etc/dir-link": "/etc/ssh",
        "etc/to-proc-self": "/proc/self/root/host-secret",   # the container has no /proc here: absent
        "etc/loop": "loop",
        "etc/dangling": "/nowhere",
        "etc/chain": "absolute",
    }
    for name, target in links.items():
        os.symlink(target, root / name)
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    yield fd
    os.close(fd)


RESOLVED = [
    ("/etc/ssh/sshd_config", b"inside\n"),
    ("/etc/absolute", b"the container's\n"),
    ("/etc/climbing", b"the container's\n"),
    ("/../../host-secret", b"the container's\n"),
    ("/etc/through-dir", b"inside\n"),
    ("/etc/dir-link/sshd_config", b"inside\n"),
    ("/etc/chain", b"the container's\n"),
    ("/etc/to-proc-self", None),
    ("/etc/loop", None),
    ("/etc/dangling", None),
    ("/etc/ssh", None),                     # a folder is no regular file
    ("/etc/ssh/sshd_config/x", None),       # ENOTDIR
]


@pytest.mark.parametrize("path,content", RESOLVED, ids=[r[0] for r in RESOLVED])
def test_a_path_resolves_inside_the_containers_root_never_on_the_host(container, path, content):
    assert reader.read_regular(container, path) == content


def shell_readfile(path):
    return subprocess.run(["sh", "-c", PROBE_FUNCTIONS + 'readfile "$1"', "sh", path],
                          capture_output=True, text=True).stdout


def test_readfile_prints_what_the_shell_readfile_prints(tmp_path):
    """Root `/` is this machine's own: the shell's stat names owners from its /etc/passwd as the reader does."""
    (tmp_path / "file").write_text("content\n")
    (tmp_path / "empty").touch()
    (tmp_path / "setuid").write_text("x")
    os.chmod(tmp_path / "setuid", 0o4755)
    (tmp_path / "stranger").write_text("y")
    os.chown(tmp_path / "stranger", 4242, 4243)  # no such user or group: UNKNOWN
    (tmp_path / "dir").mkdir(mode=0o700)
    os.symlink("file", tmp_path / "link")
    os.symlink(tmp_path / "dir", tmp_path / "dir-link")
    os.symlink("nowhere", tmp_path / "dangling")
    os.mkfifo(tmp_path / "fifo")
    root = os.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        users, groups = reader.id_names(root, "/etc/passwd"), reader.id_names(root, "/etc/group")
        for name in ("file", "empty", "setuid", "stranger", "dir", "link", "dir-link", "dangling", "fifo",
                     "absent", "absent/below", "file/below"):
            path = str(tmp_path / name)
            assert reader.readfile(root, path, users, groups) == shell_readfile(path), name
    finally:
        os.close(root)


DPKG_FORMAT = "${Package}\\t${db:Status-Abbrev}\\t${Version}\\n"


@pytest.mark.skipif(not shutil.which("dpkg-query") or not os.path.exists("/var/lib/dpkg/status"),
                    reason="needs dpkg here")
def test_dpkg_lines_are_what_dpkg_query_prints_from_this_machines_database():
    installed = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\n"], capture_output=True, text=True).stdout.split()
    packages = [installed[-1], "no-such-package-x", installed[0], *installed[len(installed) // 2:][:5]]
    real = subprocess.run(["dpkg-query", "-W", "-f", DPKG_FORMAT, *packages], capture_output=True, text=True)
    with open("/var/lib/dpkg/status", encoding="utf-8", errors="replace") as f:
        rc, out = reader.dpkg_lines(f.read(), packages)
    assert rc == real.returncode == 1
    assert out == real.stdout + real.stderr


STATUS = """Package: held
Status: hold ok installed
Version: 1.0

Package: removed
Status: deinstall ok config-files
Version: 2.0

Package: openssh-server
Status: install reinstreq half-configured
Version: 1:9.2
Description: with a continuation line
 Package: not-a-package
"""


def test_dpkg_lines_abbreviate_every_state():
    rc, out = reader.dpkg_lines(STATUS, ["openssh-server", "held", "removed", "not-a-package"])
    assert rc == 1
    assert out.splitlines() == ["held\thi \t1.0", "removed\trc \t2.0", "openssh-server\tiFR\t1:9.2",
                                "dpkg-query: no packages found matching not-a-package"]


@pytest.fixture
def rooted_process(tmp_path):
    """A live process whose root is a folder (as a container's init is): its /proc/PID/root is what the
    reader opens. The root folder and the pid."""
    root = tmp_path / "root"
    (root / "var" / "lib" / "dpkg" / "updates").mkdir(parents=True)
    (root / "var" / "lib" / "dpkg" / "status").write_text(STATUS)
    # a new Python chroots itself (nothing more to load from disk after that), says so, and waits
    child = subprocess.Popen([sys.executable, "-c", "import os, signal, sys; os.chroot(sys.argv[1]); "
                              "print('rooted', flush=True); signal.pause()", str(root)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "rooted\n", "chroot failed (needs root)"
        yield root, child.pid
    finally:
        child.kill()
        child.wait()


def test_a_container_with_a_pending_dpkg_journal_is_read_with_docker_exec(rooted_process, tmp_path, monkeypatch):
    """dpkg-query reads the journal in /var/lib/dpkg/updates; the reader does not, so it hands that
    container to `docker exec` with the shell path's script (a stand-in `docker` records the call)."""
    root, pid = rooted_process
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text('#!/bin/sh\nprintf "%s|" "$@"\n')
    (bin_dir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    info = {"Config": {"Labels": {facts.MANAGED_LABEL: "dev"}}, "State": {"Running": True, "Pid": pid}}
    read = lambda: reader.read_container("dev", info, facts.MANAGED_LABEL, ["held"], [], "SCRIPT")  # noqa: E731
    rc, out = read()
    assert rc == 0 and "held\thi" in facts.split_sections(out)["pkgs"][1]  # read from the host, through /proc/PID/root
    (root / "var" / "lib" / "dpkg" / "updates" / "0001").write_text("Package: held\n")
    assert read() == (0, "exec|dev|sh|-c|SCRIPT|")


def test_only_a_running_container_of_ours_is_read():
    """A container that carries our label naming another (run from a snapshot image), a stopped or a
    paused one: no exec, no read, the answer the shell path gives."""
    running = {"Config": {"Labels": {facts.MANAGED_LABEL: "dev"}}, "State": {"Running": True, "Pid": 1}}
    cases = [(None, "dev"), (running, "theirs"), ({**running, "State": {"Running": False, "Pid": 0}}, "dev"),
             ({**running, "State": {"Running": True, "Paused": True, "Pid": 1}}, "dev")]
    for info, name in cases:
        rc, _ = reader.read_container(name, info, facts.MANAGED_LABEL, ["openssh-server"], [], "exit 99")
        assert rc == 1, (info, name)


def test_what_the_probe_shows_of_a_container_holds_no_env():
    info = {"Name": "/dev", "Id": "1", "Config": {"Env": ["TOKEN=secret"], "Image": "i", "Labels": {}},
            "HostConfig": {"PortBindings": {}, "Binds": []}, "State": {"Running": True}, "Mounts": []}
    assert "secret" not in repr(reader.shown(info)) and set(reader.shown(info)) == {
        "Name", "Id", "Image", "State", "Config", "HostConfig", "Mounts"}


def test_the_reader_is_sent_alone_and_runs_on_python_3_8():
    """Its source goes to the server as it is (Ubuntu 20.04 has Python 3.8): no module of ours, only
    the standard library, and 3.8's grammar. An older Python fails it and the probe takes its shell path."""
    import ast
    source = Path(reader.__file__).read_text()
    tree = ast.parse(source, feature_version=(3, 8))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported
