"""ssh_config.update() on generated configs: bytes outside the block kept, idempotent, block first, and the
real `ssh -G` resolves our aliases from the block -- whatever the user's lines and the files they Include
say -- and every other host exactly as before (the whole `ssh -G` output)."""
import os
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from gpufleet import ssh_config
from tests.openssh import SSH, ssh_dump, ssh_resolve

OURS = [
    ssh_config.SshHostEntry("bastion", "bastion.example.com", user="ops", host_key_alias="bastion",
                            known_hosts_file="/srv/gpufleet-test/known_hosts"),
    ssh_config.SshHostEntry("gpu1", "10.0.0.11", user="root", proxy_jump="bastion", host_key_alias="gpu1",
                            known_hosts_file="/srv/gpufleet-test/known_hosts"),
    ssh_config.SshHostEntry("gpu1-dev", "127.0.0.1", port=2222, user="root", proxy_jump="gpu1",
                            host_key_alias="gpu1-dev", identity_file="/srv/gpufleet-test/id_ed25519",
                            known_hosts_file="/srv/gpufleet-test/known_hosts", forward_agent=True),
]
# what the generated Include lines read (under the test's $HOME): every option of ours, set otherwise
INCLUDED = {
    ".ssh/x": "Host *\n  User orb\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  Port 2200\n"
              "  IdentityFile ~/.ssh/id_x\n  ForwardAgent yes\n  ProxyJump jumpx\n  HostKeyAlias shared\n"
              "  HostName evil.example.com\n",
    ".ssh/conf.d/a": "Match all\n  User matched\n  ProxyCommand nc %h %p\n",
    ".ssh/y": "User top\nHost lab-?\n  User lab\n  IdentityFile ~/.ssh/id_lab\n",
    ".ssh/config.d/work": "Host a b\n  Port 2201\n  StrictHostKeyChecking accept-new\n",
}
BLOCK = ssh_config.render_block(OURS)
SECTION = re.compile(rb"^[ \t]*(host|match)([ \t]*=|[ \t]+)", re.IGNORECASE)
FOREIGN = ["a", "b", "lab-1", "h.example.com", "x"]

OPTIONS = [("User", "alice"), ("Port", "2200"), ("ForwardAgent", "no"), ("ServerAliveInterval", "30"),
           ("HostName", "h.example.com"), ("IdentityFile", "~/.ssh/id_x"), ("StrictHostKeyChecking", "accept-new"),
           ("UserKnownHostsFile", "/dev/null"), ("ProxyJump", "jump"), ("SetEnv", "TERM=xterm-256color"),
           ("Compression", "yes"), ("ProxyCommand", "nc %h %p"), ("ForwardAgent", "yes")]
indent = st.sampled_from(["", "  ", "    ", "\t", " \t "])
option = st.builds(lambda i, kv, sep, trail: f"{i}{kv[0]}{sep}{kv[1]}{trail}", indent, st.sampled_from(OPTIONS),
                   st.sampled_from([" ", "\t", "=", " = ", "   "]), st.sampled_from(["", " ", "\t"]))
comment = st.builds(lambda i, t: f"{i}#{t}", indent,
                    st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=20))
blank = st.sampled_from(["", " ", "\t", "   "])
include = st.sampled_from(["Include x", "Include ~/.ssh/conf.d/*", "include=y", "  Include config.d/work"])
host = st.builds(lambda kw, pats: f"{kw} {' '.join(pats)}", st.sampled_from(["Host", "host", "HOST"]),
                 st.lists(st.sampled_from(["a", "b", "*.example.com", "lab-?", "!b", "*", "x"]), min_size=1,
                          max_size=3))
match = st.sampled_from(['Match host x exec "test -z $X"', "Match all", "Match originalhost a", "match host b,lab-*",
                         "Match=host a"])
line = st.one_of(option, option, comment, blank, include, host, match)


