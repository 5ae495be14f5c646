"""Every file of the real-world corpus (../shared/corpus, see its SOURCES.md) through the matching parser or
writer.  Generic checks run on every file of a category; the tables hold what SOURCES.md says about each
file, and a table must name every file so that a new corpus file is not silently half-tested."""
import re
from pathlib import Path

import pytest

from gpufleet import apt_sources, authorized_keys, daemon_json, gpu, osinfo, ssh_config, sshd_config
from gpufleet.errors import InputError
from tests.openssh import SSH, ssh_resolve

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
if not CORPUS.is_dir():
    pytest.skip("../shared/corpus is not here", allow_module_level=True)
NEW_KEY = authorized_keys.parse_public_key(
    (Path(__file__).resolve().parents[1] / "fixtures" / "authorized_keys" / "new-ed25519.pub").read_text().strip())


def files(category: str, pattern: str = "*") -> list[str]:
    return sorted(p.name for p in (CORPUS / category).glob(pattern))


def read(category: str, name: str) -> bytes:
    return (CORPUS / category / name).read_bytes()


def covers(table: dict, category: str, pattern: str = "*") -> None:
    assert sorted(table) == files(category, pattern), "the table and the corpus disagree"


# --- ssh_config: update() keeps the user's bytes, and the real ssh agrees ---

PROBE = ssh_config.SshHostEntry("gpufleet-probe-alias", "192.0.2.10", port=2201, user="probe",
                                proxy_jump="gpufleet-probe-jump", host_key_alias="gpufleet-probe-alias",
                                known_hosts_file="/srv/gpufleet-test/known_hosts")
JUMP = ssh_config.SshHostEntry("gpufleet-probe-jump", "192.0.2.1", user="ops",
                               known_hosts_file="/srv/gpufleet-test/known_hosts")
BLOCK = ssh_config.render_block([JUMP, PROBE])
SECTION = re.compile(rb"^[ \t]*(host|match)([ \t]*=|[ \t]+)", re.IGNORECASE)




@pytest.mark.parametrize("name", files("ssh_config"))
def test_ssh_config_update(name, tmp_path):
    original = read("ssh_config", name)
    updated = ssh_config.update(original, BLOCK)
    assert ssh_config.remove_block(updated) == original  # every byte outside the block kept
    assert ssh_config.update(updated, BLOCK) == updated  # idempotent
    lines = updated.split(b"\n")
    begin = lines.index(ssh_config.BEGIN.encode() + (b"\r" if b"\r\n" in original else b""))
    first_section = next(i for i, line in enumerate(lines) if SECTION.match(line))
    assert begin < first_section  # the block is never inside a Host/Match section
    if SSH is None:
        return
    (tmp_path / "before").write_bytes(original)
    (tmp_path / "after").write_bytes(updated)
    rc_before, foreign_before, _ = ssh_resolve(tmp_path / "before", "some-other-host.example.org")
    rc_after, foreign_after, err = ssh_resolve(tmp_path / "after", "some-other-host.example.org")
    assert rc_after == rc_before, err  # a file this ssh refuses (UseKeychain is macOS-only) stays refused
    if rc_before != 0:
        return
    assert foreign_after == foreign_before  # every other host resolves exactly as before
    rc, ours, err = ssh_resolve(tmp_path / "after", "gpufleet-probe-alias")
    assert rc == 0, err
    assert (ours["hostname"], ours["port"], ours["user"], ours["proxyjump"], ours["hostkeyalias"],
            ours["userknownhostsfile"], ours["stricthostkeychecking"]) == (
        "192.0.2.10", "2201", "probe", "gpufleet-probe-jump", "gpufleet-probe-alias",
        "/srv/gpufleet-test/known_hosts", "true")


# --- daemon_json: valid files merge keeping foreign keys; broken ones are refused with file, line, column ---

