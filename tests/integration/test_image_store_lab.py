"""data_root holds the images on Docker 29 (issue 19 item 1), on the lab's gpu4: docker-ce 29 with the
system's containerd.service (containerd.io 2.x, root /var/lib/containerd on a volume of its own) and a
second disk at /data.  Bytes are measured with `du -sb` on data_root and /var/lib/containerd before and
after a real pull through the lab's registry mirror; the containerd store and `image_store = "classic"`;
a move with images refused, then allowed and compared; a second run changes nothing."""
import json
import os
import re
import tomllib
from pathlib import Path

import pytest

from lab.mirror import TODAY_DOCKER
from lab.topology import LAB_IMAGE
from tests.integration.helpers import inventory_variant, sh

HOST = "gpu4"
DATA_ROOT = "/data/docker"
CONTAINERD_DEFAULT = "/var/lib/containerd"
MOVED_ROOT = f"{DATA_ROOT}/containerd"
OUR_LINE = f'root = "{MOVED_ROOT}"  # set by gpufleet from data_root'
ALLOW = f'data_root = "{DATA_ROOT}"\nallow_data_root_migration = true'
SECOND_ROOT = "/data/docker2"  # a second move: containerd's root inside the old data root moves with it
ALLOW2 = f'data_root = "{SECOND_ROOT}"\nallow_data_root_migration = true'
FIGURES = []


def run(lab, script):
    code, out = sh(lab, HOST, script)
    assert code == 0, (script, out)
    return out


def du(lab, path):
    """Bytes under `path` on gpu4 (0 where it is not there)."""
    out = run(lab, f"if [ -e {path} ]; then du -sb {path} | cut -f1; else echo 0; fi")
    return int(out)


def sizes(lab, data_root=DATA_ROOT):
    return {path: du(lab, path) for path in (data_root, CONTAINERD_DEFAULT)}


def docker_info(lab):
    return json.loads(run(lab, "docker info --format '{{json .}}'"))


def capture(lab, name, script):
    """Keep a real output for the unit tests' fixtures where GPUFLEET_CAPTURE names a folder."""
    folder = os.environ.get("GPUFLEET_CAPTURE")
    if folder:
        code, out = lab.exec(HOST, ["sh", "-c", script])
        (Path(folder) / name).write_text(out)


def store_of(info):
    return "containerd" if ["driver-type", "io.containerd.snapshotter.v1"] in (info.get("DriverStatus") or []) \
        else "classic"


def images(lab):
    return sorted(run(lab, "docker image ls -q --no-trunc").split())


def pull(lab, label, data_root=DATA_ROOT):
    """Pull the lab's image (removed first) and record where its bytes landed."""
    sh(lab, HOST, f"docker image rm -f {LAB_IMAGE} >/dev/null 2>&1; docker image prune -af >/dev/null 2>&1")
    before = sizes(lab, data_root)
    run(lab, f"docker pull -q {LAB_IMAGE}")
    after = sizes(lab, data_root)
    image = int(run(lab, f"docker image inspect -f '{{{{.Size}}}}' {LAB_IMAGE}"))
    grown = {path: after[path] - before[path] for path in before}
    FIGURES.append((label, before, after, image))
    print(f"{label}: image {image} B; " + "; ".join(f"{p}: {before[p]} -> {after[p]} B ({grown[p]:+d})" for p in before))
    return grown, image


@pytest.fixture(scope="module")
def gpu4(lab):
    """The session lab with its 4th server (bare, Debian 13, systemd); back to 3 servers afterwards."""
    lab.up(hosts=4)
    lab.recreate_server(HOST)
    yield HOST
    lab.up(hosts=3)


