"""The inventory: a table of broken inventories, each with its one-line message."""
import re

import pytest

from gpufleet import inventory as inv
from gpufleet.errors import InventoryError

GOOD = """
[local]
ssh_config = "/tmp/x/ssh_config"

[defaults]
registry_mirrors = ["http://10.0.0.5:5000"]

[groups.gpu]
jump = "jump"
data_root = "/data/docker"

[groups.gpu.containers.dev]
image = "pytorch/pytorch:1.13.1-cuda11.6-cudnn8-runtime"
ssh_port = 2222
volumes = ["/data/w:/workspace"]

[hosts.jump]
address = "bastion.example.com"

[hosts.gpu1]
address = "10.0.0.11"
groups = ["gpu"]

[hosts.gpu1.containers.dev]
shm_size = "64g"

[hosts.gpu2]
address = "10.0.0.12"
groups = ["gpu"]
user = "ada"
"""


def test_good_inventory_layers_and_sources():
    inventory = inv.loads(GOOD, "hosts.toml")
    gpu1 = inventory.host("gpu1")
    assert gpu1.data_root == "/data/docker" and gpu1.sources["data_root"] == "group gpu"
    assert gpu1.registry_mirrors == ["http://10.0.0.5:5000"] and gpu1.sources["registry_mirrors"] == "defaults"
    assert gpu1.user == "root" and gpu1.sources["user"] == "built-in default"
    dev = gpu1.containers["dev"]
    assert dev.shm_size == "64g" and gpu1.sources["containers.dev.shm_size"] == "host gpu1"
    assert dev.image.startswith("pytorch/") and gpu1.sources["containers.dev.image"] == "group gpu"
    assert str(dev.volumes[0]) == "/data/w:/workspace"
    assert inventory.host("gpu2").user == "ada"
    assert [h.name for h in inventory.jump_chain("gpu1")] == ["jump"]
    assert inventory.jump_chain("jump") == []
    assert inventory.container_alias("gpu1", "dev") == "gpu1-dev"


def test_jump_chains_resolve_outermost_first():
    text = GOOD + '\n[hosts.inner]\naddress = "10.1.0.1"\njump = "gpu1"\n'
    inventory = inv.loads(text)
    assert [h.name for h in inventory.jump_chain("inner")] == ["jump", "gpu1"]


def test_describe_lists_every_setting_with_its_source():
    rows = {k: (v, s) for k, v, s in inv.describe(inv.loads(GOOD).host("gpu1"))}
    assert rows["data_root"] == ("/data/docker", "group gpu")
    assert rows["containers.dev.shm_size"] == ("64g", "host gpu1")
    assert rows["containers.dev.restart"] == ("unless-stopped", "built-in default")


def test_key_pins_default_to_the_published_fingerprints_and_may_be_written_spaced():
    host = inv.loads(H).host("a")
    assert host.docker_key_fingerprint == "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"
    assert host.nvidia_key_fingerprint == "C95B321B61E88C1809C4F759DDCAE044F796ECB0"
    assert host.nvidia_toolkit == "auto"
    spaced = inv.loads(H + "docker_key_fingerprint = '0d81 6186 420a 7329 c0c6  1e8c 1179 7716 aacd 5550'\n").host("a")
    assert spaced.docker_key_fingerprint == "0D816186420A7329C0C61E8C11797716AACD5550"


def test_example_inventory_in_repo_is_valid():
    from tests.conftest import REPO
    inventory = inv.load(f"{REPO}/hosts.toml")
    assert {"jump", "gpu1", "gpu2"} <= set(inventory.hosts)
    assert all(len(inventory.hosts[h].containers) == 1 for h in ("gpu1", "gpu2"))
    text = open(f"{REPO}/hosts.toml").read()
    commented = text[text.index("# [hosts.ws]"):]
    local = inv.loads(text.replace(commented, re.sub(r"(?m)^# ", "", commented)))
    assert local.hosts["ws"].is_local and local.hosts["ws"].containers["dev"].ssh_port == 2223


H = '[hosts.a]\naddress = "10.0.0.1"\n'