WANTED = {"data-root": "/data/docker", "registry-mirrors": ["https://mirror.example.com"]}
DAEMON_JSON = {  # file → (message regex when invalid | None, {key: value} it must have when valid)
    "broken-stray-brace-graph-nvidia.json": (r": line 3 column \d+: Extra data", None),
    "graph-overlay-trailing-comma-crlf.json": (r": line 6 column 1: Expecting property name", None),
    "jsonc-comments-chinese-empty-array.json": (r": line 9 column 3: Expecting property name", None),
    "gpu-cluster-exec-opts-insecure-nvidia.json": (None, {"default-runtime": "nvidia", "experimental": True}),
    "gvisor-runtime-names-with-spaces-addrpools-dns.json": (None, {"default-runtime": "runsc-systrap",
                                                                   "dns": ["242.242.0.1"]}),
    "homelab-ipv6-addrpools-dns-logopts.json": (None, {"userland-proxy": False, "ipv6": True}),
    "hosts-key-tcp-no-eol.json": (None, {"features": {"buildkit": False}}),
    "ipv6-trailing-space-no-eol.json": (None, {"ipv6": True, "ip6tables": True}),
    "mirrors-without-scheme-group.json": (None, {"group": "dockerroot"}),
    "n1-box-mirrors-bip-dataroot.json": (None, {"log-level": "warn"}),
    "nvidia-ctk-generated.json": (None, {"runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}}),
    "nvidia-default-runtime-shm.json": (None, {"default-runtime": "nvidia"}),
    "single-line-nvidia.json": (None, {"default-runtime": "nvidia"}),
    "tabs-btrfs-insecure-blank-line.json": (None, {"storage-driver": "btrfs"}),
    "zero-indent-seven-mirrors-dns.json": (None, {}),
}


def test_daemon_json_table_covers_the_corpus():
    covers(DAEMON_JSON, "daemon_json")


@pytest.mark.parametrize("name", files("daemon_json"))
def test_daemon_json(name):
    text = read("daemon_json", name).decode("utf-8")
    error, known = DAEMON_JSON.get(name, (None, {}))
    if error:
        with pytest.raises(InputError) as err:
            daemon_json.parse(text, f"/etc/docker/{name}")
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"/etc/docker/{name}: line ")
        assert re.search(error, message), message
        return
    current = daemon_json.parse(text, name)
    for key, value in known.items():
        assert current[key] == value
    merged = daemon_json.merge(current, WANTED)
    assert {k: v for k, v in merged.items() if k not in WANTED} == {k: v for k, v in current.items()
                                                                     if k not in WANTED}
    assert daemon_json.parse(daemon_json.render(merged), name) == merged


def test_daemon_json_our_runtime_joins_runtimes_with_odd_names():
    current = daemon_json.parse(read("daemon_json", "gvisor-runtime-names-with-spaces-addrpools-dns.json").decode(),
                                "d.json")
    merged = daemon_json.merge(current, {"runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}})
    assert list(merged["runtimes"]) == ["runsc-kvm", "runsc-systrap", "runsc-kvm --host-uds=open",
                                        "runsc-systrap --host-uds=open", "nvidia"]
    assert merged["default-runtime"] == "runsc-systrap" and daemon_json.check_schema(merged) == []


def test_daemon_json_mirrors_without_scheme_are_caught_by_the_schema_check():
    current = daemon_json.parse(read("daemon_json", "mirrors-without-scheme-group.json").decode(), "d.json")
    assert daemon_json.check_schema(current) == [
        "registry mirror 'hub-mirror.c.163.com' is not an http(s) URL",
        "registry mirror 'registry.docker-cn.com' is not an http(s) URL"]


# --- sshd_config: the global settings sshd would use (Dockerfiles that edit sshd_config are not configs) ---

SSHD = {  # file → ({keyword: value}, password auth enabled, includes)
    "amazon-linux2-multi-port-dup-syslog.sshd_config":
        ({"port": "22 443 2222 55520", "syslogfacility": "AUTH", "permitrootlogin": "prohibit-password",
          "authorizedkeyscommand": "/opt/aws/bin/eic_run_authorized_keys %u %f"}, False, []),
    "azure-appservice-placeholder-port-tabs.sshd_config":
        ({"port": "SSH_PORT", "permitrootlogin": "yes", "syslogfacility": "DAEMON"}, True, []),
    "docker-sftp-global-chroot-deprecated.sshd_config":
        ({"chrootdirectory": "/chroot", "forcecommand": "internal-sftp -d %u", "protocol": "2"}, True, []),
    "duplicate-logingracetime.sshd_config":
        ({"logingracetime": "2m", "listenaddress": "0.0.0.0 ::", "permitrootlogin": "yes"}, True, []),
    "grapheneos-include-first-template-var.sshd_config":
        ({"allowusers": "{{ssh_users}}", "macs": "-*", "include": "/etc/ssh/sshd_config.d/*.conf"}, False,
         ["/etc/ssh/sshd_config.d/*.conf"]),
    "hardening-role-tabs-no-eol.sshd_config":
        ({"usedns": "no", "permitrootlogin": "no", "syslogfacility": "AUTHPRIV"}, False, []),
    "sftp-match-groups-indented-match.sshd_config": ({}, True, []),  # only Match blocks: nothing global
    "ubuntu-cloud-init-dropin-commented.conf": ({}, True, []),
    "ubuntu-stock-include-custom-port.sshd_config":
        ({"port": "48589", "include": "/etc/ssh/sshd_config.d/*.conf"}, False, ["/etc/ssh/sshd_config.d/*.conf"]),
}


def test_sshd_table_covers_the_corpus():
    configs = [n for n in files("sshd_config") if not n.endswith(".Dockerfile")]
    assert sorted(SSHD) == configs and len(files("sshd_config", "*.Dockerfile")) == 4


@pytest.mark.parametrize("name", sorted(SSHD))
def test_sshd_config(name):
    text = read("sshd_config", name).decode("utf-8")
    known, password, includes = SSHD[name]
    settings = sshd_config.effective_settings(text)
    assert {k: settings.get(k) for k in known} == known
    if not known:
        assert settings == {}
    assert sshd_config.password_auth_enabled(text) is password
    assert sshd_config.includes(text) == includes


def test_sshd_multi_valued_acceptenv_lines_are_all_kept():
    settings = sshd_config.effective_settings(read("sshd_config", "hardening-role-tabs-no-eol.sshd_config").decode())
    assert {"LANG", "LC_ALL", "XMODIFIERS"} <= set(settings["acceptenv"].split())


# --- authorized_keys: adding a key keeps every line; invalid lines are reported, not "fixed" ---

AUTHORIZED_KEYS = {  # file → (valid keys, problems)
    "aosc-team-mixed-types-sk-duplicates.authorized_keys": (184, []),
    "borg-restrict-first-truncated-key.authorized_keys": (0, ["1: key blob is not valid base64"]),
    "comments-only-command-restrict-templates.authorized_keys": (0, []),
    "ec2-keypair-single-line.authorized_keys": (1, []),
    "mixed-nistp521-nistp256-no-comment.authorized_keys": (8, []),
    "options-command-environment-from-fixture.authorized_keys": (5, []),
    "per-person-comment-headers-blank-lines.authorized_keys": (66, []),
}


def test_authorized_keys_table_covers_the_corpus():
    covers(AUTHORIZED_KEYS, "authorized_keys")


@pytest.mark.parametrize("name", files("authorized_keys"))
def test_authorized_keys_sync(name):
    text = read("authorized_keys", name).decode("utf-8")
    valid, problems = AUTHORIZED_KEYS[name]
    result = authorized_keys.sync(text, [NEW_KEY], [])
    kept = text if text.endswith("\n") else text + "\n"
    assert result.text == kept + NEW_KEY.line() + "\n"  # every existing line byte for byte, then ours
    assert result.problems == problems and result.remaining == valid + 1 and result.added == [NEW_KEY]
    assert authorized_keys.sync(result.text, [NEW_KEY], []).text == result.text
    assert authorized_keys.sync(text, [], []).text == text  # nothing to do: not even a newline added


def test_duplicate_blob_is_revoked_everywhere():
    text = read("authorized_keys", "aosc-team-mixed-types-sk-duplicates.authorized_keys").decode()
    keys = [authorized_keys.parse_line(line)[0] for line in text.splitlines()]
    seen, twice = set(), None
    for key in filter(None, keys):
        if key.identity in seen:
            twice = key
        seen.add(key.identity)
    result = authorized_keys.sync(text, [], [twice])
    assert len(result.removed) == 2 and twice.blob not in result.text and result.remaining == 182


# --- nvidia_smi: each output format through its parser ---

TABLE = {  # default table and -q text → (driver, CUDA)
    "h100-mig-590-default-table.txt": ("590.48.01", "13.1"),
    "h100-sxm-8gpu-565-default-table.txt": ("565.57.01", "12.7"),
    "laptop-440-pre-mig-default-table.txt": ("440.100", "10.2"),
    "laptop-470-default-table.txt": ("470.63.01", "11.4"),
    "titanv-515-no-processes-default-table.txt": ("515.65.01", "11.7"),
    "windows-rtx2080s-591-wddm-default-table.txt": ("591.86", "13.1"),
    "wsl2-rtx3070-530.47-vs-531.68-default-table.txt": ("531.68", "12.1"),  # the Windows driver, not NVIDIA-SMI 530.47
    "a100-sxm4-4gpu-555-q.txt": ("555.42.02", "12.5"),
}
XML = {  # -q -x → (driver, CUDA, [(name, MIG mode)])
    "a100-sxm4-4gpu-mig-535-q-x.xml": ("535.54.03", "12.2", [("NVIDIA A100-SXM4-80GB", "Enabled")]),
    "gtx1070ti-q-x-minimal-v10.xml": ("", "", [("GeForce GTX 1070 Ti", "")]),
    "gtx1660ti-418-q-x-no-doctype.xml": ("418.43", "10.1", [("Graphics Device", "")]),
}
FAILED = {  # failed runs → the reason's gist
    "failed-to-communicate.txt": "cannot talk to the NVIDIA driver",
    "failed-to-communicate-curly-quote-2lines.txt": "cannot talk to the NVIDIA driver",
    "wsl2-failed-to-communicate-nvml-shutdown.txt": "cannot talk to the NVIDIA driver",
    "no-devices-were-found.txt": "found no GPU",
}
LIST = {"h200-mig-590-list-L.txt": ["GPU 0: NVIDIA H200 (UUID: GPU-00000000-0000-0000-0000-000000000000)"]}
CSV = {"h200-mig-590-query-gpu-huge.csv": [gpu.Gpu(0, "NVIDIA H200", "GPU-00000000-0000-0000-0000-000000000000",
                                                   "590.48.01", 143771, "9.0", "00000000:83:00.0")]}


def test_nvidia_smi_tables_cover_the_corpus():
    assert sorted({**TABLE, **XML, **FAILED, **LIST, **CSV}) == files("nvidia_smi")


@pytest.mark.parametrize("name", files("nvidia_smi"))
def test_nvidia_smi(name):
    text = read("nvidia_smi", name).decode("utf-8")
    if name in TABLE:
        assert gpu.parse_smi_table_cuda(text) == TABLE[name]
        assert gpu.classify_smi_failure(text) is None
    elif name in XML:
        report = gpu.parse_smi_xml(text)
        driver, cuda, gpus = XML[name]
        assert (report["driver"], report["cuda"]) == (driver, cuda)
        assert [(g["name"], g["mig"]) for g in report["gpus"]] == gpus
    elif name in FAILED:
        reason = gpu.classify_smi_failure(text)
        assert reason and "\n" not in reason and FAILED[name] in reason
        assert gpu.parse_query_gpu(text) == [] and gpu.parse_smi_table_cuda(text) is None
    elif name in LIST:
        assert gpu.parse_smi_list(text) == LIST[name]  # MIG child lines are not GPUs
    else:
        assert gpu.parse_query_gpu(text) == CSV[name]


# --- os_release: id and codename, support, WSL kernels ---

OS_RELEASE = {  # file → (id, base codename, check_supported regex or None)
    "debian-testing-bookworm-sid.os-release": ("debian", "bookworm", r"no VERSION_ID \(testing/unstable"),
    "debian10-buster.os-release": ("debian", "buster", r"Debian GNU/Linux 10 \(buster\) is not supported"),
    "debian11-bullseye.os-release": ("debian", "bullseye", None),
    "debian12-bookworm-custom-id.os-release": ("debian-ujcv", "bookworm", r"\(ID=debian-ujcv\) is not Ubuntu, Debian"),
    "debian12-bookworm.os-release": ("debian", "bookworm", None),
    "debian13-trixie.os-release": ("debian", "trixie", None),
    "distroless-debian11.os-release": ("debian", "bullseye", None),  # codename from VERSION "11 (bullseye)"
    "linuxmint20-ulyana.os-release": ("linuxmint", "focal", None),  # VERSION_CODENAME=ulyana is Mint's own
    "ubuntu18.04-bionic.os-release": ("ubuntu", "bionic", None),
    "ubuntu20.04-focal.os-release": ("ubuntu", "focal", None),
    "ubuntu22.04-jammy.os-release": ("ubuntu", "jammy", None),
    "ubuntu24.04-noble.os-release": ("ubuntu", "noble", None),
    "ubuntu25.04-plucky-trailing-comment.os-release": ("ubuntu", "plucky", r"^Ubuntu 25\.04 is not supported"),
}
WSL = {  # uname → WSL version (WSL1 is WSL too: is_wsl is True for it)
    "wsl1-uname-r-4.4.0-18362-Microsoft.txt": 1,
    "wsl2-uname-a-4.19.104-no-WSL2-suffix.txt": 2,
    "wsl2-uname-a-5.15.133.1.txt": 2,
    "wsl2-uname-a-5.4.72.txt": 2,
    "wsl2-uname-r-4.19.81-insider.txt": 2,
    "wsl2-uname-r-5.15.90.1.txt": 2,
}


def test_os_release_tables_cover_the_corpus():
    assert sorted({**OS_RELEASE, **WSL}) == files("os_release")


@pytest.mark.parametrize("name", files("os_release"))
def test_os_release(name):
    text = read("os_release", name).decode("utf-8")
    if name in WSL:
        assert osinfo.is_wsl(text) and osinfo.wsl_version(text) == WSL[name]
        return
    os_ = osinfo.parse_os_release(text)
    id_, codename, unsupported = OS_RELEASE[name]
    assert (os_.id, os_.base_codename) == (id_, codename)
    reason = osinfo.check_supported(os_)
    if unsupported is None:
        assert reason is None
    else:
        assert reason and "\n" not in reason and re.search(unsupported, reason), reason


# --- apt_sources: non-UTF-8 refused in one line; the mirror hosts of the others ---

APT = {  # file → hosts of the active sources, or None when the file is refused
    "163-focal-proposed-enabled-no-eol.list": ["mirrors.163.com"],
    "aliyun-bionic-blank-line-pairs.list": ["mirrors.aliyun.com"],
    "aliyun-noble-deb822-multiarch-ports.sources": ["mirrors.aliyun.com"],
    "aliyun-ports-jammy-stray-xenial-main-main.list": ["mirrors.aliyun.com"],
    "aliyun-xenial-software-properties-partner.list": ["archive.ubuntu.com", "mirrors.aliyun.com",
                                                       "archive.canonical.com"],
    "aliyun-zesty-ideographic-space.list": ["mirrors.aliyun.com"],
    "pku-noble-deb822-commented-stanzas-zh.sources": ["mirrors.pku.edu.cn", "security.ubuntu.com"],
    "tuna-debian-buster-gbk-comment-no-eol.list": None,
    "tuna-focal-security-commented-out.list": ["mirrors.tuna.tsinghua.edu.cn"],
    "tuna-jammy-template-no-eol.list": ["mirrors.tuna.tsinghua.edu.cn"],
    "tuna-noble-deb822-crlf-no-eol.sources": ["mirrors.tuna.tsinghua.edu.cn"],
    "ubuntu-noble-stock-deb822-plus-jammy-stanzas.sources": ["archive.ubuntu.com", "security.ubuntu.com"],
    "ustc-debian-stable-suite-name.list": ["mirrors.ustc.edu.cn"],
    "ustc-focal-four-lines-no-eol.list": ["mirrors.ustc.edu.cn"],
}


def test_apt_table_covers_the_corpus():
    covers(APT, "apt_sources")


@pytest.mark.parametrize("name", files("apt_sources"))
def test_apt_sources(name):
    data = read("apt_sources", name)
    if APT[name] is None:
        with pytest.raises(InputError) as err:
            apt_sources.check_text(data, f"dev:/etc/apt/{name}")
        message = str(err.value)
        assert "\n" not in message and re.match(rf"dev:/etc/apt/{re.escape(name)}: not UTF-8 at byte \d+", message)
        return
    uris = apt_sources.mirrors_in(apt_sources.check_text(data, name))
    assert list(dict.fromkeys(re.match(r"https?://([^/]+)/", u).group(1) for u in uris)) == APT[name]
