"""The signed-repo primitive, for real on this machine: keys served on loopback, fetched with curl
through a local session, checked against the pin, written by the one file writer into a temporary
directory (standing in for /etc/apt).  Nothing outside tmp_path is written."""
import functools
import os
import shutil
import stat
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gpufleet import apt_repo, inventory
from gpufleet.errors import FleetError
from gpufleet.facts import ProbeRequest
from gpufleet.plan import CHANGED, FAILED, OK, HostContext, Plan, Step
from gpufleet.remote import LocalSession

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "openpgp"
RSA = "0D816186420A7329C0C61E8C11797716AACD5550"
ED25519 = "761B5C67D4E753354ACA06C7ED39FBE1A02075A4"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="files are written owned by root, as on a host")


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def key_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields (base URL, www dir)."""
    www = tmp_path / "www"
    (www / "debian").mkdir(parents=True)
    shutil.copy(FIXTURES / "rsa3072-with-subkeys.asc", www / "debian" / "gpg")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", www
    server.shutdown()
    server.server_close()


def make_repo(base: str, tmp_path: Path, fingerprint: str = RSA) -> apt_repo.SignedRepo:
    etc = tmp_path / "etc-apt"
    return apt_repo.docker_ce_repo(base, fingerprint, "debian", "bookworm", "amd64",
                                   keyring=str(etc / "keyrings" / "docker.asc"),
                                   sources_path=str(etc / "sources.list.d" / "docker.sources"))


def host(repo: apt_repo.SignedRepo) -> HostContext:
    """A context on this machine whose probe reads the repo's files."""
    inv = inventory.loads('[hosts.here]\naddress = "127.0.0.1"\n')
    ctx = HostContext(inv.host("here"), inv, LocalSession("here"))
    ctx.probe_request = lambda c: ProbeRequest(files=[repo.keyrings_dir, repo.keyring, repo.sources_path],
                                               apt_sources_dir=str(Path(repo.sources_path).parent))
    return ctx


def repo_step(repo):
    return Step("repo", lambda c: Plan.change(*apt_repo.repo_actions(repo, c.facts())[0]))


def mode(path) -> str:
    return oct(stat.S_IMODE(os.stat(path).st_mode))


@needs_root
def test_key_fetched_checked_and_written_then_nothing_to_do(key_server, tmp_path):
    base, www = key_server
    repo = make_repo(base, tmp_path)
    first = host(repo).run_steps([repo_step(repo)]).steps[0]
    assert first.status == CHANGED, first.message
    assert first.message.startswith(f"fetch Docker's signing key from {base}/debian/gpg, check it is {RSA} "
                                    "(docker_key_fingerprint), write ")
    assert Path(repo.keyring).read_bytes() == (www / "debian" / "gpg").read_bytes()
    assert mode(repo.keyring) == "0o644" and mode(repo.keyrings_dir) == "0o755"
    assert Path(repo.sources_path).read_text().splitlines()[1:] == [
        "Types: deb", f"URIs: {base}/debian", "Suites: bookworm", "Components: stable", "Architectures: amd64",
        f"Signed-By: {repo.keyring}"]
    again = host(repo).run_steps([repo_step(repo)]).steps[0]
    assert again.status == OK, again.message
    assert not list(Path(repo.keyrings_dir).glob("*gpufleet-tmp*"))


@needs_root
def test_a_keyring_that_is_not_the_pin_is_fetched_again(key_server, tmp_path):
    base, _ = key_server
    repo = make_repo(base, tmp_path)
    Path(repo.keyrings_dir).mkdir(parents=True)
    shutil.copy(FIXTURES / "ed25519-primary-only.asc", repo.keyring)
    plan = Plan.change(*apt_repo.repo_actions(repo, host(repo).facts())[0])
    assert plan.actions[0].summary.startswith("re-fetch Docker's signing key")
    assert plan.actions[0].summary.endswith(f"(the keyring on the host is {ED25519}, not the pinned {RSA})")
    step = host(repo).run_steps([repo_step(repo)]).steps[0]
    assert step.status == CHANGED, step.message
    assert Path(repo.keyring).read_bytes() == (FIXTURES / "rsa3072-with-subkeys.asc").read_bytes()
    assert Path(repo.keyring + ".gpufleet.bak").read_bytes() == (FIXTURES / "ed25519-primary-only.asc").read_bytes()


@needs_root
def test_a_pinned_keyring_with_the_wrong_mode_is_only_chmodded(key_server, tmp_path):
    base, www = key_server
    repo = make_repo(base, tmp_path)
    host(repo).run_steps([repo_step(repo)])
    os.chmod(repo.keyring, 0o600)
    (www / "debian" / "gpg").write_text("gone: a fetch now would fail\n")
    step = host(repo).run_steps([repo_step(repo)]).steps[0]
    assert step.status == CHANGED and step.message.startswith(f"fix owner/mode of {repo.keyring}"), step.message
    assert mode(repo.keyring) == "0o644"


