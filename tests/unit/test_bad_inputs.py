"""A corpus of broken inputs (tests/fixtures/bad_inputs, one file each): every one gives one line that names
the file or the key, or, for odd but readable remote files, is read without a crash and without change.
A sample of the broken inventories goes through the real command line."""
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpufleet import apt_sources, containerd_config, daemon_json, inventory, ssh_config, sshd_config
from gpufleet.errors import InputError
from tasks import keys
from tests.conftest import REPO

BAD = Path(__file__).resolve().parents[1] / "fixtures" / "bad_inputs"
DAEMON = "/etc/docker/daemon.json"
CONTAINERD = "/etc/containerd/config.toml"

# file → regex the one-line message must match (after the file's own path, for inventories)
INVENTORIES = {
    "inv-toml-unterminated-string.toml": r":2: TOML syntax error: Illegal character",
    "inv-toml-duplicate-key.toml": r":3: TOML syntax error: Cannot overwrite a value",
    "inv-toml-unclosed-table.toml": r":1: TOML syntax error: Expected '\]' at the end of a table declaration",
    "inv-toml-duplicate-table.toml": r":3: TOML syntax error: Cannot declare \('hosts', 'gpu1'\) twice",
    "inv-empty.toml": r": hosts: no hosts defined",
    "inv-no-hosts.toml": r": hosts: no hosts defined",
    "inv-unknown-top-level.toml": r": hostz: unknown key \(did you mean 'hosts'\?\)",
    "inv-unknown-host-key.toml": r":3: hosts\.gpu1\.adress: unknown key \(did you mean 'address'\?\)",
    "inv-unknown-container-key.toml": r":6: hosts\.gpu1\.containers\.dev\.shm: unknown key \(did you mean 'shm_size'\?\)",
    "inv-port-is-string.toml": r":3: hosts\.gpu1\.port: expected an integer, got a string",
    "inv-port-out-of-range.toml": r":3: hosts\.gpu1\.port: 70000 is out of range 1\.\.65535",
    "inv-timeout-zero.toml": r":2: groups\.gpu\.install_timeout: 0 is out of range 1\.\.86400",
    "inv-timeout-string.toml": r":3: hosts\.gpu1\.probe_timeout: expected an integer, got a string",
    "inv-address-is-number.toml": r":2: hosts\.gpu1\.address: expected a string, got an integer",
    "inv-groups-is-string.toml": r":3: hosts\.gpu1\.groups: expected a list, got a string",
    "inv-container-port-clash.toml": r":8: hosts\.gpu1\.containers\.exp\.ssh_port: host port 2222 is used by containers 'dev' and 'exp' on host 'gpu1'",
    "inv-jump-cycle.toml": r":3: hosts\.a\.jump: jump hosts form a cycle: a -> b -> c -> a",
    "inv-jump-self.toml": r":3: hosts\.gpu1\.jump: jump hosts form a cycle: gpu1 -> gpu1",
    "inv-jump-undefined.toml": r":3: hosts\.gpu1\.jump: jump host 'bastoin' is not in the inventory \(did you mean 'bastion'\?\)",
    "inv-mirror-no-scheme.toml": r":2: defaults\.registry_mirrors: 'docker\.mirrors\.ustc\.edu\.cn' is not a valid http/https URL",
    "inv-mirror-bad-port.toml": r":2: defaults\.registry_mirrors: 'http://10\.0\.0\.5:99999' has an invalid port",
    "inv-apt-mirror-ftp.toml": r":2: defaults\.apt_mirror: 'ftp://mirrors\.tuna\.tsinghua\.edu\.cn/ubuntu' is not a valid",
    "inv-container-name-leading-dash.toml": r": hosts\.gpu1\.containers\.-dev: .*is not a valid container name",
    "inv-container-name-space.toml": r": hosts\.gpu1\.containers\.my dev: .*is not a valid container name",
    "inv-volume-relative-host-path.toml": r":6: hosts\.gpu1\.containers\.dev\.volumes: 'data:/workspace': host path 'data' must be absolute",
    "inv-volume-relative-container-path.toml": r":6: hosts\.gpu1\.containers\.dev\.volumes: '/data/w:workspace': container path 'workspace' must be absolute",
    "inv-data-root-relative.toml": r":2: defaults\.data_root: 'data/docker' is not an absolute path",
    "inv-image-store-unknown.toml": r":2: defaults\.image_store: 'overlay2' is not one of classic, containerd$",
    "inv-image-store-bool.toml": r":3: hosts\.gpu1\.image_store: True is not one of classic, containerd$",
    "inv-not-utf8.toml": r": not UTF-8 \(byte 40\)",
    # strings that would reach a shell, a file or an argv as something else
    "inv-address-newline.toml": r":2: hosts\.gpu1\.address: value has a control character \('\\n'\)",
    "inv-address-leading-dash.toml": r":2: hosts\.gpu1\.address: '-oProxyCommand=touch' is not a host name",
    "inv-user-leading-dash.toml": r":3: hosts\.gpu1\.user: '-oProxyCommand' is not a valid user name",
    "inv-docker-user-semicolon.toml": r":2: defaults\.docker_users: 'bob;rm -rf /' is not a valid user name",
    "inv-tool-leading-dash.toml": r":2: defaults\.tools: '--allow-unauthenticated' is not a valid package name",
    "inv-tool-nul.toml": r":2: defaults\.tools\[1\]: value has a control character \('\\x00'\)",
    "inv-image-leading-dash.toml": r":5: hosts\.gpu1\.containers\.dev\.image: '--privileged' is not a valid image reference",
    "inv-image-space.toml": r":5: hosts\.gpu1\.containers\.dev\.image: 'pytorch/pytorch:2\.3 bash' is not a valid image",
    "inv-env-key-dash.toml": r":7: hosts\.gpu1\.containers\.dev\.env: '-e FOO' is not a valid environment variable name",
    "inv-env-secret-not-string.toml": r":7: hosts\.gpu1\.containers\.dev\.env: value of 'TOKEN' must be a string, "
                                      r"\{ secret = \"\.\.\.\" \} or \{ from_env = \"NAME\" \}",
    "inv-apt-proxy-quote.toml": r":2: defaults\.apt_proxy: 'http://10\.0\.0\.3:3142/\";Acquire.*' has '\"', which a URL "
                                r"cannot have \(write it %-encoded\)$",
    "inv-git-name-escape.toml": r":2: defaults\.git_name: value has a control character \('\\x1b'\)",
    "inv-daemon-json-crlf.toml": r":2: defaults\.daemon_json\.log-opts\.max-size: value has a control character",
    "inv-agent-without-forwarding.toml": r":3: defaults\.forward_agent: github_access = 'agent' reaches GitHub through "
                                         r"the forwarded agent; set forward_agent = true",
    "inv-local-with-jump.toml": r":6: hosts\.ws\.jump: a local host \(address = \"local\"\) cannot have a jump host, "
                                r"but jump = 'bastion'$",
    "inv-local-jump-from-group.toml": r":7: hosts\.ws\.jump: a local host .* but jump = 'bastion' \(from group servers: "
                                      r"take the host out of it\)$",
    "inv-local-is-jump.toml": r":6: hosts\.gpu1\.jump: 'ws' is this machine \(address = \"local\"\) and cannot be a "
                              r"jump host; leave jump out to connect from here directly$",
    "inv-container-unknown-person.toml": r":10: hosts\.gpu1\.containers\.dev\.users: unknown person 'bobb' \(did you mean "
                                         r"'bob'\?\) \(add a \[people\.bobb\] table\)$",
    "inv-container-unknown-person-from-group.toml": r":6: groups\.servers\.containers\.dev\.users: unknown person "
                                                    r"'carol' \(add a \[people\.carol\] table\)$",
    "inv-person-without-keys.toml": r":1: people\.alice\.keys: person 'alice' has no 'keys'",
    "inv-local-twice.toml": r":5: hosts\.box\.address: \"local\" is already host 'ws': only one host can be this machine$",
}
PUBLIC_KEYS = {
    "key-truncated.pub": r"key blob is not valid base64$",
    "key-bad-base64.pub": r"key blob is not valid base64$",
    "key-type-mismatch.pub": r"key blob says 'ssh-ed25519', the line says 'ssh-rsa'$",
    "key-private.pub": r"this is a private key, not a public key \(use the \.pub file\)$",
    "key-rfc4716.pub": r"an RFC 4716 \(SSH2/PuTTY\) key; convert it with `ssh-keygen -i -f FILE`$",
    "key-no-type.pub": r"a key blob without its key type \(like ssh-ed25519\) in front$",
    "key-typo-type.pub": r"unknown key type 'ssh-ed2519'$",
    "key-bom.pub": r"unknown key type '\\ufeffssh-ed25519'$",
}
DAEMON_JSON = {
    "daemon-trailing-comma.json": r": line 4 column 1: Expecting property name enclosed in double quotes",
    "daemon-comment.json": r": line 2 column 3: Expecting property name",
    "daemon-stray-brace.json": r": line 2 column \d+: Extra data",
    "daemon-duplicate-key.json": r": key 'data-root' appears twice",
    "daemon-nan.json": r": NaN is not JSON",
    "daemon-top-level-array.json": r": the top level is list, not an object",
    "daemon-single-quotes.json": r": line 1 column 2: Expecting property name",
    "daemon-bom-crlf.json": r": line 1 column 1: Unexpected UTF-8 BOM",
}
CONTAINERD_TOML = {
    "containerd-unterminated-string.toml": r": Illegal character '\\n' \(at line 2, column 28\); the file is not valid TOML",
    "containerd-duplicate-root.toml": r": Cannot overwrite a value \(at line 3, column 12\); the file is not valid TOML",
}
APT_SOURCES = {
    "apt-gbk.list": r": not UTF-8 at byte 2; left untouched",
    "apt-latin1.sources": r": not UTF-8 at byte 23; left untouched",
    "apt-utf16.list": r": not UTF-8 at byte 0; left untouched",
}
# odd remote files that are still read: sshd_config → settings sshd's first-wins reading gives
SSHD = {
    "sshd-odd-syntax.sshd_config": {"passwordauthentication": '"no', "port": "22"},
    "sshd-keyword-only-and-unicode.sshd_config": {"banner": "“/etc/issue”", "x11forwarding": "no=yes"},
    "sshd-crlf-tabs-no-eol.sshd_config": {"passwordauthentication": "no", "permitrootlogin": "no"},
    "sshd-very-long-line.sshd_config": {"passwordauthentication": "no"},
}
SSH_CONFIG = {  # ssh config → None when update() keeps its bytes, else the one-line refusal
    "ssh-unterminated-quote.ssh_config": None,
    "ssh-host-without-pattern.ssh_config": None,
    "ssh-binary-junk.ssh_config": None,
    "ssh-end-before-begin.ssh_config": None,
    "ssh-begin-without-end.ssh_config": r":3: the gpufleet block has no '# END gpufleet managed block' line; "
                                        r"restore it or delete the block by hand \(nothing was changed\)$",
}
TABLES = {**INVENTORIES, **PUBLIC_KEYS, **DAEMON_JSON, **CONTAINERD_TOML, **APT_SOURCES, **SSHD, **SSH_CONFIG}


