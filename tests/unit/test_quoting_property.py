"""Property: no inventory value reaches a remote command line unquoted.

Hypothesis writes inventories whose free-text values (git identity, paths, env values, daemon.json
strings, URLs) carry a marker full of shell syntax, and whose names (users, images, packages, env keys,
containers) are any string their own syntax allows. Each inventory is either refused with an
InventoryError or every step of bootstrap (and the day-2 operations) is planned and applied against a
host that records the commands instead of running them. In every recorded command line, and in every
script nested in one (`sh -c …`, `docker exec … sh -c …`), each occurrence of the marker must lie inside
single quotes: the one place a POSIX shell takes every character literally.
"""
import base64
import gzip
import json
import shlex

from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from gpufleet import facts, inventory, openpgp
from gpufleet.errors import InventoryError
from gpufleet.paths import probe_request
from gpufleet.plan import HostContext
from gpufleet.remote import Script, Session
from tasks import ops
from tests.unit.test_facts import section

# shell syntax of every kind; the single quote comes late, so that a value pasted inside '…' ends that
# quoting and leaves " ;x" bare
MARK = ";$(touch /tmp/gpufleet-pwned)`id`\"&|<>* ~#' ;x"
URL_MARK = ";$(id)`id`&|*~"


class RecordingHost(Session):
    """A host that answers the probe from canned facts and records every other command."""
    name = "gpu1"

    def __init__(self, probe_text: str):
        super().__init__()
        self.probe_text, self.lines = probe_text, []

    def _exec(self, command, *, sudo, timeout, stdin, on_output=None):
        self.lines.append(command)
        if "sec os_release" in command:
            return 0, self.probe_text, ""
        if "sec state" in command:  # a container's diff, stamps and footprint: a fresh container
            packed = base64.b64encode(gzip.compress((section("diff", "") + section("stamps", "")
                                                     + section("footprint", "", 1)).encode())).decode()
            return 0, section("state", packed), ""
        if command.startswith("curl ") or " curl " in command:
            return 0, KEY.read_text(), ""
        if command.startswith("docker info"):
            return 0, json.dumps(DOCKER_INFO), ""
        if command.startswith("cat "):
            return 0, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKey dev", ""
        return 0, "", ""


# a real public key (tests/fixtures/openpgp), pinned in the inventories below, so the repo steps go on
KEY = Path(__file__).resolve().parents[1] / "fixtures" / "openpgp" / "ed25519-primary-only.asc"
[FINGERPRINT] = openpgp.primary_fingerprints(KEY.read_bytes())
DOCKER_INFO = {"ServerVersion": "24.0.7", "DockerRootDir": "/var/lib/docker", "Images": 0, "Containers": 1,
               "ContainersRunning": 1, "Runtimes": {"runc": {}}, "RegistryConfig": {"Mirrors": []}}


def probe_text(ctx, running: bool) -> str:
    request = probe_request(ctx)
    text = (section("os_release", 'ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\nPRETTY_NAME="Debian"\n')
            + section("uname", "Linux gpu1 6.1.0 #1 SMP x86_64 GNU/Linux") + section("arch", "amd64")
            + section("systemd", "", 0) + section("meminfo", "MemTotal: 16000000 kB")
            + "".join(section(f"user:{i}", f"{u} users") for i, u in enumerate(request.users)))
    if not running:
        return complete(text + section("packages", "") + section("docker_info", "not found", 127), request)
    label = json.dumps({"image": "old/image", "env": {}, "volumes": []})
    containers = "".join(json.dumps({
        "Name": f"/{name}", "Id": "0" * 64, "Image": "sha256:" + "1" * 64,
        "State": {"Running": True, "Status": "running", "StartedAt": "2026-12-01T10:00:00.000000000Z"},
        "Config": {"Image": "old/image", "Labels": {"gpufleet.container": name, "gpufleet.spec": label}},
        "HostConfig": {"PortBindings": {}}}) + "\n" for name in request.containers)
    os_release = base64.b64encode(b'ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n').decode()
    inside = "".join(section(f"inside:{i}", section("sshd_bin", "", 0) + section("sshd_run", "", 1) + section("pkgs", "")
                             + section("ifile:0", f"644 root root\n{os_release}")  # /etc/os-release, as readfile prints it
                             + "".join(section(f"ifile:{j}", "absent") for j in range(1, len(files))))
                     for i, files in enumerate(request.containers.values()))
    return complete(text + section("packages", "docker.io\tii \t20.10.24\ndocker-ce\tii \t5:24.0.7\n")
                    + section("docker_info", json.dumps(DOCKER_INFO)) + section("containers", containers) + inside,
                    request)


def complete(text: str, request) -> str:
    """A whole probe output: each section left out above is empty (a file: absent), then the end mark."""
    have = facts.split_sections(text)
    text += "".join(section(name, "absent" if name.startswith("file:") else "", 1)
                    for name in facts.section_names(request) if name not in have)
    return text + facts.PROBE_DONE + "\n"


def quoted_positions(script: str) -> list[bool]:
    """For each character: does sh take it literally?  Inside single quotes, yes; inside double quotes,
    all but $ ` \\ and " (shlex.quote puts a single quote there: '"'"')."""
    out, single, double, i = [], False, False, 0
    while i < len(script):
        ch = script[i]
        if single:
            single = ch != "'"
            out.append(single)
        elif ch == "\\":
            out += [False, False]
            i += 2
            continue
        elif ch == '"':
            double = not double
            out.append(False)
        elif double:
            out.append(ch not in "$`")
        else:
            single = ch == "'"
            out.append(False)
        i += 1
    return out


