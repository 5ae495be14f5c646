"""ssh_config: the managed block (golden), where update() puts it, and what the real `ssh -G` then resolves."""
import re
from pathlib import Path

import pytest

from tests.goldens import check_golden

from gpufleet import ssh_config
from gpufleet.errors import InputError
from tests.openssh import SSH, ssh_resolve

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ssh_config"
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "ssh_config"
KNOWN_HOSTS = "/srv/gpufleet-test/known_hosts"
IDENTITY = "/srv/gpufleet-test/id_ed25519"
ENTRIES = [
    ssh_config.SshHostEntry("bastion", "bastion.example.com", user="ops", identity_file=IDENTITY,
                            host_key_alias="bastion", known_hosts_file=KNOWN_HOSTS),
    ssh_config.SshHostEntry("gpu1", "10.0.0.11", user="root", identity_file=IDENTITY, proxy_jump="bastion",
                            host_key_alias="gpu1", known_hosts_file=KNOWN_HOSTS),
    ssh_config.SshHostEntry("gpu1-dev", "127.0.0.1", port=2222, user="root", identity_file=IDENTITY,
                            proxy_jump="gpu1", host_key_alias="gpu1-dev", known_hosts_file=KNOWN_HOSTS,
                            forward_agent=True),
]
BLOCK = ssh_config.render_block(ENTRIES)
SECTION = re.compile(rb"^[ \t]*(host|match)([ \t]*=|[ \t]+)", re.IGNORECASE)


def assert_golden(name: str, data: bytes) -> None:
    check_golden(GOLDEN / name, data)


def check_update(original: bytes, block: str = BLOCK) -> bytes:
    """update() keeps every byte outside the block, is idempotent, and puts the block before any section."""
    updated = ssh_config.update(original, block)
    assert ssh_config.remove_block(updated) == original
    assert ssh_config.update(updated, block) == updated
    lines = updated.split(b"\n")
    begin = next(i for i, line in enumerate(lines) if line.rstrip(b"\r") == ssh_config.BEGIN.encode())
    assert not any(SECTION.match(line) for line in lines[:begin])  # the block is never inside a section
    assert (ssh_config.BEGIN.encode() + b"\r\n" in updated) == (b"\r\n" in original)  # CRLF files get CRLF
    return updated




def check_with_ssh(tmp_path: Path, original: bytes, updated: bytes, entries=ENTRIES, foreign=("github.com",)):
    """The real ssh reads our aliases from our block, and resolves every other host exactly as before.

    Returns False (checking only that ssh fails alike) when ssh already refuses the original file."""
    before, after = tmp_path / "before.config", tmp_path / "after.config"
    before.write_bytes(original)
    after.write_bytes(updated)
    for alias in foreign:
        rc_before, opts_before, _ = ssh_resolve(before, alias)
        rc_after, opts_after, err = ssh_resolve(after, alias)
        assert rc_after == rc_before, err
        if rc_before == 0:
            assert opts_after == opts_before
    if rc_before != 0:  # the user's own file is broken for this ssh (a macOS-only option...): so is ours
        return False
    for entry in entries:
        rc, opts, err = ssh_resolve(after, entry.alias)
        assert rc == 0, err
        assert (opts["hostname"], opts["port"]) == (entry.hostname, str(entry.port))
        if entry.user:
            assert opts["user"] == entry.user
        if entry.known_hosts_file:
            assert opts["userknownhostsfile"] == entry.known_hosts_file
            assert opts["stricthostkeychecking"] == "true"
        if entry.proxy_jump:
            assert opts["proxyjump"] == entry.proxy_jump
    return True


def test_render_block_golden():
    assert_golden("block-bastion-server-container.txt", BLOCK.encode())
    assert BLOCK.startswith(ssh_config.BEGIN + "\n") and BLOCK.endswith("Host *\n" + ssh_config.END + "\n")


def test_render_block_quotes_paths_with_spaces_and_skips_defaults():
    block = ssh_config.render_block([ssh_config.SshHostEntry(
        "lab", "10.1.0.1", identity_file="/home/ada/My Keys/id_ed25519", known_hosts_file="/tmp/k#1",
        extra={"ServerAliveInterval": 30})])
    assert '    IdentityFile "/home/ada/My Keys/id_ed25519"\n' in block
    assert '    UserKnownHostsFile "/tmp/k#1"\n' in block
    assert "    ServerAliveInterval 30\n" in block
    assert "    Port 22\n" in block and "User " not in block and "ProxyJump" not in block
    assert "    ProxyCommand none\n" in block and "    ForwardAgent no\n" in block
    assert ssh_config.render_block([]) == "\n".join(
        [ssh_config.BEGIN, "", *ssh_config.RESET, ssh_config.END]) + "\n"


BAD_ENTRIES = [
    (dict(alias="gpu1", hostname="10.0.0.1\nProxyCommand sh -c 'curl x|sh'"), r"^ssh config: gpu1: hostname .* line break"),
    (dict(alias="gpu1", hostname="h", user='ro"ot'), r"gpu1: user .*has a quote"),
    (dict(alias="gpu1", hostname="h", proxy_jump="bastion\r"), r"gpu1: proxy_jump"),
    (dict(alias="gpu1", hostname=""), r"gpu1: hostname '' cannot be written"),
    (dict(alias="gpu 1", hostname="h"), r"^ssh config: alias 'gpu 1' must be one word without wildcards$"),
    (dict(alias="gpu*", hostname="h"), r"alias 'gpu\*' must be one word"),
    (dict(alias="gpu1", hostname="h", extra={"Host": "evil"}), r"gpu1: 'Host' is not an option keyword"),
    (dict(alias="gpu1", hostname="h", extra={"LocalForward 8888": "x"}), r"is not an option keyword"),
]


