"""Day-2 operations and doctor on the lab: rm never loses work, restore brings it back,
doctor reports what is wrong and how to fix it."""
import shlex

import pytest

from gpufleet.facts import MANAGED_LABEL
from tests.integration.helpers import sh, ssh


@pytest.fixture(autouse=True)
def converged(bootstrapped, fab):
    assert bootstrapped.returncode == 0, bootstrapped.stdout[-2000:]
    fab("gen-ssh-config")


def in_dev(lab, host, script):
    return sh(lab, host, f"docker exec dev sh -c '{script}'")


def test_rm_refuses_unsaved_work_then_snapshot_rm_restore_keeps_the_file(lab, fab):
    assert in_dev(lab, "gpu1", "echo precious > /root/work.txt")[0] == 0
    refused = fab("-H", "gpu1", "ops.rm", "--container", "dev", "--yes")
    assert refused.returncode == 1
    assert "run ops.snapshot first, or pass --force" in refused.hosts["gpu1"]["error"]
    assert sh(lab, "gpu1", "docker inspect -f '{{.State.Running}}' dev")[1] == "true"
    snap = fab("-H", "gpu1", "ops.snapshot", "--container", "dev")
    assert snap.returncode == 0, snap.stdout[-2000:]
    assert "dev-snapshot:" in snap.hosts["gpu1"]["steps"][0]["message"]
    ps = fab("ops.ps")
    assert ps.returncode == 0 and "dev-snapshot:" in ps.stdout
    removed = fab("-H", "gpu1", "ops.rm", "--container", "dev", "--yes")
    assert removed.returncode == 0, removed.hosts["gpu1"]
    assert sh(lab, "gpu1", "docker inspect dev")[0] != 0
    restored = fab("-H", "gpu1", "ops.restore", "--container", "dev")
    assert restored.returncode == 0, restored.hosts["gpu1"]
    assert in_dev(lab, "gpu1", "cat /root/work.txt") == (0, "precious")
    done = ssh(lab, "gpu1-dev", "cat /root/work.txt")  # sshd came back with the same host key
    assert done.returncode == 0 and done.stdout.strip() == "precious", done.stderr
    again = fab("-H", "gpu1", "bootstrap")  # a restored container is not drift
    assert again.returncode == 0 and again.hosts["gpu1"]["changed"] == 0, [
        s for s in again.hosts["gpu1"]["steps"] if s["status"] != "ok"]


def test_stop_start_restart_bring_sshd_back(lab, fab):
    assert fab("-H", "gpu2", "ops.stop").returncode == 0
    assert ssh(lab, "gpu2-dev", "true").returncode != 0
    assert fab("-H", "gpu2", "ops.start").returncode == 0
    assert ssh(lab, "gpu2-dev", "hostname").stdout.strip() == "gpu2-dev"
    assert fab("-H", "gpu2", "ops.restart").returncode == 0
    assert ssh(lab, "gpu2-dev", "hostname").stdout.strip() == "gpu2-dev"
    out = fab("-H", "gpu2", "ops.exec", "--container", "dev", "--command", "cat /etc/hostname")
    assert out.returncode == 0 and "gpu2-dev" in out.stdout


def test_doctor_passes_on_a_converged_lab_and_names_the_fix_for_a_dead_sshd(lab, fab):
    healthy = fab("-H", "gpu1,gpu2", "doctor")
    assert healthy.returncode == 0, healthy.stdout[-3000:]
    for host in ("gpu1", "gpu2"):
        assert ", 0 failed" in healthy.hosts[host]["steps"][0]["message"], healthy.hosts[host]
    assert "skipped" in healthy.stdout and "no NVIDIA GPU" in healthy.stdout
    in_dev(lab, "gpu1", "kill $(cat /run/sshd.pid)")
    sick = fab("-H", "gpu1,gpu2", "doctor")
    assert sick.returncode == 1
    assert "dev: sshd" in sick.stdout and "sshd is not running" in sick.stdout
    assert "fab -H gpu1 containers.up" in sick.stdout
    fixed = fab("-H", "gpu1", "containers.up")
    assert fixed.returncode == 0 and fixed.hosts["gpu1"]["changed"] == 1
    assert fab("-H", "gpu1", "doctor").returncode == 0


