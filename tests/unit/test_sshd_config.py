"""sshd_config: effective global settings, checked against the tables below and, where sshd is here,
against `sshd -T` itself."""
import shutil
import subprocess
from pathlib import Path

import pytest

from gpufleet import sshd_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sshd_config"
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)


def text(name: str) -> str:
    return (FIXTURES / name).read_bytes().decode("utf-8")


# file → expected settings (a subset), password auth, root login, includes
CASES = [
    ("ubuntu-22.04-edited.sshd_config",
     {"port": "2200", "permitrootlogin": "prohibit-password", "passwordauthentication": "no", "usepam": "yes",
      "acceptenv": "LANG LC_*", "subsystem": "sftp\t/usr/lib/openssh/sftp-server", "include": "/etc/ssh/sshd_config.d/*.conf"},
     False, "prohibit-password", ["/etc/ssh/sshd_config.d/*.conf"]),
    ("firstwins-accumulate-comments.sshd_config",
     {"port": "22 2222", "listenaddress": "0.0.0.0 ::", "logingracetime": "30", "permitrootlogin": "no",
      "passwordauthentication": "no", "acceptenv": "LANG LC_* GIT_*", "allowusers": "deploy@10.0.0.0/8 root",
      "banner": "/etc/issue #1"},
     False, "no", []),
    ("crlf.sshd_config", {"permitrootlogin": "yes", "passwordauthentication": "yes", "port": "2022"}, True, "yes", []),
    ("match-first.sshd_config", {}, True, "prohibit-password", []),  # everything after Match belongs to it
    ("comments-only.sshd_config", {}, True, "prohibit-password", []),
    ("no-eol.sshd_config", {"passwordauthentication": "no"}, False, "prohibit-password", []),
]


@pytest.mark.parametrize("name,expected,password,root,includes", CASES, ids=[c[0] for c in CASES])
def test_effective_settings(name, expected, password, root, includes):
    config = text(name)
    settings = sshd_config.effective_settings(config)
    assert {k: settings.get(k) for k in expected} == expected
    if not expected:
        assert settings == {}
    assert sshd_config.password_auth_enabled(config) is password
    assert sshd_config.root_login(config) == root
    assert sshd_config.includes(config) == includes


def test_match_block_settings_do_not_leak_into_the_global_part():
    settings = sshd_config.effective_settings(text("ubuntu-22.04-edited.sshd_config"))
    assert settings["x11forwarding"] == "yes"  # `X11Forwarding no` under `Match User anoncvs` is not global
    assert "forcecommand" not in settings


@pytest.mark.parametrize("line,key,value", [
    ("PermitRootLogin no # was yes", "permitrootlogin", "no"),
    ("PermitRootLogin=no", "permitrootlogin", "no"),
    ("  PermitRootLogin   =   no  ", "permitrootlogin", "no"),
    ("PERMITROOTLOGIN No", "permitrootlogin", "No"),
    ('Banner "/etc/issue #1"', "banner", "/etc/issue #1"),
    ("AuthorizedKeysFile .ssh/authorized_keys .ssh/authorized_keys2", "authorizedkeysfile",
     ".ssh/authorized_keys .ssh/authorized_keys2"),
    ("ChrootDirectory /srv/a#b", "chrootdirectory", "/srv/a#b"),  # '#' inside a word is not a comment
])
def test_one_line(line, key, value):
    assert sshd_config.effective_settings(line + "\n") == {key: value}


def test_root_login_and_password_are_case_insensitive():
    assert sshd_config.root_login("PermitRootLogin Without-Password\n") == "without-password"
    assert not sshd_config.password_auth_enabled("passwordauthentication NO\n")


ORACLE = ["firstwins-accumulate-comments.sshd_config", "crlf.sshd_config", "match-first.sshd_config",
          "comments-only.sshd_config", "no-eol.sshd_config"]


@pytest.mark.skipif(SSHD is None, reason="no sshd to compare with")
@pytest.mark.parametrize("name", ORACLE)
def test_agrees_with_sshd_T(name, tmp_path):
    """Files without Include: our reading of Port, PermitRootLogin, PasswordAuthentication, AcceptEnv,
    AllowUsers, Banner is what `sshd -T` prints."""
    key = tmp_path / "hostkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    done = subprocess.run([SSHD, "-T", "-f", str(FIXTURES / name), "-h", str(key)], capture_output=True, text=True,
                          timeout=20)
    if done.returncode != 0:
        pytest.skip(f"sshd -T cannot run here: {done.stderr.strip()[-200:]}")
    sshd: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        k, _, v = line.partition(" ")
        sshd.setdefault(k, []).append(v)
    ours = sshd_config.effective_settings(text(name))
    assert ours.get("port", "22").split() == sshd["port"]
    assert sshd_config.password_auth_enabled(text(name)) is (sshd["passwordauthentication"] == ["yes"])
    root = {"without-password": "prohibit-password"}
    assert root.get(sshd_config.root_login(text(name)), sshd_config.root_login(text(name))) == \
        root.get(sshd["permitrootlogin"][0], sshd["permitrootlogin"][0])
    for keyword in ("acceptenv", "allowusers"):
        assert ours.get(keyword, "").split() == sshd.get(keyword, [])
    if "banner" in ours:
        assert [ours["banner"]] == sshd["banner"]
