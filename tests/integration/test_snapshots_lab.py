"""Snapshots on the lab: a re-creation snapshots the container only when the user changed its files
(the tool's own writes — sshd, tools, keys, apt sources, the entrypoint's files — do not count), and
keep_snapshots prunes the snapshots a re-creation takes like those of ops.snapshot."""
import pytest

from tests.integration.helpers import inventory_variant, sh

HOST = "gpu2"


@pytest.fixture(autouse=True)
def converged(bootstrapped):
    assert bootstrapped.returncode == 0, bootstrapped.stdout[-2000:]


def snapshots(lab):
    """The host's real snapshot images of dev, oldest first."""
    code, out = sh(lab, HOST, "docker image ls --format '{{.Repository}}:{{.Tag}}' dev-snapshot")
    assert code == 0, out
    return sorted(out.split())


def with_dev(lab, tmp_path, name, settings):
    return inventory_variant(lab, tmp_path, name, append=f"\n[hosts.{HOST}.containers.dev]\n{settings}\n")


def run_step(result, step):
    return next(s for s in result.hosts[HOST]["steps"] if s["step"] == step)


def test_recreation_snapshots_only_the_users_changes_and_prunes_to_keep_snapshots(lab, fab, tmp_path):
    assert fab("-H", HOST, "bootstrap").hosts[HOST]["changed"] == 0
    already = snapshots(lab)
    first = with_dev(lab, tmp_path, "env1.toml", 'env = { RUN = "1" }\nkeep_snapshots = 1')
    result = fab("-H", HOST, "bootstrap", inventory=first)
    assert result.returncode == 0, result.stdout[-3000:]
    message = run_step(result, "containers.run")["message"]
    assert "re-create container dev (env:" in message and "no changes of yours in it, so no snapshot" in message
    assert snapshots(lab) == already  # the tool's own writes in the old container were not taken for work
    assert fab("-H", HOST, "bootstrap", inventory=first).hosts[HOST]["changed"] == 0

    # the re-created container was set up again by the tool: still nothing of the user's in it
    saved = fab("-H", HOST, "ops.snapshot", "--container", "dev", inventory=first)
    assert saved.returncode == 0, saved.stdout[-2000:]
    (older,) = snapshots(lab)  # keep_snapshots = 1 pruned the ones before
    assert sh(lab, HOST, "docker exec dev sh -c 'echo precious > /root/work.txt'")[0] == 0
    second = with_dev(lab, tmp_path, "env2.toml", 'env = { RUN = "2" }\nkeep_snapshots = 1')
    result = fab("-H", HOST, "bootstrap", inventory=second)
    assert result.returncode == 0, result.stdout[-3000:]
    message = run_step(result, "containers.run")["message"]
    assert "1 change(s) of yours (/root/work.txt): snapshot dev-snapshot:" in message, message
    assert f"removed old {older} (keep_snapshots = 1)" in message, message
    (newer,) = snapshots(lab)
    assert newer != older
    assert sh(lab, HOST, f"docker run --rm --entrypoint cat {newer} /root/work.txt") == (0, "precious")
    assert sh(lab, HOST, "docker exec dev test -e /root/work.txt")[0] != 0  # the new container is fresh
    again = fab("-H", HOST, "bootstrap", inventory=second)
    assert again.returncode == 0 and again.hosts[HOST]["changed"] == 0, again.stdout[-2000:]
    assert snapshots(lab) == [newer]

    back = fab("-H", HOST, "bootstrap")  # the lab's own spec again: no work of the user's in the container
    assert back.returncode == 0, back.stdout[-3000:]
    assert "no changes of yours in it, so no snapshot" in run_step(back, "containers.run")["message"]
    assert snapshots(lab) == [newer]


TOOLS = '["git", "wget", "vim", "less", "openssh-client", "ca-certificates", "tree"]'


def recreated_snapshot(lab, fab, tmp_path, name, run):
    """Bootstrap gpu2 with dev's environment changed (a re-creation); the snapshot it says it took."""
    changed = inventory_variant(lab, tmp_path, name, replace={f"[hosts.{HOST}]\n": f"[hosts.{HOST}]\ntools = {TOOLS}\n"},
                                append=f'\n[hosts.{HOST}.containers.dev]\nenv = {{ RUN = "{run}" }}\n')
    result = fab("-H", HOST, "bootstrap", inventory=changed)
    assert result.returncode == 0, result.stdout[-3000:]
    message = run_step(result, "containers.run")["message"]
    assert "change(s) of yours" in message, message
    return message, message.split(": snapshot ", 1)[1].split(";")[0].strip()


def test_a_file_the_user_writes_while_the_tool_installs_is_snapshotted_on_re_creation(lab, fab, tmp_path):
    assert fab("-H", HOST, "bootstrap").hosts[HOST]["changed"] == 0
    # the user writes a file while the tool's apt runs in the container (the bracket keeps the watcher
    # from finding its own command line)
    watch = "until grep -qs apt-ge[t] /proc/[0-9]*/cmdline; do sleep 0.05; done; echo mine > /root/during.txt"
    assert sh(lab, HOST, f"docker exec -d dev sh -c '{watch}'")[0] == 0
    tools = inventory_variant(lab, tmp_path, "tools.toml",
                              replace={f"[hosts.{HOST}]\n": f"[hosts.{HOST}]\ntools = {TOOLS}\n"})
    installed = fab("-H", HOST, "bootstrap", inventory=tools)
    assert installed.returncode == 0, installed.stdout[-3000:]
    assert "install tree in dev" in run_step(installed, "inside.tools")["message"]
    assert sh(lab, HOST, "docker exec dev cat /root/during.txt") == (0, "mine")
    # only the user's file is the user's: tree's files and apt's own writes are the tool's
    message, tag = recreated_snapshot(lab, fab, tmp_path, "during.toml", "during")
    assert "1 change(s) of yours (/root/during.txt): snapshot" in message, message
    assert sh(lab, HOST, f"docker run --rm --entrypoint cat {tag} /root/during.txt") == (0, "mine")
    assert fab("-H", HOST, "bootstrap").returncode == 0


def test_what_the_user_writes_until_the_container_stops_is_in_the_snapshot(lab, fab, tmp_path):
    assert fab("-H", HOST, "bootstrap").returncode == 0
    sh(lab, HOST, "rm -f /data/workspace/late.log")
    # each file is logged, in the volume, once it is written; the writer runs until docker stop
    writer = ("mkdir -p /root/late; i=0; while :; do i=$((i+1)); echo $i > /root/late/$i && "
              "echo $i >> /workspace/late.log; sleep 0.05; done")
    assert sh(lab, HOST, f"docker exec -d dev sh -c '{writer}'")[0] == 0
    assert sh(lab, HOST, "for i in $(seq 100); do [ -s /data/workspace/late.log ] && exit 0; sleep 0.1; done; "
                         "exit 1")[0] == 0
    _, tag = recreated_snapshot(lab, fab, tmp_path, "late.toml", "late")
    logged = sh(lab, HOST, "cat /data/workspace/late.log")[1].split()
    code, saved = sh(lab, HOST, f"docker run --rm --entrypoint ls {tag} /root/late")
    assert code == 0 and logged, saved
    assert sorted(set(logged) - set(saved.split()), key=int) == []  # none written before the stop was lost
    sh(lab, HOST, "rm -f /data/workspace/late.log")
    assert fab("-H", HOST, "bootstrap").returncode == 0