# (id, inventory text, regex the one-line message must match)
BROKEN = [
    ("toml-syntax", '[hosts.a]\naddress = "x\n', r"^inv\.toml:2: TOML syntax error"),
    ("toml-dup-key", H + 'address = "x"\n', r"TOML syntax error"),
    ("no-hosts", "[defaults]\nuser = 'root'\n", r"hosts: no hosts defined"),
    ("unknown-top", H + "[hostz.b]\naddress='x'\n", r"hostz: unknown key \(did you mean 'hosts'\?\)"),
    ("unknown-host-key", H + 'adress = "x"\n', r"inv\.toml:3: hosts\.a\.adress: unknown key \(did you mean 'address'\?\)"),
    ("unknown-default-key", "[defaults]\ndata_rot = '/d'\n" + H, r"defaults\.data_rot: unknown key \(did you mean 'data_root'\?\)"),
    ("unknown-local-key", "[local]\nssh_cfg = 'x'\n" + H, r"local\.ssh_cfg: unknown key"),
    ("unknown-run-key", "[run]\nparalel = 3\n" + H, r"run\.paralel: unknown key \(did you mean 'parallel'\?\)"),
    ("missing-address", "[hosts.a]\nuser = 'x'\n", r"hosts\.a: missing required key 'address'"),
    ("address-wrong-type", "[hosts.a]\naddress = 5\n", r"hosts\.a\.address: expected a string, got an integer"),
    ("port-string", H + 'port = "22"\n', r"hosts\.a\.port: expected an integer, got a string"),
    ("port-range", H + "port = 70000\n", r"hosts\.a\.port: 70000 is out of range 1\.\.65535"),
    ("port-bool", H + "port = true\n", r"hosts\.a\.port: expected an integer, got a boolean"),
    ("bad-host-name", '[hosts."gpu 1"]\naddress = "x"\n', r"hosts\.gpu 1: 'gpu 1' is not a valid name"),
    ("undefined-jump", H + 'jump = "bastoin"\n[hosts.bastion]\naddress="b"\n', r"hosts\.a\.jump: jump host 'bastoin' is not in the inventory \(did you mean 'bastion'\?\)"),
    ("self-jump", H + 'jump = "a"\n', r"hosts\.a\.jump: jump hosts form a cycle: a -> a"),
    ("cyclic-jump", '[hosts.a]\naddress="1"\njump="b"\n[hosts.b]\naddress="2"\njump="a"\n', r"jump hosts form a cycle: a -> b -> a"),
    ("unknown-group", H + 'groups = ["gpus"]\n[groups.gpu]\n', r"hosts\.a\.groups: unknown group 'gpus' \(did you mean 'gpu'\?\)"),
    ("groups-not-list", H + 'groups = "gpu"\n', r"hosts\.a\.groups: expected a list, got a string"),
    ("mirror-not-url", "[defaults]\nregistry_mirrors = ['docker.mirror.local']\n" + H, r"defaults\.registry_mirrors: 'docker\.mirror\.local' is not a valid http/https URL"),
    ("mirror-ftp", "[defaults]\nregistry_mirrors = ['ftp://m.local']\n" + H, r"is not a valid http/https URL"),
    ("mirror-bad-port", "[defaults]\nregistry_mirrors = ['http://m.local:99999']\n" + H, r"invalid port"),
    ("mirrors-not-list", "[defaults]\nregistry_mirrors = 'http://m'\n" + H, r"expected a list, got a string"),
    ("apt-proxy-not-url", "[defaults]\napt_proxy = '10.0.0.2:3142'\n" + H, r"defaults\.apt_proxy: '10\.0\.0\.2:3142' is not a valid"),
    ("docker-mirror-spaces", "[defaults]\ndocker_mirror = 'https://a b'\n" + H, r"defaults\.docker_mirror: .* is not a valid"),
    ("docker-source", "[defaults]\ndocker_source = 'snap'\n" + H, r"defaults\.docker_source: 'snap' is not one of docker-ce, distro"),
    ("data-root-relative", "[defaults]\ndata_root = 'data/docker'\n" + H, r"defaults\.data_root: 'data/docker' is not an absolute path"),
    ("migration-not-bool", "[defaults]\nallow_data_root_migration = 'yes'\n" + H, r"expected true or false, got a string"),
    ("users-not-strings", "[defaults]\ndocker_users = [1]\n" + H, r"defaults\.docker_users: expected a string, got an integer"),
    ("github-access", "[defaults]\ngithub_access = 'token'\n" + H, r"is not one of agent, deploy-key"),
    ("container-no-image", H + "[hosts.a.containers.dev]\nssh_port = 2222\n", r"hosts\.a\.containers\.dev\.image: container 'dev' on host 'a' has no 'image'"),
    ("container-no-port", H + "[hosts.a.containers.dev]\nimage = 'x'\n", r"has no 'ssh_port'"),
    ("container-bad-name", H + "[hosts.a.containers.\"-dev\"]\nimage='x'\nssh_port=2\n", r"'-dev'.*is not a valid container name|is not a valid container name"),
    ("container-unknown-key", H + "[hosts.a.containers.dev]\nimage='x'\nssh_port=2222\nshm = '1g'\n", r"hosts\.a\.containers\.dev\.shm: unknown key \(did you mean 'shm_size'\?\)"),
    ("container-port-clash", H + "[hosts.a.containers.dev]\nimage='x'\nssh_port=2222\n[hosts.a.containers.exp]\nimage='y'\nssh_port=2222\n", r"host port 2222 is used by containers 'dev' and 'exp' on host 'a'"),
    ("container-port-clash-layers", "[groups.g.containers.dev]\nimage='x'\nssh_port=2222\n[hosts.a]\naddress='1'\ngroups=['g']\n[hosts.a.containers.exp]\nimage='y'\nssh_port=2222\n", r"host port 2222 is used by containers"),
    ("volume-relative", H + "[hosts.a.containers.dev]\nimage='x'\nssh_port=2222\nvolumes=['data:/workspace']\n", r"host path 'data' must be absolute"),
    ("volume-container-relative", H + "[hosts.a.containers.dev]\nimage='x'\nssh_port=2222\nvolumes=['/data:workspace']\n", r"container path 'workspace' must be absolute"),
    ("volume-no-colon", H + "[hosts.a.containers.dev]\nimage='x'\nssh_port=2222\nvolumes=['/data']\n", r"is not HOST_PATH:CONTAINER_PATH"),
    ("volume-mode", H + "[hosts.a.containers.dev]\nimage='x'\nssh_port=2222\nvolumes=['/d:/w:rx']\n", r"mode must be 'ro' or 'rw'"),
    ("shm-size", H + "[hosts.a.containers.dev]\nimage='x'\nssh_port=2222\nshm_size='lots'\n", r"'lots' is not a size"),
    ("gpus", H + "[hosts.a.containers.dev]\nimage='x'\nssh_port=2222\ngpus='2'\n", r"'2' is not one of auto, all, none"),
    ("restart", H + "[hosts.a.containers.dev]\nimage='x'\nssh_port=2222\nrestart='forever'\n", r"'forever' is not one of no, always"),
    ("env-not-strings", H + "[hosts.a.containers.dev]\nimage='x'\nssh_port=2222\nenv={A=1}\n", r"value of 'A' must be a string"),
    ("containers-not-table", H + "containers = ['dev']\n", r"hosts\.a\.containers: expected a table of containers"),
    ("alias-pattern", "[local]\ncontainer_alias = '{host}'\n" + H, r"local\.container_alias: '\{host\}' must contain \{container\}"),
    ("alias-pattern-unknown", "[local]\ncontainer_alias = '{server}-{container}'\n" + H, r"may only use \{host\} and \{container\}"),
    ("parallel-zero", "[run]\nparallel = 0\n" + H, r"run\.parallel: 0 is out of range"),
    ("public-keys-not-list", "[local]\npublic_keys = 'k.pub'\n" + H, r"local\.public_keys: expected a list"),
    ("hosts-not-table", "hosts = 3\n", r"hosts: expected a table"),
    ("fingerprint-short", "[defaults]\ndocker_key_fingerprint = '0EBFCD88'\n" + H,
     r"defaults\.docker_key_fingerprint: '0EBFCD88' is not a key fingerprint \(40 hex digits"),
    ("fingerprint-not-hex", "[defaults]\nnvidia_key_fingerprint = '" + "G" * 40 + "'\n" + H,
     r"defaults\.nvidia_key_fingerprint: 'G+' is not a key fingerprint"),
    ("nvidia-toolkit", H + "nvidia_toolkit = 'yes'\n", r"hosts\.a\.nvidia_toolkit: 'yes' is not one of auto, always, never"),
]