def assert_marker_quoted(script: str, marker: str, depth: int = 0) -> None:
    quoted = quoted_positions(script)
    start = script.find(marker)
    while start != -1:
        assert all(quoted[start:start + len(marker)]), f"unquoted at depth {depth}: …{script[max(0, start - 80):start + 80]}…"
        start = script.find(marker, start + 1)
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    for i, token in enumerate(tokens[:-1]):
        if token == "-c" and i and tokens[i - 1].rsplit("/", 1)[-1] in ("sh", "bash"):
            assert_marker_quoted(tokens[i + 1], marker, depth + 1)


def toml(value) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string (no control characters here)


free_text = st.text(st.characters(blacklist_categories=["Cc", "Cs"], blacklist_characters=":"), max_size=8)
# names in their own syntaxes (each also matches the inventory's pattern; bounded, so nothing is filtered)
names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,15}\Z")
users = st.from_regex(inventory.USER_RE, fullmatch=True)
packages = st.from_regex(r"\A[a-z0-9][a-z0-9+.-]{1,20}(:[a-z0-9-]{1,6})?(=[A-Za-z0-9.+~:-]{1,10})?\Z")
env_keys = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,15}\Z")
images = st.builds(lambda registry, parts, tag: registry + "/".join(parts) + tag,
                   st.sampled_from(["", "registry.local:5000/", "nvcr.io/"]),
                   st.lists(st.from_regex(r"\A[a-z0-9]{1,6}([._-][a-z0-9]{1,4})?\Z"), min_size=1, max_size=3),
                   st.from_regex(r"\A(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,20})?\Z"))


@st.composite
def inventories(draw) -> str:
    def marked(strategy=free_text, mark=MARK):
        return draw(strategy) + mark + draw(strategy)
    url_text = st.text(st.sampled_from("abc-._~%!$&()*+,;="), max_size=6)
    container, user, tool, image, key = draw(names), draw(users), draw(packages), draw(images), draw(env_keys)
    # each optional setting on or off: one refusal (say daemon.json's schema) must not hide the paths after it
    optional = [
        f"git_name = {toml(marked())}",
        f"git_email = {toml(marked())}",
        f"data_root = {toml('/data/' + marked())}\nallow_data_root_migration = true",
        f"docker_mirror = {toml('https://mirror.example/' + marked(url_text, URL_MARK))}",
        f"apt_mirror = {toml('http://mirror.example/' + marked(url_text, URL_MARK))}",
        f"apt_proxy = {toml('http://10.0.0.3:3142/' + marked(url_text, URL_MARK))}",
        f"registry_mirrors = [{toml('https://hub.example/' + marked(url_text, URL_MARK))}]",
        f'daemon_json = {{ "log-opts" = {{ tag = {toml(marked())} }} }}',
    ]
    return "\n".join([
        "[defaults]",
        *(line for line in optional if draw(st.booleans())),
        f"docker_users = [{toml(user)}]",
        f"tools = [{toml(tool)}]",
        f"docker_source = {toml(draw(st.sampled_from(['docker-ce', 'distro'])))}",
        f"docker_key_fingerprint = {toml(FINGERPRINT)}",
        f"nvidia_key_fingerprint = {toml(FINGERPRINT)}",
        'nvidia_toolkit = "always"',
        f"github_access = {toml(draw(st.sampled_from(['agent', 'deploy-key'])))}",
        "[hosts.gpu1]",
        'address = "10.0.0.1"',
        f"user = {toml(user)}",
        f"[hosts.gpu1.containers.{toml(container)}]",
        f"image = {toml(image)}",
        "ssh_port = 2222",
        f"volumes = [{toml('/srv/' + marked() + ':/w/' + marked())}]",
        f"env = {{ {toml(key)} = {toml(marked())}, SECRET_{key} = {{ secret = {toml(marked())} }} }}",
        "",
    ])


def every_step():
    from tasks.tree import BOOTSTRAP
    return [*BOOTSTRAP, ops.snapshot_step(None, pause=True), ops.rm_step(None, force=True),
            ops.lifecycle_step("restart", None)]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories())
def test_no_inventory_value_reaches_a_command_line_unquoted(text):
    try:
        inv = inventory.loads(text)
    except InventoryError:
        return  # refused before any host is contacted: nothing ran
    host = inv.host("gpu1")
    recorded, results = [], []
    for running in (False, True):
        for step in every_step():
            ctx = HostContext(host, inv, None, dry_run=False)
            ctx.probe_request = probe_request
            ctx.session = RecordingHost(probe_text(ctx, running))
            ctx._run_step(step)
            recorded += ctx.session.lines
            results += ctx.report.steps
    # the canned host really took each stage down its paths, and no value made the code itself fail
    assert sum(r.status == "changed" for r in results) >= 12, [(r.step, r.status, r.message) for r in results]
    assert not [r for r in results if "unexpected error" in r.message], [(r.step, r.message) for r in results]
    for line in recorded:
        assert_marker_quoted(line, MARK)
        assert_marker_quoted(line, URL_MARK)


def test_the_checker_finds_an_unquoted_value():
    """The property above would catch the mistake it is about (a value pasted into a script)."""
    import pytest
    with pytest.raises(AssertionError, match="unquoted at depth 1"):
        assert_marker_quoted(shlex.join(["sh", "-c", f"echo {MARK} >&2"]), MARK)
    with pytest.raises(AssertionError, match="unquoted at depth 0"):
        assert_marker_quoted(f'echo "{MARK}"', MARK)
    assert_marker_quoted(shlex.join(["sh", "-c", f"echo {shlex.quote(MARK)}"]), MARK)
    assert isinstance(Script("x"), str)