STAND_IN = "/usr/local/bin/nvidia-smi"  # no GPU here: a stand-in for the host's nvidia-smi (its documented output)


def stand_in_nvidia_smi(lab, host, compute_apps: str | None = None, fail: str | None = None):
    """Answer `--query-compute-apps` with `compute_apps`, or fail every call with `fail` (exit 9)."""
    body = (f"echo {shlex.quote(fail)}; exit 9" if fail is not None else
            f'case "$*" in *--query-compute-apps*) printf %s {shlex.quote(compute_apps)};; *) exit 9;; esac')
    assert sh(lab, host, f"printf '#!/bin/sh\\n%s\\n' {shlex.quote(body)} > {STAND_IN} && chmod 755 {STAND_IN}")[0] == 0


def stray_container(lab, host, name="stray"):
    """A container with our label that the inventory does not name, made by hand on the server."""
    image = sh(lab, host, "docker inspect -f '{{.Config.Image}}' dev")[1]
    code, out = sh(lab, host, f"docker run -d --name {name} --label {MANAGED_LABEL}={name} --entrypoint sleep "
                              f"{image} infinity")
    assert code == 0, out


@pytest.fixture
def clean_up_gpu2(lab, fab):
    yield
    sh(lab, "gpu2", f"rm -f {STAND_IN}; docker rm -f stray")
    if sh(lab, "gpu2", "docker inspect dev")[0] != 0:
        assert fab("-H", "gpu2", "containers.up").returncode == 0


def test_ps_shows_an_orphan_and_rm_takes_it_only_by_name(lab, fab):
    try:
        stray_container(lab, "gpu1")
        ps = fab("ops.ps")
        assert ps.returncode == 0, ps.stdout[-2000:]
        [row] = [line for line in ps.stdout.splitlines() if " stray " in line]
        assert "gpu1" in row and "orphan (running)" in row, row
        assert [line for line in ps.stdout.splitlines() if " dev " in line and "orphan" in line] == []
        assert "fab -H HOST ops.rm --container NAME" in ps.stdout
        every = fab("-H", "gpu1", "ops.rm", "--force", "--yes", "--dry-run")  # every container: stray is not one
        assert every.returncode == 0 and "remove container dev" in every.stdout, every.stdout[-2000:]
        assert "remove container stray" not in every.stdout
        assert sh(lab, "gpu1", "docker inspect -f '{{.State.Running}}' stray dev")[1].split() == ["true", "true"]
        named = fab("-H", "gpu1", "ops.rm", "--container", "stray", "--yes")
        assert named.returncode == 0, named.hosts["gpu1"]
        assert sh(lab, "gpu1", "docker inspect stray")[0] != 0  # gone
        assert sh(lab, "gpu1", "docker inspect -f '{{.State.Running}}' dev")[1] == "true"
        assert fab("ops.ps").stdout.count("orphan") == 0
    finally:
        sh(lab, "gpu1", "docker rm -f stray")


def test_rm_asks_the_hosts_nvidia_smi_and_maps_its_pids_to_the_container(lab, fab, clean_up_gpu2):
    assert sh(lab, "gpu2", "docker exec -d dev sleep 4242")[0] == 0
    code, pid = sh(lab, "gpu2", "pgrep -f '^sleep 4242$'")  # the server's own view of that process: its host PID
    assert code == 0 and pid.isdigit(), pid
    stand_in_nvidia_smi(lab, "gpu2", f"{pid}, /opt/conda/bin/python, 10240\n")
    refused = fab("-H", "gpu2", "ops.rm", "--container", "dev", "--yes")
    assert refused.returncode == 1
    assert (f"not removing dev: GPU processes are running in it (pid {pid} /opt/conda/bin/python (10240 MiB)); "
            "stop them first, or pass --force") in refused.hosts["gpu2"]["error"]
    assert sh(lab, "gpu2", "docker inspect -f '{{.State.Running}}' dev")[1] == "true"
    # the same GPU process list naming a process of the server's own (its init): not the container's work
    stand_in_nvidia_smi(lab, "gpu2", "1, /usr/bin/python3, 512\n")
    assert fab("-H", "gpu2", "ops.snapshot", "--container", "dev").returncode == 0
    removed = fab("-H", "gpu2", "ops.rm", "--container", "dev", "--yes")
    assert removed.returncode == 0, removed.hosts["gpu2"]
    assert sh(lab, "gpu2", "docker inspect dev")[0] != 0
    assert fab("-H", "gpu2", "ops.restore", "--container", "dev").returncode == 0