def one_line(message: str, pattern: str) -> None:
    assert "\n" not in message and "\r" not in message and "Traceback" not in message, message
    assert re.search(pattern, message), message


def test_at_least_40_broken_inputs_and_every_file_has_a_row():
    assert sorted(TABLES) == sorted(p.name for p in BAD.iterdir())
    assert len(TABLES) - len(SSHD) - sum(v is None for v in SSH_CONFIG.values()) >= 40


@pytest.mark.parametrize("name", sorted(INVENTORIES))
def test_broken_inventory(name):
    path = BAD / name
    with pytest.raises(InputError) as err:
        inventory.load(path)
    one_line(str(err.value), "^" + re.escape(str(path)) + INVENTORIES[name])


@pytest.mark.parametrize("name", sorted(PUBLIC_KEYS))
def test_malformed_public_key(name):
    path = BAD / name
    with pytest.raises(InputError) as err:
        keys.read_keys(SimpleNamespace(path=Path("hosts.toml")), [str(path)], "public_keys")
    one_line(str(err.value), rf"^hosts\.toml: local\.public_keys\[0\] \({re.escape(str(path))}\): " + PUBLIC_KEYS[name])


def test_malformed_public_key_given_inline():
    with pytest.raises(InputError) as err:
        keys.read_keys(SimpleNamespace(path=Path("hosts.toml")), ["ssh-ed25519 AAAAC3Nza... ada"], "revoked_keys")
    one_line(str(err.value), r"^hosts\.toml: local\.revoked_keys\[0\]: key blob is not valid base64$")