@pytest.mark.parametrize("fields,pattern", BAD_ENTRIES)
def test_render_block_refuses_values_that_would_inject_directives(fields, pattern):
    with pytest.raises(InputError) as err:
        ssh_config.render_block([ssh_config.SshHostEntry(**fields)])
    assert "\n" not in str(err.value) and re.search(pattern, str(err.value)), str(err.value)


def test_render_block_escapes_percent_in_paths_and_writes_booleans():
    block = ssh_config.render_block([ssh_config.SshHostEntry(
        "lab", "10.1.0.1", identity_file="/keys/100%/id", extra={"Compression": True, "CheckHostIP": False})])
    assert "    IdentityFile /keys/100%%/id\n" in block
    assert "    Compression yes\n    CheckHostIP no\n" in block


FILES = sorted(p.name for p in FIXTURES.iterdir() if p.name != "old-block-appended.config")
FOREIGN = {"hosts-only.config": "github.com", "globals-first.config": "lab-7", "modeline-header.config": "pi",
           "crlf.config": "wap", "latin1-bytes.config": "caf\xe9"}


@pytest.mark.parametrize("name", FILES)
def test_update_keeps_bytes_and_places_block_safely(name):
    original = (FIXTURES / name).read_bytes()
    updated = check_update(original)
    assert_golden(name, updated)


@pytest.mark.skipif(SSH is None, reason="no ssh client")
@pytest.mark.parametrize("name", FILES)
def test_real_ssh_resolves_our_aliases_and_nothing_else_changes(name, tmp_path):
    original = (FIXTURES / name).read_bytes()
    foreign = ("other.example.com", FOREIGN[name]) if name in FOREIGN else ("other.example.com",)
    assert check_with_ssh(tmp_path, original, ssh_config.update(original, BLOCK), foreign=foreign)


PLACES = [
    # (existing, the line before BEGIN or None when the block is first)
    (b"", None),
    (b"Host a\n  User x\n", None),
    (b"# vim: ft=sshconfig\n\nHost a\n", b"\n"),  # below a comment header that a blank line ends
    (b"# Added by OrbStack\nInclude ~/.orbstack/ssh/config\n", b"Include ~/.orbstack/ssh/config\n"),  # below leading Includes
    (b"User bob\nHost a\n", None),  # above global options, or they would override our User
    (b"Include x\nHost a\n", b"Include x\n"),
    (b"Include x", None),  # an Include without its line break: the block cannot follow it on that line
    (b"# only a comment", None),
    (b"#\n ", None),  # a blank line without its line break does not end a header: the block would join it
]


@pytest.mark.parametrize("existing,before", PLACES)
def test_where_the_block_goes(existing, before):
    updated = check_update(existing)
    head = updated[:updated.index(ssh_config.BEGIN.encode())]
    assert (head.splitlines(keepends=True)[-1] if head else None) == before


def test_existing_block_is_replaced_in_place_and_stops_capturing_what_follows(tmp_path):
    original = (FIXTURES / "old-block-appended.config").read_bytes()
    updated = ssh_config.update(original, BLOCK)
    assert updated.startswith(b"Host github.com\n    User git\n\n" + BLOCK.encode())
    assert updated.endswith(b"ServerAliveInterval 10\n")
    assert updated.count(ssh_config.BEGIN.encode()) == 1 and ssh_config.update(updated, BLOCK) == updated
    assert_golden("old-block-appended.config", updated)
    if SSH:
        # the old block (without `Host *` at its end) made the user's global line apply only to gpu1
        (tmp_path / "old").write_bytes(original)
        (tmp_path / "new").write_bytes(updated)
        assert ssh_resolve(tmp_path / "old", "other.example.com")[1]["serveraliveinterval"] == "0"
        assert ssh_resolve(tmp_path / "new", "other.example.com")[1]["serveraliveinterval"] == "10"


def test_crlf_file_gets_a_crlf_block():
    updated = check_update(b"Host a\r\n  User x\r\n")
    assert updated == BLOCK.replace("\n", "\r\n").encode() + b"\r\nHost a\r\n  User x\r\n"


def test_block_without_end_is_refused():
    broken = b"Host a\n" + ssh_config.BEGIN.encode() + b"\nHost gpu1\n    HostName 10.0.0.11\nHost b\n"
    with pytest.raises(InputError, match=r"^/home/u/\.ssh/config:2: the gpufleet block has no '# END gpufleet "
                                         r"managed block' line"):
        ssh_config.update(broken, BLOCK, path="/home/u/.ssh/config")


def test_a_lone_cr_is_not_a_line_break():
    original = b"# note\rHost hidden-in-comment\nHost a\n"  # ssh sees one comment line, then Host a
    updated = check_update(original)
    assert updated == BLOCK.encode() + b"\n" + original
