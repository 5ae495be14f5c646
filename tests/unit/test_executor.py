"""The executor through the real `fab` CLI against real sshd servers on loopback."""
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests import loopback
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(not loopback.available(), reason="needs root and OpenSSH's sshd")

FABFILE = '''
from invoke import Collection, task
from gpufleet.fleet import fleet_task
from gpufleet.errors import FleetError
from gpufleet.plan import Action, Plan, Step
from gpufleet.remote import Secret


def plan_sleep(c):
    return Plan.change(Action("sleep 2s", lambda c: c.run(["sleep", "2"])))


def plan_marker(c):
    exists = c.run(["test", "-e", MARKER + c.name], check=False).ok
    if exists:
        return Plan.ok("marker already there")
    return Plan.change(Action("create marker", lambda c: c.run(["touch", MARKER + c.name])))


def plan_fail_on_b(c):
    if c.name == "b":
        c.run(["sh", "-c", "echo boom >&2; exit 3"])
    return Plan.ok("fine")


def plan_secret(c):
    c.run(["echo", Secret("hunter2-token")])
    return Plan.ok("said it")


def plan_hang(c):
    seconds = HANG if c.name == "a" else "1"
    return Plan.change(Action(f"sleep {seconds}s", lambda c: c.run(["sleep", seconds])))


MARKER = "{marker}"
HANG = "{hang}"


@task
@fleet_task()
def sleepy(c, dry_run=False, json=None):
    c.run_steps([Step("sleep", plan_sleep)])


@task
@fleet_task()
def converge(c, dry_run=False, json=None):
    c.run_steps([Step("marker", plan_marker), Step("check", plan_fail_on_b), Step("after", plan_marker)])


@task
@fleet_task()
def secret(c, dry_run=False, json=None):
    c.run_steps([Step("secret", plan_secret)])


@task
@fleet_task()
def hang(c, dry_run=False, json=None):
    c.run_steps([Step("hang", plan_hang)])


ns = Collection(sleepy, converge, secret, hang)
'''


HANG = "37.125"  # a sleep no other process on this machine runs


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    key = loopback.keygen(root / "id_ed25519")
    servers = [loopback.LoopbackSshd(root / f"sshd{i}", Path(f"{key}.pub")) for i in range(2)]
    marker = str(root / "marker-")
    (root / "fabfile.py").write_text(FABFILE.replace("{marker}", marker).replace("{hang}", HANG))
    (root / "fabric.yaml").write_text((Path(REPO) / "fabric.yaml").read_text())
    (root / "hosts.toml").write_text(textwrap.dedent(f"""
        [local]
        identity = "{key}"
        known_hosts = "{root}/known_hosts"
        ssh_config = "{root}/ssh_config"
        [run]
        log_dir = "{root}/logs"
        [hosts.a]
        address = "127.0.0.1"
        port = {servers[0].port}
        [hosts.b]
        address = "127.0.0.1"
        port = {servers[1].port}
        [hosts.dead]
        address = "127.0.0.1"
        port = {loopback.free_port()}
        """))
    yield root, marker
    for s in servers:
        s.stop()


