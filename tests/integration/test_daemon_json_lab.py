"""daemon.json on the lab: foreign keys kept, invalid files left alone, a Docker that does not
come back gets its old file back, and a data-root change never loses images."""
import json
import re

import pytest

from tests.integration.helpers import inventory_variant, sh

DAEMON = "/etc/docker/daemon.json"


@pytest.fixture(autouse=True)
def converged(bootstrapped):
    assert bootstrapped.returncode == 0, bootstrapped.stdout[-2000:]


def read(lab, host):
    return sh(lab, host, f"cat {DAEMON}")[1]


def docker_info(lab, host):
    code, out = sh(lab, host, "docker info --format '{{json .}}'")
    assert code == 0, out
    return json.loads(out)


def test_foreign_keys_are_kept_and_invalid_json_is_left_alone(lab, fab):
    mirrors = docker_info(lab, "gpu1")["RegistryConfig"]["Mirrors"]
    sh(lab, "gpu1", f"""printf '{{\\n  "log-level": "warn",\\n  "data-root": "/data/docker"\\n}}\\n' > {DAEMON}""")
    sh(lab, "gpu2", f"cp {DAEMON} /root/daemon.good && printf '{{ \"data-root\": \"/data/docker\",, }}' > {DAEMON}")
    broken = read(lab, "gpu2")
    result = fab("-H", "gpu1,gpu2", "docker.configure")
    assert result.returncode == 1
    gpu1, gpu2 = result.hosts["gpu1"], result.hosts["gpu2"]
    assert gpu1["changed"] == 1 and "+ registry-mirrors" in gpu1["steps"][0]["diff"], gpu1
    config = json.loads(read(lab, "gpu1"))
    assert config["log-level"] == "warn" and config["registry-mirrors"] and config["data-root"] == "/data/docker"
    assert docker_info(lab, "gpu1")["RegistryConfig"]["Mirrors"] == mirrors
    assert gpu2["failed_step"] == "docker.configure"
    assert "line 1 column" in gpu2["error"] and "left untouched" in gpu2["error"] and "\n" not in gpu2["error"]
    assert read(lab, "gpu2") == broken  # not replaced, not "repaired"
    sh(lab, "gpu2", f"mv /root/daemon.good {DAEMON}")
    again = fab("-H", "gpu1,gpu2", "docker.configure")
    assert again.returncode == 0 and again.hosts["gpu1"]["changed"] == 0 and again.hosts["gpu2"]["changed"] == 0


def test_docker_that_does_not_start_gets_its_old_file_back(lab, fab, tmp_path):
    before = {h: read(lab, h) for h in ("gpu1", "gpu2")}
    bad = inventory_variant(lab, tmp_path, "bad-driver.toml",
                            append='\n[hosts.gpu1.daemon_json]\n"storage-driver" = "no-such-driver"\n'
                                   '\n[hosts.gpu2.daemon_json]\n"storage-driver" = "no-such-driver"\n')
    result = fab("-H", "gpu1,gpu2", "docker.configure", inventory=bad)
    assert result.returncode == 1
    for host in ("gpu1", "gpu2"):
        error = result.hosts[host]["error"]
        assert "Docker did not start with the new /etc/docker/daemon.json" in error, error
        assert "previous daemon.json was restored and Docker runs again" in error
        assert "no-such-driver" in error  # Docker's own words
        assert read(lab, host) == before[host]
        docker_info(lab, host)
        state = sh(lab, host, "docker inspect -f '{{.State.Running}}' dev")[1]
        assert state == "true"  # the restart policy brought the container back


def test_data_root_change_refused_then_migrated_without_losing_images(lab, fab, tmp_path):
    images_before = sorted(sh(lab, "gpu2", "docker image ls -q --no-trunc")[1].split())
    assert images_before
    moved = inventory_variant(lab, tmp_path, "moved.toml", {'data_root = "/data/docker"': 'data_root = "/data/docker2"'})
    refused = fab("-H", "gpu2", "docker.configure", inventory=moved)
    assert refused.returncode == 1
    assert "set allow_data_root_migration = true" in refused.hosts["gpu2"]["error"]
    assert docker_info(lab, "gpu2")["DockerRootDir"] == "/data/docker"
    allowed = inventory_variant(lab, tmp_path, "allowed.toml", {'data_root = "/data/docker"':
                                                               'data_root = "/data/docker2"\nallow_data_root_migration = true'})
    result = fab("-H", "gpu2", "docker.configure", inventory=allowed)
    assert result.returncode == 0, result.hosts["gpu2"]
    log = (fab.cwd / re.search(r"^logs: (\S+)/$", result.stdout, re.M).group(1) / "gpu2.log").read_text()
    assert re.search(r"^copying /data/docker to /data/docker2: \d+ MB$", log, re.M)  # the copy's size, for progress
    assert docker_info(lab, "gpu2")["DockerRootDir"] == "/data/docker2"
    assert sorted(sh(lab, "gpu2", "docker image ls -q --no-trunc")[1].split()) == images_before
    assert sh(lab, "gpu2", "docker inspect -f '{{.State.Running}}' dev")[1] == "true"
    assert fab("-H", "gpu2", "docker.configure", inventory=allowed).hosts["gpu2"]["changed"] == 0
    # and back: the old root still holds the old copy, which the tool will not copy over
    back = inventory_variant(lab, tmp_path, "back.toml", {'data_root = "/data/docker"':
                                                         'data_root = "/data/docker"\nallow_data_root_migration = true'})
    blocked = fab("-H", "gpu2", "docker.configure", inventory=back)
    assert blocked.returncode == 1 and "is not empty; not copying over it" in blocked.hosts["gpu2"]["error"]
    sh(lab, "gpu2", "rm -rf /data/docker")
    assert fab("-H", "gpu2", "docker.configure", inventory=back).returncode == 0
    assert docker_info(lab, "gpu2")["DockerRootDir"] == "/data/docker"
    assert sorted(sh(lab, "gpu2", "docker image ls -q --no-trunc")[1].split()) == images_before