@pytest.mark.parametrize("name", sorted(DAEMON_JSON))
def test_broken_daemon_json(name):
    text = (BAD / name).read_bytes().decode("utf-8")
    with pytest.raises(InputError) as err:
        daemon_json.parse(text, f"gpu1:{DAEMON}")
    one_line(str(err.value), f"^gpu1:{DAEMON}" + DAEMON_JSON[name])


@pytest.mark.parametrize("name", sorted(CONTAINERD_TOML))
def test_broken_containerd_config(name):
    text = (BAD / name).read_bytes().decode("utf-8")
    with pytest.raises(InputError) as err:
        containerd_config.set_root(text, "/data/docker/containerd", f"gpu1:{CONTAINERD}")
    one_line(str(err.value), f"^gpu1:{CONTAINERD}" + CONTAINERD_TOML[name])


@pytest.mark.parametrize("name", sorted(APT_SOURCES))
def test_apt_sources_not_utf8(name):
    with pytest.raises(InputError) as err:
        apt_sources.check_text((BAD / name).read_bytes(), f"dev:/etc/apt/sources.list.d/{name}")
    one_line(str(err.value), f"^dev:/etc/apt/sources.list.d/{re.escape(name)}" + APT_SOURCES[name])


@pytest.mark.parametrize("name", sorted(SSHD))
def test_odd_sshd_config_is_read_without_a_crash(name):
    text = (BAD / name).read_bytes().decode("utf-8")
    settings = sshd_config.effective_settings(text)
    assert {k: settings.get(k) for k in SSHD[name]} == SSHD[name]
    assert isinstance(sshd_config.root_login(text), str) and isinstance(sshd_config.includes(text), list)


