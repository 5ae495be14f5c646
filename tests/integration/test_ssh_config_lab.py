"""The generated ssh config on the lab: a tool's Include at the top with a hostile `Host *` (another user,
another port, no host-key checks) does not change where our aliases go nor turn the pinning off."""
from tests.integration.helpers import ssh
from tests.openssh import ssh_resolve

from gpufleet import ssh_config


def test_an_include_above_the_block_loses_to_it_after_gen_ssh_config(lab, fab, bootstrapped, tmp_path):
    assert bootstrapped.returncode == 0, bootstrapped.stdout[-2000:]
    assert fab("gen-ssh-config").returncode == 0
    config = lab.directory / "ssh_config"
    ours = config.read_bytes()
    hostile = tmp_path / "tool.conf"
    hostile.write_text("Host *\n  User nobody\n  Port 1\n  StrictHostKeyChecking no\n"
                       "  UserKnownHostsFile /dev/null\n  HostKeyAlias shared\n")
    user_lines = f"# Added by a tool\nInclude {hostile}\n\n".encode()
    try:
        config.write_bytes(user_lines + ours + b"\nHost gpu1*\n    ServerAliveInterval 5\n")  # a tool prepended
        assert ssh(lab, "gpu1-dev", "hostname").returncode != 0  # below that Include, our values lost
        assert ssh_resolve(config, "gpu1-dev")[1]["stricthostkeychecking"] == "false"
        done = fab("gen-ssh-config")
        assert done.returncode == 0, done.stderr
        assert f"{config}:" in done.stderr and "`Host gpu1*` also matches managed alias(es) gpu1, gpu1-dev" in \
            done.stderr
        written = config.read_bytes()
        assert written.startswith(ssh_config.BEGIN.encode()) and user_lines in written
        for alias, expected in (("gpu1-dev", "gpu1-dev"), ("gpu2-dev", "gpu2-dev"), ("gpu1", None)):
            reached = ssh(lab, alias, "hostname")
            assert reached.returncode == 0, (alias, reached.stderr)
            if expected:
                assert reached.stdout.strip() == expected
        resolved = ssh_resolve(config, "gpu1-dev")[1]
        assert (resolved["stricthostkeychecking"], resolved["hostkeyalias"]) == ("true", "gpu1-dev")
        assert resolved["userknownhostsfile"] != "/dev/null"
        assert ssh_resolve(config, "elsewhere")[1]["user"] == "nobody"  # the user's own hosts: as the tool says
        assert "no changes" in fab("gen-ssh-config").stdout
    finally:
        config.write_bytes(ours)