@pytest.fixture(scope="module")
def variants(lab, gpu4, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("image-store")
    default = f'data_root = "{DATA_ROOT}"'
    return {
        "bare": inventory_variant(lab, tmp, "bare.toml", {default: ""}),  # Docker's own data root
        "data_root": lab.inventory_path,
        "allowed": inventory_variant(lab, tmp, "allowed.toml", {default: ALLOW}),
        "second": inventory_variant(lab, tmp, "second.toml", {default: ALLOW2}),
        "classic": inventory_variant(lab, tmp, "classic.toml",
                                     {default: f'data_root = "{SECOND_ROOT}"\nimage_store = "classic"'}),
        "classic_allowed": inventory_variant(lab, tmp, "classic-allowed.toml",
                                             {default: ALLOW2 + '\nimage_store = "classic"'}),
    }


def configure(fab, inventory, *extra):
    return fab("-H", HOST, "docker.configure", *extra, inventory=inventory)


def test_docker_29_pulls_into_containerd_root_until_data_root_moves_it(lab, fab, variants):
    installed = fab("-H", HOST, "docker.install", inventory=variants["bare"])
    assert installed.returncode == 0, installed.stdout[-3000:]
    first = configure(fab, variants["bare"])
    assert first.returncode == 0, first.stdout[-3000:]
    info = docker_info(lab)
    # Docker 29 from ../shared/stack, else the lab's fallback: Debian's docker.io 28.5 with the store switched on
    engine = TODAY_DOCKER if lab.package_mirror.docker_today_from == "stack" else "28.5."
    assert info["ServerVersion"].startswith(engine) and store_of(info) == "containerd", \
        (info["ServerVersion"], info.get("DriverStatus"))
    assert info["Containerd"]["Address"] == "/run/containerd/containerd.sock"  # the system's containerd.service
    capture(lab, "info-29.7.2-containerd-store.json", "docker info --format '{{json .}}'")
    capture(lab, "config-containerd.io-2.1.9.toml", "cat /etc/containerd/config.toml")
    capture(lab, "dump-2.1.9-default.txt", "containerd config dump 2>&1")
    # without data_root the images land in containerd's root: the problem this item solves
    grown, image = pull(lab, "Docker 29, containerd store, no data_root")
    assert grown[CONTAINERD_DEFAULT] >= image * 0.9, grown

    # data_root with images there: refused, nothing touched
    daemon_before, config_before = run(lab, "cat /etc/docker/daemon.json"), sh(lab, HOST, "cat /etc/containerd/config.toml")
    refused = configure(fab, variants["data_root"])
    assert refused.returncode == 1
    error = refused.hosts[HOST]["error"]
    assert "would hide 1 image(s)" in error and "set allow_data_root_migration = true" in error, error
    assert run(lab, "cat /etc/docker/daemon.json") == daemon_before
    assert sh(lab, HOST, "cat /etc/containerd/config.toml") == config_before

    # the dry run shows both files' changes, and changes nothing
    dry = configure(fab, variants["allowed"], "--dry-run")
    assert dry.returncode == 0, dry.stdout[-3000:]
    diffs = {s["step"]: s.get("diff", "") for s in dry.hosts[HOST]["steps"]}
    assert f'+ data-root: "{DATA_ROOT}"' in diffs["docker.configure"], diffs
    assert f"+{OUR_LINE}\n" in diffs["docker.containerd"] and "+++ /etc/containerd/config.toml" in diffs["docker.containerd"]
    assert sh(lab, HOST, "cat /etc/containerd/config.toml") == config_before

    # allowed: copied and compared, Docker's root and containerd's
    before = images(lab)
    moved = configure(fab, variants["allowed"])
    assert moved.returncode == 0, moved.stdout[-3000:]
    assert moved.hosts[HOST]["changed"] == 2, moved.hosts[HOST]["steps"]
    assert images(lab) == before
    assert OUR_LINE in run(lab, "cat /etc/containerd/config.toml")
    assert tomllib.loads(run(lab, "containerd config dump"))["root"] == MOVED_ROOT
    capture(lab, "dump-2.1.9-root-moved.txt", "containerd config dump 2>&1")
    capture(lab, "config-containerd.io-2.1.9-root-moved.toml", "cat /etc/containerd/config.toml")
    assert docker_info(lab)["DockerRootDir"] == DATA_ROOT
    assert du(lab, MOVED_ROOT) >= image * 0.9  # the copy
    again = configure(fab, variants["allowed"])
    assert again.returncode == 0 and again.hosts[HOST]["changed"] == 0, again.hosts[HOST]["steps"]

    # a real pull now lands under data_root; containerd's old root (left as it was) does not grow
    grown, image = pull(lab, "Docker 29, containerd store, data_root = /data/docker")
    assert grown[DATA_ROOT] >= image * 0.9, grown
    assert grown[CONTAINERD_DEFAULT] < image * 0.05, grown

    doctor = fab("-H", HOST, "doctor", inventory=variants["allowed"])
    # the images row and the disk row name where the images are (the table may wrap a cell, never a path)
    assert doctor.stdout.count(MOVED_ROOT) >= 2 and "containerd store" in doctor.stdout, doctor.stdout[-3000:]


def test_a_second_data_root_move_takes_containerd_root_along(lab, fab, variants):
    before = images(lab)
    assert before  # left by the test before
    moved = configure(fab, variants["second"])
    assert moved.returncode == 0, moved.stdout[-3000:]
    assert moved.hosts[HOST]["changed"] == 2, moved.hosts[HOST]["steps"]
    assert images(lab) == before
    assert docker_info(lab)["DockerRootDir"] == SECOND_ROOT
    assert tomllib.loads(run(lab, "containerd config dump"))["root"] == f"{SECOND_ROOT}/containerd"
    assert du(lab, f"{SECOND_ROOT}/containerd") >= du(lab, MOVED_ROOT) * 0.9  # copied once, by its own move
    again = configure(fab, variants["second"])
    assert again.returncode == 0 and again.hosts[HOST]["changed"] == 0, again.hosts[HOST]["steps"]
    grown, image = pull(lab, f"Docker 29, containerd store, data_root moved on to {SECOND_ROOT}", SECOND_ROOT)
    assert grown[SECOND_ROOT] >= image * 0.9, grown
    assert grown[CONTAINERD_DEFAULT] < image * 0.05, grown


def test_classic_store_switch_refused_with_images_then_pulls_into_data_root(lab, fab, variants):
    assert images(lab)  # left by the test before
    refused = configure(fab, variants["classic"])
    assert refused.returncode == 1
    error = refused.hosts[HOST]["error"]
    assert "image store change containerd -> classic" in error and "invisible in the other" in error, error
    assert store_of(docker_info(lab)) == "containerd"
    switched = configure(fab, variants["classic_allowed"])
    assert switched.returncode == 0, switched.stdout[-3000:]
    step = next(s for s in switched.hosts[HOST]["steps"] if s["step"] == "docker.configure")
    assert "stay in the containerd store" in step.get("warning", ""), step
    # added on Docker 29 (its default needs no key); changed where the lab's fallback engine had it set on
    assert re.search(r"^[+~] features\.containerd-snapshotter: (true -> )?false$", step.get("diff", ""), re.M), step
    info = docker_info(lab)
    capture(lab, "info-29.7.2-classic-store.json", "docker info --format '{{json .}}'")
    assert store_of(info) == "classic" and info["Driver"] == "overlay2" and info["Images"] == 0
    again = configure(fab, variants["classic_allowed"])
    assert again.returncode == 0 and again.hosts[HOST]["changed"] == 0, again.hosts[HOST]["steps"]
    grown, image = pull(lab, f"Docker 29, image_store = classic, data_root = {SECOND_ROOT}", SECOND_ROOT)
    assert grown[SECOND_ROOT] >= image * 0.9, grown
    assert grown[CONTAINERD_DEFAULT] < image * 0.05, grown
    assert du(lab, f"{SECOND_ROOT}/overlay2") >= image * 0.9  # the classic store's layers


def test_figures():
    for label, before, after, image in FIGURES:
        print(f"FIGURE {label}: image {image} B; " +
              "; ".join(f"{path} {before[path]} -> {after[path]} B" for path in before))