PLANNED = [
    ("absent", None, "fetch Docker's signing key from"),
    ("garbage", b"<html>502 Bad Gateway</html>\n",
     "(the keyring on the host is not a usable OpenPGP public key: not an OpenPGP public key (starts with "),
    ("two keys", (FIXTURES / "two-keys.asc").read_bytes(), f"(the keyring on the host is {ED25519}, {RSA}, not the pinned"),
    ("binary pinned key, 0644", (FIXTURES / "rsa3072-with-subkeys.gpg").read_bytes(), None),
]


@pytest.mark.parametrize("content,expected", [p[1:] for p in PLANNED], ids=[p[0] for p in PLANNED])
def test_planned_key_action_by_what_the_host_has(tmp_path, content, expected):
    repo = make_repo("http://127.0.0.1:9", tmp_path)
    if content is not None:
        Path(repo.keyrings_dir).mkdir(parents=True)
        Path(repo.keyring).write_bytes(content)
        os.chmod(repo.keyring, 0o644)
    actions, sources_changed = apt_repo.repo_actions(repo, host(repo).facts())
    summaries = [a.summary for a in actions]
    assert sources_changed and summaries[-1] == f"create {repo.sources_path}"
    if expected is None:
        assert len(summaries) == 1, summaries
    else:
        assert expected in summaries[0] and len(summaries) == 2, summaries


REFUSED = [
    ("another key", lambda www: shutil.copy(FIXTURES / "ed25519-primary-only.asc", www / "debian" / "gpg"),
     [f"does not match docker_key_fingerprint: expected {RSA}, received {ED25519}; refused, nothing was written"]),
    ("the pinned key plus another", lambda www: shutil.copy(FIXTURES / "two-keys.asc", www / "debian" / "gpg"),
     [f"expected {RSA}, received 2 keys: {ED25519}, {RSA}"]),
    ("an HTML page", lambda www: (www / "debian" / "gpg").write_text("<html>mirror maintenance</html>\n"),
     ["is not a usable OpenPGP public key (not an OpenPGP public key (starts with '<html>mirror"]),
    ("404", lambda www: (www / "debian" / "gpg").unlink(),
     ["cannot fetch Docker's signing key from", "(docker_key_fingerprint): curl:", "404"]),
]