def fab(root, *args):
    env = dict(os.environ, PYTHONPATH=REPO, FABRIC_INVENTORY=str(root / "hosts.toml"))
    return subprocess.run([sys.executable, "-m", "fabric", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_two_hosts_run_in_parallel(project):
    root, _ = project
    result = fab(root, "-H", "a,b", "sleepy")
    assert result.returncode == 0, result.stdout + result.stderr
    # the executor's own wall time for the hosts (Python's start-up is not the executor's)
    elapsed = float(re.search(r"Recap \(([0-9.]+)s\)", result.stdout).group(1))
    assert 2.0 <= elapsed < 3.5, f"two 2 s steps took {elapsed:.1f}s: not parallel"
    assert result.stdout.count("changed  sleep: sleep 2s") == 2


def test_failure_on_one_host_finishes_the_others_then_exits_1(project, tmp_path):
    root, marker = project
    out = tmp_path / "recap.json"
    result = fab(root, "-H", "a,b,dead", "converge", "--json", str(out))
    assert result.returncode == 1, result.stdout + result.stderr
    doc = json.loads(out.read_text())
    hosts = {h["host"]: h for h in doc["hosts"]}
    assert hosts["a"]["error"] == "" and hosts["a"]["changed"] == 1 and hosts["a"]["ok"] == 2
    assert hosts["b"]["failed_step"] == "check"
    assert "exited 3" in hosts["b"]["error"] and "boom" in hosts["b"]["error"]
    assert [s["status"] for s in hosts["b"]["steps"]] == ["changed", "failed"]  # stopped at the failure
    assert hosts["dead"]["failed_step"] == "connect" and "cannot connect" in hosts["dead"]["error"]
    assert sorted(doc["failed_hosts"]) == ["b", "dead"]
    assert Path(marker + "a").exists() and Path(marker + "b").exists()
    assert "Re-run only those with: fab -H @failed" in result.stdout
    # second run: a has nothing to do; @failed targets only the failed hosts
    again = fab(root, "-H", "@failed", "converge", "--json", str(out))
    hosts = {h["host"]: h for h in json.loads(out.read_text())["hosts"]}
    assert set(hosts) == {"b", "dead"}
    assert again.returncode == 1


def test_dry_run_changes_nothing(project, tmp_path):
    root, marker = project
    Path(marker + "a").unlink(missing_ok=True)
    result = fab(root, "-H", "a", "converge", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "would create marker" in result.stdout
    assert not Path(marker + "a").exists()


def test_unknown_host_is_bad_input(project):
    root, _ = project
    result = fab(root, "-H", "a,gpu9", "sleepy")
    assert result.returncode == 2
    assert "unknown host 'gpu9'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_bad_progress_interval_is_bad_input_and_no_host_is_contacted(project):
    root, marker = project
    runs = set(os.listdir(root / "logs")) if (root / "logs").exists() else set()
    env = dict(os.environ, PYTHONPATH=REPO, FABRIC_INVENTORY=str(root / "hosts.toml"), GPUFLEET_PROGRESS_EVERY="soon")
    result = subprocess.run([sys.executable, "-m", "fabric", "-H", "a", "converge"], cwd=root, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: GPUFLEET_PROGRESS_EVERY: expected seconds between progress lines (a number > 0), got 'soon'"]
    assert not Path(marker + "a").exists()
    assert (set(os.listdir(root / "logs")) if (root / "logs").exists() else set()) == runs


def test_secrets_never_reach_logs_or_output(project, tmp_path):
    root, _ = project
    out = tmp_path / "r.json"
    result = fab(root, "-H", "a", "secret", "--json", str(out))
    assert result.returncode == 0
    logs = "".join(p.read_text() for p in (root / "logs").rglob("*.log"))
    for text in (logs, result.stdout, result.stderr, out.read_text()):
        assert "hunter2-token" not in text
    assert "*****" in logs


def test_host_keys_are_pinned_and_a_changed_key_is_refused(project):
    root, _ = project
    known = (root / "known_hosts").read_text()
    pinned = [line for line in known.splitlines() if line.startswith("a ssh-ed25519 ")]
    assert pinned
    other = loopback.keygen(root / "other_host_key").with_suffix(".pub").read_text().split()[1]
    (root / "known_hosts").write_text(known.replace(pinned[0], f"a ssh-ed25519 {other}"))
    try:
        result = fab(root, "-H", "a", "sleepy")
        assert result.returncode == 1
        assert "host key changed" in result.stdout
    finally:
        (root / "known_hosts").write_text(known)


def test_a_command_past_its_timeout_fails_its_host_with_what_hung_and_the_others_finish(project, tmp_path):
    """host a's `command_timeout` is 2 s and its command sleeps 37 s: a fails naming the command and the
    limit, the sleep is gone from the server (sshd does not stop a command without a tty), b finishes."""
    import time
    root, _ = project
    inventory = tmp_path / "hosts.toml"
    inventory.write_text((root / "hosts.toml").read_text().replace("[hosts.a]\n", "[hosts.a]\ncommand_timeout = 2\n"))
    out = tmp_path / "recap.json"
    env = dict(os.environ, PYTHONPATH=REPO, FABRIC_INVENTORY=str(inventory))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "fabric", "-H", "a,b", "hang", "--json", str(out)], cwd=root,
                            env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    hosts = {h["host"]: h for h in json.loads(out.read_text())["hosts"]}
    assert hosts["a"]["failed_step"] == "hang"
    assert hosts["a"]["error"] == (f"`sleep {HANG}` hung: still running after 2s, stopped "
                                   "(the limit is command_timeout in hosts.toml)"), hosts["a"]
    assert hosts["b"]["error"] == "" and hosts["b"]["changed"] == 1, hosts["b"]
    assert elapsed < 30, f"took {elapsed:.0f}s"
    deadline = time.monotonic() + 10
    while subprocess.run(["pgrep", "-f", f"sleep {HANG}"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, f"sleep {HANG} still runs on the server"
        time.sleep(0.2)
