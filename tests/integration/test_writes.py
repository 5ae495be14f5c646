"""The one file writer on a real server through the bastion: a connection cut in the middle of a write
never installs part of a file, and a new user's ~/.ssh belongs to that user."""
import hashlib
import os
import threading
import time

import pytest

from gpufleet.connect import Connector
from gpufleet.facts import ABSENT, RemoteFile
from gpufleet.files import FileChange, apply_file
from gpufleet.inventory import load
from tests.integration.helpers import sh

TARGET = "/var/lib/gpufleet-test-writes/big.bin"
OLD = b"the old content\n"


@pytest.fixture
def session(lab):
    from gpufleet.remote import SshSession
    connector = Connector(load(lab.inventory_path))
    opened = []

    def new():
        s = SshSession("gpu1", connector.connection("gpu1"))
        opened.append(s)
        return s
    yield new
    for s in opened:
        s.close()
    connector.close()


def digest_on(lab, path):
    code, out = sh(lab, "gpu1", f"sha256sum {path}")
    return out.split()[0] if code == 0 else None


def temps(lab):
    return sh(lab, "gpu1", f"ls -a {os.path.dirname(TARGET)} | grep gpufleet-tmp- || true")[1].split()


def cut_mid_write(lab, session, kill: str):
    """Start writing 24 MiB to TARGET, wait until part of it is on the server, run `kill` there."""
    sh(lab, "gpu1", f"mkdir -p {os.path.dirname(TARGET)} && printf 'the old content\\n' > {TARGET}")
    change = FileChange(TARGET, RemoteFile(True, OLD, "0644", "root", "root"), os.urandom(24 << 20))
    errors = []
    writer = threading.Thread(target=lambda: _write(session(), change, errors))
    writer.start()
    deadline = time.monotonic() + 60
    while True:
        size = sh(lab, "gpu1", f"stat -c %s {os.path.dirname(TARGET)}/.big.bin.gpufleet-tmp-* 2>/dev/null")[1]
        if size.isdigit() and 1 << 20 < int(size) < 20 << 20:
            break
        assert time.monotonic() < deadline, "the transfer never got going"
        assert writer.is_alive(), f"the write finished before it could be cut: {errors}"
        time.sleep(0.05)
    assert sh(lab, "gpu1", kill)[0] == 0
    writer.join(60)
    assert not writer.is_alive() and errors, "the cut write must fail"
    return change


def _write(session, change, errors):
    try:
        apply_file(session, change)
    except Exception as e:
        errors.append(e)


def test_cut_connection_leaves_the_old_file_and_the_shell_removes_its_temp(lab, session):
    # sshd's session process goes away; without a tty the remote shell lives on and sees stdin end early
    cut_mid_write(lab, session, "pkill -f 'sshd: roo[t]@notty'")
    deadline = time.monotonic() + 20
    while temps(lab) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert digest_on(lab, TARGET) == hashlib.sha256(OLD).hexdigest()
    assert temps(lab) == []


def test_a_shell_killed_outright_leaves_a_temp_that_the_next_write_removes(lab, session):
    # the shell dies with SIGKILL (no trap runs), then the connection goes: its temp file stays behind
    change = cut_mid_write(lab, session, "pkill -9 -f 'gpufleet-tm[p]-' ; pkill -f 'sshd: roo[t]@notty'")
    deadline = time.monotonic() + 20
    while sh(lab, "gpu1", "pgrep -f 'base64 -d'")[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert digest_on(lab, TARGET) == hashlib.sha256(OLD).hexdigest()
    assert len(temps(lab)) == 1
    current = RemoteFile(True, OLD, "0644", "root", "root")
    apply_file(session(), FileChange(TARGET, current, change.content))
    assert digest_on(lab, TARGET) == hashlib.sha256(change.content).hexdigest()
    assert temps(lab) == []


def test_a_new_users_ssh_directory_belongs_to_the_user(lab, session):
    sh(lab, "gpu1", "id ada >/dev/null 2>&1 || useradd -m -s /bin/sh ada; rm -rf /home/ada/.ssh")
    change = FileChange("/home/ada/.ssh/authorized_keys", ABSENT, b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA ada\n",
                        mode="0600", owner="ada", group="ada", parent_mode="0700")
    apply_file(session(), change)
    assert sh(lab, "gpu1", "stat -c '%U:%G %a' /home/ada/.ssh /home/ada/.ssh/authorized_keys")[1].split("\n") == [
        "ada:ada 700", "ada:ada 600"]