@pytest.mark.parametrize("text,pattern", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_inventory_gives_one_clear_line(text, pattern):
    with pytest.raises(InventoryError) as err:
        inv.loads(text, "inv.toml")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("inv.toml")
    assert re.search(pattern, message), message


def test_at_least_25_broken_inventories():
    assert len(BROKEN) >= 25


def test_missing_file_and_non_utf8(tmp_path):
    with pytest.raises(InventoryError, match=r"inventory file not found"):
        inv.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'[hosts.a]\naddress = "\xff"\n')
    with pytest.raises(InventoryError, match=r"bad\.toml: not UTF-8"):
        inv.load(bad)


def test_inventory_path_prefers_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FABRIC_INVENTORY", str(tmp_path / "x.toml"))
    assert inv.inventory_path() == tmp_path / "x.toml"
    monkeypatch.delenv("FABRIC_INVENTORY")
    assert inv.inventory_path(project_dir=tmp_path) == tmp_path / "hosts.toml"


def test_show_host_prints_values_with_brackets(tmp_path):
    import os
    import subprocess
    import sys
    from tests.conftest import REPO
    env = dict(os.environ, FABRIC_INVENTORY=f"{REPO}/hosts.toml")
    result = subprocess.run([sys.executable, "-m", "fabric", "-r", REPO, "show-host", "gpu1"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "[/data/ada:/workspace]" in result.stdout and "group gpu" in result.stdout


@pytest.mark.parametrize("settings,forwarded", [("", True), ('github_access = "deploy-key"\nforward_agent = false\n', False),
                                                ('github_access = "none"\nforward_agent = false\n', False),
                                                # only `agent` needs the agent: the others do not lend it by default
                                                ('github_access = "deploy-key"\n', False),
                                                ('github_access = "none"\n', False),
                                                ('github_access = "agent"\n', True),
                                                # unless the inventory says so explicitly
                                                ('github_access = "deploy-key"\nforward_agent = true\n', True),
                                                ('github_access = "none"\nforward_agent = true\n', True)])
def test_agent_forwarding_into_containers_is_a_setting(settings, forwarded):
    from gpufleet import ssh_config
    from tasks import sshconfig
    loaded = inv.loads(f"[defaults]\n{settings}[hosts.gpu1]\naddress = \"10.0.0.1\"\n"
                          "[hosts.gpu1.containers.dev]\nimage = \"pytorch/pytorch\"\nssh_port = 2222\n")
    server, container = sshconfig.entries(loaded)
    assert not server.forward_agent and container.forward_agent is forwarded
    block = ssh_config.render_block([server, container])
    assert block.split("Host gpu1-dev\n")[1].count(f"ForwardAgent {'yes' if forwarded else 'no'}") == 1


def test_agent_forwarding_follows_github_access_through_the_layers():
    loaded = inv.loads('[defaults]\ngithub_access = "none"\n[groups.lab]\ngithub_access = "agent"\n'
                       '[groups.contract]\nforward_agent = true\n'
                       '[hosts.a]\naddress = "10.0.0.1"\n[hosts.b]\naddress = "10.0.0.2"\ngroups = ["lab"]\n'
                       '[hosts.c]\naddress = "10.0.0.3"\ngroups = ["lab"]\ngithub_access = "deploy-key"\n'
                       '[hosts.d]\naddress = "10.0.0.4"\ngroups = ["contract"]\n')
    assert {n: h.forward_agent for n, h in loaded.hosts.items()} == {"a": False, "b": True, "c": False, "d": True}
    assert loaded.hosts["a"].sources["forward_agent"] == "built-in default (github_access = 'none')"
    assert loaded.hosts["d"].sources["forward_agent"] == "group contract"


@pytest.mark.parametrize("name,valid", [
    ("root", True), ("ada", True), ("a.b-c_d", True), ("_svc", True),
    ("alice@corp.example.com", True),  # SSSD/AD: a login from a directory service
    ("Alice.Smith@CORP.EXAMPLE.COM", True), ("bob@ad", True),
    ("a" * 32, True), ("a" * 33, False),
    ("@corp.example.com", False), ("alice@", False), ("alice@@corp", False), ("alice@corp@evil", False),
    ("alice@-oProxyCommand", False), ("alice@corp.", False), ("-x@corp", False), ("alice@corp com", False),
    ("alice@corp;id", False), ("alice@%h", False),
])
def test_user_names_of_logins_from_a_directory_service(name, valid):
    text = f'[defaults]\nuser = "{name}"\ndocker_users = ["{name}"]\n' + H
    if valid:
        host = inv.loads(text).host("a")
        assert host.user == name and host.docker_users == [name]
    else:
        with pytest.raises(InventoryError, match=r"defaults\.user: .* is not a valid user name"):
            inv.loads(text)


def test_ulimit_nofile_of_a_host_is_the_default_of_its_containers_and_a_container_s_own_wins():
    loaded = inv.loads('[defaults]\nulimit_nofile = 20000\n[hosts.a]\naddress = "10.0.0.1"\n'
                          '[hosts.a.containers.x]\nimage = "i"\nssh_port = 2222\n'
                          '[hosts.a.containers.y]\nimage = "i"\nssh_port = 2223\nulimit_nofile = "4096:8192"\n'
                          '[hosts.b]\naddress = "10.0.0.2"\nulimit_nofile = "65536:1048576"\n'
                          '[hosts.b.containers.x]\nimage = "i"\nssh_port = 2222\n')
    assert {n: c.ulimit_nofile for n, c in loaded.host("a").containers.items()} == {"x": "20000:20000", "y": "4096:8192"}
    assert loaded.host("b").containers["x"].ulimit_nofile == "65536:1048576"
    assert inv.loads('[hosts.c]\naddress = "10.0.0.3"\n[hosts.c.containers.x]\nimage = "i"\nssh_port = 2222\n'
                           ).host("c").containers["x"].ulimit_nofile == "1048576:1048576"