@pytest.mark.parametrize("serve,expected", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_a_key_that_is_not_the_pin_is_refused_before_anything_is_written(key_server, tmp_path, serve, expected):
    base, www = key_server
    serve(www)
    repo = make_repo(base, tmp_path)
    step = host(repo).run_steps([repo_step(repo)]).steps[0]
    assert step.status == FAILED
    assert f"{base}/debian/gpg" in step.message
    for part in expected:
        assert part in step.message, step.message
    assert not (tmp_path / "etc-apt").exists()  # no keyring, no sources list, not even the directory


def test_the_mirror_repos_name_their_key_url_setting_and_signed_by():
    docker = apt_repo.docker_ce_repo("http://10.77.53.5:8080/docker-ce/linux", RSA, "debian", "bookworm", "arm64")
    assert (docker.key_url, docker.fingerprint_setting, docker.keyring) == (
        "http://10.77.53.5:8080/docker-ce/linux/debian/gpg", "docker_key_fingerprint", "/etc/apt/keyrings/docker.asc")
    assert docker.sources_path == "/etc/apt/sources.list.d/docker.sources"
    assert docker.sources.decode().splitlines()[1:] == [
        "Types: deb", "URIs: http://10.77.53.5:8080/docker-ce/linux/debian", "Suites: bookworm", "Components: stable",
        "Architectures: arm64", "Signed-By: /etc/apt/keyrings/docker.asc"]
    nvidia = apt_repo.nvidia_toolkit_repo("http://10.77.53.5:8080/libnvidia-container", ED25519)
    assert (nvidia.key_url, nvidia.fingerprint_setting, nvidia.sources_path) == (
        "http://10.77.53.5:8080/libnvidia-container/gpgkey", "nvidia_key_fingerprint",
        "/etc/apt/sources.list.d/nvidia-container-toolkit.sources")
    assert nvidia.sources.decode().splitlines()[1:] == [  # a flat repository: a "/" suite and no components
        "Types: deb", "URIs: http://10.77.53.5:8080/libnvidia-container/stable/deb/$(ARCH)", "Suites: /",
        "Signed-By: /etc/apt/keyrings/nvidia-container-toolkit.asc"]


SOURCES_D = "/etc/apt/sources.list.d"
DOCKER_GUIDE_LIST = b"deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/ubuntu noble stable\n"
NVIDIA_GUIDE_LIST = (b"deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] "
                     b"https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /\n"
                     b"#deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] "
                     b"https://nvidia.github.io/libnvidia-container/experimental/deb/$(ARCH) /\n")
MIRROR = "https://mirrors.tuna.tsinghua.edu.cn/docker-ce/linux"
# what sources.list.d holds → the files replaced by docker.sources (None: refused)
SAME_REPO = [
    ("docker's guide, one line", {"docker.list": DOCKER_GUIDE_LIST}, ["docker.list"]),
    ("docker.list naming another mirror (an earlier run's name)",
     {"docker.list": b"deb [arch=amd64] https://mirrors.aliyun.com/docker-ce/linux/ubuntu noble stable\n"}, ["docker.list"]),
    ("an old gpufleet docker.list with the inventory's mirror",
     {"docker.list": f"# Managed by gpufleet\ndeb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] {MIRROR}/ubuntu noble stable\n".encode()},
     ["docker.list"]),
    ("the same repo under another name, http", {"archive_uri-docker.list": b"deb http://download.docker.com/linux/ubuntu noble stable\n"},
     ["archive_uri-docker.list"]),
    ("the mirror in deb822 under another name",
     {"docker-mirror.sources": f"Types: deb\nURIs: {MIRROR}/ubuntu/\nSuites: noble\nComponents: stable\n".encode()},
     ["docker-mirror.sources"]),
    ("disabled and commented out: nothing", {"old.sources": f"Enabled: no\nTypes: deb\nURIs: {MIRROR}/ubuntu\n".encode(),
                                             "old.list": b"# deb https://download.docker.com/linux/ubuntu noble stable\n"}, []),
    ("Docker's repo for another family, another repo: kept", {"debian-docker.list": b"deb https://download.docker.com/linux/debian bookworm stable\n",
                                                               "cuda.list": b"deb https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64/ /\n"}, []),
    ("the toolkit's list is not Docker's", {"nvidia-container-toolkit.list": NVIDIA_GUIDE_LIST}, []),
    ("docker.sources itself is written over, not removed", {"docker.sources": DOCKER_GUIDE_LIST}, []),
    ("a file with Docker's repo and another one", {"extra.list": DOCKER_GUIDE_LIST + b"deb http://ppa.launchpad.net/x/y/ubuntu noble main\n"}, None),
]


@pytest.mark.parametrize("files,replaced", [r[1:] for r in SAME_REPO], ids=[r[0] for r in SAME_REPO])
def test_the_files_that_hold_dockers_repo_are_replaced_by_docker_sources(files, replaced):
    repo = apt_repo.docker_ce_repo(MIRROR, RSA, "ubuntu", "noble", "amd64")
    source_files = {f"{SOURCES_D}/{name}": content for name, content in files.items()}
    if replaced is None:
        with pytest.raises(FleetError, match=r"^/etc/apt/sources.list.d/extra.list names Docker's repository "
                                             r"\(https://download.docker.com/linux/ubuntu\) beside other sources "
                                             r"\(http://ppa.launchpad.net/x/y/ubuntu\); .* \(nothing was changed\)$"):
            apt_repo.same_repo_files(repo, source_files)
        return
    assert sorted(apt_repo.same_repo_files(repo, source_files)) == [f"{SOURCES_D}/{name}" for name in replaced]


def test_nvidias_guide_list_is_replaced_by_the_toolkits_sources():
    repo = apt_repo.nvidia_toolkit_repo("https://nvidia.github.io/libnvidia-container", ED25519)
    files = {f"{SOURCES_D}/nvidia-container-toolkit.list": NVIDIA_GUIDE_LIST, f"{SOURCES_D}/docker.list": DOCKER_GUIDE_LIST}
    assert list(apt_repo.same_repo_files(repo, files)) == [f"{SOURCES_D}/nvidia-container-toolkit.list"]
    # one line or deb822, the same URI: not a new mirror (the packages are not installed again for it)
    assert apt_repo.repo_uris(repo, [NVIDIA_GUIDE_LIST]) == apt_repo.repo_uris(repo, [repo.sources]) == {
        "nvidia.github.io/libnvidia-container/stable/deb/$(ARCH)"}


@needs_root
def test_a_hand_written_docker_list_is_replaced_kept_as_a_backup_then_nothing_to_do(key_server, tmp_path):
    base, www = key_server
    repo = make_repo(base, tmp_path)
    folder = Path(repo.sources_path).parent
    folder.mkdir(parents=True)
    hand = f"deb [arch=amd64 signed-by={repo.keyring}] {base}/debian bookworm stable\n"
    (folder / "docker.list").write_text(hand)
    (folder / "other.list").write_text("deb http://deb.example.invalid/debian bookworm main\n")
    planned = Plan.change(*apt_repo.repo_actions(repo, host(repo).facts())[0])
    removal = next(a for a in planned.actions if a.summary.startswith("remove"))
    assert removal.summary == (f"remove {folder}/docker.list (Docker's repository goes into {repo.sources_path}; "
                               "kept as docker.list.gpufleet.bak)")
    assert f"-{hand}" in removal.diff and "+++ /dev/null" in removal.diff
    first = host(repo).run_steps([repo_step(repo)]).steps[0]
    assert first.status == CHANGED, first.message
    assert sorted(p.name for p in folder.iterdir()) == ["docker.list.gpufleet.bak", "docker.sources", "other.list"]
    assert (folder / "docker.list.gpufleet.bak").read_text() == hand
    again = host(repo).run_steps([repo_step(repo)]).steps[0]
    assert again.status == OK, again.message
