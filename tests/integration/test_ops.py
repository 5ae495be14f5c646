"""Day-2 operations and doctor on the lab: rm never loses work, restore brings it back,
doctor reports what is wrong and how to fix it."""
import pytest

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