def test_rm_refuses_when_the_hosts_nvidia_smi_fails_unless_forced(lab, fab, clean_up_gpu2):
    stray_container(lab, "gpu2")
    stand_in_nvidia_smi(lab, "gpu2", fail="NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA "
                                          "driver. Make sure that the latest NVIDIA driver is installed and running.")
    refused = fab("-H", "gpu2", "ops.rm", "--container", "stray", "--yes")
    assert refused.returncode == 1
    assert ("not removing stray: cannot tell whether GPU processes run in it: nvidia-smi failed on the host "
            "(nvidia-smi cannot talk to the NVIDIA driver") in refused.hosts["gpu2"]["error"]
    assert sh(lab, "gpu2", "docker inspect -f '{{.State.Running}}' stray")[1] == "true"
    forced = fab("-H", "gpu2", "ops.rm", "--container", "stray", "--yes", "--force")
    assert forced.returncode == 0, forced.hosts["gpu2"]
    assert sh(lab, "gpu2", "docker inspect stray")[0] != 0
    sh(lab, "gpu2", f"rm -f {STAND_IN}")  # no nvidia-smi on the host at all: no GPU process, removal goes on
    stray_container(lab, "gpu2")
    assert fab("-H", "gpu2", "ops.rm", "--container", "stray", "--yes").returncode == 0
    assert sh(lab, "gpu2", "docker inspect stray")[0] != 0


# files with old mtimes, as unpacking and copying tools leave them (touch -d, tar x, cp -p)
OLD_MTIMES = ("echo a > /root/touched.txt && touch -d 2001-01-01 /root/touched.txt && mkdir -p /root/t/d && "
              "echo b > /root/t/d/unpacked.txt && touch -d 2001-01-01 /root/t/d/unpacked.txt && "
              "tar -C /root/t -cf /root/t.tar d && mkdir -p /opt/data && tar -C /opt/data -xf /root/t.tar && "
              "cp -p /root/t/d/unpacked.txt /root/copied.txt && rm -f /root/t.tar && rm -rf /root/t")


@pytest.mark.parametrize("state", ["running", "stopped"])
def test_rm_sees_files_with_old_mtimes_written_after_the_last_snapshot(lab, fab, state):
    def rm_plan():
        return fab("-H", "gpu1", "ops.rm", "--container", "dev", "--yes", "--dry-run")

    def snapshot():
        assert fab("-H", "gpu1", "ops.snapshot", "--container", "dev").returncode == 0

    try:
        snapshot()
        if state == "stopped":
            assert fab("-H", "gpu1", "ops.stop", "--container", "dev").returncode == 0
        unchanged = rm_plan()  # nothing changed since the snapshot: removal goes on
        assert unchanged.returncode == 0 and "remove container dev" in unchanged.stdout, unchanged.hosts["gpu1"]
        if state == "stopped":
            assert fab("-H", "gpu1", "ops.start", "--container", "dev").returncode == 0
        assert in_dev(lab, "gpu1", OLD_MTIMES)[0] == 0
        assert in_dev(lab, "gpu1", "stat -c %Y /root/touched.txt /root/copied.txt /opt/data/d/unpacked.txt")[1].split() \
            == ["978307200"] * 3
        if state == "stopped":
            assert fab("-H", "gpu1", "ops.stop", "--container", "dev").returncode == 0
        refused = rm_plan()
        assert refused.returncode == 1
        error = refused.hosts["gpu1"]["error"]
        assert "not removing dev: files changed since the last snapshot (" in error, error
        assert "/root/touched.txt" in error and "/root/copied.txt" in error, error
        assert sh(lab, "gpu1", "docker inspect -f '{{.State.Status}}' dev")[1] == ("running" if state == "running"
                                                                                   else "exited")
        snapshot()  # saved now: removal goes on
        saved = rm_plan()
        assert saved.returncode == 0 and "remove container dev" in saved.stdout, saved.hosts["gpu1"]
    finally:
        sh(lab, "gpu1", "docker start dev")