def test_a_non_ascii_blank_does_not_separate_keyword_and_value():
    # sshd reads "PermitRootLogin<U+00A0>yes" as one unknown word (and refuses the file), not as a setting
    text = (BAD / "sshd-keyword-only-and-unicode.sshd_config").read_bytes().decode("utf-8")
    assert "permitrootlogin" not in sshd_config.effective_settings(text)
    assert "passwordauthentication" not in sshd_config.effective_settings(text)  # a keyword without a value


@pytest.mark.parametrize("name", sorted(SSH_CONFIG))
def test_odd_ssh_config(name):
    original = (BAD / name).read_bytes()
    block = ssh_config.render_block([ssh_config.SshHostEntry("gpu1", "10.0.0.11", user="root")])
    if SSH_CONFIG[name] is not None:
        with pytest.raises(InputError) as err:
            ssh_config.update(original, block, path=f"~/.ssh/{name}")
        one_line(str(err.value), f"^~/.ssh/{re.escape(name)}" + SSH_CONFIG[name])
        return
    updated = ssh_config.update(original, block)
    assert ssh_config.remove_block(updated) == original and ssh_config.update(updated, block) == updated


def test_a_line_break_that_would_inject_into_the_ssh_config_is_refused_by_the_writer_too():
    # the inventory refuses control characters (inv-address-newline.toml); the writer is the second line of defence
    with pytest.raises(InputError) as err:
        ssh_config.render_block([ssh_config.SshHostEntry("gpu1", "10.0.0.11\nProxyCommand=touch\t/tmp/pwned")])
    one_line(str(err.value), r"^ssh config: gpu1: hostname '10\.0\.0\.11\\nProxyCommand.*line break\)$")


