"""daemon.json on the lab: foreign keys kept, invalid files left alone, a Docker that does not
come back gets its old file back, a data-root change never loses images, and the keys the tool set
that the inventory drops are removed."""
import json
import re

import pytest

from tests.integration.helpers import inventory_variant, sh

DAEMON = "/etc/docker/daemon.json"
KEYS_RECORD = "/var/lib/gpufleet/daemon-json-keys.json"


@pytest.fixture(autouse=True)
def converged(bootstrapped):
    assert bootstrapped.returncode == 0, bootstrapped.stdout[-2000:]


def read(lab, host):
    return sh(lab, host, f"cat {DAEMON}")[1]


def record(lab, host):
    code, out = sh(lab, host, f"cat {KEYS_RECORD}")
    return json.loads(out)["keys"] if code == 0 else None


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
    records = {h: record(lab, h) for h in ("gpu1", "gpu2")}
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
        assert record(lab, host) == records[host]  # storage-driver never became one of ours
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


def test_keys_the_inventory_drops_are_removed_and_foreign_keys_stay(lab, fab, tmp_path):
    hosts = ("gpu1", "gpu2")
    mirror_line = re.search(r"^registry_mirrors = .*\n", lab.inventory_path.read_text(), re.M).group(0)
    mirror = json.loads(mirror_line.split("=", 1)[1])[0]
    extra = "".join(f'\n[hosts.{h}.daemon_json]\n"max-concurrent-downloads" = 4\n' for h in hosts)
    with_key = inventory_variant(lab, tmp_path, "with-key.toml", append=extra)
    first = fab("-H", "gpu1,gpu2", "docker.configure", inventory=with_key)
    assert first.returncode == 0, first.stdout[-3000:]
    for host in hosts:
        assert json.loads(read(lab, host))["max-concurrent-downloads"] == 4
        assert record(lab, host) == [["data-root"], ["max-concurrent-downloads"], ["registry-mirrors"]]
        # a key set by hand (not by the tool) after that
        sh(lab, host, "python3 -c 'import json; p = \"/etc/docker/daemon.json\"; d = json.load(open(p)); "
                      "d[\"max-concurrent-uploads\"] = 3; open(p, \"w\").write(json.dumps(d))'")
    dropped = inventory_variant(lab, tmp_path, "dropped.toml", {mirror_line: ""})
    before = {h: read(lab, h) for h in hosts}
    dry = fab("-H", "gpu1,gpu2", "docker.configure", "--dry-run", inventory=dropped)
    for host in hosts:
        step = dry.hosts[host]["steps"][0]
        assert f'- registry-mirrors: ["{mirror}"]' in step["diff"] and "- max-concurrent-downloads: 4" in step["diff"]
        assert "max-concurrent-uploads" not in step["diff"]
        assert read(lab, host) == before[host]  # a dry run changes nothing
    result = fab("-H", "gpu1,gpu2", "docker.configure", inventory=dropped)
    assert result.returncode == 0, result.stdout[-3000:]
    for host in hosts:
        assert result.hosts[host]["changed"] == 1
        config = json.loads(read(lab, host))
        assert "registry-mirrors" not in config and "max-concurrent-downloads" not in config, config
        assert config["max-concurrent-uploads"] == 3 and config["data-root"] == "/data/docker"
        assert not docker_info(lab, host)["RegistryConfig"].get("Mirrors")  # Docker itself has no mirror now
        assert record(lab, host) == [["data-root"]]
    again = fab("-H", "gpu1,gpu2", "docker.configure", inventory=dropped)
    assert again.returncode == 0 and all(again.hosts[h]["changed"] == 0 for h in hosts), again.stdout[-2000:]
    back = fab("-H", "gpu1,gpu2", "docker.configure")  # the lab's own inventory: the mirror comes back
    assert back.returncode == 0, back.stdout[-3000:]
    for host in hosts:
        assert [m.rstrip("/") for m in docker_info(lab, host)["RegistryConfig"]["Mirrors"]] == [mirror.rstrip("/")]
        assert json.loads(read(lab, host))["max-concurrent-uploads"] == 3