@st.composite
def configs(draw) -> bytes:
    lines = draw(st.lists(line, max_size=14))
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    text = eol.join(lines)
    if lines and draw(st.booleans()):
        text += eol
    return text.encode()




def write_included_files() -> None:
    home = Path(os.environ["HOME"])  # tests/conftest.py's temporary home
    for name, text in INCLUDED.items():
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text(text)


def check_ours(config: Path, ours: ssh_config.SshHostEntry) -> None:
    rc, resolved, err = ssh_resolve(config, ours.alias)
    assert rc == 0, err
    assert (resolved["hostname"], resolved["port"], resolved["user"], resolved["userknownhostsfile"],
            resolved["stricthostkeychecking"], resolved["forwardagent"], resolved["hostkeyalias"]) == (
        ours.hostname, str(ours.port), ours.user, ours.known_hosts_file, "true",
        "yes" if ours.forward_agent else "no", ours.host_key_alias)
    assert resolved.get("proxyjump") == ours.proxy_jump and "proxycommand" not in resolved
    if ours.identity_file:
        assert resolved["identityfile"] == ours.identity_file  # the first one


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(original=configs(), ours=st.sampled_from(OURS), foreign=st.sampled_from(FOREIGN))
def test_update_on_generated_configs(original, ours, foreign):
    updated = ssh_config.update(original, BLOCK)
    assert ssh_config.remove_block(updated) == original
    assert ssh_config.update(updated, BLOCK) == updated
    lines = updated.split(b"\n")
    begin = next(i for i, line in enumerate(lines) if line.rstrip(b"\r") == ssh_config.BEGIN.encode())
    assert not any(SECTION.match(line) or line.lstrip().lower().startswith(b"include") for line in lines[:begin])
    if SSH is None:
        return
    write_included_files()
    with tempfile.TemporaryDirectory() as tmp:
        before, after = Path(tmp, "before"), Path(tmp, "after")
        before.write_bytes(original)
        after.write_bytes(updated)
        rc_before, resolved_before, _ = ssh_dump(before, foreign)
        assert rc_before == 0  # the grammar only makes configs ssh accepts
        assert ssh_dump(after, foreign)[:2] == (0, resolved_before)
        check_ours(after, ours)


@st.composite
def with_an_earlier_block(draw) -> bytes:
    """A generated config with a block from an earlier run (ending with `Host *`, as 987f2eb wrote it) at any
    line boundary: below Includes, inside a section, after everything."""
    original = draw(configs())
    lines = original.splitlines(keepends=True)
    cuts = [0] + [i + 1 for i, line in enumerate(lines) if line.endswith(b"\n")]
    cut = draw(st.sampled_from(cuts))
    earlier = draw(st.lists(st.sampled_from(OURS), max_size=2, unique_by=lambda e: e.alias))
    old = ssh_config.render_block(earlier)
    if b"\r\n" in original:
        old = old.replace("\n", "\r\n")
    return b"".join(lines[:cut]) + old.encode() + b"".join(lines[cut:])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(old=with_an_earlier_block(), ours=st.sampled_from(OURS), foreign=st.sampled_from(FOREIGN))
def test_a_block_from_an_earlier_run_moves_to_the_top(old, ours, foreign):
    updated = ssh_config.update(old, BLOCK)
    assert ssh_config.update(updated, BLOCK) == updated and updated.count(ssh_config.BEGIN.encode()) == 1
    head = updated[:updated.index(ssh_config.BEGIN.encode())]
    assert all(not line.strip() or line.lstrip().startswith(b"#") for line in head.splitlines())
    if SSH is None:
        return
    write_included_files()
    with tempfile.TemporaryDirectory() as tmp:
        before, after = Path(tmp, "before"), Path(tmp, "after")
        before.write_bytes(old)
        after.write_bytes(updated)
        rc_before, resolved_before, _ = ssh_dump(before, foreign)
        assert rc_before == 0
        assert ssh_dump(after, foreign)[:2] == (0, resolved_before)
        check_ours(after, ours)