# one of each kind (a syntax error, a wrong type, a cross-reference, bytes): each run starts Python and Fabric
CLI_SAMPLE = ["inv-toml-unterminated-string.toml", "inv-port-is-string.toml", "inv-jump-cycle.toml",
              "inv-not-utf8.toml", "inv-local-is-jump.toml",
              # strings that would reach a shell or an argv as something else
              "inv-address-newline.toml", "inv-image-leading-dash.toml", "inv-env-key-dash.toml",
              "inv-timeout-zero.toml",
              "inv-apt-proxy-quote.toml"]


def snapshot(*dirs: Path) -> dict:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for d in dirs for p in sorted(d.rglob("*"))}


def test_broken_inventories_through_the_real_command_line(tmp_path, isolated_home):
    """`fab -H gpu1 bootstrap` with a broken FABRIC_INVENTORY: exit 2, one line naming the file, no traceback,
    and nothing written (not the working directory, not $HOME, not the inventory)."""
    work = tmp_path / "cwd"
    work.mkdir()
    files = {name: (BAD / name) for name in CLI_SAMPLE}
    before = snapshot(work, isolated_home, BAD)

    def run(name: str):
        env = {**os.environ, "FABRIC_INVENTORY": str(files[name]), "HOME": str(isolated_home)}
        return name, subprocess.run([sys.executable, "-m", "fabric", "-r", REPO, "-H", "gpu1", "bootstrap"],
                                    cwd=work, env=env, capture_output=True, text=True, timeout=60)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, CLI_SAMPLE))
    for name, done in results:
        assert done.returncode == 2, (name, done.stdout, done.stderr)
        assert done.stdout == "" and "Traceback" not in done.stderr, (name, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, (name, done.stderr)
        assert lines[0].startswith(f"error: {files[name]}") and re.search(INVENTORIES[name], lines[0]), lines[0]
    assert snapshot(work, isolated_home, BAD) == before


GOOD_INVENTORY = '[hosts.gpu1]\naddress = "127.0.0.1"\nport = 9\n'  # never contacted: the discard port


@pytest.mark.parametrize("failed_hosts,args,message", [
    # -H @failed naming a host the inventory no longer has
    ("gpu1\ngone\n", ["-H", "@failed", "bootstrap"],
     r"^error: \.gpufleet/failed-hosts: host 'gone' failed in the last run but is not in \S+hosts\.toml any more; "
     r"name the hosts with -H instead$"),
    # --json to a path that cannot be written: found before the run, not after it
    (None, ["-H", "gpu1", "bootstrap", "--json", "no-such-folder/run.json"],
     r"^error: --json no-such-folder/run\.json: its folder no-such-folder does not exist$"),
    (None, ["-H", "gpu1", "sync-keys", "--json", "."], r"^error: --json \.: is a folder$"),
    (None, ["ops.ps", "--json", "hosts.toml/run.json"], r"^error: --json hosts\.toml/run\.json: hosts\.toml is not a folder$"),
])
def test_bad_hosts_and_json_paths_through_the_real_command_line(tmp_path, isolated_home, failed_hosts, args, message):
    """One line naming the file or option, exit 2, before any host is contacted: no log folder, nothing written."""
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "hosts.toml").write_text(GOOD_INVENTORY)
    if failed_hosts:
        (work / ".gpufleet").mkdir()
        (work / ".gpufleet" / "failed-hosts").write_text(failed_hosts)
    before = snapshot(work, isolated_home)
    env = {**os.environ, "HOME": str(isolated_home)}
    env.pop("FABRIC_INVENTORY", None)
    done = subprocess.run([sys.executable, "-m", "fabric", "-r", REPO, *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == "" and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), done.stderr
    assert snapshot(work, isolated_home) == before
