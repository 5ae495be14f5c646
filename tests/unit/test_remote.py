"""Commands as argv lists, masking of secrets, counting, stdin over SSH."""
import getpass
import hashlib
from pathlib import Path

import fabric
import pytest

from gpufleet.errors import CommandFailed
from gpufleet.remote import LocalSession, Script, Secret, SshSession, StdinChunks, mask, render
from tests import loopback

ARGV = [
    (["apt-get", "install", "-y", "docker.io"], "apt-get install -y docker.io"),
    (["echo", "it's"], "echo 'it'\"'\"'s'"),
    (["sh", "-c", "a && b"], "sh -c 'a && b'"),
    (["docker", "run", "-e", "A=b c"], "docker run -e 'A=b c'"),
]


@pytest.mark.parametrize("argv,joined", ARGV)
def test_argv_is_joined_with_shlex(argv, joined):
    assert render(argv) == (joined, joined)


def test_secrets_are_masked_in_what_is_shown():
    real, shown = render(["login", "-p", Secret("s3cr3t")])
    assert real == "login -p s3cr3t" and shown == "login -p *****"
    assert mask("the s3cr3t is out", ["s3cr3t"]) == "the ***** is out"


def test_script_is_run_with_sh_and_shown_by_first_line():
    real, shown = render(Script("set -e\necho hi"))
    assert real == "sh -c 'set -e\necho hi'" and shown.startswith("sh -c <script: echo hi")


def test_local_session_counts_and_raises_with_stderr_tail(tmp_path):
    session = LocalSession(log_path=tmp_path / "log")
    assert session.run(["echo", "hello"]).stdout == "hello\n"
    with pytest.raises(CommandFailed) as err:
        session.run(["sh", "-c", "echo nope >&2; exit 4"])
    assert err.value.exit_code == 4 and "nope" in str(err.value)
    session.run(["echo", Secret("pw123")])
    assert session.commands == 3
    session.close()
    log = (tmp_path / "log").read_text()
    assert "pw123" not in log and "$ echo *****" in log

    assert session_with_stdin(tmp_path) == "fed in\n"


def session_with_stdin(tmp_path):
    return LocalSession().run(["cat"], stdin="fed in\n").stdout


def test_stdin_is_handed_to_invoke_in_big_chunks():
    stream = StdinChunks("x" * 100_000)
    assert len(stream.read(1)) == StdinChunks.CHUNK  # Invoke asks for one character at a time
    assert len(stream.read(1)) == 100_000 - StdinChunks.CHUNK and stream.read(1) == ""


@pytest.mark.skipif(not loopback.available(), reason="needs root and OpenSSH's sshd")
def test_a_large_stdin_reaches_a_command_over_ssh_whole(tmp_path):
    key = loopback.keygen(tmp_path / "id_ed25519")
    server = loopback.LoopbackSshd(tmp_path / "sshd", Path(f"{key}.pub"))
    connection = fabric.Connection("127.0.0.1", user=getpass.getuser(), port=server.port,
                                   connect_kwargs={"key_filename": str(key), "look_for_keys": False})
    session = SshSession("loopback", connection)
    try:
        payload = "".join(f"{i:07d}\n" for i in range(40_000))  # 320 KB: about an hour at 100 bytes/s
        result = session.run(["sha256sum"], stdin=payload)
        assert result.stdout.split()[0] == hashlib.sha256(payload.encode()).hexdigest()
    finally:
        session.close()
        server.stop()
