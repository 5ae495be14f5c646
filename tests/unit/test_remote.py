"""Commands as argv lists, masking of secrets, counting."""
import pytest

from gpufleet.errors import CommandFailed
from gpufleet.remote import LocalSession, Script, Secret, mask, render

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
