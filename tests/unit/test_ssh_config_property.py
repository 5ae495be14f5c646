"""ssh_config.update() on generated configs: bytes outside the block kept, idempotent, block before every
section, and the real `ssh -G` resolves our aliases from the block and every other host as before."""
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from gpufleet import ssh_config
from tests.openssh import SSH, ssh_resolve

OURS = [
    ssh_config.SshHostEntry("bastion", "bastion.example.com", user="ops", host_key_alias="bastion",
                            known_hosts_file="/srv/gpufleet-test/known_hosts"),
    ssh_config.SshHostEntry("gpu1", "10.0.0.11", user="root", proxy_jump="bastion", host_key_alias="gpu1",
                            known_hosts_file="/srv/gpufleet-test/known_hosts"),
    ssh_config.SshHostEntry("gpu1-dev", "127.0.0.1", port=2222, user="root", proxy_jump="gpu1",
                            known_hosts_file="/srv/gpufleet-test/known_hosts", forward_agent=True),
]
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




@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(original=configs(), ours=st.sampled_from(OURS), foreign=st.sampled_from(FOREIGN))
def test_update_on_generated_configs(original, ours, foreign):
    updated = ssh_config.update(original, BLOCK)
    assert ssh_config.remove_block(updated) == original
    assert ssh_config.update(updated, BLOCK) == updated
    lines = updated.split(b"\n")
    begin = next(i for i, line in enumerate(lines) if line.rstrip(b"\r") == ssh_config.BEGIN.encode())
    assert not any(SECTION.match(line) for line in lines[:begin])
    if SSH is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        before, after = Path(tmp, "before"), Path(tmp, "after")
        before.write_bytes(original)
        after.write_bytes(updated)
        rc_before, resolved_before, _ = ssh_resolve(before, foreign)
        assert rc_before == 0  # the grammar only makes configs ssh accepts
        assert ssh_resolve(after, foreign)[:2] == (0, resolved_before)
        rc, resolved, _ = ssh_resolve(after, ours.alias)
        assert rc == 0
        assert (resolved["hostname"], resolved["port"], resolved["user"], resolved["userknownhostsfile"],
                resolved["stricthostkeychecking"], resolved["forwardagent"]) == (
            ours.hostname, str(ours.port), ours.user, ours.known_hosts_file, "true",
            "yes" if ours.forward_agent else "no")
        assert resolved.get("proxyjump") == ours.proxy_jump and "proxycommand" not in resolved
